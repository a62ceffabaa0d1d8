"""The tiny models' presets: every site and layer at two widths, a short ladder, CPU-sized runs
(registered by the ``gemmascope.demo`` plugin, apart from the suite's real presets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saelens_gemmascope.directory.manifest import EMBEDDING
from saelens_gemmascope.directory.scope2_manifest import L0_LABELS
from saelens_gemmascope.models.spec import ModelSpec
from saelens_gemmascope.recipe.transcoder import SKIP_TRANSCODER_ARCHITECTURE
from saelens_gemmascope.suite.catalog import TRANSCODER, build_preset, sort_key
from saelens_gemmascope.suite.preset import GEMMASCOPE2_RECIPE, Scope2Label, TrainingPreset
from saelens_gemmascope.suite.scope2_catalog import scope2_preset_name_site

TINY_WIDTHS: dict[str, int] = {"256": 256, "512": 512}
TINY_TRAINING_STEPS: dict[str, int] = {"256": 200, "512": 400}
#: The embedded default (d_model 128) gets SAEs 4x and 8x as wide, trained for the same steps.
EMBEDDED_WIDTHS: dict[str, int] = {"512": 512, "1024": 1024}
EMBEDDED_TRAINING_STEPS: dict[str, int] = {"512": 300, "1024": 300}
TINY_L0_TARGETS: tuple[float, ...] = (12.0, 24.0, 48.0)
#: The recipe scaled to a 64-wide model and a few hundred steps: batch 256, context 128, short
#: warm-ups, a higher η so that thresholds move within the run, and a sparsity window short
#: enough that the recorded L0 is the end-of-run one.
TINY_OVERRIDES: dict[str, Any] = {
    "context_size": 128,
    "train_batch_size_tokens": 256,
    "n_batches_in_buffer": 8,
    "store_batch_size_prompts": 8,
    "lr": 2e-3,
    "lr_warm_up_steps": 20,
    "n_batches_for_norm_estimate": 8,
    "feature_sampling_window": 40,
    "dead_feature_window": 40,
    "l0_warm_up_steps": 100,
}


def tiny_presets(
    spec: ModelSpec,
    widths: Mapping[str, int] = TINY_WIDTHS,
    steps: Mapping[str, int] = TINY_TRAINING_STEPS,
) -> list[TrainingPreset]:
    """CPU-sized presets for a tiny Gemma 2: every site and layer at two widths, a short ladder."""
    presets = []
    batch = int(TINY_OVERRIDES["train_batch_size_tokens"])
    layered = [(site, layer) for site in ("res", "mlp", "att", TRANSCODER) for layer in range(spec.n_layers)]
    for site, layer in [*layered, (EMBEDDING, None)]:
        for width, d_sae in widths.items():
            tokens = steps[width] * batch
            presets.append(
                build_preset(
                    spec,
                    site,
                    layer,
                    width,
                    d_sae,
                    tokens,
                    TINY_L0_TARGETS,
                    overrides=dict(TINY_OVERRIDES),
                    calibration_tokens=tokens,
                    description=f"tiny model, {steps[width]} steps",
                )
            )
    return sorted(presets, key=sort_key)


#: The tiny Gemma 3's presets (Gemma Scope 2's recipe): one width, the tiny ladder labelled as the
#: release labels its three targets (small, medium, big).
TINY_SCOPE2_WIDTHS: dict[str, int] = {"256": 256}
TINY_SCOPE2_TRAINING_STEPS: dict[str, int] = {"256": 300}
#: Skip transcoders train this many times longer: the affine skip connection takes over the
#: reconstruction early, and their L0 climbs back to the target slowly (measured at layer 2: target
#: 12 reached x0.60 after 300 steps, x0.93 after 600).
TINY_SCOPE2_SKIP_STEPS_FACTOR = 2
TINY_SCOPE2_LABELS: tuple[Scope2Label, ...] = tuple(
    Scope2Label(target, label) for target, label in zip(TINY_L0_TARGETS, L0_LABELS, strict=True)
)
#: Gemma Scope 2's 50,000-step λ warm-up scaled to a 300-step run as Gemma Scope's 10,000 steps are
#: to the tiny Gemma 2 presets' (100 steps). The frequency penalty stays on, scaled to 256 latents:
#: the real ladders ask for L0/width below 1 % (150 of 16,384), where a 10 % cap only touches
#: outliers, while 48 of 256 latents fire on 19 % of tokens on average; at the recipe's cap and
#: μ = 100 every L0 of the tiny ladder ended at 15-18 whatever the target (x0.32-0.39 at 48), and
#: at cap 50 % with μ = 100 the global layer's attention SAE still reached only x0.57 at 48. Cap 50 %
#: and μ = 10 let every SAE site reach its targets (x0.90-1.04 measured).
#: The tiny presets' fixed λ (the real presets use ``suite.scope2_catalog.SCOPE2_L0_COEFFICIENT``):
#: at 300 steps λ from 0.03 to 10 changes FVU at matched L0 by under 5 % and lands every target
#: within x1.03 (``benchmarks/bench_scope2_lambda.py``); the frequency penalty below, relative to
#: λ, was tuned at this value.
TINY_SCOPE2_L0_COEFFICIENT = 1.0
TINY_SCOPE2_OVERRIDES: dict[str, Any] = {
    **TINY_OVERRIDES,
    "l0_warm_up_steps": 100,
    "frequency_cap": 0.5,
    "frequency_penalty": 10.0,
}
#: Sites of the tiny Gemma 3 presets and whether they are affine (skip transcoders: site transcoder
#: with the affine skip connection, named ``skip_transcoder``). Gemma Scope 2 released no embedding
#: SAEs, so none here.
TINY_SCOPE2_SITES: tuple[tuple[str, bool], ...] = (
    ("res", False),
    ("mlp", False),
    ("att", False),
    (TRANSCODER, False),
    (TRANSCODER, True),
)


def tiny_gemmascope2_presets(
    spec: ModelSpec,
    widths: Mapping[str, int] = TINY_SCOPE2_WIDTHS,
    steps: Mapping[str, int] = TINY_SCOPE2_TRAINING_STEPS,
    l0_coefficient: float = TINY_SCOPE2_L0_COEFFICIENT,
) -> list[TrainingPreset]:
    """CPU-sized Gemma Scope 2 presets for a tiny Gemma 3: every site (and skip transcoders) and
    layer, the quadratic L0 penalty around each target of the tiny ladder with the tiny presets' fixed λ,
    no calibration."""
    presets = []
    batch = int(TINY_SCOPE2_OVERRIDES["train_batch_size_tokens"])
    for site, skip in TINY_SCOPE2_SITES:
        name_site = scope2_preset_name_site(site, skip)
        for layer in range(spec.n_layers):
            for width, d_sae in widths.items():
                n_steps = steps[width] * (TINY_SCOPE2_SKIP_STEPS_FACTOR if skip else 1)
                presets.append(
                    build_preset(
                        spec,
                        site,
                        layer,
                        width,
                        d_sae,
                        n_steps * batch,
                        TINY_L0_TARGETS,
                        name_site=name_site,
                        overrides=dict(TINY_SCOPE2_OVERRIDES),
                        recipe=GEMMASCOPE2_RECIPE,
                        l0_coefficient=l0_coefficient,
                        scope2_labels=TINY_SCOPE2_LABELS,
                        description=f"tiny Gemma 3, Gemma Scope 2 recipe, {n_steps} steps",
                        **({"architecture": SKIP_TRANSCODER_ARCHITECTURE} if skip else {}),
                    )
                )
    return sorted(presets, key=sort_key)
