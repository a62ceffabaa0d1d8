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
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from saelens_gemmascope.directory.conversion import CachedConverter, LoadedParams
from saelens_gemmascope.directory.errors import UnknownRepoError
from saelens_gemmascope.directory.npz import ParamsFileError, expected_param_shapes
from saelens_gemmascope.directory.safetensors_params import (
    expected_scope2_shapes,
    read_params_safetensors,
    to_saelens_keys,
)
from saelens_gemmascope.directory.scope2_layout import read_config_json
from saelens_gemmascope.directory.scope2_manifest import Scope2Manifest, Scope2Sae, load_scope2_manifest
from saelens_gemmascope.directory.sources import SourceFile, find_local_params

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
        return expected_param_shapes(self.d_in, self.sae.d_sae, self.d_out, skip=self.sae.affine)

    @property
    def architecture(self) -> str:
        if self.sae.site != "transcoder":
            return "jumprelu"
        return "jumprelu_skip_transcoder" if self.sae.affine else "jumprelu_transcoder"


#: The Gemma Scope 2 name for what a read gives (one record for both converters since they share it).
LoadedScope2 = LoadedParams


class UnknownFolderError(ValueError):
    """A folder the Gemma Scope 2 manifest does not list for that repository."""


class GemmaScope2Converter(CachedConverter[Scope2Manifest, Scope2Target]):
    """Converts Gemma Scope 2 hub folders for SAELens, against a manifest and model specs.

    Tests build one over a tiny manifest and tiny model specs; the package uses
    :func:`default_scope2_converter` (shipped manifest, registered specs read at each conversion).
    """

    params_file = PARAMS_FILE

    def load_default_manifest(self) -> Scope2Manifest:
        return load_scope2_manifest()

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
        model = self.model_spec(repo_id, sae.model)
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

    def config_fields(self, target: Scope2Target, device: str | None) -> dict[str, Any]:
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
        return cfg

    # -- reading parameters (the flow is CachedConverter.read_params) -----------------------------

    def cached_shapes(self, target: Scope2Target) -> dict[str, tuple[int, ...]]:
        return target.saelens_shapes

    def read_source(self, source: SourceFile, target: Scope2Target) -> dict[str, torch.Tensor]:
        # Unlike Gemma Scope's, the release's keys are not SAELens's: renamed before caching.
        check_config_json(_config_beside(source, target), target.sae)
        return to_saelens_keys(read_params_safetensors(source.path, target.raw_shapes))


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
    raw = read_config_json(path)
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


@cache
def default_scope2_converter() -> GemmaScope2Converter:
    """The package's Gemma Scope 2 converter: shipped manifest, registered model specs, user cache."""
    return GemmaScope2Converter()
