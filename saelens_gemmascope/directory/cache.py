"""The conversion cache: each converted SAE as a memory-mappable safetensors file, so a second load
skips the npz entirely.

Location: ``converted/<repo_id>/<folder>/params.safetensors`` under the package's cache directory
(:func:`saelens_gemmascope.cache_dir.user_cache_dir`). Each file
records the fingerprint of the npz it came from; a different source fingerprint is a miss.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saelens_gemmascope.cache_dir import user_cache_dir

CONVERTED_FILENAME = "params.safetensors"
#: Bump when the cached content changes meaning, so old files are re-converted.
CACHE_FORMAT = "1"

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    return user_cache_dir()


def converted_path(repo_id: str, folder: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "converted" / repo_id / folder / CONVERTED_FILENAME


def read_converted(
    path: Path, source_fingerprint: str | None, device: str = "cpu"
) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None on a miss (absent, unreadable, other format or other source).

    ``source_fingerprint=None`` accepts any source: used when the npz is no longer available locally.
    """
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                return None
            if source_fingerprint is not None and meta.get("source") != source_fingerprint:
                return None
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        logger.warning("ignoring unreadable conversion cache file %s (%s)", path, err)
        return None


def write_converted(
    path: Path, state_dict: Mapping[str, torch.Tensor], source_fingerprint: str
) -> Path | None:
    """Write atomically; a cache that cannot be written only costs speed, so it warns and returns None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
        save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT, "source": source_fingerprint})
        tmp.replace(path)
    except OSError as err:
        logger.warning("could not write the conversion cache %s (%s)", path, err)
        return None
    return path
