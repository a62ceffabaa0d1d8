"""Fixtures for the directory tests: a fake Hugging Face cache, a mirror, a private conversion cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gemmascope_fakes import FAKE_REVISION, save_npz, tiny_manifest, tiny_models
from huggingface_hub import constants as hf_constants

from saelens_gemmascope.directory.converter import GemmaScopeConverter


@pytest.fixture(autouse=True)
def private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own conversion cache and an empty HF cache, and no mirror from the shell."""
    conv = tmp_path / "converted-cache"
    monkeypatch.setenv("SAELENS_GEMMASCOPE_CACHE", str(conv))
    monkeypatch.delenv("SAELENS_GEMMASCOPE_MIRROR", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    yield conv


@pytest.fixture
def fake_hf_cache(tmp_path: Path) -> Callable[..., Path]:
    """``put(repo_id, folder, arrays)`` writes params.npz where huggingface_hub's cache keeps it."""
    root = Path(hf_constants.HF_HUB_CACHE)

    def put(repo_id: str, folder: str, arrays: dict[str, np.ndarray]) -> Path:
        repo_dir = root / f"models--{repo_id.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(FAKE_REVISION)
        return save_npz(repo_dir / "snapshots" / FAKE_REVISION / folder / "params.npz", arrays)

    return put


@pytest.fixture
def mirror(tmp_path: Path) -> Callable[..., Path]:
    """``put(repo_id, folder, arrays)`` writes into a mirror root (returned by ``put.root``)."""
    root = tmp_path / "mirror"

    def put(repo_id: str, folder: str, arrays: dict[str, np.ndarray]) -> Path:
        return save_npz(root / repo_id / folder / "params.npz", arrays)

    put.root = root  # type: ignore[attr-defined]
    return put


@pytest.fixture
def tiny_converter(tmp_path: Path) -> GemmaScopeConverter:
    return GemmaScopeConverter(tiny_manifest(), tiny_models())


@pytest.fixture
def scope2_hf_cache(tmp_path: Path) -> Callable[..., Path]:
    """``put(repo_id, folder, filename, data)`` writes a file (arrays -> safetensors, dict -> JSON)
    where huggingface_hub's cache keeps it; returns its path."""
    import json

    from gemmascope_fakes import save_safetensors

    root = Path(hf_constants.HF_HUB_CACHE)

    def put(repo_id: str, folder: str, filename: str, data: object) -> Path:
        repo_dir = root / f"models--{repo_id.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(FAKE_REVISION)
        path = repo_dir / "snapshots" / FAKE_REVISION / folder / filename
        if isinstance(data, dict) and filename.endswith(".json"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
            return path
        return save_safetensors(path, data)  # type: ignore[arg-type]

    return put
