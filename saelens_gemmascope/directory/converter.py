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

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from saelens_gemmascope.directory.conversion import CachedConverter, LoadedParams
from saelens_gemmascope.directory.errors import UnknownRepoError
from saelens_gemmascope.directory.manifest import EMBEDDING, ReleaseSpec, SuiteManifest, load_manifest
from saelens_gemmascope.directory.npz import expected_param_shapes, read_params_npz
from saelens_gemmascope.directory.sources import SourceFile

# LoadedParams (now shared with the Gemma Scope 2 converter) is re-exported: imported from here before.
__all__ = [
    "FOLDER_PATTERN",
    "ConversionTarget",
    "GemmaScopeConverter",
    "LoadedParams",
    "adapt_state_dict",
    "default_converter",
]


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


class GemmaScopeConverter(CachedConverter[SuiteManifest, ConversionTarget]):
    """Converts Gemma Scope hub folders for SAELens, against a manifest and model specs.

    Tests build one over a tiny manifest and tiny model dimensions; the package uses
    :func:`default_converter` (the shipped manifest, the registered model specs, the user cache). A
    plugin can serve its own releases with one over its own manifest: ``models`` left out, the
    registered specs (its own model's included) are read at each conversion.
    """

    def load_default_manifest(self) -> SuiteManifest:
        return load_manifest()

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
        model = self.model_spec(repo_id, release.model)
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

    def config_fields(self, target: ConversionTarget, device: str | None) -> dict[str, Any]:
        if target.site == "transcoder":
            # Like SAELens's transcoder getter, names a device even when given none (config_for then
            # writes a given one in the same place).
            return {
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
        return {
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

    # -- reading parameters (the flow is CachedConverter.read_params) -----------------------------

    def cached_shapes(self, target: ConversionTarget) -> dict[str, tuple[int, ...]]:
        return target.expected_shapes

    def read_source(self, source: SourceFile, target: ConversionTarget) -> dict[str, torch.Tensor]:
        # The released keys are SAELens's: cached raw, adapted (embedding SAEs) at each load.
        return read_params_npz(source.path, target.expected_shapes)

    def to_saelens(
        self, target: ConversionTarget, state_dict: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return adapt_state_dict(target, state_dict)


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
