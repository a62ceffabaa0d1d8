"""Estimating the recipe's input scale C, with E‖x/C‖² = 1 (one scalar per site and layer).

A transcoder's paired rows ``[x ; y]`` get two scales from one pass: C_in of the first ``d_in``
columns and C_out of the rest (the meter named ``hook + TARGET_SUFFIX``).

SAELens's ``expected_average_only_in`` targets a mean *norm* of √d_in instead, and its multi-SAE
estimate keeps every batch in memory; this streams and keeps one running sum per hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch


class MeanSquaredNormMeter:
    """Running E‖x‖² over rows of activation batches, summed in float64."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        rows = batch.reshape(-1, batch.shape[-1]).to(torch.float64)
        self.total += rows.pow(2).sum().item()
        self.count += rows.shape[0]

    def input_scale(self) -> float:
        """C = sqrt(E‖x‖²)."""
        if self.count == 0:
            raise ValueError("cannot estimate the input scale from zero activations")
        scale = math.sqrt(self.total / self.count)
        if not math.isfinite(scale) or scale <= 0.0:
            raise ValueError(f"estimated input scale is {scale}; the activations are all zero or not finite")
        return scale


#: The name of a paired hook's target-side meter (C_out), after the hook's own (C_in).
TARGET_SUFFIX = "#target"


def estimate_input_scale(batches: Iterator[torch.Tensor], n_batches: int) -> float:
    """C from the next ``n_batches`` batches of ``batches``."""
    meter = MeanSquaredNormMeter()
    for _ in range(n_batches):
        meter.update(next(batches))
    return meter.input_scale()


def estimate_paired_scales(batches: Iterator[torch.Tensor], n_batches: int, d_in: int) -> tuple[float, float]:
    """(C_in, C_out) of paired ``[x ; y]`` rows, the input being the first ``d_in`` columns."""
    inputs, targets = MeanSquaredNormMeter(), MeanSquaredNormMeter()
    for _ in range(n_batches):
        batch = next(batches)
        inputs.update(batch[..., :d_in])
        targets.update(batch[..., d_in:])
    return inputs.input_scale(), targets.input_scale()


def estimate_input_scales(
    batches: Iterator[Mapping[str, torch.Tensor]],
    hook_names: set[str],
    n_batches: int,
    combine: Callable[[Mapping[str, MeanSquaredNormMeter]], None] | None = None,
    paired_input_widths: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """C for each of ``hook_names`` from the next ``n_batches`` multi-hook batches (one pass).

    A hook in ``paired_input_widths`` (a transcoder's paired hook -> its ``d_in``) gets C_in under its
    own name and C_out under ``hook + TARGET_SUFFIX``.

    ``combine`` merges the meters with other processes' before C is taken (data-parallel training:
    every rank then uses the C of all ranks' activations, as one process on the global stream).
    """
    split = dict(paired_input_widths or {})
    columns = {hook: (hook, slice(None, split.get(hook))) for hook in hook_names}
    columns.update({hook + TARGET_SUFFIX: (hook, slice(d_in, None)) for hook, d_in in split.items()})
    meters = {name: MeanSquaredNormMeter() for name in columns}
    for _ in range(n_batches):
        batch = next(batches)
        for name, meter in meters.items():
            hook, part = columns[name]
            meter.update(batch[hook][..., part])
    if combine is not None:
        combine(meters)
    return {hook: meter.input_scale() for hook, meter in meters.items()}
