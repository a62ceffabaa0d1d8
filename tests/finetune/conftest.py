"""Fixtures for the KL finetuning tests: the tiny Gemma 3, stdlib token rows, and a briefly trained SAE."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from finetune_helpers import CONTEXT, D_SAE, HOOK, SAE_BATCH, SAE_L0_COEFFICIENT, SAE_LR, SAE_STEPS, Rows
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import TrainStepInput

from saelens_gemmascope.data import stdlib_token_dataset
from saelens_gemmascope.demo.tiny_gemma3 import TINY_GEMMA3_DIMS, TINY_GEMMA3_NAME, build_tiny_gemma3
from saelens_gemmascope.recipe import gemmascope_sae_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE


@pytest.fixture(scope="session")
def model() -> Any:
    return build_tiny_gemma3(seed=0).tl_model


@pytest.fixture(scope="session")
def rows(model: Any) -> Rows:
    train = torch.tensor(stdlib_token_dataset(model.tokenizer, CONTEXT)["input_ids"][:512])
    heldout = torch.tensor(stdlib_token_dataset(model.tokenizer, CONTEXT, holdout=True)["input_ids"][:32])
    return Rows(sae_train=train[:256], finetune=train[256:], heldout=heldout)


@pytest.fixture(scope="session")
def trained_sae(model: Any, rows: Rows) -> JumpReLUSAE:
    """A JumpReLU SAE at HOOK trained with the recipe's SAE (Adam, unit-norm decoder, input scale C
    folded after) for a few hundred steps: far from converged, but a real trained SAE (FVU ≈ 0.1)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(rows.sae_train, names_filter=[HOOK])
    x = cache[HOOK][:, 1:].reshape(-1, TINY_GEMMA3_DIMS.d_model)  # BOS left out
    scale = float(x.pow(2).sum(-1).mean().sqrt())
    x = x / scale
    torch.manual_seed(0)
    sae = GemmaScopeTrainingSAE(
        gemmascope_sae_config(TINY_GEMMA3_DIMS.d_model, D_SAE, SAE_L0_COEFFICIENT, l0_warm_up_steps=100)
    )
    sae.recipe_trainer_attached = True
    optimizer = torch.optim.Adam(sae.parameters(), lr=SAE_LR, betas=(0.0, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(0)
    for step in range(SAE_STEPS):
        batch = x[torch.randint(0, x.shape[0], (SAE_BATCH,), generator=generator)]
        coefficient = SAE_L0_COEFFICIENT * min(1.0, step / 100)
        out = sae.training_forward_pass(TrainStepInput(batch, {"l0": coefficient}, None, step, False))
        optimizer.zero_grad()
        out.loss.backward()
        sae.before_optimizer_step()
        optimizer.step()
        sae.after_optimizer_step()
    sae.fold_activation_norm_scaling_factor(1.0 / scale)
    config = JumpReLUSAEConfig(d_in=TINY_GEMMA3_DIMS.d_model, d_sae=D_SAE, apply_b_dec_to_input=False)
    config.metadata.hook_name, config.metadata.model_name = HOOK, TINY_GEMMA3_NAME
    inference = JumpReLUSAE(config)
    inference.load_state_dict(sae.inference_state_dict())
    return inference
