"""``gemmascope demo --suite gemma-scope-2 --quick`` in this process: Gemma Scope 2's recipe on the
tiny Gemma 3, no calibration, every SAE near its target, exported in Gemma Scope 2's layout and
evaluated from the local release it registers."""

from __future__ import annotations

from pathlib import Path

import pytest

from saelens_gemmascope.demo.run import DemoResult, run_demo, suite_settings

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
