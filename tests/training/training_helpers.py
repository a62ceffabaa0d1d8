"""Helpers shared by the recipe's tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import LoggingConfig
from sae_lens.config import LanguageModelSAERunnerConfig

from saelens_gemmascope.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID
from saelens_gemmascope.recipe import gemmascope_runner_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAEConfig

HOOK = "blocks.1.hook_resid_post"
D_IN = 64
CONTEXT = 128
BATCH = 256
SPECIAL_IDS = (PAD_ID, EOS_ID, BOS_ID)


def rows_of(ids: list[int], n_rows: int, offset: int = 0) -> list[list[int]]:
    body = CONTEXT - 1
    return [[BOS_ID, *ids[offset + i * body : offset + (i + 1) * body]] for i in range(n_rows)]


def tiny_runner_config(
    sae: GemmaScopeTrainingSAEConfig, steps: int, **overrides: Any
) -> LanguageModelSAERunnerConfig[GemmaScopeTrainingSAEConfig]:
    """The recipe's runner config scaled to the tiny model: batch 256, context 128, short warm-ups."""
    values: dict[str, Any] = {
        "context_size": CONTEXT,
        "train_batch_size_tokens": BATCH,
        "n_batches_in_buffer": 8,
        "store_batch_size_prompts": 8,
        "lr_warm_up_steps": 100,
        "n_batches_for_norm_estimate": 8,
        "checkpoint_path": None,
        "output_path": None,
        "logger": LoggingConfig(log_to_wandb=False),
        "verbose": False,
        **overrides,
    }
    return gemmascope_runner_config(
        sae, model_name="tiny-gemma-2", hook_name=HOOK, training_tokens=steps * BATCH, **values
    )


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
