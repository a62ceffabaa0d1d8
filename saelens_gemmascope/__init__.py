"""saelens-gemmascope: the Gemma Scope suite as SAELens plugins.

Importing this package loads the built-in and installed plugins and registers them with SAELens
(architectures, converters, releases), and registers the local releases recorded by earlier
processes (:mod:`saelens_gemmascope.directory.local_registry`); nothing else happens at import.

A plugin that fails to load does not make the import fail: the import warns in one line and
nothing is registered; :func:`load_plugins` (called by the ``gemmascope`` command inside its error
handling, and by any API that needs the plugins) then raises the one-line error naming the plugin.
"""

from __future__ import annotations

from saelens_gemmascope._version import __version__
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
from saelens_gemmascope.suite.preset import TrainingPreset

__all__ = [
    "PROJECT_NAME",
    "Architecture",
    "Converter",
    "HookPoint",
    "ModelSpec",
    "PluginClashError",
    "PluginError",
    "PluginLoadError",
    "PluginLoadWarning",
    "Registrations",
    "Release",
    "SiteSpec",
    "TrainingPreset",
    "__version__",
    "hookimpl",
    "load_plugins",
]


class PluginLoadWarning(UserWarning):
    """The plugins could not be loaded at import; :func:`load_plugins` raises the reason."""


def _install_registry() -> None:
    from saelens_gemmascope import registry
    from saelens_gemmascope.host import register_runtime_release

    registry.set_plugin_loader(load_plugins, register_runtime_release)


def _load_at_import() -> None:
    import warnings

    try:
        load_plugins()
    except PluginError as err:
        # One line, no source line under it (warn_explicit without a real file to quote).
        warnings.warn_explicit(
            f"no plugin was applied to SAELens: {err}", PluginLoadWarning, filename=PROJECT_NAME, lineno=0
        )
    from saelens_gemmascope.directory.local import register_recorded_releases

    register_recorded_releases()


_install_registry()
_load_at_import()
