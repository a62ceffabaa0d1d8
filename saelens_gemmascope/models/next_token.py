"""Next-token log-probabilities and KL(clean ‖ spliced) per prediction (the evaluation's and the KL
finetuning's one definition).

Both keep the autograd graph, so the KL finetuning trains through them.
"""

from __future__ import annotations

import torch


def next_token_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the predictions at positions ``0 .. pos - 2`` (those with a next token), in
    at least float32 (bfloat16 and float16 logits are promoted; float64 stays float64)."""
    return torch.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def kl_divergence(clean_log_probs: torch.Tensor, spliced_log_probs: torch.Tensor) -> torch.Tensor:
    """``(batch, pos - 1)``: KL(clean ‖ spliced), in nats."""
    return (clean_log_probs.exp() * (clean_log_probs - spliced_log_probs)).sum(-1)
