"""The plugin host: find plugins, collect what they register, then apply it to SAELens.

Collecting and applying are separate steps so that every clash (two plugins, or a plugin and
SAELens itself, claiming one name) is found before any SAELens registry changes.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from saelens_gemmascope import hookspecs
from saelens_gemmascope.builtin import BUILTIN_PLUGINS
from saelens_gemmascope.contributions import Architecture, Converter, Release
from saelens_gemmascope.hookspecs import PROJECT_NAME
from saelens_gemmascope.models.spec import ModelSpec
from saelens_gemmascope.suite.preset import TrainingPreset

#: Comma-separated plugin names to block; the word ``external`` blocks every entry-point plugin.
DISABLE_ENV_VAR = "SAELENS_GEMMASCOPE_DISABLE_PLUGINS"
ENTRY_POINT_GROUP = PROJECT_NAME

#: hook name -> (kind, the type its ``register`` callback accepts)
KINDS: dict[str, tuple[str, type[Any]]] = {
    "register_sae_architectures": ("architectures", Architecture),
    "register_models": ("models", ModelSpec),
    "register_pretrained_saes": ("releases", Release),
    "register_training_presets": ("presets", TrainingPreset),
}


class PluginError(Exception):
    """Base class for plugin problems."""


class PluginLoadError(PluginError):
    """A plugin failed to import, register, or run one of its hooks."""


class PluginClashError(PluginError):
    """Two plugins (or a plugin and SAELens) registered the same name."""


@dataclass(frozen=True)
class PluginInfo:
    """Who a plugin is: for error messages and ``gemmascope plugins``."""

    name: str
    source: str  # "builtin", "entry point" or "in-process"
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None

    def describe(self) -> str:
        if self.source == "entry point":
            return (
                f"plugin {self.name!r} (entry point {self.entry_point!r} of distribution "
                f"{self.distribution} {self.version})"
            )
        return f"plugin {self.name!r} ({self.source})"


@dataclass
class Registrations:
    """Everything the loaded plugins registered, by kind, and who registered what."""

    architectures: dict[str, Architecture] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    releases: dict[str, Release] = field(default_factory=dict)
    presets: dict[str, TrainingPreset] = field(default_factory=dict)
    converters: dict[str, Converter] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    hooks: dict[str, list[str]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> dict[str, Any]:
        return getattr(self, kind)  # type: ignore[no-any-return]

    def counts(self, plugin: str) -> dict[str, int]:
        counts = dict.fromkeys(("architectures", "models", "releases", "presets"), 0)
        for (kind, _), owner in self.owners.items():
            if owner == plugin and kind in counts:
                counts[kind] += 1
        return counts


def disabled_plugins(value: str | None = None) -> set[str]:
    """Plugin names blocked by :data:`DISABLE_ENV_VAR` (or by ``value``)."""
    raw = os.environ.get(DISABLE_ENV_VAR, "") if value is None else value
    return {part.strip() for part in raw.split(",") if part.strip()}


class PluginHost:
    """One pluggy plugin manager plus the bookkeeping to attribute every registration."""

    def __init__(self, disabled: Iterable[str] | None = None) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = disabled_plugins() if disabled is None else set(disabled)
        self.infos: dict[str, PluginInfo] = {}

    # -- finding plugins -------------------------------------------------------------------------

    def add_builtins(self) -> None:
        for name, module_path in BUILTIN_PLUGINS.items():
            if name in self.disabled:
                continue
            module = importlib.import_module(module_path)
            self.add(module, PluginInfo(name=name, source="builtin", version=_own_version()))

    def add_entry_points(self) -> None:
        if "external" in self.disabled:
            return
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            if ep.name in self.disabled or (dist_name is not None and dist_name in self.disabled):
                continue
            info = PluginInfo(
                name=ep.name,
                source="entry point",
                distribution=dist_name,
                version=dist.version if dist is not None else None,
                entry_point=f"{ep.name} = {ep.value}",
            )
            try:
                plugin = ep.load()
            except Exception as err:
                raise PluginLoadError(
                    f"{info.describe()} failed to load: {type(err).__name__}: {err}. "
                    f"Set {DISABLE_ENV_VAR}={ep.name} to skip it."
                ) from err
            self.add(plugin, info)

    def add(self, plugin: object, info: PluginInfo | str) -> None:
        """Register one plugin object (a module or an instance with hook implementations)."""
        if isinstance(info, str):
            info = PluginInfo(name=info, source="in-process")
        if info.name in self.infos:
            raise PluginClashError(
                f"Two plugins are named {info.name!r}: {self.infos[info.name].describe()} and "
                f"{info.describe()}"
            )
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as err:
            raise PluginLoadError(f"{info.describe()} could not be registered: {err}") from err
        self.infos[info.name] = info

    # -- collecting ------------------------------------------------------------------------------

    def collect(self) -> Registrations:
        """Call every hook of every plugin and gather the results; raise on any clash."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as err:
            plugin_name = self.pm.get_name(err.plugin) or "?"
            info = self.infos.get(plugin_name, PluginInfo(plugin_name, "unknown"))
            raise PluginLoadError(
                f"{info.describe()} implements a hook that does not exist: {err}. "
                f"Known hooks: {', '.join(KINDS)}"
            ) from err
        found = Registrations(plugins=dict(self.infos))
        for hook_name, (kind, expected_type) in KINDS.items():
            caller = getattr(self.pm.hook, hook_name)
            # Each implementation is called on its own so every registration knows its plugin.
            for impl in reversed(caller.get_hookimpls()):
                found.hooks.setdefault(impl.plugin_name, []).append(hook_name)
                register = self._recorder(found, kind, expected_type, impl.plugin_name)
                try:
                    impl.function(
                        **{arg: register if arg == "register" else found.models for arg in impl.argnames}
                    )
                except PluginError:
                    raise
                except Exception as err:
                    raise PluginLoadError(
                        f"{self.infos[impl.plugin_name].describe()} raised in {hook_name}: "
                        f"{type(err).__name__}: {err}"
                    ) from err
        self._check_release_converters(found)
        return found

    def _recorder(
        self, found: Registrations, kind: str, expected_type: type[Any], plugin_name: str
    ) -> Callable[[Any], None]:
        def register(item: Any) -> None:
            if not isinstance(item, expected_type):
                raise TypeError(
                    f"{self.infos[plugin_name].describe()} passed {type(item).__name__} to register "
                    f"{kind}; expected {expected_type.__name__}"
                )
            self._claim(found, kind, item.name, item, plugin_name)
            if isinstance(item, Release) and item.converter is not None:
                self._claim(found, "converters", item.converter.name, item.converter, plugin_name)

        return register

    def _claim(self, found: Registrations, kind: str, name: str, item: Any, plugin_name: str) -> None:
        table = found.of_kind(kind)
        owner = found.owners.get((kind, name))
        if owner is not None:
            # One converter object shared by many releases of one plugin is not a clash.
            if kind == "converters" and owner == plugin_name and table[name] == item:
                return
            raise PluginClashError(
                f"{_singular(kind)} {name!r} is registered twice: by "
                f"{self.infos[owner].describe()} and by {self.infos[plugin_name].describe()}. "
                f"Uninstall one, or block it with {DISABLE_ENV_VAR}=<plugin name>."
            )
        table[name] = item
        found.owners[(kind, name)] = plugin_name

    def _check_release_converters(self, found: Registrations) -> None:
        from saelens_gemmascope.compat import registered_converter

        for name, release in found.releases.items():
            wanted = release.lookup.conversion_func or "sae_lens"
            if release.converter is not None and release.converter.name != wanted:
                raise PluginLoadError(
                    f"release {name!r} of {self._owner_text(found, 'releases', name)} ships converter "
                    f"{release.converter.name!r} but its conversion_func says {wanted!r}"
                )
            if wanted not in found.converters and registered_converter(wanted) is None:
                raise PluginLoadError(
                    f"release {name!r} of {self._owner_text(found, 'releases', name)} needs converter "
                    f"{wanted!r}, which neither SAELens nor any loaded plugin provides"
                )

    def _owner_text(self, found: Registrations, kind: str, name: str) -> str:
        return self.infos[found.owners[(kind, name)]].describe()


# -- applying to SAELens -------------------------------------------------------------------------


def check_against_sae_lens(found: Registrations) -> None:
    """Raise if a registration would overwrite something SAELens itself (or another host) owns.

    Releases are the exception: serving SAELens's own release names with this package's converter
    is the point of the built-in directory plugin, so a release replaces SAELens's entry.
    """
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    from saelens_gemmascope.compat import registered_converter

    for name, arch in found.architectures.items():
        owner = found.plugins[found.owners[("architectures", name)]].describe()
        existing = SAE_CLASS_REGISTRY.get(name)
        if existing is not None and existing != (arch.sae_class, arch.config_class):
            raise PluginClashError(
                f"architecture {name!r} from {owner} is already registered in SAELens "
                f"(as {existing[0].__module__}.{existing[0].__qualname__}); choose another name"
            )
        training = SAE_TRAINING_CLASS_REGISTRY.get(name)
        if (
            arch.training_class is not None
            and training is not None
            and training != (arch.training_class, arch.training_config_class)
        ):
            raise PluginClashError(
                f"training architecture {name!r} from {owner} is already registered in SAELens "
                f"(as {training[0].__module__}.{training[0].__qualname__}); choose another name"
            )
    for name, converter in found.converters.items():
        existing_loader = registered_converter(name)
        if existing_loader is not None and existing_loader is not converter.loader:
            owner = found.plugins[found.owners[("converters", name)]].describe()
            raise PluginClashError(
                f"converter {name!r} from {owner} clashes with SAELens's converter of that name"
            )


def apply_to_sae_lens(found: Registrations) -> None:
    """Put the collected registrations into SAELens's registries (checked first, then applied)."""
    check_against_sae_lens(found)

    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    for name, arch in found.architectures.items():
        if name not in SAE_CLASS_REGISTRY:
            register_sae_class(name, arch.sae_class, arch.config_class)
        if arch.training_class is not None and name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, arch.training_class, arch.training_config_class)  # type: ignore[arg-type]
    from saelens_gemmascope.compat import add_release, register_converter

    for name, converter in found.converters.items():
        register_converter(name, converter.loader, converter.config_getter)
    # Parsing SAELens's directory costs about a second, so only pay it when there are releases.
    for name, release in found.releases.items():
        add_release(name, release.lookup)


# -- the process-wide state ----------------------------------------------------------------------

_LOADED: Registrations | None = None


def load_plugins() -> Registrations:
    """Load built-in and installed plugins and apply them to SAELens, once per process.

    A second call returns the same :class:`Registrations` and changes nothing.
    """
    global _LOADED
    # SAELens's import runs the package's own registration (``post_import``), which calls this
    # function: import it first, so that happens before this load, not in the middle of it.
    import sae_lens  # noqa: F401

    if _LOADED is None:
        host = PluginHost()
        host.add_builtins()
        host.add_entry_points()
        found = host.collect()
        apply_to_sae_lens(found)
        _LOADED = found
    return _LOADED


def register_runtime_release(release: Release, owner: str, found: Registrations | None = None) -> None:
    """Register one release after the plugins loaded (a local folder, a suite's export), through
    the same clash checks: a name another plugin owns is refused; ``owner`` may re-register its own.

    ``found`` is the registrations to add it to: the process's (:func:`load_plugins`) unless given
    (a test's own host).
    """
    found = found if found is not None else load_plugins()
    if owner not in found.plugins:
        found.plugins[owner] = PluginInfo(name=owner, source="in-process")
    current = found.owners.get(("releases", release.name))
    if current is not None and current != owner:
        raise PluginClashError(
            f"release {release.name!r} is registered twice: by {found.plugins[current].describe()} and by "
            f"{found.plugins[owner].describe()}"
        )
    single = Registrations(plugins=found.plugins)
    single.releases[release.name] = release
    single.owners[("releases", release.name)] = owner
    if release.converter is not None:
        single.converters[release.converter.name] = release.converter
        single.owners[("converters", release.converter.name)] = owner
    apply_to_sae_lens(single)
    found.releases[release.name] = release
    found.owners[("releases", release.name)] = owner
    if release.converter is not None:
        found.converters.setdefault(release.converter.name, release.converter)
        found.owners.setdefault(("converters", release.converter.name), owner)


def forget_runtime_release(name: str, owner: str) -> None:
    """Take a release that ``owner`` registered at run time out of SAELens's directory and out of
    the process's registrations (a release another plugin owns is left alone)."""
    from saelens_gemmascope.compat import remove_release

    found = load_plugins()
    if found.owners.get(("releases", name)) != owner:
        return
    remove_release(name)
    del found.releases[name]
    del found.owners[("releases", name)]


def _own_version() -> str:
    from saelens_gemmascope._version import __version__

    return __version__


def _singular(kind: str) -> str:
    return {"presets": "preset", "converters": "converter"}.get(kind, kind.rstrip("s"))
