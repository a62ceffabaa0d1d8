"""Serve a folder of Gemma Scope-layout exports through ``SAE.from_pretrained``.

``register_local_release(root)`` adds one entry to SAELens's pretrained-SAE directory (the cached
dict ``get_pretrained_saes_directory()`` returns) whose ``repo_id`` is the folder and whose
converter, ``gemmascope_local``, reads ``params.npz`` and ``release.json`` from disk. It is an
explicit call, never done at import: the folder is the user's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens import __version__ as sae_lens_version
from sae_lens.loading.pretrained_sae_loaders import (
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
    NAMED_PRETRAINED_SAE_LOADERS,
)
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

from saelens_gemmascope.directory.npz import expected_param_shapes, read_params_npz
from saelens_gemmascope.training.export import read_release_manifest

LOCAL_CONVERTER_NAME = "gemmascope_local"


def _entry(root: Path, folder_name: str) -> dict[str, Any]:
    for entry in read_release_manifest(root)["saes"]:
        if entry["path"] == folder_name:
            return entry  # type: ignore[no-any-return]
    raise ValueError(f"{root}: release.json has no SAE at {folder_name!r}")


def local_release_config(
    repo_id: str,
    folder_name: str,
    device: str,
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAELens config dict of one exported SAE: a raw-space ``jumprelu``."""
    entry = _entry(Path(repo_id), folder_name)
    cfg: dict[str, Any] = {
        "architecture": "jumprelu",
        "d_in": entry["d_in"],
        "d_sae": entry["d_sae"],
        "dtype": "float32",
        "device": device,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": entry.get("reshape_activations") or "none",
        "metadata": {
            "sae_lens_version": sae_lens_version,
            "model_name": entry.get("model_name"),
            "hook_name": entry.get("hook_name"),
            "hook_head_index": entry.get("hook_head_index"),
            "context_size": entry.get("context_size"),
            "prepend_bos": entry.get("prepend_bos", True),
            "l0": entry.get("average_l0"),
        },
    }
    for key, value in (cfg_overrides or {}).items():
        if key in cfg:
            cfg[key] = value
        else:
            cfg["metadata"][key] = value
    return cfg


def local_release_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """Config, weights (shape-checked) and no sparsity for one exported SAE."""
    cfg = local_release_config(repo_id, folder_name, device, force_download, cfg_overrides)
    params_path = Path(repo_id) / folder_name / "params.npz"
    state = read_params_npz(params_path, expected_param_shapes(cfg["d_in"], cfg["d_sae"]))
    return cfg, {k: v.to(device) for k, v in state.items()}, None


def _ensure_converter() -> None:
    for registry, function in (
        (NAMED_PRETRAINED_SAE_LOADERS, local_release_loader),
        (NAMED_PRETRAINED_SAE_CONFIG_GETTERS, local_release_config),
    ):
        existing = registry.get(LOCAL_CONVERTER_NAME)
        if existing is None:
            registry[LOCAL_CONVERTER_NAME] = function  # type: ignore[assignment]
        elif existing is not function:
            raise ValueError(f"another converter is already registered as {LOCAL_CONVERTER_NAME!r}")


def register_local_release(root: str | Path, release_name: str | None = None) -> str:
    """Register the exports under ``root`` as a SAELens release and return its name.

    ``release_name`` defaults to ``local/<folder name>``. Registering the same folder again
    refreshes the entry (new exports become visible); a name already used by another release
    raises. Afterwards ``SAE.from_pretrained(name, "layer_1/width_512/average_l0_37")`` loads it.
    """
    root = Path(root).resolve()
    manifest = read_release_manifest(root)
    if not manifest["saes"]:
        raise ValueError(f"{root}: no {Path('release.json')} with exported SAEs")
    name = release_name or f"local/{root.name}"
    directory = get_pretrained_saes_directory()
    existing = directory.get(name)
    if existing is not None and (
        existing.conversion_func != LOCAL_CONVERTER_NAME or existing.repo_id != str(root)
    ):
        raise ValueError(f"release {name!r} is already registered (repo {existing.repo_id!r})")
    models = {e.get("model_name") for e in manifest["saes"]}
    _ensure_converter()
    directory[name] = PretrainedSAELookup(
        release=name,
        repo_id=str(root),
        model=models.pop() if len(models) == 1 else "mixed",  # type: ignore[arg-type]
        conversion_func=LOCAL_CONVERTER_NAME,
        saes_map={e["id"]: e["path"] for e in manifest["saes"]},
        expected_var_explained={},
        expected_l0={e["id"]: e["average_l0"] for e in manifest["saes"]},
        neuronpedia_id={},
        norm_scaling_factor={},
        config_overrides=None,
    )
    return name
