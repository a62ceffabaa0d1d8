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
from saelens_gemmascope.directory.releases import builtin_directory, resolve
from saelens_gemmascope.directory.sources import (
    find_local_params,
    hub_is_offline,
    mirror_path,
    mirror_root,
    offline_variables,
)

if TYPE_CHECKING:
    from sae_lens import SAE

MirrorArg = str | os.PathLike[str] | None


def list_saes(
    *,
    model: str | None = None,
    site: str | None = None,
    layer: int | None = None,
    width: str | None = None,
    release: str | None = None,
) -> list[SaeVariant]:
    """Every released SAE matching all the given filters (site: res, mlp, att, transcoder, embedding)."""
    if release is not None:
        resolve_release = builtin_directory()
        if release not in resolve_release:
            resolve(release, "")  # raises UnknownReleaseError with suggestions
        release = resolve_release[release].spec.name
    return [
        v
        for v in load_manifest().variants()
        if (model is None or v.model == model)
        and (site is None or v.site == site)
        and (layer is None or v.layer == layer)
        and (width is None or v.width == width)
        and (release is None or v.release == release)
    ]


@dataclass(frozen=True)
class SaeInfo:
    """Everything ``gemmascope info`` shows about one (release, SAE id)."""

    release: str
    sae_id: str
    variant: SaeVariant
    hook_name: str
    hook_name_out: str | None
    d_in: int
    d_sae: int
    neuronpedia_id: str | None
    load_source: str  # where a load would read from, in words


def sae_info(release: str, sae_id: str, *, mirror: MirrorArg = None) -> SaeInfo:
    variant = resolve(release, sae_id)
    converter = default_converter()
    target = converter.target(variant.repo_id, variant.folder)
    lookup_np = builtin_directory()[release].lookup().neuronpedia_id.get(sae_id)
    return SaeInfo(
        release=release,
        sae_id=sae_id,
        variant=variant,
        hook_name=target.hook_name,
        hook_name_out=target.hook_name_out,
        d_in=target.d_in,
        d_sae=target.d_sae,
        neuronpedia_id=lookup_np,
        load_source=describe_load_source(variant, mirror),
    )


def describe_load_source(variant: SaeVariant, mirror: MirrorArg = None) -> str:
    """Where loading this SAE would read from now, without reading or downloading anything."""
    converter = default_converter()
    cached_file = converter.cache_path(variant.repo_id, variant.folder)
    local = find_local_params(variant.repo_id, variant.folder, mirror)
    fingerprint = local.fingerprint() if local is not None else None
    if cached_file.is_file() and read_converted(cached_file, fingerprint) is not None:
        return f"conversion cache {cached_file}"
    if local is not None:
        return f"{local.origin} {local.path} (converted to {cached_file} on first load)"
    if hub_is_offline():
        root = mirror_root(mirror)
        hint = f" (mirror would be {mirror_path(root, variant.repo_id, variant.folder)})" if root else ""
        variables = ", ".join(f"{name}={os.environ[name]}" for name in offline_variables()) or "in-process"
        return f"unavailable: offline mode ({variables}) and no local copy{hint}"
    return f"hub download of {variant.repo_id}/{variant.folder}/params.npz"


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
    """Make one SAE available offline: get its params.npz (mirror, HF cache or hub) and convert it."""
    variant = resolve(release, sae_id)
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
    converter: GemmaScopeConverter | None = None,
) -> SAE:
    """Validate ``(release, sae_id)`` (unknown names get close-match suggestions), then load it with
    ``SAE.from_pretrained``, reading from ``mirror`` first when given. ``converter`` defaults to the
    package's (tests pass one over a tiny manifest)."""
    from sae_lens import SAE

    from saelens_gemmascope.registry import registrations

    registrations()  # the releases and converters; a plugin that failed at import raises here
    resolve(release, sae_id)
    loader = partial((converter or default_converter()).load, mirror=mirror)
    return SAE.from_pretrained(
        release, sae_id, device=device, dtype=dtype, force_download=force_download, converter=loader
    )
