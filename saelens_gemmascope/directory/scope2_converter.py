"""The Gemma Scope 2 converter: a hub folder -> SAELens config + state dict, validated and cached.

Served to SAELens as ``gemmascope2`` for every ``gemma-scope-2-*`` release (see
:mod:`saelens_gemmascope.directory.scope2_releases`). What SAELens's own ``gemma_3`` converter reads
from the hub (a range request for the tensor shapes, config.json for the hook points and the affine
flag) comes here from the manifest (width, affine, Hugging Face hook points) and the registered model
specs (TransformerLens hook, d_in), so a load needs one file and works offline from a mirror or the
Hugging Face cache. params.safetensors is checked strictly (keys, dtypes, shapes, finite values,
thresholds >= 0); a config.json found beside it must agree with the manifest.

Deliberate differences from SAELens 6.54's ``gemma_3`` converter (each one tested):
 - ``hook_name`` comes from the registered Gemma 3 spec: for transcoders, the spec's ``transcoder``
   site (SAELens says ``blocks.L.hook_mlp_in``, TransformerLens's residual stream *before* the
   pre-MLP RMSNorm, where the transcoders never read).
 - ``hf_hook_name`` / ``hf_hook_name_out`` are the manifest's (the same strings config.json holds),
   also when config.json is absent (SAELens then infers the same strings from the folder name).
 - No network access to build the config (SAELens asks the hub for the tensor shapes even when the
   file is in the Hugging Face cache, so it cannot load offline).
The state dicts are equal: ``W_skip`` is ``affine_skip_connection`` transposed, as in SAELens.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
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
from saelens_gemmascope.directory.npz import ParamsFileError
from saelens_gemmascope.directory.safetensors_params import (
    expected_scope2_shapes,
    read_params_safetensors,
    to_saelens_keys,
)
from saelens_gemmascope.directory.scope2_manifest import Scope2Manifest, Scope2Sae, load_scope2_manifest
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

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
CONVERTER_NAME = "gemmascope2"

# Metadata SAELens's gemma_3 config getter attaches; kept identical so configs compare equal.
_COMMON_METADATA: dict[str, Any] = {
    "dtype": "float32",
    "hook_head_index": None,
    "finetuning_scaling_factor": False,
    "sae_lens_training_version": None,
    "prepend_bos": True,
    "dataset_path": "monology/pile-uncopyrighted",
    "context_size": 1024,
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "reshape_activations": "none",
}


@dataclass(frozen=True)
class Scope2Target:
    """One hub folder, resolved: the manifest record and where it reads and writes in the model."""

    sae: Scope2Sae
    hook_name: str
    hook_name_out: str | None
    d_in: int
    d_out: int

    @property
    def repo_id(self) -> str:
        return self.sae.repo_id

    @property
    def folder(self) -> str:
        return self.sae.folder

    @property
    def raw_shapes(self) -> dict[str, tuple[int, ...]]:
        """The release's keys and shapes (what params.safetensors must hold)."""
        return expected_scope2_shapes(self.d_in, self.sae.d_sae, self.d_out, self.sae.affine)

    @property
    def saelens_shapes(self) -> dict[str, tuple[int, ...]]:
        """The converted state dict's keys and shapes (what the conversion cache must hold)."""
        shapes = {
            "W_enc": (self.d_in, self.sae.d_sae),
            "W_dec": (self.sae.d_sae, self.d_out),
            "b_enc": (self.sae.d_sae,),
            "b_dec": (self.d_out,),
            "threshold": (self.sae.d_sae,),
        }
        if self.sae.affine:
            shapes["W_skip"] = (self.d_out, self.d_in)
        return shapes

    @property
    def architecture(self) -> str:
        if self.sae.site != "transcoder":
            return "jumprelu"
        return "jumprelu_skip_transcoder" if self.sae.affine else "jumprelu_transcoder"


@dataclass(frozen=True)
class LoadedScope2:
    """Converted parameters (SAELens keys) and where they were read from."""

    state_dict: dict[str, torch.Tensor]
    origin: str  # conversion-cache, mirror, hf-cache or hub
    path: Path
    provenance: Provenance | None = None


class UnknownFolderError(ValueError):
    """A folder the Gemma Scope 2 manifest does not list for that repository."""


class GemmaScope2Converter:
    """Converts Gemma Scope 2 hub folders for SAELens, against a manifest and model specs.

    Tests build one over a tiny manifest and tiny model specs; the package uses
    :func:`default_scope2_converter` (shipped manifest, registered specs read at each conversion).
    """

    def __init__(
        self,
        manifest: Scope2Manifest | None = None,
        models: Mapping[str, ModelSpec] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._manifest = manifest
        self._models = dict(models) if models is not None else None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None

    @property
    def manifest(self) -> Scope2Manifest:
        if self._manifest is None:
            self._manifest = load_scope2_manifest()
        return self._manifest

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        return self._models if self._models is not None else registered_models()

    def cache_path(self, repo_id: str, folder: str) -> Path:
        return converted_path(repo_id, folder, self._cache_dir or cache_root())

    # -- resolving ------------------------------------------------------------------------------

    def target(self, repo_id: str, folder: str) -> Scope2Target:
        folder = folder.strip("/")
        sae = self.manifest.by_folder.get((repo_id, folder))
        if sae is None:
            repos = self.manifest.repo_ids()
            if repo_id not in repos:
                raise UnknownRepoError(repo_id, repos)
            known = [f for (repo, f) in self.manifest.by_folder if repo == repo_id]
            close = difflib.get_close_matches(folder, known, n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownFolderError(
                f"{repo_id}: folder {folder!r} is not a released Gemma Scope 2 SAE.{hint} "
                f"List them with: gemmascope ls --model {self.manifest_model(repo_id)}"
            )
        try:
            model = find_model_spec(self.models, sae.model)
        except UnknownNameError as err:
            raise ValueError(f"{repo_id}: no model spec for {sae.model!r} ({err})") from None
        hook = model.hook_point(sae.site, sae.layer)
        out = hook.output
        return Scope2Target(
            sae=sae,
            hook_name=hook.tl_hook,
            hook_name_out=out.tl_hook if out is not None else None,
            d_in=hook.d_in,
            d_out=out.d_in if out is not None else hook.d_in,
        )

    def manifest_model(self, repo_id: str) -> str:
        return next((r.model for r in self.manifest.releases.values() if r.repo_id == repo_id), "?")

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
        self, target: Scope2Target, device: str | None = "cpu", cfg_overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "architecture": target.architecture,
            "d_in": target.d_in,
            "d_sae": target.sae.d_sae,
            "model_name": target.sae.model,
            "hook_name": target.hook_name,
            **_COMMON_METADATA,
            "hf_hook_name": target.sae.hf_hook_in,
        }
        if target.hook_name_out is not None:
            cfg["hook_name_out"] = target.hook_name_out
            cfg["hf_hook_name_out"] = target.sae.hf_hook_out
            cfg["d_out"] = target.d_out
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
        logger.debug("%s/%s read from %s (%s)", repo_id, folder_name, loaded.origin, loaded.path)
        dtype = str_to_dtype(cfg.get("dtype", "float32"))
        state_dict = {key: value.to(device=device, dtype=dtype) for key, value in loaded.state_dict.items()}
        return cfg, state_dict, None

    def read_params(
        self,
        target: Scope2Target,
        *,
        force_download: bool = False,
        mirror: str | os.PathLike[str] | None = None,
        fetch: bool = False,
    ) -> LoadedScope2:
        """The converted, validated parameters: from the conversion cache when its provenance fits
        this load (as for Gemma Scope: see :mod:`saelens_gemmascope.directory.cache`), else read from
        the mirror / Hugging Face cache / hub copy, checked, converted and cached."""
        cached_file = self.cache_path(target.repo_id, target.folder)
        local = (
            None if force_download else find_local_params(target.repo_id, target.folder, mirror, PARAMS_FILE)
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
            if cached is not None and _shapes_match(cached.state_dict, target.saelens_shapes):
                provenance = cached.provenance
                if fetch and not provenance.fetched:
                    provenance = replace(provenance, fetched=True)
                    write_converted(cached_file, cached.state_dict, provenance)
                return LoadedScope2(cached.state_dict, "conversion-cache", cached_file, provenance)
            if lookup.refused is not None:
                refused = f"the conversion cache {cached_file} was not used: {lookup.refused}"
        source: SourceFile = local or download_params(
            target.repo_id,
            target.folder,
            force_download=force_download,
            mirror=mirror,
            note=refused,
            filename=PARAMS_FILE,
        )
        check_config_json(_config_beside(source, target), target.sae)
        # Checked before anything is cached: a bad file is never cached.
        state_dict = to_saelens_keys(read_params_safetensors(source.path, target.raw_shapes))
        provenance = replace(_provenance(target, source), fetched=fetch)
        write_converted(cached_file, state_dict, provenance)
        return LoadedScope2(state_dict, source.origin, source.path, provenance)


def _config_beside(source: SourceFile, target: Scope2Target) -> Path | None:
    """The config.json next to the params file that is read, if there is one (never downloaded: the
    converter needs nothing from it)."""
    if source.origin == "mirror":
        candidate = source.path.with_name(CONFIG_FILE)
        return candidate if candidate.is_file() else None
    found = find_local_params(target.repo_id, target.folder, None, CONFIG_FILE)
    return found.path if found is not None and found.origin == "hf-cache" else None


def check_config_json(path: Path | None, sae: Scope2Sae) -> None:
    """A config.json must agree with the manifest: a JumpReLU of the folder's layer, with the same
    affine flag and Hugging Face hook points (a mismatch means a misplaced or wrong file)."""
    if path is None:
        return
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ParamsFileError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ParamsFileError(f"{path}: not a JSON object")
    expected: dict[str, Any] = {"architecture": "jump_relu", "hf_hook_point_in": sae.hf_hook_in}
    if sae.hf_hook_out is not None:
        expected["hf_hook_point_out"] = sae.hf_hook_out
    if sae.site == "transcoder":
        expected["affine_connection"] = sae.affine
    for key, value in expected.items():
        if key in raw and raw[key] != value:
            raise ParamsFileError(
                f"{path}: {key} is {raw[key]!r}, but {sae.release} {sae.sae_id} is {value!r}; "
                f"the folder holds another SAE's files"
            )
    if raw.get("architecture") is None:
        raise ParamsFileError(f"{path}: has no architecture (expected 'jump_relu')")


def _provenance(target: Scope2Target, source: SourceFile) -> Provenance:
    return Provenance(
        repo_id=target.repo_id,
        folder=target.folder,
        origin=source.origin,
        source_path=str(source.path),
        source_root=root_key(source.root),
        source_fingerprint=source.fingerprint(),
    )


def _shapes_match(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> bool:
    return set(state_dict) == set(expected) and all(
        tuple(state_dict[key].shape) == shape for key, shape in expected.items()
    )


@cache
def default_scope2_converter() -> GemmaScope2Converter:
    """The package's Gemma Scope 2 converter: shipped manifest, registered model specs, user cache."""
    return GemmaScope2Converter()
