"""The demo in this process, shrunk to seconds (one layer, the narrow width, a two-point calibration
grid, short evaluation): every stage runs and its promises hold. The full ``gemmascope demo --quick``
in a fresh process is ``test_demo_run.py`` (marked slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sae_lens import SAE

from saelens_gemmascope.compat import pretrained_directory
from saelens_gemmascope.demo.run import (
    DemoResult,
    DemoRow,
    DemoSettings,
    demo_transcoder,
    ladder_is_monotone,
    run_demo,
)

SITES = ("res", "mlp", "att")
#: The fewest steps that still separate the ladder: past the presets' λ warm-up of 100 steps.
SMALLEST = DemoSettings(
    model="tiny-gemma-2",
    sites=SITES,
    layers=(1,),
    widths=("256",),
    steps=120,
    calibration_grid=(1e-3, 1.6e-2),
    eval_sequences=16,
    eval_context=64,
)
TARGETS = (12, 24, 48)  # the tiny presets' ladder
#: The transcoder ladder the demo adds (layer 1, width 256), or the one line saying why it cannot.
TRANSCODER = demo_transcoder(SMALLEST)
assert TRANSCODER.preset is not None, TRANSCODER.note  # transcoders train: the ladder is part of the demo
TRAINED_SITES = (*SITES, "transcoder")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    # The releases it registers stay for this module's tests; the root conftest removes them after.
    return run_demo(tmp_path_factory.mktemp("demo") / "out", SMALLEST, progress=False)


@pytest.fixture(scope="module")
def evaluated(demo: DemoResult) -> list[dict[str, Any]]:
    return json.loads((demo.out_dir / "eval" / "metrics.json").read_text())["saes"]  # type: ignore[no-any-return]


def test_every_stage_writes_its_files(demo: DemoResult) -> None:
    suite = demo.out_dir / "suite"
    assert (suite / "plan.json").is_file()
    assert {p.stem for p in (suite / "calibration").glob("*.json")} == {
        f"tiny-gemma-2__{site}__layer_1__width_256" for site in TRAINED_SITES
    }
    # SAELens format and the Gemma Scope layout, one SAE per site and target.
    assert len(list((suite / "saes").rglob("sae_weights.safetensors"))) == len(TRAINED_SITES) * len(TARGETS)
    exported = {p.parent.relative_to(suite / "release").as_posix() for p in suite.rglob("params.npz")}
    assert len(exported) == len(TRAINED_SITES) * len(TARGETS)
    assert exported >= {
        f"tiny-gemma-2-{site}/layer_1/width_256/average_l0_{target}" for site in SITES for target in TARGETS
    }
    for name in ("metrics.json", "report.md", "frontier.png", "by_position.png"):
        assert (demo.out_dir / "eval" / name).stat().st_size > 0
    assert demo.report == demo.out_dir / "eval" / "report.md"
    summary = demo.summary.read_text()
    assert summary.startswith("# gemmascope demo")
    assert "L0 decreases with λ on every ladder: yes." in summary


def test_the_evaluated_saes_are_the_exports_reloaded_through_saelens(
    demo: DemoResult, evaluated: list[dict[str, Any]]
) -> None:
    trained = [entry for entry in evaluated if entry["source"] == "trained"]
    assert sorted((e["label"], e["sae_id"]) for e in trained) == sorted(
        (row.label, row.export_id) for row in demo.rows
    )
    release_root = demo.out_dir / "suite" / "release"
    for entry in trained:
        lookup = pretrained_directory()[entry["release"]]
        assert Path(lookup.repo_id).parent == release_root.resolve()
        sae = SAE.from_pretrained(entry["release"], entry["sae_id"], device="cpu")
        assert (sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (256, entry["hook_name"])
    # One baseline per hook written: a transcoder shares the MLP output's with the MLP-output SAE.
    baselines = {e["hook_name_out"] or e["hook_name"] for e in evaluated if e["source"] == "baseline"}
    assert baselines == {e["hook_name_out"] or e["hook_name"] for e in trained} and len(baselines) == len(
        SITES
    )


def test_the_transcoder_ladder_is_reported(demo: DemoResult) -> None:
    summary = demo.summary.read_text()
    report = demo.report.read_text()
    transcoders = [row for row in demo.rows if row.site == "transcoder"]
    assert len(transcoders) == len(TARGETS) and demo.notes == ()
    assert all(f"Transcoder {row.label} at L0" in summary for row in transcoders)
    assert "## Transcoders against MLP-output SAEs" in report
    assert (demo.out_dir / "eval" / "transcoders.png").stat().st_size > 0


def test_saes_beat_zero_ablation_and_the_ladders_decrease(demo: DemoResult) -> None:
    rows = demo.rows
    assert len(rows) == len(TRAINED_SITES) * len(TARGETS)
    assert ladder_is_monotone(rows)
    for row in rows:
        assert row.fvu < 0.8, row
        assert row.delta_loss < row.zero_ablation_delta_loss, row


def test_summary_json_holds_the_rows_returned(demo: DemoResult) -> None:
    written = json.loads((demo.out_dir / "summary.json").read_text())
    assert tuple(DemoRow(**row) for row in written["rows"]) == demo.rows
    assert tuple(written["notes"]) == demo.notes
