"""How many SAEs fit on a device at once, and the passes a suite splits into when they do not.

Per SAE (fp32, Adam): parameters ``2·d_in·d_sae + 2·d_sae + d_in`` floats, as many again for
gradients and twice as many for Adam's two moments, plus the training step's activations:
about ``SAE_ROW_TENSORS`` tensors of ``batch x d_sae`` (pre-activations, JumpReLU output, the
L0 step, their gradients) and ``INPUT_ROW_TENSORS`` of ``batch x d_in`` (input, reconstruction,
error, gradients). Per hook read, the activation stream keeps SAELens's mixing buffer
(``n_batches_in_buffer x context_size`` rows, held twice while it refills). These are estimates
for planning, not measurements; leave headroom.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

SAE_ROW_TENSORS = 6
INPUT_ROW_TENSORS = 4
BUFFER_COPIES = 2

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_bytes(text: str | int) -> int:
    """``"8GiB"``, ``"500MB"``, ``"1.5e9"`` or an int, in bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read a memory size from {text!r} (try 8GiB or 500MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class SaeMemory:
    """Estimated bytes one SAE needs while training."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations


def estimate_sae_memory(d_in: int, d_sae: int, batch_tokens: int, bytes_per_float: int = 4) -> SaeMemory:
    params = (2 * d_in * d_sae + 2 * d_sae + d_in) * bytes_per_float
    step = batch_tokens * (SAE_ROW_TENSORS * d_sae + INPUT_ROW_TENSORS * d_in) * bytes_per_float
    return SaeMemory(parameters=params, gradients=params, optimizer=2 * params, activations=step)


def estimate_stream_memory(d_in: int, buffer_tokens: int, bytes_per_float: int = 4) -> int:
    """Bytes of one hook's activation buffer."""
    return BUFFER_COPIES * buffer_tokens * d_in * bytes_per_float


def device_free_memory(device: str) -> int | None:
    """Free bytes on a CUDA device (``torch.cuda.mem_get_info``); None elsewhere."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


T = TypeVar("T")


@dataclass(frozen=True)
class MemoryItem(Generic[T]):
    """Something to place: its hook (for the shared stream buffer), its d_in and its own bytes."""

    item: T
    hook_name: str
    d_in: int
    bytes: int


@dataclass(frozen=True)
class PlannedPass(Generic[T]):
    items: tuple[T, ...]
    sae_bytes: int
    stream_bytes: int


def plan_passes(
    items: Sequence[MemoryItem[T]], budget: int | None, buffer_tokens: int
) -> list[PlannedPass[T]]:
    """Split ``items`` into as few passes as fit ``budget`` bytes each (None: one pass).

    Items keep their order (callers order them by hook), so SAEs of one hook share a pass and
    its stream buffer where they can. Raises if a single SAE with its buffer does not fit.
    """
    passes: list[PlannedPass[T]] = []
    current: list[MemoryItem[T]] = []

    def cost(chosen: Sequence[MemoryItem[T]]) -> tuple[int, int]:
        hooks: Mapping[str, int] = {m.hook_name: m.d_in for m in chosen}
        return sum(m.bytes for m in chosen), sum(
            estimate_stream_memory(d, buffer_tokens) for d in hooks.values()
        )

    def close() -> None:
        sae_bytes, stream_bytes = cost(current)
        passes.append(PlannedPass(tuple(m.item for m in current), sae_bytes, stream_bytes))

    for entry in items:
        if budget is not None and current and sum(cost([*current, entry])) > budget:
            close()
            current = []
        if budget is not None and not current and sum(cost([entry])) > budget:
            raise MemoryError(
                f"one SAE on {entry.hook_name} needs about {format_bytes(sum(cost([entry])))}, "
                f"more than the budget of {format_bytes(budget)}"
            )
        current.append(entry)
    if current:
        close()
    return passes
