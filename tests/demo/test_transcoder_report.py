"""The transcoder part of the report and the demo, on SAELens transcoders built here (not trained by
this package): a transcoder ladder next to the MLP-output SAEs of its layer and the MLP output's zero
ablation, as in the paper's transcoder appendix. Whatever trains the transcoders, this must hold."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.transcoder import JumpReLUTranscoder, JumpReLUTranscoderConfig

from saelens_gemmascope.data import stdlib_token_dataset
from saelens_gemmascope.demo.run import (
    DemoRow,
    DemoSettings,
    demo_presets,
    demo_transcoder,
    transcoder_lines,
    zero_ablation,
    zero_ablation_baselines,
)
from saelens_gemmascope.demo.tiny_model import TinyGemma2, build_tiny_gemma2
from saelens_gemmascope.evaluation import EvalResult, EvalSAE, SAEMetrics, evaluate_saes
from saelens_gemmascope.evaluation.plots import interpolate_at_l0, plot_transcoders, transcoder_comparisons

LAYER = 1
MLP_IN = f"blocks.{LAYER}.ln2.hook_normalized"
MLP_OUT = f"blocks.{LAYER}.hook_mlp_out"
D_SAE = 128
L0_LADDER = (8, 16, 32)


@pytest.fixture(scope="module")
def tiny() -> TinyGemma2:
    return build_tiny_gemma2(seed=0)


@pytest.fixture(scope="module")
def tokens(tiny: TinyGemma2) -> torch.Tensor:
    return torch.tensor(stdlib_token_dataset(tiny.tokenizer, 64, 16, holdout=True)["input_ids"])


def _site_acts(tiny: TinyGemma2, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP input and output at every position but the first (BOS, never spliced and an outlier)."""
    _, cache = tiny.tl_model.run_with_cache(tokens, names_filter=[MLP_IN, MLP_OUT])
    return cache[MLP_IN][:, 1:].flatten(0, 1).double(), cache[MLP_OUT][:, 1:].flatten(0, 1).double()


def _least_squares_fit(
    x: torch.Tensor, y: torch.Tensor, l0: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Random encoder directions, a threshold giving about ``l0`` active latents per token, and the
    decoder (with bias) that best maps those codes to ``y`` in least squares."""
    generator = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(x.shape[1], D_SAE, generator=generator, dtype=x.dtype) / x.shape[1] ** 0.5
    b_enc = torch.zeros(D_SAE, dtype=x.dtype)
    pre = x @ w_enc + b_enc
    threshold = float(torch.quantile(pre.flatten(), 1 - l0 / D_SAE))
    codes = torch.relu(pre) * (pre > threshold)
    design = torch.cat([codes, torch.ones(len(codes), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    return w_enc, b_enc, solution[:-1], solution[-1], threshold


def _load(sae: JumpReLUSAE | JumpReLUTranscoder, fit: tuple[torch.Tensor, ...], threshold: float) -> None:
    with torch.no_grad():
        for parameter, value in zip((sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec), fit, strict=True):
            parameter.copy_(value.float())
        sae.threshold.fill_(threshold)
    sae.cfg.metadata.model_name = "tiny-gemma-2"


def fitted_transcoder(x: torch.Tensor, y: torch.Tensor, l0: int) -> JumpReLUTranscoder:
    *weights, threshold = _least_squares_fit(x, y, l0, seed=l0)
    cfg = JumpReLUTranscoderConfig(d_in=x.shape[1], d_sae=D_SAE, d_out=y.shape[1], apply_b_dec_to_input=False)
    transcoder = JumpReLUTranscoder(cfg)
    _load(transcoder, tuple(weights), threshold)
    transcoder.cfg.metadata.hook_name, transcoder.cfg.metadata.hook_name_out = MLP_IN, MLP_OUT
    return transcoder.eval()


def fitted_mlp_sae(y: torch.Tensor, l0: int) -> JumpReLUSAE:
    *weights, threshold = _least_squares_fit(y, y, l0, seed=100 + l0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=y.shape[1], d_sae=D_SAE, apply_b_dec_to_input=False))
    _load(sae, tuple(weights), threshold)
    sae.cfg.metadata.hook_name = MLP_OUT
    return sae.eval()


@pytest.fixture(scope="module")
def evaluated(tiny: TinyGemma2, tokens: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> EvalResult:
    x, y = _site_acts(tiny, tokens)
    items = [EvalSAE(fitted_transcoder(x, y, l0), label=f"tc-{l0}", source="trained") for l0 in L0_LADDER]
    items += [EvalSAE(fitted_mlp_sae(y, l0), label=f"mlp-{l0}", source="trained") for l0 in L0_LADDER]
    # Both zero ablations, the transcoder-shaped one and the SAE-shaped one: they must agree.
    items += [
        EvalSAE(zero_ablation(items[0].sae), label="zero tc", source="baseline"),
        EvalSAE(zero_ablation(items[-1].sae), label="zero mlp", source="baseline"),
    ]
    out = tmp_path_factory.mktemp("transcoder-report")
    return evaluate_saes(items, model=tiny.tl_model, dataset=tokens, out_dir=out)


def test_the_layer_groups_transcoders_mlp_saes_and_zero_ablations(evaluated: EvalResult) -> None:
    (comparison,) = transcoder_comparisons(evaluated.saes)
    assert (comparison.layer, comparison.mlp_out_hook) == (LAYER, MLP_OUT)
    assert [s.label for s in comparison.transcoders] == [f"tc-{l0}" for l0 in L0_LADDER]
    assert [s.label for s in comparison.mlp_saes] == [f"mlp-{l0}" for l0 in L0_LADDER]
    assert {s.label for s in comparison.zero_ablations} == {"zero tc", "zero mlp"}
    zero_tc, zero_mlp = (evaluated.by_label(label) for label in ("zero tc", "zero mlp"))
    # Both write zeros over the same MLP output: one baseline, whichever SAE it is shaped after.
    assert zero_tc["delta_loss"] == pytest.approx(zero_mlp["delta_loss"], rel=1e-5)
    assert float(zero_mlp["delta_loss"] or 0) > 0


def test_fitted_transcoders_form_a_ladder_below_zero_ablation(evaluated: EvalResult) -> None:
    zero = float(evaluated.by_label("zero mlp")["delta_loss"] or 0)
    transcoders = [evaluated.by_label(f"tc-{l0}") for l0 in L0_LADDER]
    l0s = [float(tc["l0"] or 0) for tc in transcoders]
    assert l0s == sorted(l0s) and l0s[0] > 0
    assert all(float(tc["delta_loss"] or 0) < zero for tc in transcoders)
    assert all(tc.site == "transcoder" and tc.hook_name_out == MLP_OUT for tc in transcoders)


def test_the_report_has_the_transcoder_section_and_plot(evaluated: EvalResult) -> None:
    report = evaluated.files["report"].read_text()
    assert "## Transcoders against MLP-output SAEs" in report
    assert f"### MLP output, layer {LAYER} (`{MLP_OUT}`)" in report
    for l0 in L0_LADDER:
        assert f"| transcoder | tc-{l0} | trained |" in report
        assert f"| MLP-output SAE | mlp-{l0} | trained |" in report
    assert report.count("| zero ablation |") == 1
    assert "![transcoders](transcoders.png)" in report
    image = matplotlib.image.imread(evaluated.files["transcoders"])
    assert image.shape[0] > 200 and image.shape[1] > 400 and float(np.std(image[..., :3])) > 0.01


def test_no_transcoder_no_plot(evaluated: EvalResult, tmp_path: Path) -> None:
    saes_only = [s for s in evaluated.saes if s.hook_name_out is None]
    assert transcoder_comparisons(saes_only) == []
    assert plot_transcoders(saes_only, tmp_path / "t.png") is None and not (tmp_path / "t.png").exists()


def _metrics(l0: float, delta_loss: float) -> SAEMetrics:
    return SAEMetrics(
        "m",
        "trained",
        None,
        None,
        "mlp",
        LAYER,
        D_SAE,
        MLP_OUT,
        None,
        {"l0": l0, "delta_loss": delta_loss},
        {},
    )


def test_interpolation_is_linear_in_log_l0_and_never_extrapolates() -> None:
    ladder = [_metrics(10.0, 1.0), _metrics(1000.0, 0.0)]
    assert interpolate_at_l0(ladder, 100.0, "delta_loss") == pytest.approx(0.5)
    assert interpolate_at_l0(ladder, 10.0, "delta_loss") == pytest.approx(1.0)
    assert interpolate_at_l0(ladder, 5.0, "delta_loss") is None
    assert interpolate_at_l0(ladder, 2000.0, "delta_loss") is None


def _row(site: str, l0: float, delta_loss: float) -> DemoRow:
    return DemoRow(f"{site}-{l0:g}", site, LAYER, D_SAE, l0, 1e-3, l0, 0.3, delta_loss, 2.0)


def test_demo_summary_line_puts_the_transcoder_next_to_the_mlp_sae_at_its_l0() -> None:
    rows = [_row("mlp", 10, 0.4), _row("mlp", 1000, 0.2), _row("transcoder", 100, 0.5), _row("res", 100, 9.0)]
    (line,) = transcoder_lines(rows)
    assert line == (
        "Transcoder transcoder-100 at L0 100.0: delta LM loss 0.500 "
        "(MLP-output SAEs 0.300 at that L0, zero ablation of the MLP output 2.000)."
    )
    assert transcoder_lines([r for r in rows if r.site != "transcoder"]) == []


def test_demo_baselines_share_the_mlp_output_between_transcoder_and_sae(
    tiny: TinyGemma2, tokens: torch.Tensor
) -> None:
    x, y = _site_acts(tiny, tokens)
    transcoder = EvalSAE(fitted_transcoder(x, y, 8), label="tc", source="trained")
    sae = EvalSAE(fitted_mlp_sae(y, 8), label="mlp", source="trained")
    baselines = zero_ablation_baselines([transcoder, sae])
    assert list(baselines) == [MLP_OUT]
    # Shaped after the plain SAE even when the transcoder comes first.
    assert baselines[MLP_OUT].sae.cfg.metadata.hook_name_out is None
    alone = zero_ablation_baselines([transcoder])[MLP_OUT].sae
    assert isinstance(alone, JumpReLUTranscoder) and torch.isinf(alone.threshold).all()


SETTINGS = DemoSettings(model="tiny-gemma-2", layers=(1, 0), widths=("512", "256"), steps=120)


def test_demo_picks_the_first_layer_and_narrowest_width_and_trains_it_once_trainable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from saelens_gemmascope import registry

    chosen = demo_transcoder(SETTINGS)
    if chosen.preset is None:  # not trainable yet: said in one line, and left out of the presets
        assert chosen.note and chosen.note.startswith(
            "No transcoder ladder: tiny-gemma-2/transcoder/layer_1/"
        )
        assert all(p.site != "transcoder" for p in demo_presets(SETTINGS))
    presets = registry.registered_presets()
    trainable = {
        name: dataclasses.replace(p, not_trainable_reason=None) if p.site == "transcoder" else p
        for name, p in presets.items()
    }
    monkeypatch.setattr(registry, "registered_presets", lambda: trainable)
    chosen = demo_transcoder(SETTINGS)
    assert chosen.note is None and chosen.preset is not None
    assert chosen.preset.name == "tiny-gemma-2/transcoder/layer_1/width_256"
    (added,) = [p for p in demo_presets(SETTINGS) if p.site == "transcoder"]
    # The narrowest width trains for settings.steps steps, like the narrowest SAEs.
    assert added.training_tokens == 120 * int(added.overrides["train_batch_size_tokens"])
    assert demo_transcoder(dataclasses.replace(SETTINGS, transcoders=False)).preset is None
    assert all(p.site != "transcoder" for p in demo_presets(dataclasses.replace(SETTINGS, transcoders=False)))
