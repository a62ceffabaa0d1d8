"""Public functions over the Gemma Scope directory: list, describe, fetch and load SAEs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from saelens_gemmascope.directory.cache import read_converted
from saelens_gemmascope.directory.converter import GemmaScopeConverter, default_converter
from saelens_gemmascope.directory.manifest import SaeVariant, load_manifest
from saelens_gemmascope.directory.releases import builtin_directory, resolve_any
from saelens_gemmascope.directory.scope2_converter import PARAMS_FILE as SCOPE2_PARAMS_FILE
from saelens_gemmascope.directory.scope2_converter import GemmaScope2Converter, default_scope2_converter
from saelens_gemmascope.directory.scope2_manifest import Scope2Sae, load_scope2_manifest
from saelens_gemmascope.directory.sources import (
    PARAMS_FILENAME,
    find_local_params,
    hub_is_offline,
    mirror_path,
    mirror_root,
    offline_variables,
)

if TYPE_CHECKING:
    from sae_lens import SAE

MirrorArg = str | os.PathLike[str] | None
#: A released SAE of either suite: Gemma Scope (Gemma 2) or Gemma Scope 2 (Gemma 3).
AnySae = SaeVariant | Scope2Sae
AnyConverter = GemmaScopeConverter | GemmaScope2Converter


def all_released_saes() -> list[AnySae]:
    """Every released SAE of both suites, Gemma Scope first, each in manifest order."""
    return [*load_manifest().variants(), *load_scope2_manifest().saes()]


def model_names(model: str) -> set[str]:
    """The model names ``model`` stands for: itself, ``google/<model>``, and the registered spec's
    name when ``model`` is one of its aliases (SAELens names Gemma 3 ``google/gemma-3-1b-pt``)."""
    from saelens_gemmascope.models.lookup import find_model_spec
    from saelens_gemmascope.models.spec import UnknownNameError
    from saelens_gemmascope.registry import registered_models

    names = {model, f"google/{model}"}
    try:
        spec = find_model_spec(registered_models(), model)
    except UnknownNameError:
        return names
    return names | {spec.name, *spec.aliases}


def list_saes(
    *,
    model: str | None = None,
    site: str | None = None,
    layer: int | None = None,
    width: str | None = None,
    release: str | None = None,
) -> list[AnySae]:
    """Every released SAE (both suites) matching all the given filters (site: res, mlp, att,
    transcoder, embedding; model: a name as in SAELens's ``model`` field, without ``google/`` too)."""
    if release is not None:
        gemma_scope = builtin_directory()
        if release in gemma_scope:
            release = gemma_scope[release].spec.name
        elif release not in _scope2_names():
            resolve_any(release, "")  # raises UnknownReleaseError with suggestions
    wanted = model_names(model) if model is not None else None
    return [
        v
        for v in all_released_saes()
        if (wanted is None or v.model in wanted)
        and (site is None or v.site == site)
        and (layer is None or v.layer == layer)
        and (width is None or v.width == width)
        and (release is None or v.release == release)
    ]


def _scope2_names() -> set[str]:
    return set(load_scope2_manifest().releases)


def converter_for(variant: AnySae) -> AnyConverter:
    """The package's converter for a record of either suite."""
    return default_scope2_converter() if isinstance(variant, Scope2Sae) else default_converter()


def params_filename(variant: AnySae) -> str:
    return SCOPE2_PARAMS_FILE if isinstance(variant, Scope2Sae) else PARAMS_FILENAME


@dataclass(frozen=True)
class SaeInfo:
    """Everything ``gemmascope info`` shows about one (release, SAE id)."""

    release: str
    sae_id: str
    variant: AnySae
    hook_name: str
    hook_name_out: str | None
    d_in: int
    d_sae: int
    neuronpedia_id: str | None
    load_source: str  # where a load would read from, in words


def sae_info(release: str, sae_id: str, *, mirror: MirrorArg = None) -> SaeInfo:
    variant = resolve_any(release, sae_id)
    if isinstance(variant, Scope2Sae):
        target2 = default_scope2_converter().target(variant.repo_id, variant.folder)
        hooks = (target2.hook_name, target2.hook_name_out, target2.d_in)
        neuronpedia = variant.neuronpedia_id
    else:
        target = default_converter().target(variant.repo_id, variant.folder)
        hooks = (target.hook_name, target.hook_name_out, target.d_in)
        neuronpedia = builtin_directory()[release].lookup().neuronpedia_id.get(sae_id)
    return SaeInfo(
        release=release,
        sae_id=sae_id,
        variant=variant,
        hook_name=hooks[0],
        hook_name_out=hooks[1],
        d_in=hooks[2],
        d_sae=variant.d_sae,
        neuronpedia_id=neuronpedia,
        load_source=describe_load_source(variant, mirror),
    )


def describe_load_source(variant: AnySae, mirror: MirrorArg = None) -> str:
    """Where loading this SAE would read from now, without reading or downloading anything."""
    converter = converter_for(variant)
    filename = params_filename(variant)
    cached_file = converter.cache_path(variant.repo_id, variant.folder)
    local = find_local_params(variant.repo_id, variant.folder, mirror, filename)
    fingerprint = local.fingerprint() if local is not None else None
    if cached_file.is_file() and read_converted(cached_file, fingerprint) is not None:
        return f"conversion cache {cached_file}"
    if local is not None:
        return f"{local.origin} {local.path} (converted to {cached_file} on first load)"
    if hub_is_offline():
        root = mirror_root(mirror)
        hint = (
            f" (mirror would be {mirror_path(root, variant.repo_id, variant.folder, filename)})"
            if root
            else ""
        )
        variables = ", ".join(f"{name}={os.environ[name]}" for name in offline_variables()) or "in-process"
        return f"unavailable: offline mode ({variables}) and no local copy{hint}"
    return f"hub download of {variant.repo_id}/{variant.folder}/{filename}"


@dataclass(frozen=True)
class LocalSae:
    """One SAE of a local release (an entry of its export folder's release.json), as ``gemmascope ls``
    and ``gemmascope info`` show it. ``average_l0`` is the L0 measured at export."""

    release: str
    sae_id: str
    root: Path  # the export folder (release.json)
    folder: Path  # holds the SAE's params.npz
    model: str | None
    site: str | None
    layer: int | None
    width: str
    hook_name: str | None
    d_in: int
    d_sae: int
    average_l0: float


def local_release_saes(release: str) -> list[LocalSae] | None:
    """The SAEs of ``release`` if it is a local release registered in this process (an export folder
    given to ``register_local_release``, or recorded by an earlier run), else None. Reads release.json
    only: nothing is loaded."""
    from saelens_gemmascope.compat import pretrained_directory
    from saelens_gemmascope.directory.layout import read_release_manifest
    from saelens_gemmascope.directory.local import LOCAL_CONVERTER_NAME

    entry = pretrained_directory().get(release)
    if entry is None or entry.conversion_func != LOCAL_CONVERTER_NAME:
        return None
    root = Path(entry.repo_id)
    return [
        LocalSae(
            release=release,
            sae_id=e["id"],
            root=root,
            folder=root / e["path"],
            model=e.get("model_name"),
            site=e.get("site"),
            layer=e.get("layer"),
            width=str(e.get("width") or e["d_sae"]),
            hook_name=e.get("hook_name"),
            d_in=e["d_in"],
            d_sae=e["d_sae"],
            average_l0=float(e["average_l0"]),
        )
        for e in read_release_manifest(root)["saes"]
    ]


@dataclass(frozen=True)
class FetchResult:
    source: str  # where the npz came from: conversion-cache, mirror, hf-cache or hub
    npz_path: Path
    converted_path: Path


def fetch_sae(
    release: str, sae_id: str, *, mirror: MirrorArg = None, force_download: bool = False
) -> FetchResult:
    """Make one SAE available offline: get its params file (mirror, HF cache or hub) and convert it."""
    variant = resolve_any(release, sae_id)
    if isinstance(variant, Scope2Sae):
        scope2 = default_scope2_converter()
        target2 = scope2.target(variant.repo_id, variant.folder)
        loaded2 = scope2.read_params(target2, force_download=force_download, mirror=mirror, fetch=True)
        return FetchResult(loaded2.origin, loaded2.path, scope2.cache_path(variant.repo_id, variant.folder))
    converter = default_converter()
    target = converter.target(variant.repo_id, variant.folder)
    loaded = converter.read_params(target, force_download=force_download, mirror=mirror, fetch=True)
    return FetchResult(loaded.origin, loaded.path, converter.cache_path(variant.repo_id, variant.folder))


def load_sae(
    release: str,
    sae_id: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    mirror: MirrorArg = None,
    force_download: bool = False,
    converter: AnyConverter | None = None,
) -> SAE:
    """Validate ``(release, sae_id)`` (either suite; unknown names get close-match suggestions), then
    load it with ``SAE.from_pretrained``, reading from ``mirror`` first when given. ``converter``
    defaults to the package's for that suite (tests pass one over a tiny manifest)."""
    from sae_lens import SAE

    from saelens_gemmascope.registry import registrations

    registrations()  # the releases and converters; a plugin that failed at import raises here
    variant = resolve_any(release, sae_id)
    loader = partial((converter or converter_for(variant)).load, mirror=mirror)
    return SAE.from_pretrained(
        release, sae_id, device=device, dtype=dtype, force_download=force_download, converter=loader
    )
