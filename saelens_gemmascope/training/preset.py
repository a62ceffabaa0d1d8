"""A named training preset: what to train and for how long; the recipe supplies everything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainingPreset:
    """One (model, site, layer, width) to train, with its sparsity ladder.

    ``overrides`` holds any field of SAELens's runner config or of the training SAE config that
    differs from the recipe defaults.
    """

    name: str
    model_name: str
    site: str
    layer: int | None
    hook_name: str
    d_in: int
    d_sae: int
    training_tokens: int
    architecture: str = "jumprelu_gemmascope"
    l0_targets: tuple[float, ...] = ()
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
