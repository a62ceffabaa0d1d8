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
from saelens_gemmascope.directory.sources import find_local_params, hub_is_offline, mirror_path, mirror_root

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
        return f"unavailable: offline and no local copy{hint}"
    return f"hub download of {variant.repo_id}/{variant.folder}/params.npz"


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

    from saelens_gemmascope import load_plugins

    load_plugins()  # the releases and converters; a plugin that failed at import raises here
    resolve(release, sae_id)
    loader = partial((converter or default_converter()).load, mirror=mirror)
    return SAE.from_pretrained(
        release, sae_id, device=device, dtype=dtype, force_download=force_download, converter=loader
    )
