"""metrics.json, report.md and the PNG plots; a trained SAE next to a released one; the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import matplotlib.image
import numpy as np
import pytest
import torch
from eval_helpers import counted, pca_sae, site_activations

from saelens_gemmascope.cli.evaluate import add_commands
from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.evaluation import EvalSAE, evaluate_saes
from saelens_gemmascope.models.loading import ModelUnavailableError, load_language_model

SITES = {"res": "blocks.1.hook_resid_post", "mlp": "blocks.1.hook_mlp_out"}
THRESHOLDS = (0.05, 0.3, 0.8)


def _fitted(tiny: TinyGemma2, tokens: torch.Tensor, hook: str, scale: float):  # type: ignore[no-untyped-def]
    acts = site_activations(tiny, tokens, hook)[counted(tokens)]
    return pca_sae(acts, hook, threshold=scale * float(acts.std()))


def _assert_readable_png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert float(np.std(image[..., :3])) > 0.01  # not a blank canvas


def test_report_plots_and_json(tiny: TinyGemma2, tokens: torch.Tensor, tmp_path: Path) -> None:
    saes = []
    for site, hook in SITES.items():
        for scale in THRESHOLDS:
            for source in ("released", "trained"):
                # "trained" is a slightly different fit at the same site: both go on one plot
                sae = _fitted(tiny, tokens, hook, scale * (1.0 if source == "released" else 1.3))
                saes.append(EvalSAE(sae=sae, label=f"{site}-{scale}-{source}", source=source))
    names = ["prose", "code"] * 3
    dataset = datasets.Dataset.from_dict({"input_ids": tokens.tolist(), "domain": names})
    result = evaluate_saes(
        saes, model=tiny.tl_model, dataset=dataset, n_sequences=6, context_size=32, out_dir=tmp_path
    )
    assert set(result.files) == {"metrics", "report", "frontier", "by_position", "by_domain"}
    for kind in ("frontier", "by_position", "by_domain"):
        _assert_readable_png(result.files[kind])

    stored = json.loads((tmp_path / "metrics.json").read_text())
    settings = stored["settings"]
    assert settings["model"] == "tiny-gemma-2"
    assert settings["n_sequences"] == 6 and settings["context_size"] == 32 and settings["seed"] == 0
    assert {"saelens-gemmascope", "sae-lens", "transformer-lens", "torch"} <= set(settings["versions"])
    assert [s["label"] for s in stored["saes"]] == [s.label for s in saes]
    assert stored["saes"][0]["metrics"]["l0"] == pytest.approx(result.saes[0].metrics["l0"])
    # a higher threshold is a sparser, worse fit: the frontier is real
    res_released = [s for s in result.saes if s.label.startswith("res") and s.source == "released"]
    l0s = [s.metrics["l0"] for s in res_released]
    fvus = [s.metrics["fvu"] for s in res_released]
    assert l0s == sorted(l0s, reverse=True) and fvus == sorted(fvus)

    report = (tmp_path / "report.md").read_text()
    assert "### res, layer 1" in report and "### mlp, layer 1" in report
    assert all(f"| {s.label} |" in report for s in saes)
    assert "![frontier](frontier.png)" in report and "## Delta LM loss per domain" in report


def _export(tiny: TinyGemma2, tokens: torch.Tensor, root: Path) -> None:
    from saelens_gemmascope.directory.layout import export_gemmascope_sae

    for scale in (0.1, 0.5):
        export_gemmascope_sae(_fitted(tiny, tokens, SITES["res"], scale), root, average_l0=10 / scale)


def test_cli_on_a_local_export_folder(tiny: TinyGemma2, tokens: torch.Tensor, tmp_path: Path) -> None:
    root = tmp_path / "my-release"
    _export(tiny, tokens, root)
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "eval",
            str(root),
            "--model",
            "tiny-gemma-2",
            "--n-sequences",
            "4",
            "--context-size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert args.handler(args) == 0
    stored = json.loads((out / "metrics.json").read_text())
    assert sorted(s["sae_id"] for s in stored["saes"]) == [
        "layer_1/width_128/average_l0_100",
        "layer_1/width_128/average_l0_20",
    ]
    assert {s["source"] for s in stored["saes"]} == {"local"}
    assert (out / "report.md").read_text().count("local/my-release/") >= 2
    _assert_readable_png(out / "frontier.png")


def test_cli_reports_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "gemma-scope-2b-pt-res", "--out", str(tmp_path)])
    assert args.handler(args) == 2
    assert "--all" in capsys.readouterr().err  # a release needs ids, a filter or --all


def test_load_language_model(tiny: TinyGemma2) -> None:
    from sae_lens import HookedSAETransformer

    model = load_language_model("tiny-gemma-2")
    assert isinstance(model, HookedSAETransformer)
    assert torch.equal(model.W_E, tiny.tl_model.W_E)
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        load_language_model("gemma-2-2b")


class _NoForward:
    """Wraps the model so that any forward pass fails the test."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("the model ran before the input was checked")

        self.saved = self.model.forward
        self.model.forward = refuse  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        self.model.forward = self.saved  # type: ignore[method-assign]


def test_sae_of_the_wrong_width_fails_before_the_model_runs(tiny: TinyGemma2, tokens: torch.Tensor) -> None:
    from eval_helpers import random_sae

    d_model = tiny.spec.d_model
    wrong = random_sae("blocks.1.attn.hook_z", d_in=d_model)  # att is n_heads * d_head wide, not d_model
    with (
        _NoForward(tiny.tl_model),
        pytest.raises(ValueError, match=r"d_in=64 but 'blocks.1.attn.hook_z' has width 32"),
    ):
        evaluate_saes([wrong], model=tiny.tl_model, dataset=tokens)


@pytest.mark.parametrize("empty", ["tensor", "dataset"])
def test_empty_dataset_fails_before_the_model_runs(tiny: TinyGemma2, empty: str) -> None:
    from eval_helpers import random_sae

    sae = random_sae("blocks.1.hook_resid_post", d_in=tiny.spec.d_model)
    data = (
        torch.zeros((0, 16), dtype=torch.int64)
        if empty == "tensor"
        else datasets.Dataset.from_dict({"input_ids": []})
    )
    with _NoForward(tiny.tl_model), pytest.raises(ValueError, match=r"empty|0 rows"):
        evaluate_saes([sae], model=tiny.tl_model, dataset=data, n_sequences=4, context_size=16)
