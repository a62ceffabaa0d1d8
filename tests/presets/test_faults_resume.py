"""Faults around checkpoints and resume (issue 14, items 3, 4, 7 and 8), on the tiny model, on CPU.

* SIGINT / SIGTERM: the run stops at a step boundary, saves an exact checkpoint there, exits with
  one line (128 + the signal), and ``--resume`` ends with the weights of an uninterrupted run,
  bitwise; in the multi-SAE (live) and in the single-SAE (``--cached-activations``) runner.
* A resume with another setting than the checkpoint's is refused, naming the changed keys, before
  anything runs.
* A damaged latest checkpoint (truncated trainer state, weights or stream position) is skipped with
  a warning naming the file; the previous one resumes (exactly). None intact: an error.
* A pickle planted in ``trainer_state.pt`` never runs, even with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from faults_resume_worker import signal_after_sae_step
from kill_resume_worker import BATCH_TOKENS, LAMBDAS, PRESET, TARGETS
from safetensors.torch import load_file

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.runners.activation_stream import STREAM_STATE_FILENAME
from saelens_gemmascope.runners.checkpoints import (
    MANIFEST_FILENAME,
    ChangedSettingsError,
    InvalidCheckpointError,
    changed_settings,
    weights_only_loads,
)
from saelens_gemmascope.runners.interrupts import InterruptWatch, StopAtStepBoundary, TrainingInterrupted
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.calibration import CalibrationRecord, write_record
from saelens_gemmascope.suite.configs import match_presets
from saelens_gemmascope.suite.passes import (
    TrainingContext,
    _resume_from,
    complete_checkpoints,
    pass_training,
)
from saelens_gemmascope.suite.plan import plan_suite
from saelens_gemmascope.suite.preset import TrainingPreset
from saelens_gemmascope.suite.run import run_suite

WORKER = Path(__file__).with_name("faults_resume_worker.py")
PASS = "group0_pass0"
# Output folders are named "fr-*": a folder's name is its local release's, one per test session.
Weights = dict[str, dict[str, torch.Tensor]]


def final_weights(root: Path) -> Weights:
    return {
        str(path.parent.relative_to(root)): load_file(path)
        for path in sorted((root / "saes").rglob("sae_weights.safetensors"))
    }


def assert_same_weights(got: Weights, want: Weights) -> None:
    assert got.keys() == want.keys() and len(want) == len(TARGETS)
    for name, tensors in want.items():
        for key, tensor in tensors.items():
            assert torch.equal(got[name][key], tensor), (name, key, (got[name][key] - tensor).abs().max())


def _preset() -> TrainingPreset:
    (preset,) = match_presets([PRESET])
    return dataclasses.replace(preset, l0_targets=TARGETS, training_tokens=48 * BATCH_TOKENS)


def _train(
    root: Path,
    tiny: TinyGemma2,
    data: datasets.Dataset,
    resume: bool = False,
    cached: bool = False,
    runner: dict[str, Any] | None = None,
) -> None:
    write_record(root, CalibrationRecord(PRESET, 0, [], dict(LAMBDAS)))
    spec = RunSpec(output=root, n_checkpoints=2, runner=runner or {})
    trainers = pass_training(spec, model=tiny.tl_model, dataset=data, resume=resume, cached=cached)
    run_suite(plan_suite([_preset()]), root, trainers, progress=lambda _: None)


def _checkpoints(root: Path) -> list[Path]:
    """Every checkpoint folder of the run, oldest first (by pass, then tokens)."""
    return sorted(
        (p for p in (root / "checkpoints").rglob("*") if p.is_dir() and p.name.isdigit()),
        key=lambda p: (str(p.parent), int(p.name)),
    )


@dataclasses.dataclass
class Run:
    root: Path
    weights: Weights
    checkpoints: list[Path]


def _finished(root: Path, tiny: TinyGemma2, data: datasets.Dataset, cached: bool = False) -> Run:
    _train(root, tiny, data, cached=cached)
    return Run(root, final_weights(root), _checkpoints(root))


@pytest.fixture(scope="module")
def live(tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = _finished(tmp_path_factory.mktemp("live") / "fr-live", tiny, token_data)
    assert len(run.checkpoints) == 2
    return run


def _crashed_after_checkpoints(run: Run, into: Path, keep: int) -> list[Path]:
    """A copy of ``run`` as a crash after its first ``keep`` checkpoints would leave it."""
    shutil.copytree(run.root, into)
    shutil.rmtree(into / "saes")
    for later in run.checkpoints[keep:]:
        shutil.rmtree(into / later.relative_to(run.root))
    return [into / c.relative_to(run.root) for c in run.checkpoints[:keep]]


@pytest.fixture
def signal_mid_step() -> Iterator[Any]:
    """``signal_after_sae_step`` of the worker, in this process; the trainer is put back afterwards."""
    from saelens_gemmascope.recipe.trainer import GemmaScopeSAETrainer

    original = GemmaScopeSAETrainer.step
    yield signal_after_sae_step
    GemmaScopeSAETrainer.step = original  # type: ignore[method-assign]


# -- item 3: SIGINT / SIGTERM --------------------------------------------------------------------


def _assert_stopped_at_a_step_boundary(stopped: TrainingInterrupted, signum: int, root: Path) -> Path:
    assert stopped.signum == signum
    message = str(stopped)
    assert "\n" not in message and message.startswith(f"interrupted by {signal.Signals(signum).name} at step")
    assert not (root / "saes").exists()  # nothing exported from a stopped run
    newest = _checkpoints(root)[-1]
    # Saved between two steps: its tokens are whole steps, the ones the message names.
    tokens = int(newest.name)
    assert tokens % BATCH_TOKENS == 0 and f"at step {tokens // BATCH_TOKENS};" in message
    assert f"the checkpoint at {tokens:,} tokens is complete" in message
    assert (newest / MANIFEST_FILENAME).is_file() and (newest / STREAM_STATE_FILENAME).is_file()
    return newest


def test_sigint_stops_at_a_step_boundary_and_resumes_exactly(
    live: Run, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path, signal_mid_step: Any
) -> None:
    root = tmp_path / "fr-sigint"
    handler = signal.getsignal(signal.SIGINT)
    signal_mid_step(signal.SIGINT)
    # With a prefetch thread drawing ahead (the checkpoint keeps the position of the batch trained
    # on last); resumed without one, which changes nothing of the data.
    with pytest.raises(TrainingInterrupted) as stopped:
        _train(root, tiny, token_data, runner={"prefetch_llm_batches": True})
    newest = _assert_stopped_at_a_step_boundary(stopped.value, signal.SIGINT, root)
    assert complete_checkpoints(newest.parent.parent)[int(newest.name)] == newest  # <pass>/<run id>/<tokens>
    assert signal.getsignal(signal.SIGINT) is handler  # put back
    _train(root, tiny, token_data, resume=True)
    assert_same_weights(final_weights(root), live.weights)


def test_sigterm_in_cached_activation_mode_saves_and_resumes_exactly(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path, signal_mid_step: Any
) -> None:
    # The single-SAE runner (each SAE trained on its own from the activation cache); the signal
    # comes while the first SAE trains. The reference is the same run, uninterrupted.
    reference = _finished(tmp_path / "fr-cached-full", tiny, token_data, cached=True)
    root = tmp_path / "fr-cached"
    handler = signal.getsignal(signal.SIGTERM)
    signal_mid_step(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stopped:
        _train(root, tiny, token_data, cached=True)
    _assert_stopped_at_a_step_boundary(stopped.value, signal.SIGTERM, root)
    assert signal.getsignal(signal.SIGTERM) is handler
    _train(root, tiny, token_data, cached=True, resume=True)
    assert_same_weights(final_weights(root), reference.weights)


def _worker(root: Path, mode: str) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
        "SAELENS_GEMMASCOPE_CACHE": str(root / "cache"),
    }  # fmt: skip
    log = (root / f"{mode}.log").open("wb")
    return subprocess.Popen([sys.executable, str(WORKER), str(root), mode], env=env, stdout=log, stderr=log)


def _exit_code(process: subprocess.Popen[bytes], timeout: float = 240) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_gemmascope_train_on_sigterm_exits_143_with_one_line_and_resumes_exactly(tmp_path: Path) -> None:
    full = _worker(tmp_path / "full", "full")
    root = tmp_path / "stopped"
    assert _exit_code(_worker(root, "SIGTERM")) == 128 + signal.SIGTERM
    log = (root / "SIGTERM.log").read_text()
    assert "Traceback" not in log
    (line,) = [line for line in log.splitlines() if line.startswith("interrupted by SIGTERM")]
    assert "rerun with --resume" in line
    assert _exit_code(_worker(root, "resume")) == 0, (root / "resume.log").read_text()[-3000:]
    assert _exit_code(full) == 0, (tmp_path / "full" / "full.log").read_text()[-3000:]
    got, want = final_weights(root), final_weights(tmp_path / "full")
    assert got.keys() == want.keys() and len(want) == 2
    for name, tensors in want.items():
        assert all(torch.equal(got[name][key], tensor) for key, tensor in tensors.items()), name


def test_a_second_signal_stops_at_once_and_handlers_are_put_back() -> None:
    handler = signal.getsignal(signal.SIGINT)
    with InterruptWatch() as watch:
        signal.raise_signal(signal.SIGINT)  # recorded: training goes on to the step boundary
        assert watch.signum == signal.SIGINT
        with pytest.raises(TrainingInterrupted, match="again: stopped at once") as stopped:
            signal.raise_signal(signal.SIGINT)
    assert stopped.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler


def test_under_torchrun_a_signal_on_any_rank_stops_every_rank() -> None:
    # The gather stands for the collective: this rank got nothing, another rank got SIGTERM. The
    # ranks agree every third check here (every AGREE_EVERY steps in training), not every step.
    gathered: list[Any] = []

    def gather(mine: Any) -> list[Any]:
        gathered.append(mine)
        return [mine, int(signal.SIGTERM)]

    watch = InterruptWatch(gather=gather, agree_every=3)
    watch.stop_at_step_boundary()
    watch.stop_at_step_boundary()
    assert gathered == []
    with pytest.raises(StopAtStepBoundary) as stop:
        watch.stop_at_step_boundary()
    assert stop.value.signum == signal.SIGTERM and gathered == [None]
    assert InterruptWatch(gather=lambda mine: [mine, None], agree_every=1).agreed_signal() is None


# -- item 4: a resume with other settings --------------------------------------------------------


@pytest.mark.parametrize(
    ("runner", "shown"),
    [
        ({"lr": 0.05}, "lr: 0.002 -> 0.05"),
        ({"train_batch_size_tokens": 128}, "train_batch_size_tokens: 256 -> 128"),
    ],
)
def test_a_resume_with_changed_settings_is_refused_before_anything_runs(
    live: Run,
    tiny: TinyGemma2,
    token_data: datasets.Dataset,
    tmp_path: Path,
    runner: dict[str, Any],
    shown: str,
) -> None:
    root = tmp_path / "fr-changed"
    (first,) = _crashed_after_checkpoints(live, root, keep=1)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(ChangedSettingsError) as refused:
        _train(root, tiny, token_data, resume=True, runner=runner)
    message = str(refused.value)
    assert "\n" not in message and shown in message and str(first) in message
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing trained or written


def test_changed_settings_are_listed_once_each_and_where_files_go_is_not_one(live: Run) -> None:
    saved = json.loads((live.checkpoints[0] / "runner_cfg.json").read_text())
    current = json.loads(json.dumps(saved))
    current.update(lr=0.05, output_path="/elsewhere", checkpoint_path="/elsewhere/c", n_checkpoints=7)
    for sae in current["saes"].values():
        sae["l0_warm_up_steps"] = 10  # every SAE of the ladder: one entry
    assert changed_settings(saved, saved) == []
    assert changed_settings(saved, current) == ["lr: 0.002 -> 0.05", "saes[*].l0_warm_up_steps: 100 -> 10"]
    renamed = json.loads(json.dumps(saved))
    renamed["saes"]["other"] = renamed["saes"].pop(f"{PRESET}/target_l0_40")
    renamed["hook_names"]["other"] = renamed["hook_names"].pop(f"{PRESET}/target_l0_40")
    (entry,) = changed_settings(saved, renamed)
    assert entry == f"saes: {PRESET}/target_l0_12, {PRESET}/target_l0_40 -> other, {PRESET}/target_l0_12"


# -- item 7: a damaged latest checkpoint --------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _context(root: Path) -> TrainingContext:
    return TrainingContext(model=None, dataset=None, spec=RunSpec(output=root), resume=True)


@pytest.mark.parametrize(
    "damaged", [f"{PRESET}/target_l0_12/trainer_state.pt", f"{PRESET}/target_l0_40/sae_weights.safetensors", STREAM_STATE_FILENAME]
)  # fmt: skip
def test_a_truncated_file_of_the_latest_checkpoint_falls_back_to_the_previous(
    live: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture, damaged: str
) -> None:
    first, latest = _crashed_after_checkpoints(live, tmp_path / "fr-damaged", keep=2)
    _truncate(latest / damaged)
    with caplog.at_level(logging.WARNING):
        assert _resume_from(_context(tmp_path / "fr-damaged"), PASS) == str(first)
    (warning,) = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert str(latest / damaged) in warning and f"resuming from {first}" in warning


def test_resuming_past_a_damaged_checkpoint_repeats_the_rest_exactly(
    live: Run, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    root = tmp_path / "fr-fallback"
    _, latest = _crashed_after_checkpoints(live, root, keep=2)
    _truncate(next(latest.rglob("trainer_state.pt")))
    _train(root, tiny, token_data, resume=True)
    assert_same_weights(final_weights(root), live.weights)


def test_no_intact_checkpoint_is_an_error_naming_the_file(
    live: Run, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    root = tmp_path / "fr-all-damaged"
    damaged = [
        checkpoint / STREAM_STATE_FILENAME for checkpoint in _crashed_after_checkpoints(live, root, keep=2)
    ]
    for path in damaged:
        _truncate(path)
    with pytest.raises(InvalidCheckpointError) as refused:
        _train(root, tiny, token_data, resume=True)
    message = str(refused.value)
    assert "\n" not in message and all(str(path) in message for path in damaged)
    assert not (root / "saes").exists()


# -- item 8: pickles in checkpoints never run ----------------------------------------------------


class Payload:
    """Unpickling this creates the folder ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.makedirs, (str(self.marker),))


def _plant(trainer_state: Path, marker: Path) -> None:
    """Replace ``trainer_state.pt`` by a pickle that runs code, and fix the manifest's size as an
    attacker would (so that only reading the file can tell)."""
    torch.save({"optimizer": Payload(marker)}, trainer_state)
    checkpoint = next(p for p in trainer_state.parents if (p / MANIFEST_FILENAME).is_file())
    manifest = json.loads((checkpoint / MANIFEST_FILENAME).read_text())
    manifest["files"][trainer_state.relative_to(checkpoint).as_posix()] = trainer_state.stat().st_size
    (checkpoint / MANIFEST_FILENAME).write_text(json.dumps(manifest))


def test_a_planted_pickle_in_the_trainer_state_never_runs(
    live: Run,
    tiny: TinyGemma2,
    token_data: datasets.Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch.load's default: unpickle anything
    marker = tmp_path / "payload-ran"
    root = tmp_path / "fr-planted"
    first, latest = _crashed_after_checkpoints(live, root, keep=2)
    poisoned = next(latest.rglob("trainer_state.pt"))
    _plant(poisoned, marker)
    # The suite skips it (named), and resumes from the checkpoint before.
    with caplog.at_level(logging.WARNING):
        assert _resume_from(_context(root), PASS) == str(first)
    assert any(str(poisoned) in r.getMessage() for r in caplog.records)
    # A runner told to resume from it refuses it, naming the file.
    with pytest.raises(InvalidCheckpointError, match=r"trainer_state\.pt"):
        from saelens_gemmascope.runners.training_runners import GemmaScopeMultiSAETrainingRunner
        from saelens_gemmascope.suite.configs import PresetSAE, multi_config_for

        saes = [PresetSAE(_preset(), LAMBDAS[t], t) for t in TARGETS]
        cfg = multi_config_for(
            saes, RunSpec(), training_tokens=48 * BATCH_TOKENS, resume_from_checkpoint=str(latest)
        )
        GemmaScopeMultiSAETrainingRunner(cfg, override_dataset=token_data, override_model=tiny.tl_model)
    assert not marker.exists()
    # SAELens's own trainer-state read (torch.load without weights_only) is forced safe in our runners.
    from sae_lens.training.sae_trainer import SAETrainer

    with weights_only_loads(), pytest.raises(Exception, match=r"[Ww]eights only load failed"):
        SAETrainer.load_trainer_state(_StateOnly(), poisoned.parent)  # type: ignore[arg-type]
    assert not marker.exists()
    assert (
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
        and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    )


class _StateOnly:
    """Just enough of a trainer for ``SAETrainer.load_trainer_state`` to reach its ``torch.load``."""

    class cfg:
        device = "cpu"

    class activation_scaler:
        @staticmethod
        def load(path: Path) -> None:
            pass
