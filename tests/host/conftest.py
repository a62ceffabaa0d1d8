from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sae_lens_sandbox() -> Iterator[None]:
    """Restore SAELens's registries, converter tables and directory after a test applies to them."""
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    tables = [
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        loaders.NAMED_PRETRAINED_SAE_LOADERS,
        loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        get_pretrained_saes_directory(),
    ]
    saved = [dict(table) for table in tables]
    yield
    for table, copy in zip(tables, saved, strict=True):
        table.clear()
        table.update(copy)


@pytest.fixture
def make_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Write a throwaway installed distribution (dist-info + module) and put it on ``sys.path``."""

    def make(
        dist: str, module: str, source: str, entry_point: str | None = None, version: str = "0.1"
    ) -> Path:
        root = tmp_path / f"site-{dist}"
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        ep = entry_point or f"{dist} = {module}"
        (info / "entry_points.txt").write_text(f"[saelens_gemmascope]\n{ep}\n")
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        return root

    yield make
    for name in [m for m in sys.modules if m.startswith("gsplug_")]:
        del sys.modules[name]
