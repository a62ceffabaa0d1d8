"""saelens-gemmascope: the Gemma Scope suite as SAELens plugins.

Importing this package loads the built-in and installed plugins and registers them with SAELens
(architectures, converters, releases); nothing else happens at import.
"""

from __future__ import annotations

__version__ = "0.1.0"

from saelens_gemmascope.contributions import Architecture, Converter, Release
from saelens_gemmascope.hookspecs import PROJECT_NAME, hookimpl
from saelens_gemmascope.host import (
    PluginClashError,
    PluginError,
    PluginLoadError,
    Registrations,
    load_plugins,
)
from saelens_gemmascope.models.spec import HookPoint, ModelSpec, SiteSpec
from saelens_gemmascope.training.preset import TrainingPreset

__all__ = [
    "PROJECT_NAME",
    "Architecture",
    "Converter",
    "HookPoint",
    "ModelSpec",
    "PluginClashError",
    "PluginError",
    "PluginLoadError",
    "Registrations",
    "Release",
    "SiteSpec",
    "TrainingPreset",
    "__version__",
    "hookimpl",
    "load_plugins",
]

load_plugins()
