"""Fixtures for the recipe's tests: the tiny Gemma 2, a small pre-tokenised corpus, runner configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import pytest
import torch
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from tiny_training_fixtures import register_builtin_architectures, stdlib_token_ids
from training_helpers import CONTEXT, D_IN, HOOK, SPECIAL_IDS, rows_of

from saelens_gemmascope.demo.tiny_model import TinyGemma2, build_tiny_gemma2
from saelens_gemmascope.recipe import gemmascope_sae_config
from saelens_gemmascope.recipe.sae import ARCHITECTURE_NAME, GemmaScopeTrainingSAEConfig


@pytest.fixture(scope="session", autouse=True)
def recipe_architecture_registered() -> None:
    """The architecture through its own hookimpl, in case the host has not registered it."""
    register_builtin_architectures()
    assert ARCHITECTURE_NAME in SAE_TRAINING_CLASS_REGISTRY


@pytest.fixture(scope="session")
def tiny() -> TinyGemma2:
    return build_tiny_gemma2(seed=0)


@pytest.fixture(scope="session")
def corpus_ids(tiny: TinyGemma2) -> list[int]:
    ids = stdlib_token_ids(tiny.tokenizer)
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
