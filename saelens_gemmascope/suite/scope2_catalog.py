"""Training presets for Gemma Scope 2, derived from its manifest (``configs/gemma_scope_2_suite.yaml``).

One preset per (model, site, layer, width) of the released SAEs and transcoders, and one per
(model, layer, width) of the affine skip transcoders: ``gemma-3-1b-pt/res/layer_13/width_16k``,
``gemma-3-1b-pt/transcoder/layer_13/width_16k`` and ``gemma-3-1b-pt/skip_transcoder/layer_13/width_16k``
(site ``transcoder``, architecture ``jumprelu_gemmascope_skip_transcoder``). Model names are the
registered Gemma 3 specs' (TransformerLens's), found through the manifest's hub ids as aliases.

* **Ladder**: the 4-layer sweep releases (``res``) and the every-layer ones (``res-all``) are merged:
  a layer's ladder is the distinct target L0s of its released labels at that width (1b layer 13,
  16k: small 20 in both, medium 60, big 150 in the sweep and big 120 in ``res-all``: 20, 60, 120, 150).
  :class:`~saelens_gemmascope.suite.preset.Scope2Label` records where each target was released,
  so the export names its folders as the release does (``resid_post/..._l0_small`` and
  ``resid_post_all/..._l0_small`` for the same SAE). The second seed of the 262k medium SAEs is the
  same target and adds no rung.
* **Recipe**: Gemma Scope 2's (``recipe: gemmascope2``): the quadratic L0 penalty around each target,
  so no calibration; one fixed λ, :data:`SCOPE2_L0_COEFFICIENT`; λ warmed up over 50,000 steps and the
  frequency penalty on (``recipe.config.gemmascope2_sae_config``).
* **Token budgets**: Gemma Scope 2 publishes none per width; we use Gemma Scope's per-width budgets
  (:data:`SCOPE2_TRAINING_TOKENS`: 4B at 16k, 8B at 65k and 262k, 16B at 1m).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from saelens_gemmascope.directory.scope2_manifest import Scope2Manifest, load_scope2_manifest
from saelens_gemmascope.models.lookup import find_model_spec
from saelens_gemmascope.models.spec import ModelSpec, UnknownNameError
from saelens_gemmascope.recipe.transcoder import SKIP_TRANSCODER_ARCHITECTURE
from saelens_gemmascope.suite.catalog import SKIP_TRANSCODER, build_preset, sort_key
from saelens_gemmascope.suite.preset import GEMMASCOPE2_RECIPE, Scope2Label, TrainingPreset

#: The fixed λ of every Gemma Scope 2 preset: our choice (the paper publishes none). With the
#: quadratic penalty λ sets how tightly each token's L0 is held to the target, not where the mean
#: lands, and a large λ squeezes every token towards L0*: on the tiny Gemma 3 at 10,000 steps
#: (``benchmarks/bench_scope2_lambda.py``, frequency penalty off) λ = 1 gave 10-19 % higher FVU at
#: matched L0 than λ = 0.03 (per-token L0 std 1.2-1.5 against 1.9-2.3), and λ = 0.03 landed within
#: x1.03 of its targets at 300, 3,000 and 10,000 steps. (The tiny presets keep λ = 1: at 300 steps λ
#: changes nothing measurable, and their frequency penalty was tuned there.)
SCOPE2_L0_COEFFICIENT = 0.03

#: Training tokens per width: Gemma Scope's budgets (Gemma Scope 2 gives none per width).
SCOPE2_TRAINING_TOKENS: dict[str, int] = {
    "16k": 4_000_000_000,
    "65k": 8_000_000_000,
    "262k": 8_000_000_000,
    "1m": 16_000_000_000,
}


@dataclass
class _Ladder:
    """What the manifest says about one preset: its latent count and the labels of its targets."""

    d_sae: int
    releases: set[str] = field(default_factory=set)
    labels: set[Scope2Label] = field(default_factory=set)


def _ladders(manifest: Scope2Manifest) -> dict[tuple[str, str, int, str, bool], _Ladder]:
    """(model, site, layer, width, affine) -> its ladder, over every release of the manifest."""
    ladders: dict[tuple[str, str, int, str, bool], _Ladder] = {}
    for sae in manifest.saes():
        key = (sae.model, sae.site, sae.layer, sae.width, sae.affine)
        ladder = ladders.setdefault(key, _Ladder(sae.d_sae))
        ladder.releases.add(sae.release)
        ladder.labels.add(Scope2Label(float(sae.l0), sae.l0_label, sae.every_layer))
    return ladders


def scope2_preset_name_site(site: str, affine: bool) -> str:
    """The site segment of a preset's name: ``skip_transcoder`` for affine transcoders."""
    return SKIP_TRANSCODER if affine else site


def gemmascope2_presets(
    specs: Mapping[str, ModelSpec], manifest: Scope2Manifest | None = None
) -> list[TrainingPreset]:
    """One Gemma Scope 2 preset per (model, site, layer, width, affine) of the manifest whose model
    has a registered spec (a model without one is left out: its hooks and widths are unknown)."""
    manifest = manifest or load_scope2_manifest()
    found: dict[str, ModelSpec | None] = {}
    presets = []
    for (model, site, layer, width, affine), ladder in _ladders(manifest).items():
        if model not in found:
            try:
                found[model] = find_model_spec(specs, model)
            except UnknownNameError:
                found[model] = None
        spec = found[model]
        if spec is None:
            continue
        labels = tuple(sorted(ladder.labels, key=lambda x: (x.target_l0, x.all_layers, x.l0_label)))
        extra = {"architecture": SKIP_TRANSCODER_ARCHITECTURE} if affine else {}
        releases = sorted(ladder.releases)
        presets.append(
            build_preset(
                spec,
                site,
                layer,
                width,
                ladder.d_sae,
                SCOPE2_TRAINING_TOKENS[width],
                {label.target_l0 for label in labels},
                name_site=scope2_preset_name_site(site, affine),
                recipe=GEMMASCOPE2_RECIPE,
                l0_coefficient=SCOPE2_L0_COEFFICIENT,
                scope2_labels=labels,
                description=f"Gemma Scope 2 {width}{' affine' if affine else ''} ({', '.join(releases)})",
                **extra,
            )
        )
    return sorted(presets, key=sort_key)
