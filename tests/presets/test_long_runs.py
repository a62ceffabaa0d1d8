"""A suite run with wandb asked for but no API key: it logs offline, says how to sync, and checkpoints
at the stated interval."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets
import pytest

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.calibration import CalibrationRecord, write_record
from saelens_gemmascope.suite.configs import match_presets
from saelens_gemmascope.suite.passes import pass_training
from saelens_gemmascope.suite.plan import plan_suite
from saelens_gemmascope.suite.run import run_suite


def test_offline_wandb_and_checkpoint_interval(
    tiny: TinyGemma2,
    token_data: datasets.Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (preset,) = match_presets(["tiny-gemma-2/res/layer_0/width_256"])
    preset = dataclasses.replace(preset, l0_targets=(20.0,), training_tokens=120 * 256)
    root = tmp_path / "suite"
    write_record(root, CalibrationRecord(preset.name, 0, [], {20.0: 3e-3}))
    messages: list[str] = []
    spec = RunSpec(output=root, wandb_project="gemmascope-test", checkpoint_every_tokens=10_240)
    trainers = pass_training(spec, model=tiny.tl_model, dataset=token_data, progress=messages.append)
    result = run_suite(plan_suite([preset]), root, trainers, progress=messages.append)
    assert len(result.saes) == 1
    # 30,720 tokens, one checkpoint every 10,240: two checkpoints before the end, announced.
    assert "a checkpoint every 10,240 tokens (2 per pass)" in "\n".join(messages)
    checkpoints = sorted(
        int(p.name) for p in (root / "checkpoints" / "group0_pass0").glob("*/*") if p.is_dir()
    )
    assert [c // 10_240 for c in checkpoints] == [1, 2]  # SAELens saves at the first step past each mark
    (offline_run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert f"upload it with: wandb sync {offline_run}" in capsys.readouterr().err


def test_resume_picks_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    from saelens_gemmascope.runners.activation_stream import STREAM_STATE_FILENAME
    from saelens_gemmascope.suite.passes import latest_checkpoint

    def checkpoint(name: str, *files: str) -> Path:
        path = tmp_path / "ours" / "run" / name
        path.mkdir(parents=True)
        for file in files:
            (path / file).write_text("x")
        return path

    done = checkpoint("1024", "runner_cfg.json", STREAM_STATE_FILENAME)
    checkpoint("2048", "runner_cfg.json")  # killed while writing: no stream position yet
    checkpoint("final_4096")  # killed before anything was written
    assert latest_checkpoint(tmp_path / "ours") == done
    # SAELens's own runners write no stream position: their newest checkpoint with its config.
    for name in ("1024", "2048"):
        (tmp_path / "saelens" / "run" / name).mkdir(parents=True)
        (tmp_path / "saelens" / "run" / name / "runner_cfg.json").write_text("{}")
    assert latest_checkpoint(tmp_path / "saelens") == tmp_path / "saelens" / "run" / "2048"
    assert latest_checkpoint(tmp_path / "empty") is None
