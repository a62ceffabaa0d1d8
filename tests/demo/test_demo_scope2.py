"""``gemmascope demo --suite gemma-scope-2 --quick`` in this process: Gemma Scope 2's recipe on the
tiny Gemma 3, no calibration, every SAE near its target, exported in Gemma Scope 2's layout and
evaluated from the local release it registers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from saelens_gemmascope.demo.run import (
    DemoResult,
    DemoRow,
    _write_summary,
    demo_presets,
    run_demo,
    suite_settings,
)

L0_TOLERANCE = 1.5  # the acceptance: within x1.5 of the target, with no calibration


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run_demo(
        tmp_path_factory.mktemp("demo2") / "out", suite_settings("gemma-scope-2", quick=True), progress=False
    )


def test_the_gemma_scope_2_demo_lands_every_sae_near_its_target_without_calibration(demo: DemoResult) -> None:
    suite = demo.out_dir / "suite"
    assert not (suite / "calibration").exists()
    assert {row.site for row in demo.rows} == {"res", "mlp", "att", "transcoder"}
    assert sorted({row.target_l0 for row in demo.rows}) == [12, 24, 48]
    for row in demo.rows:
        assert 1 / L0_TOLERANCE <= row.l0 / row.target_l0 <= L0_TOLERANCE, (row.label, row.l0)
        # Better than predicting the mean. (No delta-loss check: the tiny Gemma 3 has random weights,
        # so zero-ablating a site can even lower its loss on real text.)
        assert row.fvu < 1.0, (row.label, row.fvu)


def test_the_gemma_scope_2_demo_exports_in_gemma_scope_2_layout(demo: DemoResult) -> None:
    release = demo.out_dir / "suite" / "release" / "tiny-gemma-3"
    exported = {p.parent.relative_to(release).as_posix() for p in release.rglob("params.safetensors")}
    for row in demo.rows:
        assert row.export_id in exported, (row.label, row.export_id, sorted(exported))
        assert (release / str(row.export_id) / "config.json").is_file()
    assert not list((demo.out_dir / "suite").rglob("params.npz"))  # not the Gemma Scope layout
    assert Path(demo.report).is_file() and Path(demo.summary).is_file()


def test_the_gemma_scope_2_summary_says_no_calibration_and_how_close_each_sae_came(demo: DemoResult) -> None:
    summary = Path(demo.summary).read_text()
    n = len(demo.rows)
    assert (
        "Gemma Scope 2's recipe: one λ for every SAE, the quadratic L0 penalty aiming at each target "
        in summary
    )
    assert "(no calibration)." in summary and "L0 decreases with λ" not in summary
    assert f"L0 within x1.5 of its target: {n} of {n} SAEs" in summary
    assert "`suite/release/` (Gemma Scope 2 layout)" in summary
    assert "`..._l0_small` for the smallest" in summary


def _summary(tmp_path: Path, rows: list[DemoRow], scope2: bool) -> str:
    eval_settings = {"n_sequences": 4, "n_distinct_sequences": 4, "context_size": 16}
    settings = suite_settings("gemma-scope-2" if scope2 else "gemma-scope", quick=True)
    return _write_summary(tmp_path, rows, {}, settings, eval_settings, scope2=scope2).read_text()


def test_the_summary_takes_the_recipe_from_the_presets_not_from_the_trained_lambdas(tmp_path: Path) -> None:
    """One SAE (one λ, trivially shared), or a Gemma Scope ladder trained at one λ: the summary says
    which recipe trained them because the caller says so."""
    row = DemoRow("a", "res", 1, 256, 12.0, 1.0, 12.5, 0.2, 0.1, 1.0, export_id="resid_post/x")
    assert "Gemma Scope 2's recipe" in _summary(tmp_path, [row], scope2=True)
    same_lambda = [row, dataclasses.replace(row, label="b", target_l0=24.0, l0=23.0)]
    scope1 = _summary(tmp_path, same_lambda, scope2=False)
    assert "Gemma Scope 2's recipe" not in scope1 and "L0 decreases with λ on every ladder" in scope1
    assert "(Gemma Scope layout)" in scope1


def test_no_transcoders_leaves_out_the_skip_transcoders_too() -> None:
    full = suite_settings("gemma-scope-2")
    assert "skip_transcoder" in full.sites
    sites = {p.name.split("/")[1] for p in demo_presets(full)}
    assert {"transcoder", "skip_transcoder"} <= sites
    without = {p.name.split("/")[1] for p in demo_presets(dataclasses.replace(full, transcoders=False))}
    assert without == {"res", "mlp", "att"}
