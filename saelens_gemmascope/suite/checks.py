"""Checks that run before any training starts, each failing with the numbers to change.

* :func:`check_input_width` / :func:`check_hook_widths`: an SAE's ``d_in`` must be its hook's width
  (SAELens would fail at the first matrix product with two bare shapes).
* :func:`check_disk_space`: a cached-activations run must fit on disk before it writes anything.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saelens_gemmascope.suite.memory import format_bytes
from saelens_gemmascope.suite.preset import TrainingPreset


class InputWidthError(ValueError):
    """An SAE's ``d_in`` differs from the width of the hook it reads."""


class InsufficientDiskSpaceError(OSError):
    """The activation cache would not fit in the free space of its folder."""


def check_input_width(preset: TrainingPreset, d_in: Any) -> None:
    """An overridden ``d_in`` must equal the preset's (its hook's) width."""
    if d_in is not None and int(d_in) != preset.d_in:
        raise InputWidthError(
            f"d_in={d_in} does not match {preset.hook_name} of {preset.model_name}, whose activations are "
            f"{preset.d_in} wide (preset {preset.name!r}); drop the d_in override (d_sae sets the SAE's width)"
        )


def _activation_width(activation: torch.Tensor) -> int:
    # SAELens flattens everything after (batch, position): attention's hook_z becomes n_heads·d_head.
    return math.prod(activation.shape[2:])


@torch.no_grad()
def check_hook_widths(model: Any, expected: Mapping[str, int]) -> None:
    """Run ``model`` on two tokens and compare each hook's width with the SAEs' ``d_in``.

    Catches a preset or plugin whose width is wrong for the model actually loaded (a model of
    another size under the same name, a wrong site table), before the first training step.
    """
    hooks = sorted(expected)
    device = next(model.parameters()).device
    tokens = torch.zeros((1, 2), dtype=torch.long, device=device)
    _, cache = model.run_with_cache(tokens, names_filter=hooks)
    missing = [h for h in hooks if h not in cache]
    if missing:
        raise InputWidthError(f"the model has no hook(s) {missing}; check the presets' hook names")
    wrong = {h: _activation_width(cache[h]) for h in hooks if _activation_width(cache[h]) != expected[h]}
    if wrong:
        details = "; ".join(f"{h}: activations {w} wide, SAE d_in {expected[h]}" for h, w in wrong.items())
        raise InputWidthError(f"SAE input widths do not match the model's hooks ({details})")


@dataclass(frozen=True)
class CacheEstimate:
    """Disk bytes an activation cache needs, hook by hook."""

    folder: Path
    bytes_by_hook: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.bytes_by_hook.values())


def cache_bytes(n_tokens: int, d_in: int) -> int:
    """Bytes of ``n_tokens`` cached fp32 activations of width ``d_in`` plus their int32 token ids."""
    return n_tokens * (d_in * 4 + 4)


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_disk_space(estimate: CacheEstimate, margin: float = 1.05) -> None:
    """Raise :class:`InsufficientDiskSpaceError` unless ``estimate`` fits (with a 5% margin)."""
    if not estimate.bytes_by_hook:
        return
    free = free_bytes(estimate.folder)
    if estimate.total * margin <= free:
        return
    per_hook = ", ".join(f"{h} {format_bytes(b)}" for h, b in estimate.bytes_by_hook.items())
    raise InsufficientDiskSpaceError(
        f"caching activations needs about {format_bytes(estimate.total)} under {estimate.folder} "
        f"({per_hook}; fp32 activations and int32 token ids), but only {format_bytes(free)} are free. "
        "Free some space, choose another --output, lower training_tokens, or train without "
        "--cached-activations (activations computed on the fly need no disk)"
    )
