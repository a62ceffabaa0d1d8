"""The run specification: what the user asked for, in one typed object, before any SAELens config.

Every entry path (``training_config``, the runners' Python use, ``gemmascope train`` single-process
and under torchrun, the demo, the benchmarks) turns its arguments into one :class:`RunSpec`, and
:mod:`saelens_gemmascope.suite.configs` turns a spec plus presets into SAELens configs.

Why one object: SAELens keeps ``device`` and ``dtype`` on both the runner config and every SAE
config (plus ``llm_device`` and ``act_store_device`` on the runner), and nothing keeps them in
agreement. The spec holds them once, at run level, and :meth:`RunSpec.runner_fields` /
:meth:`RunSpec.sae_fields` hand the same values to every field that names a device or a dtype, so
the language model, the activation store, every SAE, the trainer's buffers and the optimiser state
all land on one device (``tests/training/test_device_audit_configs.py`` checks every entry path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelens_gemmascope.distributed.spec import DistributedSpec
from saelens_gemmascope.runners.overrides import route_overrides


class DeviceUnavailableError(ValueError):
    """The run's device does not exist on this machine."""


def check_device_available(device: str) -> None:
    """Raise :class:`DeviceUnavailableError` (one line) unless ``device`` can be used here."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}, "
                f"built {'with' if torch.backends.cuda.is_built() else 'without'} CUDA); use --device cpu "
                "or run on a GPU machine with a CUDA build of torch"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"device {device!r}: MPS is not available on this machine")


@dataclass(frozen=True)
class RunSpec:
    """Run-level settings, and the caller's runner-level and SAE-level field overrides.

    Args:
        device, dtype: where and in what precision everything runs (the model, the activation
            store, every SAE, the trainer's buffers, the optimiser state).
        data: ``stdlib`` (the embedded default), a ``save_to_disk`` folder, or a hub dataset name.
        output: the run's folder; ``None`` writes nothing (Python use without an output).
        n_checkpoints / checkpoint_every_tokens: checkpoints per training pass, or one every so
            many tokens (wins when set).
        wandb_project: log training passes to wandb (``None``: no wandb, nothing written for it).
        runner / sae: field overrides of the SAELens runner config and of every SAE config.
        distributed: set under torchrun.
        init_from: start every SAE from a saved SAE of the same site (Gemma Scope 2's PT -> IT
            finetuning; :mod:`~saelens_gemmascope.recipe.warm_start`): an SAE folder or
            ``release/sae_id`` for every SAE, or a folder holding one SAE folder per rung, named as
            the rung (``target_l0_20``) or the SAE's full name. ``None``: the recipe's own init.
    """

    device: str = "cpu"
    dtype: str = "float32"
    data: str = "stdlib"
    output: Path | None = None
    n_checkpoints: int = 0
    checkpoint_every_tokens: int | None = None
    wandb_project: str | None = None
    runner: Mapping[str, Any] = field(default_factory=dict)
    sae: Mapping[str, Any] = field(default_factory=dict)
    distributed: DistributedSpec | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.output is not None and not isinstance(self.output, Path):
            object.__setattr__(self, "output", Path(self.output))  # a str given for a folder
        if self.init_from is not None:
            object.__setattr__(self, "init_from", str(self.init_from))  # a Path given for a folder

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any], **run_settings: Any) -> RunSpec:
        """A spec from user overrides (``--set`` values or keywords, validated and routed by
        :func:`~saelens_gemmascope.runners.overrides.route_overrides`) and run settings."""
        routed = route_overrides(overrides)
        return cls(**{**run_settings, **routed.run}, runner=routed.runner, sae=routed.sae)

    def runner_fields(self) -> dict[str, Any]:
        """Runner-config fields: the overrides, then the run's device and dtype on every field
        that names one."""
        return {
            **self.runner,
            "device": self.device,
            "llm_device": self.device,
            "act_store_device": self.device,
            "dtype": self.dtype,
        }

    def sae_fields(self) -> dict[str, Any]:
        """SAE-config fields: the overrides, then the run's device and dtype."""
        return {**self.sae, "device": self.device, "dtype": self.dtype}

    def checkpoints_per_pass(self, training_tokens: int) -> int:
        """Checkpoints in a pass of ``training_tokens``: one every ``checkpoint_every_tokens`` if set."""
        if self.checkpoint_every_tokens is None:
            return self.n_checkpoints
        return max(0, -(-training_tokens // self.checkpoint_every_tokens) - 1)
