"""What SAELens's training progress bars show for recipe runs: tokens, tokens/s and ETA.

SAELens's bars count activations with tqdm's default unit ("it"), put every SAE's loss in the
description (unreadable for a ladder of 16) and, for multi-SAE runs, restart at 0 on resume. Its
trainers hand the bar to ``_update_pbar`` every 100 steps; our trainers override that method and
call :func:`update_progress_bar`, so the bar itself, its ETA and its rate stay tqdm's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def _scalar(value: Any) -> float:
    value = value() if callable(value) else value
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def update_progress_bar(
    pbar: Any, *, step: int, samples_done: int, losses: Mapping[str, float], n_saes: int = 1
) -> None:
    """Show ``samples_done`` (tokens) out of the bar's total, tokens/s, ETA and a short loss line."""
    if getattr(pbar, "disable", False):
        return  # a disabled bar (TQDM_DISABLE=1, disable=True) has no display attributes at all
    if pbar.unit != "tok":
        # First update of this bar: count tokens, with k/M/G prefixes, from where a resumed run is.
        pbar.unit = "tok"
        pbar.unit_scale = True
        pbar.initial = pbar.n = min(samples_done, pbar.total or samples_done)
        pbar.last_print_n = pbar.n
    finite = [v for v in losses.values() if math.isfinite(v)]
    mean = sum(finite) / len(finite) if finite else math.nan
    label = "loss" if n_saes == 1 else f"mean loss of {n_saes} SAEs"
    pbar.set_description(f"step {step:,} | {label} {mean:.4g}", refresh=False)
    pbar.update(max(0, samples_done - pbar.n))


def step_losses(output: Any) -> dict[str, float]:
    """The losses of one SAELens ``TrainStepOutput`` as floats (total loss included)."""
    values = {name: _scalar(value) for name, value in output.losses.items()}
    values["loss"] = _scalar(output.loss)
    return values
