"""The Gemma Scope converter: a hub folder -> SAELens config + state dict, validated and cached.

Served to SAELens under two names (see :mod:`saelens_gemmascope.directory.releases`): ``gemmascope``
(JumpReLU SAEs, architecture ``jumprelu``) and ``gemmascope_transcoder`` (``jumprelu_transcoder``).
Dimensions and hook names come from the manifest (width -> d_sae) and the model specs (site -> hook,
d_in): the registered ones (:func:`saelens_gemmascope.registry.registered_models`), so a plugin's
model, or a plugin's corrected spec of a Gemma 2 model, is what a release is converted against;
nothing is guessed from substrings of the repo name.

Embedding SAEs: they were trained on Gemma's token embeddings before the sqrt(d_model) scale that
TransformerLens folds into ``W_E`` (so ``hook_embed`` carries sqrt(d) times the training input).
Like SAELens we rescale so that the SAE reads ``hook_embed`` directly: W_enc / sqrt(d),
W_dec * sqrt(d). Unlike SAELens we also scale b_dec by sqrt(d): the reconstruction of sqrt(d)*e is
sqrt(d) * (f @ W_dec + b_dec), so the bias must be scaled with the decoder (SAELens leaves it, and
its reconstructions are off by (sqrt(d) - 1) * b_dec). The latent activations are unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import torch
from sae_lens.util import str_to_dtype

from saelens_gemmascope.directory.cache import (
    Provenance,
    cache_root,
    converted_path,
    look_up_converted,
    write_converted,
)
from saelens_gemmascope.directory.errors import UnknownRepoError
from saelens_gemmascope.directory.manifest import EMBEDDING, ReleaseSpec, SuiteManifest, load_manifest
from saelens_gemmascope.directory.npz import expected_param_shapes, read_params_npz
from saelens_gemmascope.directory.sources import (
    SourceFile,
    download_params,
    find_local_params,
    root_key,
    source_roots,
)
from saelens_gemmascope.models.lookup import find_model_spec
from saelens_gemmascope.models.spec import ModelSpec, UnknownNameError
from saelens_gemmascope.registry import registered_models

logger = logging.getLogger(__name__)

FOLDER_PATTERN = re.compile(
    r"^(?:layer_(?P<layer>\d+)|(?P<embedding>embedding))/width_(?P<width>[^/]+)/(?:average_l0_\d+|canonical)$"
)

# Metadata SAELens's gemma_2 converters attach; kept identical so configs compare equal.
_COMMON_METADATA: dict[str, Any] = {
    "prepend_bos": True,
    "dataset_path": "monology/pile-uncopyrighted",
    "context_size": 1024,
    "apply_b_dec_to_input": False,
}


@dataclass(frozen=True)
class ConversionTarget:
    """What one hub folder must contain and where its SAE reads, resolved from manifest and model."""

    repo_id: str
    folder: str
    release: ReleaseSpec
    site: str  # res, mlp, att, transcoder, embedding
    model_name: str
    hook_name: str
    hook_name_out: str | None
    d_in: int
    d_sae: int

    @property
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_param_shapes(self.d_in, self.d_sae)


@dataclass(frozen=True)
class LoadedParams:
    """Raw Gemma Scope parameters, where they were read from, and (for the conversion cache) the
    source that conversion was made from."""

    state_dict: dict[str, torch.Tensor]
    origin: str  # "conversion-cache", "mirror", "hf-cache" or "hub"
    path: Path
    provenance: Provenance | None = None


class GemmaScopeConverter:
    """Converts Gemma Scope hub folders for SAELens, against a manifest and model specs.

    Tests build one over a tiny manifest and tiny model dimensions; the package uses
    :func:`default_converter` (the shipped manifest, the registered model specs, the user cache). A
    plugin can serve its own releases with one over its own manifest: ``models`` left out, the
    registered specs (its own model's included) are read at each conversion.
    """

    def __init__(
        self,
        manifest: SuiteManifest | None = None,
        models: Mapping[str, ModelSpec] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._manifest = manifest
        self._models = dict(models) if models is not None else None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None

    @property
    def manifest(self) -> SuiteManifest:
        if self._manifest is None:
            self._manifest = load_manifest()
        return self._manifest

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        """The given specs, else the registered ones (read each time, not kept: the converter is
        made before the plugins finish loading, and lives as long as the process)."""
        return self._models if self._models is not None else registered_models()

    def cache_path(self, repo_id: str, folder: str) -> Path:
        return converted_path(repo_id, folder, self._cache_dir or cache_root())

    # -- resolving ------------------------------------------------------------------------------

    def target(self, repo_id: str, folder: str) -> ConversionTarget:
        release = self.manifest.release_for_repo(repo_id)
        if release is None:
            raise UnknownRepoError(repo_id, (r.repo_id for r in self.manifest.releases.values()))
        match = FOLDER_PATTERN.match(folder.strip("/"))
        if match is None:
            raise ValueError(
                f"{repo_id}: folder {folder!r} is not laid out as layer_<L>/width_<W>/average_l0_<K> "
                f"(or embedding/width_<W>/average_l0_<K>)"
            )
        width = match["width"]
        if width not in self.manifest.widths:
            raise ValueError(
                f"{repo_id}/{folder}: unknown width {width!r}; known: {', '.join(self.manifest.widths)}"
            )
        try:
            model = find_model_spec(self.models, release.model)
        except UnknownNameError as err:
            raise ValueError(f"{repo_id}: no model spec for {release.model!r} ({err})") from None
        layer = None if match["embedding"] else int(match["layer"])
        site = EMBEDDING if layer is None else release.site
        hook = model.hook_point(site, layer)  # a transcoder also writes: hook.output
        hook_name, d_in = hook.tl_hook, hook.d_in
        hook_name_out = hook.output.tl_hook if hook.output is not None else None
        return ConversionTarget(
            repo_id=repo_id,
            folder=folder.strip("/"),
            release=release,
            site=site,
            model_name=release.model,
            hook_name=hook_name,
            hook_name_out=hook_name_out,
            d_in=d_in,
            d_sae=self.manifest.widths[width],
        )

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
        self,
        target: ConversionTarget,
        device: str | None = "cpu",
        cfg_overrides: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if target.site == "transcoder":
            cfg: dict[str, Any] = {
                "architecture": "jumprelu_transcoder",
                "d_in": target.d_in,
                "d_out": target.d_in,
                "d_sae": target.d_sae,
                "dtype": "float32",
                "device": device if device is not None else "cpu",
                "activation_fn": "relu",
                "normalize_activations": "none",
                "model_name": target.model_name,
                "hook_name": target.hook_name,
                "hook_name_out": target.hook_name_out,
                "hook_head_index": None,
                "hook_head_index_out": None,
                **_COMMON_METADATA,
            }
        else:
            cfg = {
                "architecture": "jumprelu",
                "d_in": target.d_in,
                "d_sae": target.d_sae,
                "dtype": "float32",
                "model_name": target.model_name,
                "hook_name": target.hook_name,
                "hook_head_index": None,
                "activation_fn": "relu",
                "finetuning_scaling_factor": False,
                "sae_lens_training_version": None,
                "dataset_trust_remote_code": True,
                "normalize_activations": "none",
                **_COMMON_METADATA,
            }
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
        logger.debug(
            "%s/%s read from %s (%s%s)", repo_id, folder_name, loaded.origin, loaded.path, provenance
        )
        state_dict = adapt_state_dict(target, loaded.state_dict)
        dtype = str_to_dtype(cfg.get("dtype", "float32"))
        state_dict = {key: value.to(device=device, dtype=dtype) for key, value in state_dict.items()}
        return cfg, state_dict, None

    def read_params(
        self,
        target: ConversionTarget,
        *,
        force_download: bool = False,
        mirror: str | os.PathLike[str] | None = None,
        fetch: bool = False,
    ) -> LoadedParams:
        """The raw, validated parameters: from the conversion cache when its recorded provenance fits
        this load (see :mod:`saelens_gemmascope.directory.cache`) and its checksum holds, else
        converted from the mirror / Hugging Face cache / hub copy (and cached). ``fetch`` (for
        ``gemmascope fetch``) marks the conversion as kept for offline use, whatever its source."""
        cached_file = self.cache_path(target.repo_id, target.folder)
        local = None if force_download else find_local_params(target.repo_id, target.folder, mirror)
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
            if cached is not None and _shapes_match(cached.state_dict, target):
                provenance = cached.provenance
                if fetch and not provenance.fetched:  # re-written, marked as kept for offline use
                    provenance = replace(provenance, fetched=True)
                    write_converted(cached_file, cached.state_dict, provenance)
                return LoadedParams(cached.state_dict, "conversion-cache", cached_file, provenance)
            if lookup.refused is not None:
                refused = f"the conversion cache {cached_file} was not used: {lookup.refused}"
        source: SourceFile = local or download_params(
            target.repo_id, target.folder, force_download=force_download, mirror=mirror, note=refused
        )
        # Validated before anything is cached: a bad npz (NaN, negative thresholds...) is never cached.
        state_dict = read_params_npz(source.path, target.expected_shapes)
        provenance = replace(_provenance(target, source), fetched=fetch)
        write_converted(cached_file, state_dict, provenance)
        return LoadedParams(state_dict, source.origin, source.path, provenance)


def _provenance(target: ConversionTarget, source: SourceFile) -> Provenance:
    return Provenance(
        repo_id=target.repo_id,
        folder=target.folder,
        origin=source.origin,
        source_path=str(source.path),
        source_root=root_key(source.root),
        source_fingerprint=source.fingerprint(),
    )


def _shapes_match(state_dict: Mapping[str, torch.Tensor], target: ConversionTarget) -> bool:
    expected = target.expected_shapes
    return set(state_dict) == set(expected) and all(
        tuple(state_dict[key].shape) == shape for key, shape in expected.items()
    )


def adapt_state_dict(target: ConversionTarget, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released parameters -> the SAELens state dict for ``target`` (only embedding SAEs change)."""
    state_dict = dict(raw)
    if target.site == EMBEDDING:
        scale = math.sqrt(target.d_in)
        state_dict["W_enc"] = raw["W_enc"] / scale
        state_dict["W_dec"] = raw["W_dec"] * scale
        state_dict["b_dec"] = raw["b_dec"] * scale
    return state_dict


@cache
def default_converter() -> GemmaScopeConverter:
    """The package's converter: the shipped manifest, the registered model specs, the user cache."""
    return GemmaScopeConverter()
