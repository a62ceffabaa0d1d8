"""A disk converter: ``SAE.load_from_disk(folder, converter=gemmascope_disk_loader)`` for one folder
holding a Gemma Scope ``params.npz``.

The npz carries no hook or model information, so the folder must say which SAE it is, by (first
match wins):

1. a sidecar ``gemmascope.json`` in the folder: ``{"release": ..., "sae_id": ...}`` or
   ``{"repo_id": "google/gemma-scope-2b-pt-res", "folder": "layer_12/width_16k/average_l0_82"}``;
2. its path, when laid out like the hub: ``.../gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82``
   (a mirror) or ``.../models--google--gemma-scope-2b-pt-res/snapshots/<rev>/layer_12/...`` (the HF cache);
3. an explicit argument: ``converter=disk_converter_for("gemma-scope-2b-pt-res", "layer_12/...")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from sae_lens.loading.pretrained_sae_loaders import PretrainedSaeDiskLoader
from sae_lens.util import str_to_dtype

from saelens_gemmascope.directory.converter import GemmaScopeConverter, adapt_state_dict, default_converter
from saelens_gemmascope.directory.npz import read_params_npz
from saelens_gemmascope.directory.releases import directory_releases, resolve
from saelens_gemmascope.directory.sources import PARAMS_FILENAME

SIDECAR_FILENAME = "gemmascope.json"


def _read_sidecar(sidecar: Path) -> dict[str, str]:
    """The sidecar's two strings (release + sae_id, or repo_id + folder); errors name the file."""
    expected = '{"release": ..., "sae_id": ...} or {"repo_id": ..., "folder": ...}'
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{sidecar}: not valid JSON ({err}); expected {expected}") from None
    for keys in (("release", "sae_id"), ("repo_id", "folder")):
        if isinstance(info, dict) and keys[0] in info:
            if not all(isinstance(info.get(key), str) and info[key] for key in keys):
                raise ValueError(
                    f"{sidecar}: {' and '.join(keys)} must both be non-empty strings; got {info}"
                )
            return info
    raise ValueError(f"{sidecar}: expected {expected}, got {info!r}")


def identify_folder(path: Path, converter: GemmaScopeConverter) -> tuple[str, str]:
    """(repo_id, hub folder) of a local SAE folder, from its sidecar or its path."""
    sidecar = path / SIDECAR_FILENAME
    if sidecar.is_file():
        info = _read_sidecar(sidecar)
        if "release" in info:
            variant = resolve(info["release"], info["sae_id"])
            return variant.repo_id, variant.folder
        return info["repo_id"], info["folder"]
    parts = path.resolve().parts
    folder = "/".join(parts[-3:])
    for release in converter.manifest.releases.values():
        org, name = release.repo_id.split("/", 1)
        if len(parts) >= 4 and parts[-4] == name:
            return release.repo_id, folder
        if len(parts) >= 6 and parts[-6] == f"models--{org}--{name}" and parts[-5] == "snapshots":
            return release.repo_id, folder
    raise ValueError(
        f"{path}: cannot tell which Gemma Scope SAE this is. Add a {SIDECAR_FILENAME} with "
        f'{{"release": ..., "sae_id": ...}}, keep the hub layout (<repo name>/layer_<L>/width_<W>/average_l0_<K>), '
        f"or pass converter=disk_converter_for(release, sae_id)."
    )


def _load(
    path: Path,
    repo_id: str,
    folder: str,
    device: str,
    cfg_overrides: dict[str, Any] | None,
    converter: GemmaScopeConverter,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    target = converter.target(repo_id, folder)
    cfg = converter.config_for(target, device, cfg_overrides)
    raw = read_params_npz(path / PARAMS_FILENAME, target.expected_shapes)
    dtype = str_to_dtype(cfg.get("dtype", "float32"))
    state_dict = {k: v.to(device=device, dtype=dtype) for k, v in adapt_state_dict(target, raw).items()}
    return cfg, state_dict


def gemmascope_disk_loader(
    path: str | os.PathLike[str],
    device: str = "cpu",
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens ``PretrainedSaeDiskLoader`` for a folder holding a Gemma Scope params.npz."""
    converter = default_converter()
    folder_path = Path(path)
    repo_id, folder = identify_folder(folder_path, converter)
    return _load(folder_path, repo_id, folder, device, cfg_overrides, converter)


def disk_converter_for(
    release: str, sae_id: str, converter: GemmaScopeConverter | None = None
) -> PretrainedSaeDiskLoader:
    """A disk loader bound to one (release, SAE id), for folders whose path says nothing."""
    if converter is None:
        variant = resolve(release, sae_id)
    else:
        variant = resolve(release, sae_id, directory_releases(converter.manifest))
    bound = converter or default_converter()

    def load(
        path: str | os.PathLike[str], device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return _load(Path(path), variant.repo_id, variant.folder, device, cfg_overrides, bound)

    return load


__all__ = ["SIDECAR_FILENAME", "disk_converter_for", "gemmascope_disk_loader"]
