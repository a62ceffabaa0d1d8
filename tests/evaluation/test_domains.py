"""Per-domain metrics from a ``domain`` column or the Pile's ``meta.pile_set_name``."""

from __future__ import annotations

import datasets
import pytest
import torch
from eval_helpers import counted, pca_sae, site_activations

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.evaluation import evaluate_saes

HOOK = "blocks.2.hook_mlp_out"


def test_each_domain_equals_evaluating_its_rows_alone(tiny: TinyGemma2, tokens: torch.Tensor) -> None:
    acts = site_activations(tiny, tokens, HOOK)
    keep = counted(tokens)
    sae = pca_sae(acts[keep], HOOK, threshold=0.3 * float(acts[keep].std()))
    names = ["prose", "code", "prose", "code", "code", "prose"]
    rows = [
        {"input_ids": t.tolist(), "meta": {"pile_set_name": n}} for t, n in zip(tokens, names, strict=True)
    ]
    dataset = datasets.Dataset.from_list(rows)
    result = evaluate_saes(
        [sae], model=tiny.tl_model, dataset=dataset, n_sequences=len(tokens), context_size=tokens.shape[1]
    )
    by_domain = result.saes[0].by_domain
    assert sorted(by_domain) == ["code", "prose"]
    for name in ("code", "prose"):
        subset = tokens[[i for i, n in enumerate(names) if n == name]]
        alone = evaluate_saes([sae], model=tiny.tl_model, dataset=subset).saes[0].metrics
        for metric in ("l0", "fvu", "delta_loss", "kl", "ce_clean"):
            assert by_domain[name][metric] == pytest.approx(alone[metric], rel=1e-6, abs=1e-9), (name, metric)


def test_a_plain_domain_column_and_text_rows(tiny: TinyGemma2) -> None:
    sae = pca_sae(torch.randn(200, 64), HOOK, threshold=0.5)
    dataset = datasets.Dataset.from_dict(
        {
            "text": ["The quick brown fox.", "def f(x): return x", "Another sentence here."],
            "domain": ["a", "b", "a"],
        }
    )
    result = evaluate_saes([sae], model=tiny.tl_model, dataset=dataset, n_sequences=3, context_size=16)
    assert sorted(result.saes[0].by_domain) == ["a", "b"]
    assert result.settings["domain_column"] is None  # auto-detected, not requested
    assert result.saes[0].by_domain["b"]["n_tokens"] == len(b"def f(x): return x"[:15])
