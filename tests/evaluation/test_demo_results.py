"""Issue 19, the demo's results and the evaluation data: distinct evaluation sequences (counted,
recorded, warned about), dead/dense latents flagged, the frontier plot per site on log axes with
the zero-ablation reference, one name per metric, and exports named by their target L0."""

from __future__ import annotations

import importlib
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from eval_helpers import random_sae

from saelens_gemmascope.data import stdlib_token_dataset
from saelens_gemmascope.demo.run import DemoRow, _write_summary, width_comparisons
from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.evaluation import evaluate_saes
from saelens_gemmascope.evaluation.data import EvalDataWarning, default_eval_tokens
from saelens_gemmascope.evaluation.plots import frontier_figure
from saelens_gemmascope.evaluation.report import render_report
from saelens_gemmascope.evaluation.result import EvalResult, SAEMetrics
from saelens_gemmascope.suite.configs import PresetSAE, match_presets
from saelens_gemmascope.suite.export import export_pass

HOOK = "blocks.1.hook_resid_post"

# -- evaluation data: distinct sequences only, counted and recorded ---------------------------------


def _full_rows(tiny: TinyGemma2, context: int) -> int:
    return len(stdlib_token_dataset(tiny.tokenizer, context, holdout=True))


def test_default_eval_data_is_cut_to_the_distinct_sequences_with_a_warning(tiny: TinyGemma2) -> None:
    available = _full_rows(tiny, 1024)
    assert 0 < available < 2048
    with pytest.warns(EvalDataWarning, match=rf"holds {available} distinct .* not the 2048 asked for"):
        data = default_eval_tokens(tiny.tokenizer, 2048, 1024)
    assert data.tokens.shape == (available, 1024)
    assert len(torch.unique(data.tokens, dim=0)) == available


def test_default_eval_data_asked_for_fewer_gives_that_many_distinct_without_warning(tiny: TinyGemma2) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvalDataWarning)
        data = default_eval_tokens(tiny.tokenizer, 10, 256)
    assert data.tokens.shape == (10, 256)
    assert len(torch.unique(data.tokens, dim=0)) == 10


def test_metrics_and_report_say_how_many_sequences_were_distinct(
    tiny: TinyGemma2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short held-out text (the real one is ~46k tokens: slow to evaluate in a test) of 5 rows.
    # (the module, not the function of the same name that saelens_gemmascope.data exports)
    stdlib_text = importlib.import_module("saelens_gemmascope.data.stdlib_text")
    train, heldout = stdlib_text.stdlib_split()
    monkeypatch.setattr(
        stdlib_text, "stdlib_split", lambda holdout_fraction=0.1: (train, heldout[: 5 * 63 + 10])
    )
    context = 64
    available = _full_rows(tiny, context)
    assert available == 5
    sae = random_sae(HOOK, tiny.tl_model.cfg.d_model)
    with pytest.warns(EvalDataWarning, match=f"holds {available} distinct .* not the 2048 asked for"):
        evaluate_saes([sae], model=tiny.tl_model, n_sequences=2048, context_size=context, out_dir=tmp_path)
    settings = json.loads((tmp_path / "metrics.json").read_text())["settings"]
    assert settings["n_sequences"] == settings["n_distinct_sequences"] == available
    report = (tmp_path / "report.md").read_text()
    assert f"{available} sequences ({available} distinct) x {context} tokens" in report


def test_repeated_sequences_in_given_tokens_are_counted_and_flagged(
    tiny: TinyGemma2, tokens: torch.Tensor, tmp_path: Path
) -> None:
    repeated = torch.cat([tokens, tokens])
    sae = random_sae(HOOK, tiny.tl_model.cfg.d_model)
    with pytest.warns(
        EvalDataWarning, match=f"the {len(repeated)} evaluation sequences .* only {len(tokens)} distinct"
    ):
        result = evaluate_saes([sae], model=tiny.tl_model, dataset=repeated, out_dir=tmp_path)
    assert (result.settings["n_sequences"], result.settings["n_distinct_sequences"]) == (
        len(repeated),
        len(tokens),
    )
    assert f"only {len(tokens)} distinct" in (tmp_path / "report.md").read_text()


# -- the report: flags and names -------------------------------------------------------------------


def _metrics(
    label: str, site: str, l0: float, delta_loss: float, fvu: float, *, layer: int = 1, d_sae: int = 512,
    dead: float = 0.0, dense: float = 0.0, source: str = "trained",
) -> SAEMetrics:  # fmt: skip
    scalars = {"l0": l0, "delta_loss": delta_loss, "fvu": fvu, "mse": 1.0, "kl": 0.01, "ce_clean": 2.0,
               "ce_spliced": 2.0 + delta_loss, "dead_fraction": dead, "dense_fraction": dense,
               "n_tokens": 100, "n_loss_tokens": 99}  # fmt: skip
    return SAEMetrics(
        label, source, None, None, site, layer, d_sae, f"blocks.{layer}.{site}", None, scalars, {}
    )


SETTINGS: dict[str, Any] = {
    "model": "m", "dataset": "d", "n_sequences": 8, "n_distinct_sequences": 8, "context_size": 16, "seed": 0,
    "masking": {"activations": "a", "loss": "l"}, "dense_threshold": 0.1,
}  # fmt: skip


def test_report_flags_dead_and_dense_latents_above_the_thresholds() -> None:
    saes = [
        _metrics("healthy", "res", 20, 0.1, 0.2, dead=0.05, dense=0.005),
        _metrics("many-dead", "mlp", 20, 0.1, 0.2, dead=0.14),
        _metrics("many-dense", "res", 20, 0.1, 0.2, d_sae=1024, dense=0.31),
        _metrics("zero-ablation", "res", 0, 3.0, 1.0, dead=1.0, source="baseline"),
    ]
    report = render_report(EvalResult(saes=saes, settings=SETTINGS), {})
    flag_section = report.split("## ⚠ Latent flags")[1].split("###")[0]
    assert "2 of 4 SAEs" in flag_section
    assert "**many-dead**: dead 14.0% > 10%" in flag_section
    assert "**many-dense**: dense 31.0% > 1%" in flag_section
    assert "healthy" not in flag_section and "zero-ablation" not in flag_section
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    assert "**14.0% ⚠**" in rows["many-dead"] and "**31.0% ⚠**" in rows["many-dense"]
    assert "⚠" not in rows["healthy"] and "⚠" not in rows["zero-ablation"]


def test_report_without_flagged_saes_says_so() -> None:
    report = render_report(EvalResult(saes=[_metrics("healthy", "res", 20, 0.1, 0.2)], settings=SETTINGS), {})
    assert "No SAE has more than 10% of latents dead" in report and "⚠" not in report


def test_one_name_per_metric_in_report_plot_and_summary(tmp_path: Path) -> None:
    saes = [_metrics("a", "res", 20, 0.1, 0.2), _metrics("z", "res", 0, 3.0, 1.0, source="baseline")]
    report = render_report(EvalResult(saes=saes, settings=SETTINGS), {})
    header = next(line for line in report.splitlines() if line.startswith("| SAE |"))
    assert "| L0 | delta LM loss | FVU | KL | dead latents | dense latents" in header
    figure = frontier_figure(saes)
    assert "delta LM loss" in figure.axes[0].get_ylabel() and "FVU" in figure.axes[1].get_ylabel()
    summary = _write_summary(
        tmp_path, [_row("res", 512, 20.0, 0.2)], {}, _demo_settings(), SETTINGS
    ).read_text()
    assert "| FVU | delta LM loss |" in summary and "explained variance = 1 - FVU" in summary
    assert "| explained variance |" not in summary


# -- the frontier plot ----------------------------------------------------------------------------


def test_frontier_has_a_row_per_site_log_axes_and_the_zero_ablation_reference() -> None:
    saes = [
        *(_metrics(f"res{i}", "res", l0, dl, 0.3 / (i + 1)) for i, (l0, dl) in enumerate([(10, 2.0), (20, 1.0), (40, 0.5)])),
        _metrics("res-zero", "res", 0, 5.0, 1.2, source="baseline"),
        *(_metrics(f"mlp{i}", "mlp", l0, dl, 0.2) for i, (l0, dl) in enumerate([(10, 0.04), (20, 0.02), (40, 0.01)])),
        _metrics("mlp-zero", "mlp", 0, 0.3, 1.0, source="baseline"),
        *(_metrics(f"att{i}", "att", l0, dl, 0.2) for i, (l0, dl) in enumerate([(10, 0.004), (20, 0.002), (40, -0.001)])),
        _metrics("att-zero", "att", 0, 0.1, 1.0, source="baseline"),
    ]  # fmt: skip
    figure = frontier_figure(saes)
    rows = {ax.get_ylabel().split("\n")[0]: ax for ax in figure.axes[0::2][:3]}
    assert list(rows) == ["res", "mlp", "att"]
    assert rows["res"].get_yscale() == "log" and rows["mlp"].get_yscale() == "log"
    assert rows["att"].get_yscale() == "symlog"  # a delta loss below zero
    # each site's own axis: the residual losses do not flatten the MLP lines near zero
    assert rows["mlp"].get_ylim()[1] < 1.0
    for site, zero in (("res", 5.0), ("mlp", 0.3), ("att", 0.1)):
        references = [line for line in rows[site].get_lines() if "zero ablation" in str(line.get_label())]
        assert [list(line.get_ydata()) for line in references] == [[zero, zero]], site


# -- the demo's summary: width at equal L0, flags ---------------------------------------------------


def _row(site: str, d_sae: int, l0: float, fvu: float, dead: float = 0.0, dense: float = 0.0) -> DemoRow:
    return DemoRow(f"{site}/{d_sae}/{l0:g}", site, 1, d_sae, l0, 1 / l0, l0, fvu, 0.1, 1.0, dead, dense, "id")


def _demo_settings() -> Any:
    from saelens_gemmascope.demo.run import DemoSettings

    return DemoSettings()


def test_width_comparison_interpolates_the_narrower_ladder_at_the_wider_l0() -> None:
    narrow = [_row("res", 512, l0, fvu) for l0, fvu in ((12, 0.4), (24, 0.3), (48, 0.2))]
    wide = [
        _row("res", 1024, 24 * math.sqrt(2), 0.22),
        _row("res", 1024, 12, 0.45),
        _row("res", 1024, 60, 0.1),
    ]
    (worse, better) = width_comparisons([*narrow, *wide])  # L0 60 lies outside the narrower ladder
    assert (worse.l0, worse.narrow_fvu, worse.wider_is_better) == (12, 0.4, False)
    assert better.narrow_fvu == pytest.approx(0.25) and better.wider_is_better


def test_summary_states_width_results_and_flags(tmp_path: Path) -> None:
    rows = [
        _row("mlp", 512, 12, 0.30), _row("mlp", 512, 48, 0.20),
        _row("mlp", 1024, 24, 0.20, dead=0.2), _row("res", 512, 20, 0.1, dense=0.05),
    ]  # fmt: skip
    summary = _write_summary(tmp_path, rows, {}, _demo_settings(), SETTINGS).read_text()
    assert "the wider SAE has the lower FVU in 1 of 1 comparisons" in summary
    assert "⚠ 2 of 4 SAEs have more than 10% dead latents" in summary
    assert "mlp/1024/24 (dead 20.0% > 10%)" in summary and "res/512/20 (dense 5.0% > 1%)" in summary
    assert "Evaluated on 8 held-out sequences (8 distinct)" in summary


# -- exports named by their target L0 ---------------------------------------------------------------


def _trained(preset: Any, measured: list[tuple[PresetSAE, float]]) -> dict[str, Any]:
    trained = {}
    for seed, (sae, l0) in enumerate(measured):
        model = random_sae(preset.hook_name, preset.d_in, preset.d_sae, seed=seed)
        model.cfg.metadata.l0 = l0
        trained[sae.name] = model
    return trained


def _release_entries(root: Path) -> dict[str, dict[str, Any]]:
    (manifest,) = (root / "release").glob("*/release.json")
    return {entry["id"]: entry for entry in json.loads(manifest.read_text())["saes"]}


def test_exports_are_named_by_target_l0_and_keep_the_measured_l0(tmp_path: Path) -> None:
    (preset,) = match_presets(["tiny-gemma-2/res/layer_1/width_256"])
    measured = [
        (PresetSAE(preset, 1e-2, 24.0), 25.4),
        (PresetSAE(preset, 3e-3, 48.0), 44.6),
        (PresetSAE(preset, 5e-3), 30.6),
    ]
    saes = [sae for sae, _ in measured]
    exported = export_pass(tmp_path, "group0_pass0", saes, _trained(preset, measured), progress=print)
    ids = [t.export_id for t in exported]
    # targets name the folder; an explicit λ (no target) keeps its measured L0
    assert ids == [f"layer_1/width_256/average_l0_{k}" for k in (24, 48, 31)]
    entries = _release_entries(tmp_path)
    assert [entries[i]["average_l0"] for i in ids] == pytest.approx([25.4, 44.6, 30.6])
    assert [t.l0 for t in exported] == pytest.approx([25.4, 44.6, 30.6])


def test_targets_that_round_alike_still_never_share_a_folder(tmp_path: Path) -> None:
    (preset,) = match_presets(["tiny-gemma-2/res/layer_1/width_256"])
    first, second = PresetSAE(preset, 1e-2, 24.0), PresetSAE(preset, 9e-3, 24.4)
    messages: list[str] = []
    exported = export_pass(
        tmp_path, "group0_pass0", [first, second], _trained(preset, [(first, 26.0), (second, 23.0)]),
        progress=messages.append,
    )  # fmt: skip
    assert [t.export_id for t in exported] == ["layer_1/width_256/average_l0_24", None]
    assert exported[1].note is not None and first.name in exported[1].note
    assert any(re.match(rf"warning: {re.escape(second.name)}", m) for m in messages)
    assert [e["sae_name"] for e in _release_entries(tmp_path).values()] == [first.name]


def test_demo_trains_wider_saes_for_proportionally_more_steps() -> None:
    import dataclasses

    from saelens_gemmascope.demo.run import DemoSettings, demo_presets

    settings = DemoSettings(sites=("res",), layers=(1,))
    steps = {
        p.d_sae: p.training_tokens // int(p.overrides["train_batch_size_tokens"])
        for p in demo_presets(settings)
    }
    assert steps == {512: settings.steps, 1024: 2 * settings.steps}
    unscaled = demo_presets(dataclasses.replace(settings, scale_steps_with_width=False))
    assert {p.training_tokens for p in unscaled} == {settings.steps * 256}
