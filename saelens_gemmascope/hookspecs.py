"""The four hook specifications every plugin (built-in or third-party) implements.

Callback style: each hook receives a ``register`` callable and calls it once per contribution.
The host collects everything first and applies it to SAELens second, so a clash between two
plugins is found before SAELens's registries change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from saelens_gemmascope.contributions import Architecture, Release
    from saelens_gemmascope.models.spec import ModelSpec
    from saelens_gemmascope.suite.preset import TrainingPreset

#: One name for everything: hook markers, the entry-point group and the plugin manager.
PROJECT_NAME = "saelens_gemmascope"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_sae_architectures(register: Callable[[Architecture], None]) -> None:
    """Register SAE architectures (inference class and optionally a training class)."""


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register language models: their dimensions and their site -> hook-point mapping."""


@hookspec
def register_pretrained_saes(register: Callable[[Release], None]) -> None:
    """Register pretrained-SAE releases in SAELens's directory shape, with their converter."""


@hookspec
def register_training_presets(
    register: Callable[[TrainingPreset], None], models: Mapping[str, ModelSpec]
) -> None:
    """Register named training presets. ``models`` holds every model the plugins registered (the
    host collects models first), so a preset takes its hooks and widths from the registered spec;
    an implementation that does not need it leaves the argument out."""
