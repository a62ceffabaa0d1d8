"""``gemmascope train --distributed {data,sae}`` under torchrun (2 Gloo ranks on CPU) is the one
training path in another mode: the production CLI and driver run in every test here.

* equivalence: data parallel = one process on the global batch; SAE-sharded = each SAE trained
  alone on the gathered batch. Each rank records the batches its stream yielded; the reference is
  the single-process ``gemmascope train`` with its stream replaced by those batches concatenated in
  rank order (the global batches), from the same seed;
* a kill of one rank mid-run, then ``--resume``: the same weights as the uninterrupted run;
* calibration under torchrun; flags a mode cannot honour; ``--dry-run`` never trains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from saelens_gemmascope.cli import main as cli_main
from saelens_gemmascope.runners.activation_stream import ResumableActivationStream

PRESET = "tiny-gemma-2/res/layer_1/width_256"
LADDER = "1e-3,1e-2"
STEPS = 40
WORKER = Path(__file__).with_name("torchrun_worker.py")
TRAIN_ARGS = [
    "train", PRESET, "--l0-coefficients", LADDER, "--set", f"training_tokens={STEPS * 256}",
    "--checkpoints", "3",
]  # fmt: skip
SAE_NAMES = ["l0_coef_0.001", "l0_coef_0.01"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **extra}


def _torchrun(args: list[str], **env: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(WORKER), *args]  # fmt: skip
    return subprocess.Popen(
        command, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{out[-3000:]}")
    return process.returncode, out


def _weights(output: Path) -> dict[str, dict[str, torch.Tensor]]:
    folder = output / "saes" / "group0_pass0" / PRESET
    return {name: load_file(str(folder / name / "sae_weights.safetensors")) for name in SAE_NAMES}


def _assert_same_weights(output: Path, expected_output: Path, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Every saved SAE of ``output`` equals ``expected_output``'s (exactly, by default)."""
    actual, expected = _weights(output), _weights(expected_output)
    for name in SAE_NAMES:
        assert actual[name].keys() == expected[name].keys()
        for key, tensor in expected[name].items():
            torch.testing.assert_close(actual[name][key], tensor, atol=atol, rtol=rtol, msg=f"{name} {key}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Both modes' uninterrupted runs, launched together: (output, recorded batches) per mode."""
    runs = {}
    for mode in ("data", "sae"):
        root = tmp_path_factory.mktemp(f"torchrun_{mode}")
        (root / "rec").mkdir()
        args = [*TRAIN_ARGS, "--distributed", mode, "--output", str(root / "out")]
        runs[mode] = (root, _torchrun(args, GEMMASCOPE_TEST_RECORD=str(root / "rec")))
    results = {}
    for mode, (root, process) in runs.items():
        code, out = _finish(process)
        assert code == 0, out[-4000:]
        results[mode] = (root / "out", root / "rec")
    return results


def _replay(rec: Path) -> Iterator[dict[str, torch.Tensor]]:
    ranks = [torch.load(rec / f"batches_rank{r}.pt", weights_only=True) for r in range(2)]
    for parts in zip(*ranks, strict=False):
        yield {hook: torch.cat([part[hook] for part in parts]) for hook in parts[0]}


def _reference(tmp_path: Path, rec: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """The single-process run on the recorded global batches."""
    batches = _replay(rec)

    def replayed(self: ResumableActivationStream) -> Any:
        return self.position, next(batches)

    monkeypatch.setattr(ResumableActivationStream, "__next__", replayed)
    output = tmp_path / name  # the folder names the local release: one per test
    assert cli_main([*TRAIN_ARGS[:-2], "--checkpoints", "0", "--output", str(output)]) == 0
    return output


def test_data_parallel_equals_one_process_on_the_global_batch(
    uninterrupted: dict[str, tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, rec = uninterrupted["data"]
    # Two half-batch means averaged vs one global mean: rounding only, which Adam's normalised
    # steps carry over the 40 steps; far below the weights' own movement (with the gradient average
    # switched off, this test fails).
    _assert_same_weights(
        output, _reference(tmp_path, rec, monkeypatch, "reference_data"), atol=2e-5, rtol=1e-4
    )
    # Only rank 0 saves and exports (rank 1 held the same replicas).
    assert (output / "summary.json").is_file()
    assert sorted(p.name for p in (output / "checkpoints" / "group0_pass0").iterdir()) == ["rank0", "rank1"]


def test_sae_sharded_equals_each_sae_alone_on_the_gathered_batch(
    uninterrupted: dict[str, tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, rec = uninterrupted["sae"]
    # One SAE per rank, each saved by its owner, exported by rank 0: bit for bit.
    _assert_same_weights(output, _reference(tmp_path, rec, monkeypatch, "reference_sae"))
    release = output / "release" / "tiny-gemma-2-res" / "release.json"
    assert len(json.loads(release.read_text())["saes"]) == 2


@pytest.mark.parametrize("mode", ["data", "sae"])
def test_a_killed_rank_resumes_to_the_uninterrupted_weights(
    mode: str, uninterrupted: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    args = [*TRAIN_ARGS, "--distributed", mode, "--output", str(output)]
    process = _torchrun(args, GEMMASCOPE_TEST_FREEZE_RANK="1")
    marker = output / "frozen"
    deadline = time.monotonic() + 240
    while not marker.is_file() or not marker.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"rank 1 never froze after a checkpoint:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.05)
    os.kill(int(marker.read_text()), signal.SIGKILL)  # rank 1 only; torchrun ends rank 0
    code, out = _finish(process)
    assert code != 0
    assert not (output / "summary.json").exists()
    marker.unlink()

    code, out = _finish(_torchrun([*args, "--resume"]))
    assert code == 0, out[-4000:]
    _assert_same_weights(output, uninterrupted[mode][0])


def test_calibration_runs_under_torchrun(tmp_path: Path) -> None:
    output = tmp_path / "out"
    args = ["train", PRESET, "--distributed", "sae", "--calibration-grid", "1e-3,1e-2", "--refine-rounds", "0",
            "--set", "training_tokens=5120", "--checkpoints", "0", "--output", str(output)]  # fmt: skip
    code, out = _finish(_torchrun(args))
    assert code == 0, out[-4000:]
    records = list((output / "calibration").glob("*.json"))
    assert [r.name for r in records] == [PRESET.replace("/", "__") + ".json"]
    summary = (output / "summary.json").read_text()
    assert '"target_l0": ' in summary and summary.count('"name"') == 3  # the preset's 3 released targets


def test_distributed_flags_fail_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "never"
    monkeypatch.delenv("RANK", raising=False)
    assert cli_main([*TRAIN_ARGS, "--distributed", "data", "--output", str(output)]) == 2
    assert "runs under torchrun" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (
        cli_main([*TRAIN_ARGS, "--distributed", "sae", "--cached-activations", "--output", str(output)]) == 2
    )
    err = capsys.readouterr().err
    assert "--cached-activations is not built for --distributed" in err and len(err.strip().splitlines()) == 2
    # --dry-run plans in the job's mode (the batch split checked) and trains nothing.
    assert cli_main([*TRAIN_ARGS, "--distributed", "data", "--dry-run", "--output", str(output)]) == 0
    assert "2 SAEs from 1 presets" in capsys.readouterr().out
    odd = ["--set", "train_batch_size_tokens=255", "--set", "n_batches_in_buffer=8"]
    assert cli_main([*TRAIN_ARGS, *odd, "--distributed", "data", "--dry-run", "--output", str(output)]) == 2
    assert "does not split evenly over 2 ranks" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("mode", ["data", "sae"])
def test_a_transcoder_trains_under_torchrun(mode: str, tmp_path: Path) -> None:
    """Transcoders ride the same paired stream under torchrun: both modes finish, and rank 0 saves a
    SAELens transcoder reading the MLP input and writing the MLP output."""
    preset = "tiny-gemma-2/transcoder/layer_1/width_256"
    output = tmp_path / f"tc-{mode}"
    args = ["train", preset, "--l0-coefficients", LADDER, "--set", f"training_tokens={20 * 256}",
            "--distributed", mode, "--output", str(output)]  # fmt: skip
    code, out = _finish(_torchrun(args))
    assert code == 0, out[-4000:]
    folder = output / "saes" / "group0_pass0" / preset
    for name in SAE_NAMES:
        cfg = json.loads((folder / name / "cfg.json").read_text())
        assert cfg["architecture"] == "jumprelu_transcoder", cfg
        assert cfg["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"


def test_a_gemma_scope_2_preset_trains_under_torchrun(tmp_path: Path) -> None:
    """A Gemma Scope 2 preset (quadratic penalty, fixed λ, no calibration) under torchrun: no probe
    pass runs, and rank 0 exports every rung in Gemma Scope 2's layout."""
    preset = "tiny-gemma-3/res/layer_2/width_256"
    output = tmp_path / "scope2"
    args = ["train", preset, "--set", f"training_tokens={20 * 256}", "--distributed", "data",
            "--output", str(output)]  # fmt: skip
    code, out = _finish(_torchrun(args))
    assert code == 0, out[-4000:]
    assert not (output / "calibration").exists()
    release = output / "release" / "tiny-gemma-3" / "resid_post"
    for label in ("small", "medium", "big"):
        assert (release / f"layer_2_width_256_l0_{label}" / "params.safetensors").is_file(), label
    saved = output / "saes" / "group0_pass0" / preset
    assert sorted(p.name for p in saved.iterdir()) == ["target_l0_12", "target_l0_24", "target_l0_48"]
