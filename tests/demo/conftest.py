"""Small settings (seconds to build) and one cached build of them, shared by the tests here."""

from __future__ import annotations

from pathlib import Path

import pytest

from saelens_gemmascope.demo.embedded_model import (
    EmbeddedModel,
    EmbeddedModelSettings,
    load_embedded_model,
)

#: Every Gemma 2 feature at toy size: two layers (one local, one global), GQA (2 heads, 1 KV head)
#: and an attention width (2 x 8) unlike d_model. Trains for a few dozen steps in about a second.
SMALL_SETTINGS = EmbeddedModelSettings(
    vocab_size=320,
    d_model=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    d_head=8,
    d_mlp=64,
    sliding_window=8,
    context_size=32,
    batch_size=8,
    steps=20,
    warmup_steps=5,
)


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def small_settings() -> EmbeddedModelSettings:
    return SMALL_SETTINGS


@pytest.fixture(scope="session")
def small_model(small_settings: EmbeddedModelSettings, small_cache: Path) -> EmbeddedModel:
    return load_embedded_model(0, settings=small_settings, cache_dir=small_cache, progress=False)
