"""The run specification: what the user asked for, in one typed object, before any SAELens config.

Every entry path (``training_config``, the runners' Python use, ``gemmascope train`` single-process
and under torchrun, the demo, the benchmarks) turns its arguments into one :class:`RunSpec`, and
:mod:`saelens_gemmascope.training.preset_config` turns a spec plus presets into SAELens configs.

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
from typing import Any, Literal

from saelens_gemmascope.training.overrides import route_overrides

DistributedMode = Literal["data", "sae"]

#: The layouts ``--distributed`` accepts: data parallel, or SAEs sharded over the ranks.
DISTRIBUTED_MODES: tuple[str, ...] = ("data", "sae")


@dataclass(frozen=True)
class DistributedSpec:
    """This process's place in a torchrun job and the layout the job trains in.

    ``data``: every rank holds every SAE of a pass, steps on its share of each global batch and
    averages gradients (equal to one process on the global batch). ``sae``: ranks gather their
    shares into the global batch and each trains its own subset of the SAEs.
    """

    mode: DistributedMode
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.mode not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed mode must be one of {DISTRIBUTED_MODES}, got {self.mode!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside a job of {self.world_size} process(es)")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether this rank trains the ``index``-th SAE (sorted by name) of a pass in ``sae`` mode."""
        return self.mode == "data" or index % self.world_size == self.rank

    def local_batch(self, global_batch: int) -> int:
        """Activations this rank reads per step: its share of the global batch."""
        if global_batch % self.world_size:
            raise ValueError(
                f"the batch of {global_batch:,} activations (train_batch_size_tokens) does not split "
                f"evenly over {self.world_size} ranks; choose a multiple of {self.world_size}"
            )
        return global_batch // self.world_size


def distributed_spec_from_env(mode: str) -> DistributedSpec:
    """This process's place in a torchrun job, from torchrun's environment (no process group is
    joined: a dry run plans without one)."""
    import os

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError(
            f"--distributed {mode} runs under torchrun, e.g. `torchrun --nproc-per-node 8 -m "
            f"saelens_gemmascope.cli train PRESET --distributed {mode}`"
        )
    return DistributedSpec(mode=mode, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))  # type: ignore[arg-type]


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

    def __post_init__(self) -> None:
        if self.output is not None and not isinstance(self.output, Path):
            object.__setattr__(self, "output", Path(self.output))  # a str given for a folder

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any], **run_settings: Any) -> RunSpec:
        """A spec from user overrides (``--set`` values or keywords, validated and routed by
        :func:`~saelens_gemmascope.training.overrides.route_overrides`) and run settings."""
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
