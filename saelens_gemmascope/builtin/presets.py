"""Built-in plugin: a training preset for every (model, site, layer, width) of Gemma Scope and of
Gemma Scope 2, derived from the two suite manifests and the registered Gemma 2 and Gemma 3 specs (the
tiny models' presets come with them, from ``gemmascope.demo``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from saelens_gemmascope.hookspecs import hookimpl
from saelens_gemmascope.models.spec import ModelSpec
from saelens_gemmascope.suite.catalog import gemmascope_presets
from saelens_gemmascope.suite.preset import TrainingPreset
from saelens_gemmascope.suite.scope2_catalog import gemmascope2_presets


@hookimpl
def register_training_presets(
    register: Callable[[TrainingPreset], None], models: Mapping[str, ModelSpec]
) -> None:
    # The registered specs: a plugin that registers a corrected Gemma 2 or 3 spec changes the presets too.
    for preset in gemmascope_presets(models):
        register(preset)
    # Gemma Scope 2 (Gemma 3): the quadratic L0 penalty around each released target, no calibration.
    for preset in gemmascope2_presets(models):
        register(preset)
