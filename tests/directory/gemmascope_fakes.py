"""A tiny Gemma Scope world for the directory tests: real repo ids and folder names, tiny dimensions,
so every params.npz stays a few KB (SAELens's converters read the same files by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saelens_gemmascope.directory.manifest import SuiteManifest, parse_manifest
from saelens_gemmascope.directory.npz import PARAM_KEYS
from saelens_gemmascope.models.gemma2 import Gemma2Dims, gemma2_spec
from saelens_gemmascope.models.spec import ModelSpec

FAKE_REVISION = "0" * 40

#: Tiny stand-ins: real release names and folders (a subset of the real L0s), tiny sizes.
TINY_WIDTHS = {"4k": 6, "16k": 12}
TINY_DIMS = Gemma2Dims(d_model=8, n_layers=26, n_heads=2, n_kv_heads=1, d_head=3, d_mlp=16)


def tiny_manifest() -> SuiteManifest:
    def release(repo: str, site: str, widths: dict[str, dict[str, list[int]]]) -> dict[str, object]:
        return {
            "repo_id": f"google/{repo}",
            "model": "gemma-2-2b",
            "site": site,
            "canonical_release": f"{repo}-canonical" if site != "transcoder" else None,
            "widths": {w: {"l0s": l0s} for w, l0s in widths.items()},
        }

    return parse_manifest(
        {
            "format": 1,
            "canonical_target_l0": 100,
            "widths": TINY_WIDTHS,
            "training_tokens": {"default": 8, "16k": 4},
            "releases": {
                "gemma-scope-2b-pt-res": release(
                    "gemma-scope-2b-pt-res",
                    "res",
                    {"4k": {"embedding": [6, 21, 44, 111]}, "16k": {12: [22, 41, 82, 176, 445]}},
                ),
                "gemma-scope-2b-pt-mlp": release(
                    "gemma-scope-2b-pt-mlp", "mlp", {"16k": {3: [21, 44, 95, 195, 377]}}
                ),
                "gemma-scope-2b-pt-att": release(
                    "gemma-scope-2b-pt-att", "att", {"16k": {3: [24, 55, 117, 219, 386]}}
                ),
                "gemma-scope-2b-pt-transcoders": release(
                    "gemma-scope-2b-pt-transcoders", "transcoder", {"16k": {3: [54]}}
                ),
            },
        }
    )


def tiny_models() -> dict[str, ModelSpec]:
    return {"gemma-2-2b": gemma2_spec("gemma-2-2b", TINY_DIMS, hf_repo="google/gemma-2-2b")}


def random_params(d_in: int, d_sae: int, seed: int = 0, lower_case: bool = False) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(seed)
    params = {
        "W_enc": gen.normal(size=(d_in, d_sae)),
        "W_dec": gen.normal(size=(d_sae, d_in)),
        "b_enc": gen.normal(size=(d_sae,)),
        "b_dec": gen.normal(size=(d_in,)),
        "threshold": gen.uniform(0.1, 1.0, size=(d_sae,)),
    }
    out = {k: v.astype(np.float32) for k, v in params.items()}
    if lower_case:
        out = {("w_" + k[2:] if k.startswith("W_") else k): v for k, v in out.items()}
    assert set(PARAM_KEYS) <= {("W_" + k[2:] if k.startswith("w_") else k) for k in out}
    return out


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(v) for k, v in arrays.items()}


# -- Gemma Scope 2 (Gemma 3): real release names, ids and folders; tiny widths and model -------------

#: Tiny stand-ins for the Gemma Scope 2 widths.
TINY_SCOPE2_WIDTHS = {"16k": 12, "262k": 20}
#: The tiny Gemma 3's d_model, heads and head size (attention SAEs read n_heads * d_head = 6).
TINY_SCOPE2_D_MODEL, TINY_SCOPE2_HEADS, TINY_SCOPE2_D_HEAD = 8, 2, 3
SCOPE2_REPO = "google/gemma-scope-2-1b-pt"
SCOPE2_MODEL = "google/gemma-3-1b-pt"
#: (release, SAELens id) of each kind in the tiny world.
SCOPE2_CASES = {
    "res": ("gemma-scope-2-1b-pt-res", "layer_13_width_16k_l0_small"),
    "mlp": ("gemma-scope-2-1b-pt-mlp", "layer_13_width_262k_l0_big"),
    "att": ("gemma-scope-2-1b-pt-att", "layer_7_width_16k_l0_medium"),
    "transcoder": ("gemma-scope-2-1b-pt-transcoders", "transcoder/layer_13_width_16k_l0_small"),
    "affine transcoder": ("gemma-scope-2-1b-pt-transcoders", "transcoder/layer_13_width_16k_l0_small_affine"),
}


def tiny_scope2_manifest_dict() -> dict[str, object]:
    """The shipped manifest's layout for one repository, at tiny widths (real names and folders)."""
    hooks = {
        "res": {"in": "model.layers.{layer}.output"},
        "mlp": {"in": "model.layers.{layer}.post_feedforward_layernorm.output"},
        "att": {"in": "model.layers.{layer}.self_attn.o_proj.input"},
        "transcoder": {
            "in": "model.layers.{layer}.pre_feedforward_layernorm.output",
            "out": "model.layers.{layer}.post_feedforward_layernorm.output",
        },
    }
    sweep = {"layers": "sweep", "widths": ["16k", "262k"], "l0": ["small", "medium", "big"]}
    return {
        "format": 1,
        "widths": TINY_SCOPE2_WIDTHS,
        "hf_hooks": hooks,
        "kinds": {
            "res": {"site": "res", "folder": "resid_post", **sweep},
            "mlp": {"site": "mlp", "folder": "mlp_out", **sweep},
            "att": {"site": "att", "folder": "attn_out", **sweep},
            "transcoders": {
                "site": "transcoder",
                "folder": "transcoder",
                "affine": [False, True],
                "id_prefix": True,
                **sweep,
            },
        },
        "not_served": {"clt": "not in this tiny world."},
        "sizes": {"1b": {"n_layers": 26, "sweep_layers": {7: [18, 54, 132], 13: [20, 60, 150]}}},
        "repos": {
            "gemma-scope-2-1b-pt": {
                "size": "1b",
                "model": SCOPE2_MODEL,
                "neuronpedia_model": "gemma-3-1b",
                "neuronpedia": {"res": {"variant": "l0_medium", "at": {"16k": "every"}}},
            }
        },
    }


def tiny_scope2_manifest():  # -> Scope2Manifest (imported lazily, like the model below)
    from saelens_gemmascope.directory.scope2_manifest import parse_scope2_manifest

    return parse_scope2_manifest(tiny_scope2_manifest_dict())


def tiny_gemma3_models() -> dict[str, ModelSpec]:
    """A Gemma 3 spec of the registered kind (G1's gemma3 module), tiny dimensions."""
    from saelens_gemmascope.models.gemma3 import Gemma3Dims, gemma3_spec

    dims = Gemma3Dims(
        d_model=TINY_SCOPE2_D_MODEL,
        n_layers=26,
        n_heads=TINY_SCOPE2_HEADS,
        n_kv_heads=1,
        d_head=TINY_SCOPE2_D_HEAD,
        d_mlp=16,
        d_vocab=32,
        sliding_window=4,
        query_pre_attn_scalar=TINY_SCOPE2_D_HEAD,
    )
    spec = gemma3_spec("gemma-3-1b-pt", dims, hf_repo=SCOPE2_MODEL, aliases=(SCOPE2_MODEL,))
    return {spec.name: spec}


def scope2_params(d_in: int, d_sae: int, d_out: int, affine: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """A Gemma Scope 2 params.safetensors's arrays (lower-case keys), random."""
    gen = np.random.default_rng(seed)
    arrays = {
        "w_enc": gen.normal(size=(d_in, d_sae)),
        "w_dec": gen.normal(size=(d_sae, d_out)),
        "b_enc": gen.normal(size=(d_sae,)),
        "b_dec": gen.normal(size=(d_out,)),
        "threshold": gen.uniform(0.1, 1.0, size=(d_sae,)),
    }
    if affine:
        arrays["affine_skip_connection"] = gen.normal(size=(d_in, d_out)) / d_in  # [d_in, d_out]
    return {key: value.astype(np.float32) for key, value in arrays.items()}


def save_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(path))
    return path


def scope2_config_json(folder: str, layer: int) -> dict[str, object]:
    """A config.json as the release writes it (the fields SAELens's gemma_3 loader reads)."""
    cfg: dict[str, object] = {"architecture": "jump_relu", "model_name": SCOPE2_MODEL}
    if folder.startswith("transcoder"):
        cfg["hf_hook_point_in"] = f"model.layers.{layer}.pre_feedforward_layernorm.output"
        cfg["hf_hook_point_out"] = f"model.layers.{layer}.post_feedforward_layernorm.output"
        cfg["affine_connection"] = folder.endswith("_affine")
    elif folder.startswith("resid_post"):
        cfg["hf_hook_point_in"] = f"model.layers.{layer}.output"
    elif folder.startswith("attn_out"):
        cfg["hf_hook_point_in"] = f"model.layers.{layer}.self_attn.o_proj.input"
    else:
        cfg["hf_hook_point_in"] = f"model.layers.{layer}.post_feedforward_layernorm.output"
    return cfg
