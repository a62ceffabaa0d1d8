"""What the Gemma Scope and Gemma Scope 2 converters share: the SAELens config-getter and loader
protocols, and reading a folder's parameters through the conversion cache.

A converter subclass says how to resolve a hub folder (:meth:`CachedConverter.target`), build its
SAELens config, read and check its parameters file, and what the conversion cache must hold; the
order in which a load looks (conversion cache, then mirror / Hugging Face cache / hub), when a cached
conversion is trusted (see :mod:`saelens_gemmascope.directory.cache`) and when one is written, is
here, once, for both.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
from sae_lens.util import str_to_dtype

from saelens_gemmascope.directory.cache import (
    Provenance,
    cache_root,
    converted_path,
    look_up_converted,
    write_converted,
)
from saelens_gemmascope.directory.sources import (
    PARAMS_FILENAME,
    SourceFile,
    download_params,
    find_local_params,
    root_key,
    source_roots,
)
from saelens_gemmascope.models.lookup import find_model_spec
from saelens_gemmascope.models.spec import ModelSpec, UnknownNameError
from saelens_gemmascope.registry import registered_models


class HubFolder(Protocol):
    """A resolved target: the hub folder it converts (all the shared flow needs of it)."""

    @property
    def repo_id(self) -> str: ...

    @property
    def folder(self) -> str: ...


ManifestT = TypeVar("ManifestT")
TargetT = TypeVar("TargetT", bound=HubFolder)


@dataclass(frozen=True)
class LoadedParams:
    """Parameters as the conversion cache holds them, where they were read from, and (for the
    conversion cache) the source that conversion was made from."""

    state_dict: dict[str, torch.Tensor]
    origin: str  # "conversion-cache", "mirror", "hf-cache" or "hub"
    path: Path
    provenance: Provenance | None = None


class CachedConverter(ABC, Generic[ManifestT, TargetT]):
    """A converter of hub folders for SAELens, against a manifest and model specs, with a conversion
    cache under ``cache_dir`` (the user cache when left out)."""

    #: The file a hub folder's parameters are read from.
    params_file: ClassVar[str] = PARAMS_FILENAME

    def __init__(
        self,
        manifest: ManifestT | None = None,
        models: Mapping[str, ModelSpec] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._manifest = manifest
        self._models = dict(models) if models is not None else None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None

    @property
    def manifest(self) -> ManifestT:
        if self._manifest is None:
            self._manifest = self.load_default_manifest()
        return self._manifest

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        """The given specs, else the registered ones (read each time, not kept: the converter is
        made before the plugins finish loading, and lives as long as the process)."""
        return self._models if self._models is not None else registered_models()

    def cache_path(self, repo_id: str, folder: str) -> Path:
        return converted_path(repo_id, folder, self._cache_dir or cache_root())

    def model_spec(self, repo_id: str, model_name: str) -> ModelSpec:
        """The spec a release's SAEs are converted against (a ValueError naming the repo if none)."""
        try:
            return find_model_spec(self.models, model_name)
        except UnknownNameError as err:
            raise ValueError(f"{repo_id}: no model spec for {model_name!r} ({err})") from None

    # -- what a converter says ------------------------------------------------------------------

    @abstractmethod
    def load_default_manifest(self) -> ManifestT:
        """The shipped manifest, used when none was given."""

    @abstractmethod
    def target(self, repo_id: str, folder: str) -> TargetT:
        """The hub folder resolved against the manifest and the model specs."""

    @abstractmethod
    def config_fields(self, target: TargetT, device: str | None) -> dict[str, Any]:
        """The SAELens config for ``target``, before ``device`` (when given) and the overrides."""

    @abstractmethod
    def cached_shapes(self, target: TargetT) -> Mapping[str, tuple[int, ...]]:
        """The keys and shapes a conversion of ``target`` holds (a cached one that differs is not used)."""

    @abstractmethod
    def read_source(self, source: SourceFile, target: TargetT) -> dict[str, torch.Tensor]:
        """The parameters file read, checked (raising before anything is cached) and converted."""

    def to_saelens(self, target: TargetT, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A (cached) conversion -> the state dict SAELens loads: unchanged unless a converter says so."""
        return dict(state_dict)

    # -- the SAELens config-getter protocol -----------------------------------------------------

    def config(
        self,
        repo_id: str,
        folder_name: str,
        device: str | None = "cpu",
        force_download: bool = False,
        cfg_overrides: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self.config_for(self.target(repo_id, folder_name), device, cfg_overrides)

    def config_for(
        self, target: TargetT, device: str | None = "cpu", cfg_overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        cfg = self.config_fields(target, device)
        if device is not None:
            cfg["device"] = device
        cfg.update(cfg_overrides or {})
        return cfg

    # -- the SAELens loader protocol ------------------------------------------------------------

    def load(
        self,
        repo_id: str,
        folder_name: str,
        device: str = "cpu",
        force_download: bool = False,
        cfg_overrides: dict[str, Any] | None = None,
        *,
        mirror: str | os.PathLike[str] | None = None,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
        target = self.target(repo_id, folder_name)
        cfg = self.config_for(target, device, cfg_overrides)
        loaded = self.read_params(target, force_download=force_download, mirror=mirror)
        provenance = f"; {loaded.provenance.describe()}" if loaded.provenance is not None else ""
        # Logged under the converter's own module, as before the two shared this code.
        logging.getLogger(type(self).__module__).debug(
            "%s/%s read from %s (%s%s)", repo_id, folder_name, loaded.origin, loaded.path, provenance
        )
        state_dict = self.to_saelens(target, loaded.state_dict)
        dtype = str_to_dtype(cfg.get("dtype", "float32"))
        state_dict = {key: value.to(device=device, dtype=dtype) for key, value in state_dict.items()}
        return cfg, state_dict, None

    def read_params(
        self,
        target: TargetT,
        *,
        force_download: bool = False,
        mirror: str | os.PathLike[str] | None = None,
        fetch: bool = False,
    ) -> LoadedParams:
        """The validated parameters: from the conversion cache when its recorded provenance fits
        this load (see :mod:`saelens_gemmascope.directory.cache`) and its checksum holds, else
        read from the mirror / Hugging Face cache / hub copy, checked, converted and cached. ``fetch``
        (for ``gemmascope fetch``) marks the conversion as kept for offline use, whatever its source."""
        cached_file = self.cache_path(target.repo_id, target.folder)
        local = (
            None
            if force_download
            else find_local_params(target.repo_id, target.folder, mirror, self.params_file)
        )
        refused = None
        if not force_download:
            lookup = look_up_converted(
                cached_file,
                local.fingerprint() if local is not None else None,
                repo_id=target.repo_id,
                folder=target.folder,
                trusted_roots=source_roots(mirror),
            )
            cached = lookup.conversion
            if cached is not None and shapes_match(cached.state_dict, self.cached_shapes(target)):
                provenance = cached.provenance
                if fetch and not provenance.fetched:  # re-written, marked as kept for offline use
                    provenance = replace(provenance, fetched=True)
                    write_converted(cached_file, cached.state_dict, provenance)
                return LoadedParams(cached.state_dict, "conversion-cache", cached_file, provenance)
            if lookup.refused is not None:
                refused = f"the conversion cache {cached_file} was not used: {lookup.refused}"
        source: SourceFile = local or download_params(
            target.repo_id,
            target.folder,
            force_download=force_download,
            mirror=mirror,
            note=refused,
            filename=self.params_file,
        )
        # Checked before anything is cached: a bad file (NaN, negative thresholds...) is never cached.
        state_dict = self.read_source(source, target)
        provenance = replace(source_provenance(target, source), fetched=fetch)
        write_converted(cached_file, state_dict, provenance)
        return LoadedParams(state_dict, source.origin, source.path, provenance)


def source_provenance(target: HubFolder, source: SourceFile) -> Provenance:
    """What a conversion of ``target`` records about the file it was made from."""
    return Provenance(
        repo_id=target.repo_id,
        folder=target.folder,
        origin=source.origin,
        source_path=str(source.path),
        source_root=root_key(source.root),
        source_fingerprint=source.fingerprint(),
    )


def shapes_match(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> bool:
    return set(state_dict) == set(expected) and all(
        tuple(state_dict[key].shape) == shape for key, shape in expected.items()
    )
