"""Non-finite values in training: noticed cheaply, reported in one line, never saved or exported.

One NaN activation, or a diverging SAE, makes an SAE's loss non-finite and, after the next
optimiser step, every weight of it. :class:`FiniteGuard` records on the training device, without
a host sync, the first step whose input batch or loss was not finite; the trainers read it (one
sync) every :data:`CHECK_EVERY` steps, before writing each checkpoint and before handing back the
trained SAEs, and stop with :class:`NonFiniteTrainingError` naming the SAEs, their hook and the
step. So no checkpoint with non-finite weights is written, and the last one written stays the one
to resume from.

Why stop rather than drop the bad rows: a non-finite activation comes from the model or the data
(an overflowing dtype, broken weights), which the researcher has to fix; dropping rows would hide
it and change the data stream (exact resume, data-parallel ranks in lockstep).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

#: Steps between two reads of the guard (a host sync each). Checkpoints and the end of training
#: are always checked; this only bounds the steps trained on NaN weights before the run stops.
CHECK_EVERY = 100

#: SAEs named in one message; more are counted.
_NAMES_SHOWN = 4


class NonFiniteTrainingError(ValueError):
    """Training was fed, produced or loaded NaN or infinite values."""


def nonfinite_tensors(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity."""
    return [
        name
        for name, tensor in tensors
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all())
    ]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of an optimiser's state (Adam's moments), named ``optimizer.<key>``."""
    return [
        (f"optimizer.{key}", value)
        for state in optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    ]


class FiniteGuard:
    """The first step whose input batch, and the first whose loss, was not finite; kept on the
    training device (recording is a few tiny kernels, no sync; reading is one sync)."""

    def __init__(self) -> None:
        self._first_bad_input: torch.Tensor | None = None
        self._first_bad_loss: torch.Tensor | None = None

    @torch.no_grad()
    def record(self, step: int, sae_in: torch.Tensor, loss: torch.Tensor) -> None:
        if self._first_bad_input is None or self._first_bad_loss is None:
            self._first_bad_input = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._first_bad_loss = torch.full((), -1, dtype=torch.long, device=loss.device)
        _mark_first(self._first_bad_input, ~torch.isfinite(sae_in).all().to(loss.device), step)
        _mark_first(self._first_bad_loss, ~torch.isfinite(loss.detach()), step)

    def first_bad_steps(self) -> tuple[int | None, int | None]:
        """(first step with a non-finite input, first step with a non-finite loss); None: none yet."""
        if self._first_bad_input is None or self._first_bad_loss is None:
            return None, None
        steps = torch.stack([self._first_bad_input, self._first_bad_loss]).tolist()
        return steps[0] if steps[0] >= 0 else None, steps[1] if steps[1] >= 0 else None


def _mark_first(first: torch.Tensor, bad: torch.Tensor, step: int) -> None:
    first.masked_fill_(bad & (first < 0), step)


@dataclass(frozen=True)
class Fault:
    """What one SAE's guard and weights showed."""

    sae: str
    hook: str
    bad_input_step: int | None = None
    bad_loss_step: int | None = None
    bad_tensors: tuple[str, ...] = ()
    #: Non-finite activations drawn but not yet trained on (what a checkpoint would save with its
    #: stream position, and a resume would train on).
    bad_pending_input: bool = False

    @property
    def found(self) -> bool:
        return (
            self.bad_input_step is not None
            or self.bad_loss_step is not None
            or bool(self.bad_tensors)
            or self.bad_pending_input
        )


def _names(saes: Sequence[str]) -> str:
    shown = ", ".join(saes[:_NAMES_SHOWN])
    more = len(saes) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def describe_faults(faults: Sequence[Fault]) -> str:
    """The causes, one clause each: bad activations per hook and step, then diverged SAEs, then
    SAEs with non-finite tensors and no bad step seen (loaded that way)."""
    by_input: dict[tuple[str, int], list[str]] = {}
    clauses = []
    for fault in faults:
        if fault.bad_input_step is not None:
            by_input.setdefault((fault.hook, fault.bad_input_step), []).append(fault.sae)
    for (hook, step), saes in sorted(by_input.items(), key=lambda item: item[0][1]):
        clauses.append(f"non-finite activations at hook {hook} in step {step} (fed to SAE(s) {_names(saes)})")
    pending: dict[str, list[str]] = {}
    for fault in faults:
        if fault.bad_pending_input and fault.bad_input_step is None:
            pending.setdefault(fault.hook, []).append(fault.sae)
    for hook, saes in pending.items():
        clauses.append(
            f"non-finite activations at hook {hook} drawn for the next steps (SAE(s) {_names(saes)})"
        )
    seen_input = [f for f in faults if f.bad_input_step is not None or f.bad_pending_input]
    diverged = [f for f in faults if f not in seen_input and f.bad_loss_step is not None]
    for fault in diverged:
        clauses.append(
            f"SAE {fault.sae} ({fault.hook}): loss not finite from step {fault.bad_loss_step} "
            "on finite inputs"
        )
    loaded = [f for f in faults if f not in seen_input and f.bad_loss_step is None and f.bad_tensors]
    for fault in loaded:
        clauses.append(f"SAE {fault.sae} ({fault.hook}): non-finite {', '.join(fault.bad_tensors)}")
    return "; ".join(clauses)


def training_stopped_message(faults: Sequence[Fault], step: int, last_checkpoint: str | None) -> str:
    """The one-line error of a run stopped by non-finite values at ``step``."""
    kept = (
        f"the last checkpoint, {last_checkpoint}, is complete and untouched: fix the cause, then --resume"
        if last_checkpoint is not None
        else "no checkpoint was written"
    )
    causes = describe_faults(faults)
    return f"training stopped at step {step} (nothing of it saved or exported): {causes}; {kept}"


def pending_input_faults(
    pool: Mapping[str, torch.Tensor], saes_by_hook: Mapping[str, Sequence[str]]
) -> list[Fault]:
    """Faults for the hooks whose drawn, not yet trained on, activations hold a NaN or an infinity."""
    return [
        Fault(sae, hook, bad_pending_input=True)
        for hook in nonfinite_tensors(pool.items())
        for sae in saes_by_hook.get(hook, ())
    ]
