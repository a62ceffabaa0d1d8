"""A killed run, resumed, ends with the weights of an uninterrupted run: bitwise, on CPU.

The subprocess test trains a two-SAE pass of the tiny model (``kill_resume_worker.py``), SIGKILLs
one run some steps after its first checkpoint and resumes it with ``resume=True`` (``--resume``).
The in-process tests resume from an earlier checkpoint of a finished run, resume a checkpoint
without this package's stream position (SAELens's approximate resume, with a warning), and resume
one of our checkpoints with SAELens's own runner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from kill_resume_worker import BATCH_TOKENS, LAMBDAS, PRESET, TARGETS, complete_checkpoints
from sae_lens import LoggingConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig
from safetensors.torch import load_file

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.runners import GemmaScopeMultiSAETrainingRunner
from saelens_gemmascope.runners.activation_stream import STREAM_STATE_FILENAME, StreamPosition
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.calibration import CalibrationRecord, write_record
from saelens_gemmascope.suite.configs import PresetSAE, match_presets, multi_config_for
from saelens_gemmascope.suite.passes import latest_checkpoint, pass_training
from saelens_gemmascope.suite.plan import plan_suite
from saelens_gemmascope.suite.preset import TrainingPreset
from saelens_gemmascope.suite.run import run_suite

WORKER = Path(__file__).with_name("kill_resume_worker.py")


def final_weights(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        str(path.parent.relative_to(root)): load_file(path)
        for path in sorted((root / "saes").rglob("sae_weights.safetensors"))
    }


def assert_same_weights(
    got: dict[str, dict[str, torch.Tensor]], want: dict[str, dict[str, torch.Tensor]]
) -> None:
    assert got.keys() == want.keys() and len(want) == len(TARGETS)
    for name, tensors in want.items():
        for key, tensor in tensors.items():
            assert torch.equal(got[name][key], tensor), (name, key, (got[name][key] - tensor).abs().max())


def llm_batches(root: Path, mode: str) -> int:
    """Training-sized forward passes the language model ran in the worker of ``mode``."""
    return json.loads((root / f"lm_tokens-{mode}.json").read_text())["llm_batches"]


def start_worker(root: Path, mode: str) -> subprocess.Popen[bytes]:
    root.mkdir(exist_ok=True)
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
        "SAELENS_GEMMASCOPE_CACHE": str(root / "cache"),
    }  # fmt: skip
    log = (root / f"{mode}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(root), mode, "--prefetch"], env=env, stdout=log, stderr=log
    )


def wait_for(process: subprocess.Popen[bytes], root: Path, mode: str, timeout: float = 240) -> None:
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert code == 0, (root / f"{mode}.log").read_text()[-4000:]


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    full = start_worker(tmp_path / "full", "full")
    killed_root = tmp_path / "killed"
    killed = start_worker(killed_root, "freeze")
    try:
        deadline = time.monotonic() + 240
        while not (killed_root / "frozen").exists():
            assert killed.poll() is None, "the run ended before a checkpoint was complete"
            assert time.monotonic() < deadline, "no complete checkpoint in time"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(30) == -signal.SIGKILL
    finally:
        killed.kill()
    (checkpoint,) = complete_checkpoints(killed_root)  # the first of two; the run died before the second
    assert not (killed_root / "saes").exists()
    resumed = start_worker(killed_root, "resume")
    wait_for(resumed, killed_root, "resume")
    wait_for(full, tmp_path / "full", "full")

    assert_same_weights(final_weights(killed_root), final_weights(tmp_path / "full"))
    # The resumed process ran the model only on what came after the checkpoint's stream position.
    drawn_before = StreamPosition.load(checkpoint / STREAM_STATE_FILENAME).n_llm_batches
    assert 0 < drawn_before < llm_batches(tmp_path / "full", "full")
    assert llm_batches(killed_root, "resume") == llm_batches(tmp_path / "full", "full") - drawn_before


# -- in process: resume from an earlier checkpoint of a finished run ---------------------------------


@dataclasses.dataclass
class FinishedRun:
    root: Path
    weights: dict[str, dict[str, torch.Tensor]]
    checkpoints: list[Path]


def _preset() -> TrainingPreset:
    (preset,) = match_presets([PRESET])
    return dataclasses.replace(preset, l0_targets=TARGETS, training_tokens=48 * BATCH_TOKENS)


def _train(
    root: Path, tiny: TinyGemma2, data: datasets.Dataset, resume: bool = False, cached: bool = False
) -> None:
    preset = _preset()
    write_record(root, CalibrationRecord(PRESET, 0, [], dict(LAMBDAS)))
    trainers = pass_training(
        RunSpec(output=root, n_checkpoints=2), model=tiny.tl_model, dataset=data, resume=resume, cached=cached
    )
    run_suite(plan_suite([preset]), root, trainers, progress=lambda _: None)


def _saved_l0(sae_folder: Path) -> float:
    return float(json.loads((sae_folder / "cfg.json").read_text())["metadata"]["l0"])


def _rewind_to_first_checkpoint(run: FinishedRun, into: Path) -> Path:
    """A copy of the run as a crash after its first checkpoint would leave it."""
    shutil.copytree(run.root, into)
    shutil.rmtree(into / "saes")
    for later in run.checkpoints[1:]:
        shutil.rmtree(into / later.relative_to(run.root))
    first = into / run.checkpoints[0].relative_to(run.root)
    assert latest_checkpoint(into / "checkpoints" / "group0_pass0") == first
    return first


@pytest.fixture(scope="module")
def finished(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory
) -> FinishedRun:
    root = tmp_path_factory.mktemp("finished")
    _train(root, tiny, token_data)
    checkpoints = sorted(
        (p for p in (root / "checkpoints").glob("*/*/*") if p.is_dir()), key=lambda p: int(p.name)
    )
    assert len(checkpoints) == 2 and all((p / STREAM_STATE_FILENAME).is_file() for p in checkpoints)
    return FinishedRun(root, final_weights(root), checkpoints)


def test_resuming_an_earlier_checkpoint_repeats_the_rest_exactly(
    finished: FinishedRun, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    root = tmp_path / "exact"  # the name of its local release
    first = _rewind_to_first_checkpoint(finished, root)
    _train(root, tiny, token_data, resume=True)
    assert_same_weights(final_weights(root), finished.weights)
    # The step count went on from the right step: the same sparsity windows, so the same L0 and
    # firing frequencies saved with the SAEs.
    for name in finished.weights:
        assert _saved_l0(root / name) == _saved_l0(finished.root / name)
        sparsity = [load_file(r / name / "sparsity.safetensors")["sparsity"] for r in (root, finished.root)]
        assert torch.equal(*sparsity)
    # The resumed run saved the same later checkpoint, not again the one it started from.
    assert sorted(p.name for p in first.parent.iterdir()) == [p.name for p in finished.checkpoints]


def test_cached_activation_runs_resume_exactly_too(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    # The single-SAE runner on activations cached to disk (SAELens's own resume restarts the cache).
    run = tmp_path / "cached"
    _train(run, tiny, token_data, cached=True)
    checkpoints = sorted(p.parent for p in run.glob(f"checkpoints/**/{STREAM_STATE_FILENAME}"))
    assert len(checkpoints) == 2 * len(TARGETS)  # each SAE trains on its own in this mode
    resumed = tmp_path / "cached-resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "saes")
    for checkpoint in checkpoints:
        if checkpoint.name != min(p.name for p in checkpoint.parent.iterdir()):
            shutil.rmtree(resumed / checkpoint.relative_to(run))
    _train(resumed, tiny, token_data, resume=True, cached=True)
    assert_same_weights(final_weights(resumed), final_weights(run))


def test_a_checkpoint_without_the_stream_position_resumes_approximately(
    finished: FinishedRun,
    tiny: TinyGemma2,
    token_data: datasets.Dataset,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "approximate"
    first = _rewind_to_first_checkpoint(finished, root)
    (first / STREAM_STATE_FILENAME).unlink()  # as SAELens's own runners write them
    with caplog.at_level(logging.WARNING):
        _train(root, tiny, token_data, resume=True)
    assert any(STREAM_STATE_FILENAME in r.getMessage() for r in caplog.records)
    weights = final_weights(root)
    assert weights.keys() == finished.weights.keys()
    # Other batches, other weights: the saved position is what made the resume above exact.
    assert any(not torch.equal(weights[n]["W_enc"], finished.weights[n]["W_enc"]) for n in weights)
    # Nothing exact to continue from, so its later checkpoint carries no position either.
    later = [p for p in first.parent.iterdir() if p != first]
    assert later and not any((p / STREAM_STATE_FILENAME).exists() for p in later)


def test_sae_lens_own_runner_resumes_our_checkpoint(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    # SAELens's warm-up (the recipe's cosine one is a scheduler SAELens's trainer cannot load).
    saes = [PresetSAE(_preset(), LAMBDAS[t], t) for t in TARGETS]

    def config(resume_from: str | None = None) -> MultiSAETrainingRunnerConfig:
        return multi_config_for(
            saes, RunSpec(sae={"lr_warm_up_shape": "linear"}), training_tokens=24 * BATCH_TOKENS, n_checkpoints=1,
            checkpoint_path=str(tmp_path / "checkpoints"), output_path=str(tmp_path / "out"),
            resume_from_checkpoint=resume_from, logger=LoggingConfig(log_to_wandb=False, wandb_id="run"),
        )  # fmt: skip

    GemmaScopeMultiSAETrainingRunner(
        config(), override_dataset=token_data, override_model=tiny.tl_model
    ).run()
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    assert checkpoint is not None and (checkpoint / STREAM_STATE_FILENAME).is_file()
    runner = MultiSAETrainingRunner(
        config(str(checkpoint)), override_dataset=token_data, override_model=tiny.tl_model
    )
    trained = runner.run()
    assert len(trained) == len(TARGETS)
    assert all(torch.isfinite(sae.W_dec).all() for sae in trained.values())
