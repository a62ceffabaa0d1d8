"""A named training preset: what to train and for how long; the recipe supplies everything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The training recipes a preset can ask for. Gemma Scope: the linear L0 penalty, one λ per target
#: L0 found by calibration. Gemma Scope 2: the quadratic L0 penalty around each target (so the
#: target itself is the knob, no calibration), one fixed λ, a 50k-step λ warm-up and the frequency
#: penalty (``recipe.config.gemmascope2_sae_config``).
GEMMASCOPE_RECIPE = "gemmascope"
GEMMASCOPE2_RECIPE = "gemmascope2"
RECIPES = (GEMMASCOPE_RECIPE, GEMMASCOPE2_RECIPE)


@dataclass(frozen=True)
class Scope2Label:
    """Where Gemma Scope 2 released an SAE of one target L0: its L0 label (``small``, ``medium``,
    ``big``) in the 4-layer sweep folder (``resid_post``) or, ``all_layers``, the every-layer one
    (``resid_post_all``)."""

    target_l0: float
    l0_label: str
    all_layers: bool = False


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
        recipe: ``gemmascope`` (λ per target by calibration) or ``gemmascope2`` (the quadratic
            penalty around each target with the fixed λ ``l0_coefficient``, never calibrated).
        l0_coefficient: a ``gemmascope2`` preset's λ, the same for every rung of its ladder.
        scope2_labels: a ``gemmascope2`` preset's release folders per target L0 (what its export
            names ``..._l0_small`` etc.); a target may be released in several (sweep and every-layer).
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
    recipe: str = GEMMASCOPE_RECIPE
    l0_coefficient: float | None = None
    scope2_labels: tuple[Scope2Label, ...] = ()

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(
                f"preset {self.name!r}: recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}"
            )
        if self.recipe == GEMMASCOPE2_RECIPE and self.l0_coefficient is None:
            raise ValueError(
                f"preset {self.name!r}: a {GEMMASCOPE2_RECIPE} preset needs its fixed l0_coefficient"
            )

    @property
    def fixed_lambda(self) -> bool:
        """Whether the preset follows Gemma Scope 2's recipe: one fixed λ with the quadratic penalty
        around each target (never calibrated), exported in Gemma Scope 2's layout. The one test of
        "is this a Gemma Scope 2 preset" for planning, calibration, configs and export."""
        return self.recipe == GEMMASCOPE2_RECIPE

    def labels_of(self, target_l0: float) -> tuple[Scope2Label, ...]:
        """The release folders of ``target_l0`` (empty when the preset names none)."""
        return tuple(label for label in self.scope2_labels if label.target_l0 == target_l0)

    @property
    def trainable(self) -> bool:
        return self.not_trainable_reason is None

    def require_trainable(self) -> None:
        """Raise :class:`PresetNotTrainableError` if training this preset is not built."""
        if self.not_trainable_reason is not None:
            raise PresetNotTrainableError(
                f"preset {self.name!r} cannot be trained: {self.not_trainable_reason}"
            )
