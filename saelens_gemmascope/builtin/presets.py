"""Built-in plugin: a training preset for every (model, site, layer, width) of Gemma Scope, derived
from the suite manifest, plus CPU-sized presets for the tiny Gemma 2 models (the random test model and the embedded default)."""

from __future__ import annotations

from collections.abc import Callable

from saelens_gemmascope.hookspecs import hookimpl
from saelens_gemmascope.models.gemma2 import gemma2_model_specs
from saelens_gemmascope.models.pretrained_tiny import pretrained_tiny_gemma2_spec
from saelens_gemmascope.models.tiny import tiny_gemma2_spec
from saelens_gemmascope.training.preset import TrainingPreset
from saelens_gemmascope.training.presets import (
    EMBEDDED_TRAINING_STEPS,
    EMBEDDED_WIDTHS,
    gemmascope_presets,
    tiny_presets,
)


@hookimpl
def register_training_presets(register: Callable[[TrainingPreset], None]) -> None:
    # The specs come from the same functions the models plugin registers (calling the host here
    # would re-enter it while it is still collecting).
    specs = {spec.name: spec for spec in gemma2_model_specs()}
    for preset in gemmascope_presets(specs):
        register(preset)
    for preset in tiny_presets(tiny_gemma2_spec()):
        register(preset)
    for preset in tiny_presets(pretrained_tiny_gemma2_spec(), EMBEDDED_WIDTHS, EMBEDDED_TRAINING_STEPS):
        register(preset)
