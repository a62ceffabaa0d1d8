"""Matryoshka prefixes of a training SAE's latents (Gemma Scope 2 mentions Matryoshka training for its SAEs).

With prefix widths ``m_1 < … < m_K = d_sae``, prefix ``k`` reconstructs the target from the first
``m_k`` latents only: ``x̂_k = f[:, :m_k] @ W_dec[:m_k] + b_dec`` (plus a transcoder's skip term). The
training loss's reconstruction term is the mean over the K prefixes of each prefix's MSE (summed over
the output, mean over rows), so the first latents learn to reconstruct on their own and the later
ones refine. Prefixes are a training-time loss only: the saved SAE is the full-width JumpReLU SAE.

Prefix reconstructions are built chunk by chunk (``f[:, m_{k-1}:m_k] @ W_dec[m_{k-1}:m_k]``, summed
cumulatively), so all prefixes below the full width together cost one decoder product of width
``m_{K-1}``, not ``Σ m_k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch


def normalised_widths(widths: Sequence[int] | None, d_sae: int) -> tuple[int, ...] | None:
    """``widths`` checked (strictly increasing, each in (0, d_sae]) as a tuple ending in ``d_sae``
    (added when missing: the full SAE always reconstructs); ``None`` or empty stays ``None`` (off)."""
    if widths is None or len(widths) == 0:
        return None
    if isinstance(widths, str | bytes):
        raise ValueError(f"matryoshka_widths must be a sequence of ints, got {widths!r}")
    values = tuple(widths)
    if any(isinstance(w, bool) or not isinstance(w, int) for w in values):
        raise ValueError(f"matryoshka_widths must be ints, got {list(values)}")
    if any(not 0 < w <= d_sae for w in values):
        raise ValueError(f"every matryoshka width must be in (0, d_sae={d_sae}], got {list(values)}")
    if any(b <= a for a, b in pairwise(values)):
        raise ValueError(f"matryoshka_widths must be strictly increasing, got {list(values)}")
    return values if values[-1] == d_sae else (*values, d_sae)


def partial_decodes(
    feature_acts: torch.Tensor, W_dec: torch.Tensor, widths: Sequence[int]
) -> list[torch.Tensor]:
    """``f[..., :m] @ W_dec[:m]`` (no bias) for every ``m`` in ``widths`` (increasing), cumulatively."""
    decodes: list[torch.Tensor] = []
    start = 0
    for width in widths:
        chunk = feature_acts[..., start:width] @ W_dec[start:width]
        decodes.append(chunk if not decodes else decodes[-1] + chunk)
        start = width
    return decodes
