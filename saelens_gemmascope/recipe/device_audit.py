"""A cheap check, run before the first training step, that every tensor the step touches is on the
run's device.

The project's CI has no GPU, so nothing there ever runs a CUDA step. A tensor left on the CPU in a
CUDA run (an SAE buffer built after ``.to(device)``, a trainer buffer, optimiser state restored
from a checkpoint, an activation batch) either crashes the first step with PyTorch's "Expected all
tensors to be on the same device" error, far from whatever put it there, or is silently moved and
trained on the CPU (or copied host to device on every step). This module makes that failure
provable on the CPU instead: :func:`audit_training_start` reads only each tensor's ``.device`` (no
data moves, no synchronisation) and raises :class:`DeviceMismatchError` naming every tensor that
is elsewhere. The tests plant tensors on the ``meta`` device in a CPU run, which is the same
mismatch a CPU tensor is in a CUDA run.

One exception is PyTorch's own: Adam, AdamW and friends deliberately keep each parameter's
``state["step"]`` counter as a 0-dim tensor on the CPU unless the parameter group is ``fused`` or
``capturable`` (torch/optim/adam.py, note "[special device hosting for step]": a host scalar
saves a kernel launch per step; ``Optimizer.load_state_dict`` likewise leaves ``step`` where it
was unless fused or capturable). The non-fused kernels read it on the host, so a CPU ``step`` is
correct there and is not reported. A fused or capturable group keeps ``step`` on the parameter's
device (its kernels read it there), so a CPU ``step`` in such a group is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from typing import Any

import torch

__all__ = [
    "DeviceMismatchError",
    "audit_devices",
    "audit_training_start",
    "batch_tensors",
    "named_training_tensors",
    "same_device",
]

_SHOWN = 5  # offending tensors named in the message; the rest are counted


class DeviceMismatchError(RuntimeError):
    """A tensor the training step touches is not on the run's device (one-line message)."""


def _resolved(device: torch.device | str) -> tuple[str, int]:
    """(type, index) with a missing index filled in: CUDA's current device, 0 for the others."""
    device = torch.device(device)
    if device.index is not None:
        return device.type, device.index
    if device.type == "cuda" and torch.cuda.is_available():
        return device.type, torch.cuda.current_device()
    return device.type, 0


def same_device(actual: torch.device, expected: torch.device | str) -> bool:
    """Whether ``actual`` is the device ``expected`` names (``"cuda"`` is the current CUDA device)."""
    return _resolved(actual) == _resolved(expected)


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer, param_names: Mapping[int, str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """``optimizer.state[<param name>].<key>`` for every tensor in the optimiser's state.

    Parameters the SAE no longer names (e.g. one replaced after the optimiser was built) are
    called ``param_groups[<g>][<i>]``. A group's ``step`` that PyTorch hosts on the CPU on purpose
    (0-dim, neither fused nor capturable; see the module docstring) is skipped.
    """
    groups: dict[int, tuple[str, Mapping[str, Any]]] = {}
    for g, group in enumerate(optimizer.param_groups):
        for i, param in enumerate(group["params"]):
            groups.setdefault(id(param), (f"param_groups[{g}][{i}]", group))
    for param, state in optimizer.state.items():
        position, group = groups.get(id(param), ("?", {}))
        name = param_names.get(id(param), position)
        device_hosted = bool(group.get("fused")) or bool(group.get("capturable"))
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            if key == "step" and value.dim() == 0 and value.device.type == "cpu" and not device_hosted:
                continue
            yield f"optimizer.state[{name}].{key}", value


def _single_trainer_tensors(trainer: Any) -> Iterator[tuple[str, torch.Tensor]]:
    sae: torch.nn.Module = trainer.sae
    for name, param in sae.named_parameters():
        yield f"sae.{name}", param
    for name, buffer in sae.named_buffers():
        yield f"sae.{name}", buffer
    for attr in ("act_freq_scores", "n_forward_passes_since_fired"):
        value = getattr(trainer, attr, None)
        if isinstance(value, torch.Tensor):
            yield f"trainer.{attr}", value
    optimizer = getattr(trainer, "optimizer", None)
    if isinstance(optimizer, torch.optim.Optimizer):
        param_names = {id(p): name for name, p in sae.named_parameters()}
        yield from _optimizer_tensors(optimizer, param_names)


def named_training_tensors(trainer: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor a trainer's step touches, named: the SAE's parameters and buffers
    (``sae.<name>``), the trainer's firing buffers (``trainer.<name>``) and the optimiser's state
    (``optimizer.state[<param name>].<key>``).

    Takes SAELens's ``SAETrainer`` (an ``.sae``) and ``MultiSAETrainer`` (``.trainers``, a dict of
    them; each one's names are prefixed with ``<name>/``), and their subclasses.
    """
    trainers = getattr(trainer, "trainers", None)
    if isinstance(trainers, Mapping):
        for prefix, sub in trainers.items():
            for name, tensor in named_training_tensors(sub):
                yield f"{prefix}/{name}", tensor
    elif isinstance(getattr(trainer, "sae", None), torch.nn.Module):
        yield from _single_trainer_tensors(trainer)
    else:
        raise TypeError(
            f"expected a SAELens SAETrainer (with .sae) or MultiSAETrainer (with .trainers), "
            f"got {type(trainer).__name__}"
        )


def batch_tensors(
    batch: torch.Tensor | Mapping[str, torch.Tensor], name: str = "batch"
) -> Iterator[tuple[str, torch.Tensor]]:
    """An activation batch, named: ``batch`` for a tensor, ``batch[<hook>]`` per hook for a dict."""
    if isinstance(batch, torch.Tensor):
        yield name, batch
    elif isinstance(batch, Mapping):
        for hook, tensor in batch.items():
            if isinstance(tensor, torch.Tensor):
                yield f"{name}[{hook}]", tensor
    else:
        raise TypeError(f"expected a tensor or a dict of hook name to tensor, got {type(batch).__name__}")


def audit_devices(device: torch.device | str, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise :class:`DeviceMismatchError` naming the tensors that are not on ``device``.

    Reads only ``.device``: no data moves and nothing waits on the accelerator.
    """
    expected = _resolved(device)
    wrong = [(name, t.device) for name, t in tensors if _resolved(t.device) != expected]
    if not wrong:
        return
    shown = ", ".join(f"{name} on {where}" for name, where in wrong[:_SHOWN])
    more = f" ({len(wrong) - _SHOWN} more)" if len(wrong) > _SHOWN else ""
    message = (
        f"tensors not on the run's device {device}: {shown}{more}; every SAE parameter, trainer "
        "buffer, optimiser state and activation batch must be on the run's device"
    )
    raise DeviceMismatchError(" ".join(message.splitlines()))


def audit_training_start(
    trainer: Any, first_batch: torch.Tensor | Mapping[str, torch.Tensor], device: torch.device | str
) -> None:
    """Check, before the first step, that the trainer's tensors and the first batch are on ``device``."""
    audit_devices(device, chain(named_training_tensors(trainer), batch_tensors(first_batch)))
