"""Masked positions (BOS, EOS, padding) provably do not count."""

from __future__ import annotations

from typing import Any

import torch
from eval_helpers import counted, pca_sae, site_activations
from sae_lens import JumpReLUSAE

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID
from saelens_gemmascope.evaluation import evaluate_saes
from saelens_gemmascope.models.token_masks import SpecialTokens, activation_mask, loss_mask

HOOK = "blocks.1.hook_resid_post"


def test_the_documented_rules_on_a_hand_written_row() -> None:
    a, b, c = 10, 11, 12
    row = torch.tensor([[BOS_ID, a, b, EOS_ID, BOS_ID, c, PAD_ID, PAD_ID]])
    special = SpecialTokens(bos=BOS_ID, eos=EOS_ID, pad=PAD_ID)
    assert activation_mask(row, special).int().tolist() == [[0, 1, 1, 0, 0, 1, 0, 0]]
    # predictions: a|BOS, b|a, EOS|b (a real EOS counts), BOS|EOS no, c|BOS, pad|c no, pad|pad no
    assert loss_mask(row, special).int().tolist() == [[1, 1, 1, 0, 1, 0, 0]]
    # a tokenizer padding with EOS: EOS is then padding and never a target
    eos_pads = SpecialTokens(bos=BOS_ID, eos=EOS_ID, pad=EOS_ID)
    assert loss_mask(row, eos_pads).int().tolist()[0][2] == 0


class _CorruptOn(JumpReLUSAE):
    """The same SAE, but its reconstruction is garbage wherever the input is one of ``bad``."""

    def __init__(self, sae: JumpReLUSAE, bad: torch.Tensor) -> None:
        super().__init__(sae.cfg)
        self.load_state_dict(sae.state_dict())
        self.bad = bad
        self._hit: torch.Tensor | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x[..., None, :] - self.bad).abs().amax(-1).amin(-1)
        self._hit = distance < 1e-6
        return super().encode(x)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = super().decode(feature_acts)
        assert self._hit is not None
        return torch.where(self._hit[..., None], out + 1e3, out)


def _scalars(result: Any) -> dict[str, Any]:
    return result.saes[0].metrics


def test_an_sae_terrible_only_at_masked_positions_scores_the_same(
    tiny: TinyGemma2, tokens: torch.Tensor
) -> None:
    acts = site_activations(tiny, tokens, HOOK)
    keep = counted(tokens)
    sae = pca_sae(acts[keep], HOOK, threshold=0.3 * float(acts[keep].std()))
    corrupt_masked = _CorruptOn(sae, bad=acts[~keep])  # every BOS, EOS and pad activation
    corrupt_counted = _CorruptOn(sae, bad=acts[keep][:3])  # control: three counted activations
    result = evaluate_saes([sae, corrupt_masked, corrupt_counted], model=tiny.tl_model, dataset=tokens)
    plain, masked, control = (s.metrics for s in result.saes)
    for name, value in plain.items():
        assert masked[name] == value, name
    assert control["fvu"] > 10 * plain["fvu"]
    assert control["delta_loss"] != plain["delta_loss"]


def test_more_padding_changes_nothing(tiny: TinyGemma2, tokens: torch.Tensor) -> None:
    acts = site_activations(tiny, tokens, HOOK)
    keep = counted(tokens)
    sae = pca_sae(acts[keep], HOOK, threshold=0.3 * float(acts[keep].std()))
    padded = torch.cat([tokens, torch.full((len(tokens), 8), PAD_ID)], dim=1)
    short, long = (evaluate_saes([sae], model=tiny.tl_model, dataset=t).saes[0] for t in (tokens, padded))
    for name, value in short.metrics.items():
        if name in ("n_tokens", "n_loss_tokens", "dead_fraction", "dense_fraction"):
            assert long.metrics[name] == value, name
        else:
            assert abs(long.metrics[name] - value) <= 1e-6 * max(1.0, abs(value)), name
    # and the extra positions are empty points of the per-position curves
    assert long.by_position["l0"][tokens.shape[1] :] == [None] * 8
