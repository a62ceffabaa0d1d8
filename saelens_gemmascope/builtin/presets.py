"""Built-in plugin: a training preset for every (model, site, layer, width) of Gemma Scope, derived
from the suite manifest and the registered Gemma 2 specs (the tiny models' presets come with them,
from ``gemmascope.demo``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from saelens_gemmascope.hookspecs import hookimpl
from saelens_gemmascope.models.spec import ModelSpec
from saelens_gemmascope.suite.catalog import gemmascope_presets
from saelens_gemmascope.suite.preset import TrainingPreset


@hookimpl
def register_training_presets(
    register: Callable[[TrainingPreset], None], models: Mapping[str, ModelSpec]
) -> None:
    # The registered specs: a plugin that registers a corrected Gemma 2 spec changes the presets too.
    for preset in gemmascope_presets(models):
        register(preset)
