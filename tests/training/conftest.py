"""Fixtures for the recipe's tests: the tiny Gemma 2, a small pre-tokenised corpus, runner configs."""

from __future__ import annotations

import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from training_helpers import CONTEXT, D_IN, HOOK, SPECIAL_IDS, rows_of

from saelens_gemmascope.builtin import architectures
from saelens_gemmascope.contributions import Architecture
from saelens_gemmascope.demo.tiny_model import TinyGemma2, build_tiny_gemma2
from saelens_gemmascope.recipe import gemmascope_sae_config
from saelens_gemmascope.recipe.sae import ARCHITECTURE_NAME, GemmaScopeTrainingSAEConfig


@pytest.fixture(scope="session", autouse=True)
def recipe_architecture_registered() -> None:
    """The architecture through its own hookimpl, in case the host has not registered it."""
    found: list[Architecture] = []
    architectures.register_sae_architectures(found.append)
    for arch in found:
        if arch.name not in SAE_CLASS_REGISTRY:
            register_sae_class(arch.name, arch.sae_class, arch.config_class)
        if arch.training_class is not None and arch.name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(arch.name, arch.training_class, arch.training_config_class)  # type: ignore[arg-type]
    assert ARCHITECTURE_NAME in SAE_TRAINING_CLASS_REGISTRY


@pytest.fixture(scope="session")
def tiny() -> TinyGemma2:
    return build_tiny_gemma2(seed=0)


def _corpus_token_ids(tiny: TinyGemma2) -> list[int]:
    # Real text (Python's own standard library) so that the activations have structure.
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-m]*.py"))[:40]
    text = "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)
    return list(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="session")
def corpus_ids(tiny: TinyGemma2) -> list[int]:
    ids = _corpus_token_ids(tiny)
    assert len(ids) > 400 * CONTEXT
    return ids


@pytest.fixture(scope="session")
def train_dataset(corpus_ids: list[int]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": rows_of(corpus_ids, 2000)})


@pytest.fixture(scope="session")
def heldout_activations(tiny: TinyGemma2, corpus_ids: list[int]) -> torch.Tensor:
    """Raw activations at HOOK on text the training never sees, special tokens removed."""
    tokens = torch.tensor(rows_of(corpus_ids, 16, offset=len(corpus_ids) - 16 * CONTEXT - 1))
    _, cache = tiny.tl_model.run_with_cache(tokens, names_filter=[HOOK])
    acts = cache[HOOK].reshape(-1, D_IN)
    keep = ~torch.isin(tokens.reshape(-1), torch.tensor(SPECIAL_IDS))
    return acts[keep].detach()


@pytest.fixture(scope="session")
def make_sae_config() -> Callable[..., GemmaScopeTrainingSAEConfig]:
    def make(l0_coefficient: float = 1e-3, d_sae: int = 256, **overrides: Any) -> GemmaScopeTrainingSAEConfig:
        return gemmascope_sae_config(D_IN, d_sae, l0_coefficient, **{"l0_warm_up_steps": 300, **overrides})

    return make
