"""``gemmascope demo --quick`` as a user runs it, in a fresh process: end to end, offline, writing only to
its folder and the cache. Marked slow (a fresh interpreter and the whole quick demo: 21 s on an idle
2-core machine): ``tox -e slow`` runs it; the default run has the same stages in process, shrunk
(``test_demo_quick.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saelens_gemmascope.demo.run import DemoRow, ladder_is_monotone

NO_NETWORK = """
import socket

def _refuse(*args, **kwargs):
    raise OSError("network access attempted during the demo test")

socket.socket.connect = _refuse
socket.create_connection = _refuse
"""


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("demo")
    work, home, guard = base / "work", base / "home", base / "guard"
    for folder in (work, home, guard):
        folder.mkdir()
    # sitecustomize runs at interpreter start: any socket connection in the demo process fails.
    (guard / "sitecustomize.py").write_text(textwrap.dedent(NO_NETWORK))
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "MPLCONFIGDIR": str(home / ".cache" / "matplotlib"),
    }
    for name in ("SAELENS_GEMMASCOPE_CACHE", "HF_HOME", "HF_HUB_CACHE"):
        env.pop(name, None)
    out = work / "demo-out"
    command = [sys.executable, "-m", "saelens_gemmascope.cli", "demo", "--quick", "--model", "tiny-gemma-2"]
    done = subprocess.run(
        [*command, "--out", str(out), "--no-progress"], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "L0 decreases with λ on every ladder: yes" in done.stdout
    return work, home, out


@pytest.mark.slow
def test_demo_writes_only_its_folder_and_the_user_cache(demo_run: tuple[Path, Path, Path]) -> None:
    work, home, out = demo_run
    assert {p.relative_to(work).parts[0] for p in files_under(work)} == {out.name}
    outside_cache = [p for p in files_under(home) if not p.is_relative_to(home / ".cache")]
    assert outside_cache == []


@pytest.mark.slow
def test_demo_outputs_every_stage(demo_run: tuple[Path, Path, Path]) -> None:
    _, _, out = demo_run
    assert (out / "suite" / "plan.json").is_file()
    assert list((out / "suite" / "calibration").glob("*.json"))
    release_files = list((out / "suite" / "release").glob("*/release.json"))
    assert {p.parent.name for p in release_files} == {
        "tiny-gemma-2-res",
        "tiny-gemma-2-mlp",
        "tiny-gemma-2-att",
        "tiny-gemma-2-transcoder",
    }
    assert list((out / "suite" / "release").glob("*/layer_1/width_512/average_l0_*/params.npz"))
    for name in ("metrics.json", "report.md", "frontier.png", "by_position.png", "transcoders.png"):
        assert (out / "eval" / name).stat().st_size > 0
    assert (out / "summary.md").read_text().startswith("# gemmascope demo")


@pytest.mark.slow
def test_demo_saes_beat_zero_ablation_and_ladders_decrease(demo_run: tuple[Path, Path, Path]) -> None:
    _, _, out = demo_run
    rows = [DemoRow(**row) for row in json.loads((out / "summary.json").read_text())["rows"]]
    assert len(rows) == 12  # (3 sites + the transcoder) x 1 layer x 1 width x 3 targets
    assert sum(row.site == "transcoder" for row in rows) == 3
    assert ladder_is_monotone(rows)
    for row in rows:
        assert row.fvu < 0.8, row
        assert row.delta_loss < row.zero_ablation_delta_loss, row


def test_ladder_check_catches_a_non_monotone_ladder() -> None:
    def row(coefficient: float, l0: float) -> DemoRow:
        return DemoRow("x", "res", 1, 512, 10.0, coefficient, l0, 0.1, 0.1, 1.0)

    assert ladder_is_monotone([row(1e-3, 40.0), row(1e-2, 20.0)])
    assert not ladder_is_monotone([row(1e-3, 20.0), row(1e-2, 40.0)])
