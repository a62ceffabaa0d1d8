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
