"""Every metric of evaluate_saes against an independent computation written here, per site."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import (
    CONTEXT,
    counted,
    counted_predictions,
    least_squares_transcoder,
    pca_sae,
    site_activations,
)

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.evaluation import evaluate_saes

LAYER = 1


def _sae_for(site: str, tiny: TinyGemma2, tokens: torch.Tensor) -> tuple[Any, str, str]:
    """(SAE, read hook, write hook) fitted at ``site``."""
    mask = counted(tokens)
    hooks = {
        "res": f"blocks.{LAYER}.hook_resid_post",
        "mlp": f"blocks.{LAYER}.hook_mlp_out",
        "att": f"blocks.{LAYER}.attn.hook_z",
        "embedding": "hook_embed",
    }
    if site == "transcoder":
        read, write = f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.hook_mlp_out"
        x, y = site_activations(tiny, tokens, read), site_activations(tiny, tokens, write)
        return least_squares_transcoder(x[mask], y[mask], LAYER, threshold=0.05), read, write
    hook = hooks[site]
    extra = {"reshape_activations": "hook_z"} if site == "att" else {}
    acts = site_activations(tiny, tokens, hook)[mask]
    return pca_sae(acts, hook, threshold=0.3 * float(acts.std()), **extra), hook, hook


def _manual_splice(
    tiny: TinyGemma2, tokens: torch.Tensor, read: str, write: str, sae: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean logits, spliced logits (full forward, one hook), SAE input-side codes and target, by hand."""
    model = tiny.tl_model
    keep = counted(tokens)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(tokens, names_filter=[read, write])
        x = cache[read].flatten(-2) if cache[read].ndim == 4 else cache[read]
        target = cache[write].flatten(-2) if cache[write].ndim == 4 else cache[write]
        sae_in = cache[read] if getattr(sae, "hook_z_reshaping_mode", False) else x
        codes = sae.encode(sae_in)
        recon = sae.decode(codes).reshape(target.shape)

        def splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
            new = recon.reshape(act.shape)
            where = keep.reshape(*keep.shape, *([1] * (act.ndim - 2)))
            return torch.where(where, new, act)

        spliced_logits = model.run_with_hooks(tokens, fwd_hooks=[(write, splice)])
    return clean_logits, spliced_logits, codes, target - recon, target


@pytest.mark.parametrize("site", ["res", "mlp", "att", "transcoder", "embedding"])
def test_every_metric_matches_an_independent_computation(
    site: str, tiny: TinyGemma2, tokens: torch.Tensor
) -> None:
    sae, read, write = _sae_for(site, tiny, tokens)
    result = evaluate_saes([sae], model=tiny.tl_model, dataset=tokens, batch_size=4)
    got = result.saes[0]
    assert got.site == site

    clean, spliced, codes, error, target = _manual_splice(tiny, tokens, read, write, sae)
    keep = counted(tokens)
    predict = counted_predictions(tokens)
    ce_clean = F.cross_entropy(clean[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    ce_spliced = F.cross_entropy(spliced[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    logp_clean = F.log_softmax(clean[:, :-1], -1)
    logp_spliced = F.log_softmax(spliced[:, :-1], -1)
    kl = F.kl_div(logp_spliced, logp_clean, log_target=True, reduction="none").sum(-1)
    x = target[keep].double()
    fvu = error[keep].double().pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
    fires = (codes[keep] > 0).sum(0)

    m = got.metrics
    assert m["n_tokens"] == int(keep.sum())
    assert m["n_loss_tokens"] == int(predict.sum())
    assert m["l0"] == pytest.approx(float((codes[keep] > 0).sum(-1).double().mean()), rel=1e-6)
    assert m["ce_clean"] == pytest.approx(float(ce_clean[predict].double().mean()), rel=1e-5)
    assert m["delta_loss"] == pytest.approx(
        float((ce_spliced - ce_clean)[predict].double().mean()), rel=1e-4, abs=1e-5
    )
    assert m["kl"] == pytest.approx(float(kl[predict].double().mean()), rel=1e-4, abs=1e-6)
    assert m["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert m["mse"] == pytest.approx(float(error[keep].double().pow(2).sum(-1).mean()), rel=1e-5)
    assert m["dead_fraction"] == pytest.approx(float((fires == 0).double().mean()))
    assert m["dense_fraction"] == pytest.approx(float((fires / keep.sum() > 0.1).double().mean()))
    # the splice changed something, so the loss comparisons above were not vacuous
    assert float(kl[predict].mean()) > 1e-4
    assert 0 < m["fvu"] < 1


def test_position_curves_have_one_point_per_position_and_match(
    tiny: TinyGemma2, tokens: torch.Tensor
) -> None:
    sae, read, write = _sae_for("res", tiny, tokens)
    got = evaluate_saes([sae], model=tiny.tl_model, dataset=tokens, batch_size=4).saes[0]
    for name in ("l0", "mse", "fvu", "n_tokens"):
        assert len(got.by_position[name]) == CONTEXT
    for name in ("delta_loss", "kl", "ce_clean", "ce_spliced", "n_loss_tokens"):
        assert len(got.by_position[name]) == CONTEXT - 1
    assert got.by_position["l0"][0] is None  # position 0 is always BOS: nothing counts there

    clean, spliced, _, error, _ = _manual_splice(tiny, tokens, read, write, sae)
    keep = counted(tokens)
    sq = error.double().pow(2).sum(-1)
    for position in (1, 5, CONTEXT - 1):
        rows = keep[:, position]
        assert got.by_position["mse"][position] == pytest.approx(float(sq[rows, position].mean()), rel=1e-5)
    predict = counted_predictions(tokens)
    delta = F.cross_entropy(
        spliced[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none"
    ) - F.cross_entropy(clean[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    for position in (3, CONTEXT - 2):
        rows = predict[:, position]
        assert got.by_position["delta_loss"][position] == pytest.approx(
            float(delta[rows, position].double().mean()), rel=1e-4, abs=1e-5
        )


def test_saes_evaluated_together_match_each_alone(tiny: TinyGemma2, tokens: torch.Tensor) -> None:
    saes = [_sae_for(site, tiny, tokens)[0] for site in ("res", "att", "transcoder")]
    together = evaluate_saes(saes, model=tiny.tl_model, dataset=tokens, batch_size=3)
    for sae, joint in zip(saes, together.saes, strict=True):
        alone = evaluate_saes([sae], model=tiny.tl_model, dataset=tokens, batch_size=6).saes[0]
        for name, value in alone.metrics.items():
            assert joint.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
