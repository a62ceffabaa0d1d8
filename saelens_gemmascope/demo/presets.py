"""The tiny models' presets: every site and layer at two widths, a short ladder, CPU-sized runs
(registered by the ``gemmascope.demo`` plugin, apart from the suite's real presets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saelens_gemmascope.directory.manifest import EMBEDDING
from saelens_gemmascope.models.spec import ModelSpec
from saelens_gemmascope.suite.catalog import TRANSCODER, build_preset, sort_key
from saelens_gemmascope.suite.preset import TrainingPreset

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
