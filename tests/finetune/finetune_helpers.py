"""Constants and records shared by the KL finetuning tests and their fixtures."""

from __future__ import annotations

from dataclasses import dataclass

import torch

HOOK = "blocks.3.hook_resid_post"
CONTEXT = 64
D_SAE = 192
SAE_STEPS = 400
SAE_BATCH = 1024
SAE_L0_COEFFICIENT = 3e-3
SAE_LR = 3e-3


@dataclass(frozen=True)
class Rows:
    """Token rows (BOS first): the SAE's training rows, the finetuning rows, held-out rows."""

    sae_train: torch.Tensor
    finetune: torch.Tensor
    heldout: torch.Tensor
