"""Serve a folder of Gemma Scope-layout exports through ``SAE.from_pretrained``.

``register_local_release(root)`` registers one release whose ``repo_id`` is the folder and whose
converter, ``gemmascope_local``, reads ``release.json`` and each SAE's ``params.npz`` (Gemma Scope
layout) or ``params.safetensors`` (Gemma Scope 2 layout, :mod:`.scope2_layout`) from disk, and records
the name in the persistent registry (:mod:`.local_registry`), from which importing the package
registers it again in later processes. The release goes through the plugin host's checks like any
plugin's (:func:`saelens_gemmascope.registry.register_release`, as the plugin ``gemmascope.local``):
a name another plugin registered is refused, naming both.

An exported SAE whose model is registered (by a plugin) is checked against that model's spec when
it loads: its site, layer and width must be the spec's, and a missing hook name is taken from it.

Names are unique per folder: a folder is ``local/<folder name>`` (a training run's release folder,
``<run>/release/<model>-<site>``, is ``local/<run name>/<model>-<site>``) unless another folder
already holds that name, in which case the name carries a short hash of the folder's absolute path
(``local/<run name>-1a2b3c4d/<model>-<site>``). The same folder always gets the same name back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import __version__ as sae_lens_version
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

from saelens_gemmascope.compat import pretrained_directory
from saelens_gemmascope.contributions import Converter, Release
from saelens_gemmascope.directory import local_registry
from saelens_gemmascope.directory.layout import (
    RELEASE_FILE,
    exported_reshape_activations,
    read_release_manifest,
)
from saelens_gemmascope.directory.npz import expected_param_shapes, read_params_npz
from saelens_gemmascope.directory.safetensors_params import (
    expected_scope2_shapes,
    read_params_safetensors,
    to_saelens_keys,
)
from saelens_gemmascope.directory.scope2_layout import CONFIG_FILE as SCOPE2_CONFIG_FILE
from saelens_gemmascope.directory.scope2_layout import PARAMS_FILE as SCOPE2_PARAMS_FILE
from saelens_gemmascope.directory.scope2_layout import SCOPE2_LAYOUT, check_exported_config
from saelens_gemmascope.models.lookup import find_model_spec
from saelens_gemmascope.models.spec import UnknownNameError
from saelens_gemmascope.registry import forget_release, register_release, registered_models, registrations

LOCAL_CONVERTER_NAME = "gemmascope_local"
#: What an export folder may hold: SAEs, transcoders, skip transcoders (SAELens's inference names).
LOCAL_ARCHITECTURES = ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder")
#: The plugin name local releases are registered under (what a clash with another plugin names).
LOCAL_OWNER = "gemmascope.local"
#: A training run writes its release folders as ``<run>/release/<model>-<site>``
#: (:mod:`saelens_gemmascope.suite.export`); their names start with the run's folder name.
SUITE_RELEASE_DIR = "release"


class LocalReleaseClashError(ValueError):
    """A release name already held by another folder (or by a released suite)."""


def _entry(root: Path, folder_name: str) -> dict[str, Any]:
    for entry in read_release_manifest(root)["saes"]:
        if entry["path"] == folder_name:
            return _checked_against_model(root, entry)
    raise ValueError(f"{root}: release.json has no SAE at {folder_name!r}")


def _checked_against_model(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """``entry``, checked against its model's registered spec (with the spec's hook name when the
    export recorded none). An entry of a model no plugin registered, or without a site, is taken
    as it is: the export is all there is to go by."""
    model, site, layer = entry.get("model_name"), entry.get("site"), entry.get("layer")
    if model is None or site is None:
        return entry
    try:
        spec = find_model_spec(registered_models(), model)
    except UnknownNameError:
        return entry
    where = f"{root}: SAE {entry['id']!r} was exported for {model!r} at site {site!r}, layer {layer}"
    try:
        hp = spec.hook_point(site, layer)
    except (UnknownNameError, ValueError) as err:
        raise ValueError(f"{where}, which the registered model does not have: {err}") from None
    if entry["d_in"] != hp.d_in:
        raise ValueError(f"{where}, but its d_in is {entry['d_in']} and that site is {hp.d_in} wide")
    hook_name = entry.get("hook_name")
    if hook_name is None:
        return {**entry, "hook_name": hp.tl_hook}
    if hook_name not in (hp.tl_hook, hp.bridge_hook):
        raise ValueError(f"{where}, but it reads {hook_name!r} and that site is {hp.tl_hook!r}")
    return entry


def local_release_config(
    repo_id: str,
    folder_name: str,
    device: str,
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAELens config dict of one exported SAE: a raw-space ``jumprelu``, or for a transcoder the
    ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder`` its entry names (with ``d_out`` and the
    hook it writes, ``hook_name_out``)."""
    return _config_of_entry(repo_id, folder_name, _entry(Path(repo_id), folder_name), device, cfg_overrides)


def _config_of_entry(
    repo_id: str, folder_name: str, entry: dict[str, Any], device: str, cfg_overrides: dict[str, Any] | None
) -> dict[str, Any]:
    architecture = entry.get("architecture") or "jumprelu"
    if architecture not in LOCAL_ARCHITECTURES:
        raise ValueError(
            f"{Path(repo_id) / folder_name}: architecture {architecture!r} in release.json is not one of "
            f"{', '.join(LOCAL_ARCHITECTURES)}"
        )
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": entry["d_in"],
        "d_sae": entry["d_sae"],
        "dtype": "float32",
        "device": device,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        # Exports before hook_z was recorded for attention SAEs say "none": read them as hook_z too.
        "reshape_activations": exported_reshape_activations(
            entry.get("hook_name"), entry.get("reshape_activations") or "none"
        ),
        "metadata": {
            "sae_lens_version": sae_lens_version,
            "model_name": entry.get("model_name"),
            "hook_name": entry.get("hook_name"),
            "hook_head_index": entry.get("hook_head_index"),
            "context_size": entry.get("context_size"),
            "prepend_bos": entry.get("prepend_bos", True),
            "l0": entry.get("average_l0"),
        },
    }
    if architecture != "jumprelu":
        cfg["d_out"] = entry["d_out"]
        cfg["metadata"]["hook_name_out"] = entry["hook_name_out"]
    for key, value in (cfg_overrides or {}).items():
        if key in cfg:
            cfg[key] = value
        else:
            cfg["metadata"][key] = value
    return cfg


def local_release_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """Config, weights (checked: keys, shapes, finite values) and no sparsity for one exported SAE,
    from its ``params.npz`` (Gemma Scope layout) or ``params.safetensors`` (Gemma Scope 2 layout,
    whose ``config.json``, when present, must agree with the entry)."""
    entry = _entry(Path(repo_id), folder_name)
    cfg = _config_of_entry(repo_id, folder_name, entry, device, cfg_overrides)
    folder = Path(repo_id) / folder_name
    skip = cfg["architecture"] == "jumprelu_skip_transcoder"
    if entry.get("layout") == SCOPE2_LAYOUT:
        check_exported_config(folder / SCOPE2_CONFIG_FILE, entry)
        shapes = expected_scope2_shapes(cfg["d_in"], cfg["d_sae"], cfg.get("d_out") or cfg["d_in"], skip)
        state = to_saelens_keys(read_params_safetensors(folder / SCOPE2_PARAMS_FILE, shapes))
    else:
        shapes = expected_param_shapes(cfg["d_in"], cfg["d_sae"], cfg.get("d_out"), skip=skip)
        state = read_params_npz(folder / "params.npz", shapes)
    return cfg, {k: v.to(device) for k, v in state.items()}, None


#: One object for every local release, so the host sees one converter, not a clash per release.
LOCAL_CONVERTER = Converter(
    name=LOCAL_CONVERTER_NAME,
    loader=local_release_loader,  # type: ignore[arg-type]
    config_getter=local_release_config,  # type: ignore[arg-type]
)


def _short_hash(folder: Path) -> str:
    return hashlib.sha256(str(folder).encode("utf-8")).hexdigest()[:8]


def _name_candidates(folder: Path) -> tuple[str, str]:
    """(plain name, name with the folder's hash) of a resolved release folder."""
    if folder.parent.name == SUITE_RELEASE_DIR:
        run = folder.parent.parent
        return f"local/{run.name}/{folder.name}", f"local/{run.name}-{_short_hash(run)}/{folder.name}"
    return f"local/{folder.name}", f"local/{folder.name}-{_short_hash(folder)}"


def _recorded(*, quiet: bool = False) -> dict[str, Path]:
    """The persistent registry, or nothing when it cannot be read (with a warning unless ``quiet``:
    a registration warns anyway when it sets the damaged file aside)."""
    try:
        return local_registry.read_registry()
    except (local_registry.ReleaseRegistryError, OSError) as err:
        if not quiet:
            local_registry.warn_one_line(f"{err}; local releases of earlier runs are not available")
        return {}


#: How a holder that is not a local folder (a plugin's or SAELens's release) is named.
_RELEASED = "the released "


def _plugin_holder(name: str) -> str | None:
    """Who holds ``name`` if a plugin other than the local releases registered it."""
    found = registrations()
    owner = found.owners.get(("releases", name))
    if owner is None or owner == LOCAL_OWNER:
        return None
    return f"{_RELEASED}{found.releases[name].lookup.repo_id} of {found.plugins[owner].describe()}"


def _holders(name: str) -> set[str]:
    """Where ``name`` points now: the plugins' releases, this process's SAELens directory (local
    releases, and SAELens's own releases) and the persistent registry."""
    holders = set()
    plugin_holder = _plugin_holder(name)
    existing = pretrained_directory().get(name)
    if plugin_holder is not None:
        holders.add(plugin_holder)
    elif existing is not None:
        holders.add(
            existing.repo_id
            if existing.conversion_func == LOCAL_CONVERTER_NAME
            else f"{_RELEASED}{existing.repo_id}"
        )
    recorded = _recorded(quiet=True).get(name)
    if recorded is not None:
        holders.add(str(recorded))
    return holders


def local_release_name(folder: str | Path) -> str:
    """The name ``register_local_release(folder)`` gives (or gave) this folder."""
    folder = Path(folder).resolve()
    plain, hashed = _name_candidates(folder)
    return plain if _holders(plain) <= {str(folder)} else hashed


def _lookup(name: str, root: Path, manifest: dict[str, Any]) -> PretrainedSAELookup:
    models = {e.get("model_name") for e in manifest["saes"]}
    return PretrainedSAELookup(
        release=name,
        repo_id=str(root),
        model=models.pop() if len(models) == 1 else "mixed",  # type: ignore[arg-type]
        conversion_func=LOCAL_CONVERTER_NAME,
        saes_map={e["id"]: e["path"] for e in manifest["saes"]},
        expected_var_explained={},
        expected_l0={e["id"]: e["average_l0"] for e in manifest["saes"]},
        neuronpedia_id={},
        norm_scaling_factor={},
        config_overrides=None,
    )


def register_local_release(
    root: str | Path, release_name: str | None = None, *, persist: bool | None = None
) -> str:
    """Register the exports under ``root`` as a SAELens release and return its name.

    ``release_name`` defaults to :func:`local_release_name` (unique per folder). Registering the
    same folder again refreshes the entry (new exports become visible); a name another folder or
    release holds raises :class:`LocalReleaseClashError` naming both. With ``persist`` the name is
    recorded in the registry in the cache directory, so that it loads in later processes too; by
    default only the folder's own name is (an explicit name, such as a script's ``"latest"`` given
    to a new folder on every run, stays in this process unless ``persist=True``). Afterwards
    ``SAE.from_pretrained(name, "layer_1/width_512/average_l0_37")`` loads it.
    """
    root = Path(root).resolve()
    manifest = read_release_manifest(root)
    if not manifest["saes"]:
        raise ValueError(f"{root}: no {RELEASE_FILE} with exported SAEs")
    name = release_name or local_release_name(root)
    others = sorted(_holders(name) - {str(root)})
    if others:
        raise _clash(name, others, root)
    if persist or (persist is None and release_name is None):
        _persist(name, root)
    register_release(Release(lookup=_lookup(name, root, manifest), converter=LOCAL_CONVERTER), LOCAL_OWNER)
    return name


def _clash(name: str, others: list[str], root: Path) -> LocalReleaseClashError:
    # Only a local release's name can be freed; a plugin's or SAELens's release keeps its name.
    free = (
        f", or free the name with `gemmascope releases --remove {name}`"
        if any(not other.startswith(_RELEASED) for other in others)
        else ""
    )
    return LocalReleaseClashError(
        f"release {name!r} is already registered for {' and '.join(others)}; cannot also register {root} "
        f"under it: choose another release_name{free}"
    )


def _persist(name: str, root: Path) -> None:
    try:
        local_registry.record_release(name, root)
    except local_registry.RecordedNameTakenError as err:
        raise _clash(name, [str(err.holder)], root) from None
    except OSError as err:
        local_registry.warn_one_line(
            f"could not record release {name!r} in {local_registry.registry_path()} ({err}); "
            "the name works in this process only"
        )


def register_recorded_releases() -> list[str]:
    """Register every recorded release whose folder still holds a ``release.json`` (at import).

    A folder that disappeared is skipped silently (``gemmascope releases`` reports it); one whose
    manifest no longer validates, or whose name is now taken, is skipped with a one-line warning.
    """
    try:
        registrations()
    except Exception:
        # A plugin failed to load: the import has warned with the reason and applied nothing to
        # SAELens, so local releases wait too (load_plugins raises the reason when called).
        return []
    names = []
    for name, folder in _recorded().items():
        if not (folder / RELEASE_FILE).is_file():
            continue
        try:
            names.append(register_local_release(folder, name, persist=False))
        except (ValueError, OSError) as err:
            local_registry.warn_one_line(
                f"local release {name!r} not registered: {err} (forget it with `gemmascope releases --remove {name}`)"
            )
    return names


@dataclass(frozen=True)
class RecordedRelease:
    """One entry of the persistent registry and whether it loads."""

    name: str
    folder: Path
    n_saes: int
    problem: str | None  # None: loads; else why not (folder gone, manifest invalid)


def recorded_releases() -> list[RecordedRelease]:
    """Every entry of the persistent registry, checked (raises when the registry file is corrupt)."""
    found = []
    for name, folder in local_registry.read_registry().items():
        n_saes, problem = 0, None
        if not folder.is_dir():
            problem = "folder not found (moved or deleted)"
        elif not (folder / RELEASE_FILE).is_file():
            problem = f"no {RELEASE_FILE} in the folder"
        else:
            try:
                n_saes = len(read_release_manifest(folder)["saes"])
            except (ValueError, OSError) as err:
                problem = str(err)
        found.append(RecordedRelease(name, folder, n_saes, problem))
    return found


def remove_local_release(name: str) -> Path:
    """Forget ``name`` in the registry and in this process; the folder itself is left as it is."""
    folder = local_registry.forget_release(name)
    entry = pretrained_directory().get(name)
    if entry is not None and entry.conversion_func == LOCAL_CONVERTER_NAME:
        forget_release(name, LOCAL_OWNER)
    return folder
