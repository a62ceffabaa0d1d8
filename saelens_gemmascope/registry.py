"""What the loaded plugins registered, for every layer below the plugin host to read.

Why a module of its own: the converter, presets, attach, evaluation and the suite need the
registered models, presets and releases, but the host that loads the plugins sits above them
(it imports the built-in plugins, which import those layers). So the host hands this module the
function that loads the plugins (:func:`set_plugin_loader`, called by the package's ``__init__``,
which every submodule import runs first), and the layers below read through it: no upward import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saelens_gemmascope.contributions import Release
    from saelens_gemmascope.models.spec import ModelSpec
    from saelens_gemmascope.suite.preset import TrainingPreset

_plugin_loader: Callable[[], Any] | None = None
_release_registrar: Callable[[Release, str], None] | None = None
_release_forgetter: Callable[[str, str], None] | None = None


def set_plugin_loader(
    load: Callable[[], Any],
    register_release: Callable[[Release, str], None],
    forget_release: Callable[[str, str], None] | None = None,
) -> None:
    """Install the host's ``load_plugins`` and its run-time release registration and removal (done
    once, by the package's ``__init__``)."""
    global _plugin_loader, _release_registrar, _release_forgetter
    _plugin_loader = load
    _release_registrar = register_release
    _release_forgetter = forget_release


def registrations() -> Any:
    """The host's :class:`~saelens_gemmascope.host.Registrations` (plugins load on first call)."""
    if _plugin_loader is None:
        raise RuntimeError("the plugin host is not installed; import saelens_gemmascope first")
    return _plugin_loader()


def registered_models() -> dict[str, ModelSpec]:
    """Every model the loaded plugins registered, by name."""
    return registrations().models  # type: ignore[no-any-return]


def registered_presets() -> dict[str, TrainingPreset]:
    """Every training preset the loaded plugins registered, by name."""
    return registrations().presets  # type: ignore[no-any-return]


def registered_releases() -> dict[str, Release]:
    """Every pretrained-SAE release the loaded plugins (and local folders) registered, by name."""
    return registrations().releases  # type: ignore[no-any-return]


def register_release(release: Release, owner: str) -> None:
    """Register a release at run time (a local folder, a suite's export) through the host's clash
    checks, as ``owner`` (a plugin name shown in errors)."""
    if _release_registrar is None:
        raise RuntimeError("the plugin host is not installed; import saelens_gemmascope first")
    _release_registrar(release, owner)


def forget_release(name: str, owner: str) -> None:
    """Take back a release ``owner`` registered at run time (SAELens's directory and the host's
    registrations); a release another plugin owns is left alone."""
    if _release_forgetter is None:
        raise RuntimeError("the plugin host is not installed; import saelens_gemmascope first")
    _release_forgetter(name, owner)
