"""A named training preset: what to train and for how long; the recipe supplies everything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class PresetNotTrainableError(NotImplementedError):
    """The preset describes a released SAE that this package cannot train yet."""


@dataclass(frozen=True)
class TrainingPreset:
    """One (model, site, layer, width) to train, with its sparsity ladder.

    ``overrides`` holds any field of SAELens's runner config or of the training SAE config that
    differs from the recipe defaults. ``l0_targets`` are the average L0s of the released sparsity
    variants; the λ reaching each one is found by calibration (λs were never published).

    Args:
        width: the release's width name (``16k``), or the exact latent count for other widths.
        release: the Gemma Scope release this preset reproduces, if any.
        output_hook_name: for transcoders, the hook whose activations they reconstruct
            (``hook_name`` is then their input).
        calibration_tokens: length of each calibration probe run (None: the suite's default).
        not_trainable_reason: set when training this preset is not built; training it raises
            :class:`PresetNotTrainableError` with this text.
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
    width: str = ""
    release: str | None = None
    output_hook_name: str | None = None
    calibration_tokens: int | None = None
    not_trainable_reason: str | None = None

    @property
    def trainable(self) -> bool:
        return self.not_trainable_reason is None

    def require_trainable(self) -> None:
        """Raise :class:`PresetNotTrainableError` if training this preset is not built."""
        if self.not_trainable_reason is not None:
            raise PresetNotTrainableError(
                f"preset {self.name!r} cannot be trained: {self.not_trainable_reason}"
            )
