"""saelens-gemmascope: the Gemma Scope suite as SAELens plugins.

Importing this package costs next to nothing: it imports neither torch nor SAELens. It registers
the built-in and installed plugins with SAELens (architectures, converters, releases), and the
local releases recorded by earlier processes (:mod:`saelens_gemmascope.directory.local_registry`),
when SAELens is imported: at once if it already is, else right after ``import sae_lens`` has run
(:mod:`saelens_gemmascope.post_import`), so ``import saelens_gemmascope`` followed by any SAELens
use (``SAE.from_pretrained("gemma-scope-2b-pt-res", ...)``) finds everything. The public names
below load their modules on first use.

A plugin that fails to load does not make the SAELens import fail: it warns in one line and
nothing is registered; :func:`load_plugins` (called by the ``gemmascope`` command inside its error
handling, and by any API that needs the plugins) then raises the one-line error naming the plugin.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from saelens_gemmascope._version import __version__

if TYPE_CHECKING:
    from saelens_gemmascope.contributions import Architecture, Converter, Release
    from saelens_gemmascope.hookspecs import PROJECT_NAME, hookimpl
    from saelens_gemmascope.host import (
        PluginClashError,
        PluginError,
        PluginLoadError,
        Registrations,
    )
    from saelens_gemmascope.models.spec import HookPoint, ModelSpec, SiteSpec
    from saelens_gemmascope.suite.preset import TrainingPreset

#: public name -> module that defines it, imported on first access (the host imports the plugin
#: machinery; the records are light, but ``--help`` needs none of them)
_LAZY: dict[str, str] = {
    "Architecture": "contributions",
    "Converter": "contributions",
    "Release": "contributions",
    "PROJECT_NAME": "hookspecs",
    "hookimpl": "hookspecs",
    "PluginClashError": "host",
    "PluginError": "host",
    "PluginLoadError": "host",
    "Registrations": "host",
    "HookPoint": "models.spec",
    "ModelSpec": "models.spec",
    "SiteSpec": "models.spec",
    "TrainingPreset": "suite.preset",
}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class PluginLoadWarning(UserWarning):
    """The plugins could not be applied to SAELens when it was imported; :func:`load_plugins` raises
    the reason."""


def load_plugins() -> Registrations:
    """Load the built-in and installed plugins and apply them to SAELens, once per process (a second
    call returns the same :class:`Registrations`); raises :class:`PluginError` naming a broken plugin.

    SAELens is imported first, so the registration that follows its import (plugins, then the
    recorded local releases) runs before the host, not halfway through the host's own imports.
    """
    import sae_lens  # noqa: F401

    from saelens_gemmascope import host

    return host.load_plugins()


def _register_runtime_release(release: Release, owner: str) -> None:
    import sae_lens  # noqa: F401  (as in load_plugins)

    from saelens_gemmascope import host

    host.register_runtime_release(release, owner)


def _forget_runtime_release(name: str, owner: str) -> None:
    import sae_lens  # noqa: F401  (as in load_plugins)

    from saelens_gemmascope import host

    host.forget_runtime_release(name, owner)


def _register_with_sae_lens() -> None:
    """What SAELens's import brings: the plugins' registrations, then the recorded local releases.

    A broken plugin is one warning line here (the import of SAELens must not fail because of it) and
    nothing is registered (local releases go through the host too); :func:`load_plugins` raises its
    reason where the plugins are needed.
    """
    import warnings

    from saelens_gemmascope import host
    from saelens_gemmascope.hookspecs import PROJECT_NAME

    try:
        host.load_plugins()
    except host.PluginError as err:
        # One line, no source line under it (warn_explicit without a real file to quote).
        warnings.warn_explicit(
            f"no plugin was applied to SAELens: {err}", PluginLoadWarning, filename=PROJECT_NAME, lineno=0
        )
        return
    from saelens_gemmascope.directory.local import register_recorded_releases

    register_recorded_releases()


def _install() -> None:
    from saelens_gemmascope import post_import, registry

    # The layers below the host read the registrations through the registry (no upward import).
    registry.set_plugin_loader(load_plugins, _register_runtime_release, _forget_runtime_release)
    post_import.call_when_imported("sae_lens", _register_with_sae_lens, hold_package=__name__)


_install()
