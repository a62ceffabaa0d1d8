"""Which positions of a token batch count towards the metrics (the paper masks BOS, EOS and padding).

Two rules, one per kind of metric:

* **Activation rule** (L0, FVU, MSE, latent firing): the activation at position ``t`` counts when
  ``tokens[t]`` is not BOS, EOS or padding. At every other position the spliced forward pass also
  keeps the clean activation: SAEs were neither trained nor meant to be used there (BOS activations
  are huge outliers), so their reconstruction must not leak into the loss metrics either.
* **Loss rule** (cross-entropy, delta loss, KL): the prediction made at position ``t`` (of token
  ``t + 1``) counts when ``tokens[t]`` is not padding and ``tokens[t + 1]`` is neither padding nor
  BOS. A real EOS as the target counts (predicting the end of a document is language modelling);
  when the tokenizer pads with its EOS id, EOS is padding and never counts.

Loss masks have one column fewer than the batch: the last position has no next token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SpecialTokens:
    """The ids the masks treat specially; any of them may be absent (None)."""

    bos: int | None
    eos: int | None
    pad: int | None

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialTokens:
        return cls(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)

    @classmethod
    def of_model(cls, model: Any) -> SpecialTokens:
        """The ids of a model's tokenizer; none without a tokenizer (then every position counts)."""
        tokenizer = getattr(model, "tokenizer", None)
        return cls(None, None, None) if tokenizer is None else cls.of(tokenizer)


def _is_any(tokens: torch.Tensor, ids: tuple[int | None, ...]) -> torch.Tensor:
    hit = torch.zeros_like(tokens, dtype=torch.bool)
    for token_id in ids:
        if token_id is not None:
            hit |= tokens == token_id
    return hit


def activation_mask(tokens: torch.Tensor, special: SpecialTokens) -> torch.Tensor:
    """``(batch, pos)`` bool: the activation at this position counts."""
    return ~_is_any(tokens, (special.bos, special.eos, special.pad))


def loss_mask(tokens: torch.Tensor, special: SpecialTokens) -> torch.Tensor:
    """``(batch, pos - 1)`` bool: the prediction made at this position (of the next token) counts."""
    current_is_pad = _is_any(tokens[:, :-1], (special.pad,))
    target_excluded = _is_any(tokens[:, 1:], (special.pad, special.bos))
    return ~current_is_pad & ~target_excluded
