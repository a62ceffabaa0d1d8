"""One progress display redrawn by time (tokens, total, rate, ETA) instead of SAELens's bars; torch's
thread count for the work's size, restored after; SAELens's repeated warnings shown once."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest
import torch
from sae_lens.config import SAETrainerConfig

from saelens_gemmascope.progress import (
    ProgressDisplay,
    format_duration,
    progress_task,
    saelens_bars_replaced,
)
from saelens_gemmascope.quiet import quiet_saelens
from saelens_gemmascope.recipe import gemmascope_sae_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE
from saelens_gemmascope.recipe.trainer import GemmaScopeMultiSAETrainer
from saelens_gemmascope.suite.threads import (
    ONE_THREAD_BELOW,
    TWO_THREADS_BELOW,
    cpu_threads_for,
    idle_cores,
    threads_for_work,
    torch_threads,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def log_display(clock: FakeClock, refresh: float = 2.0) -> tuple[ProgressDisplay, io.StringIO]:
    out = io.StringIO()  # not a terminal: one line per redraw
    return ProgressDisplay(stream=out, refresh_seconds=refresh, clock=clock), out


def test_the_display_redraws_by_time_not_by_steps() -> None:
    clock = FakeClock()
    display, out = log_display(clock)
    task = display.task("training", 10_000)
    assert len(out.getvalue().splitlines()) == 0  # nothing drawn before the first report
    for step in range(1, 200):  # 199 steps within 1.99 s: one redraw (the first report)
        clock.now = step / 100
        task.update(step * 10)
    assert len(out.getvalue().splitlines()) == 1
    clock.now = 4.0  # one slow step, 2 s after the last redraw: drawn although no step count was hit
    task.update(2_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "2k/10k tok" in lines[-1]


def test_a_status_line_shows_tokens_total_rate_and_eta() -> None:
    clock = FakeClock()
    display, out = log_display(clock)
    task = display.task("training 6 SAEs", 51_200)
    clock.now = 10.0
    task.update(12_800, note="step 50 | loss 0.25")
    line = out.getvalue().splitlines()[-1]
    assert "training 6 SAEs: 12.8k/51.2k tok (25%)" in line
    assert "1.28k tok/s" in line and "ETA 30s" in line and "step 50 | loss 0.25" in line
    clock.now = 40.0
    task.close()  # stopped short of its total: says how far it got
    assert out.getvalue().splitlines()[-1].startswith("training 6 SAEs: 12.8k/51.2k tok in 40s (320 tok/s)")


def test_a_resumed_run_measures_its_rate_from_where_it_resumed() -> None:
    clock = FakeClock()
    display, out = log_display(clock)
    task = display.task("training", 1_000_000, done=600_000)
    clock.now = 100.0
    task.update(700_000)
    assert "1k tok/s" in out.getvalue() and "ETA 5m00s" in out.getvalue()  # not 7k tok/s


def test_the_rate_follows_the_machine_s_recent_speed() -> None:
    clock = FakeClock()
    display, out = log_display(clock, refresh=10.0)
    task = display.task("training", 10**6)
    for second in range(10, 130, 10):  # 1,000 tok/s for 60 s, then 100 tok/s (the machine got busy)
        clock.now = float(second)
        task.update(60_000 + 100 * (second - 60) if second > 60 else 1_000 * second)
    assert out.getvalue().splitlines()[-1].split(" | ")[1] == "100 tok/s"  # over the last 30 s


def test_stages_are_announced_with_their_position_and_log_lines_pass_through() -> None:
    clock = FakeClock()
    out = io.StringIO()
    display = ProgressDisplay(stream=out, clock=clock, stages=("model", "train", "evaluate"))
    clock.now = 75.0
    display.stage("train")
    display.write("calibrating λ")
    assert out.getvalue().splitlines() == ["[stage 2/3 train] after 1m15s", "calibrating λ"]


def test_a_disabled_display_writes_nothing() -> None:
    out = io.StringIO()
    display = ProgressDisplay(enabled=False, stream=out)
    task = display.task("training", 100)
    task.update(50, note=lambda: pytest.fail("a hidden display reads no loss"))
    task.close()
    display.write("hello")
    assert out.getvalue() == ""


def test_progress_task_uses_the_active_display() -> None:
    clock = FakeClock()
    display, out = log_display(clock)
    with display.activate(), progress_task("evaluating 3 SAEs", 4_096) as task:
        task.advance(1_024)
        task.advance(3_072)
    assert "evaluating 3 SAEs: 1.02k/4.1k tok (25%)" in out.getvalue()
    assert out.getvalue().splitlines()[-1].startswith("evaluating 3 SAEs: 4.1k tok in 0s")


def test_saelens_bars_are_replaced_only_inside_the_block() -> None:
    import sae_lens.training.multi_sae_trainer as multi_sae_trainer

    display, _ = log_display(FakeClock())
    task = display.task("training", 100)
    original = multi_sae_trainer.tqdm
    with saelens_bars_replaced(task):
        assert multi_sae_trainer.tqdm(total=100, desc="Training Multi-SAE") is task
    assert multi_sae_trainer.tqdm is original


D_IN, D_SAE, BATCH, STEPS = 8, 16, 32, 6
HOOKS = {"a": "blocks.0.hook_resid_post", "b": "blocks.1.hook_resid_post"}


def random_batches() -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield {hook: torch.randn(BATCH, D_IN) for hook in HOOKS.values()}


def test_training_shows_our_display_and_not_saelens_bar(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    cfg = SAETrainerConfig(
        total_training_samples=STEPS * BATCH, train_batch_size_samples=BATCH, lr=1e-3, lr_end=1e-4,
        adam_beta1=0.0, adam_beta2=0.999, lr_warm_up_steps=2, n_batches_for_norm_estimate=1,
    )  # fmt: skip
    saes = {name: GemmaScopeTrainingSAE(gemmascope_sae_config(D_IN, D_SAE, 1e-3)) for name in HOOKS}
    trainer = GemmaScopeMultiSAETrainer(cfg=cfg, saes=saes, hook_names=HOOKS, data_provider=random_batches())
    out = io.StringIO()
    with ProgressDisplay(stream=out, refresh_seconds=0.0).activate():
        trainer.fit()
    lines = out.getvalue().splitlines()
    # Every step reported (refresh 0 s: each one drawn), in tokens, with the ladder's loss.
    assert any(
        "training 2 SAEs: 32/192 tok (17%)" in line and "mean loss of 2 SAEs" in line for line in lines
    )
    assert lines[-1].startswith("training 2 SAEs: 192 tok in ")
    assert "Training Multi-SAE" not in capsys.readouterr().err


def test_format_duration() -> None:
    assert [format_duration(s) for s in (9.6, 75, 3725, float("nan"))] == ["10s", "1m15s", "1h02m", "?"]


def test_threads_follow_the_work_s_size_and_the_idle_cores() -> None:
    assert threads_for_work(ONE_THREAD_BELOW - 1, default=8, idle=8) == 1
    assert threads_for_work(TWO_THREADS_BELOW - 1, default=8, idle=8) == 2
    assert threads_for_work(TWO_THREADS_BELOW, default=8, idle=8) == 8  # large work: torch's default
    assert threads_for_work(TWO_THREADS_BELOW, default=8, idle=3) == 3  # a busy machine: fewer
    assert idle_cores(cores=2, load=3.7) == 1 and idle_cores(cores=8, load=0.4) == 8


def test_the_thread_context_restores_the_previous_count(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GEMMASCOPE_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    with torch_threads(2):
        with cpu_threads_for(256 * 128 * 1024) as count:  # the demo's SAE step: one thread
            assert count == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 2
        with cpu_threads_for(1, device="cuda") as count:  # off the CPU: left alone
            assert count == 2 == torch.get_num_threads()
        monkeypatch.setenv("GEMMASCOPE_THREADS", "3")
        with cpu_threads_for(1) as count:  # the user's count wins
            assert count == 3 == torch.get_num_threads()
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


@pytest.fixture
def shown_warnings() -> Iterator[list[str]]:
    """The text of every warning Python shows (pytest's own warning capture set aside)."""
    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, *_args, **_kwargs: shown.append(str(message))
        yield shown


def test_quiet_saelens_shows_a_repeated_warning_once(shown_warnings: list[str]) -> None:
    with quiet_saelens():
        for _ in range(5):
            warnings.resetwarnings()  # forgets what was shown, as warnings.catch_warnings in a step does
            warnings.simplefilter("default")
            warnings.warn("The training dataset contains fewer samples (10)", UserWarning, stacklevel=1)
        warnings.warn("another warning", UserWarning, stacklevel=1)
    assert shown_warnings == ["The training dataset contains fewer samples (10)", "another warning"]


def test_without_it_the_warning_repeats(shown_warnings: list[str]) -> None:
    for _ in range(3):
        warnings.resetwarnings()
        warnings.simplefilter("default")
        warnings.warn("The training dataset contains fewer samples (10)", UserWarning, stacklevel=1)
    assert len(shown_warnings) == 3  # what the 88 repeats of a 40-second train came from


def test_quiet_saelens_hides_expected_and_internal_warnings(
    shown_warnings: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("sae_lens")
    with quiet_saelens(hide=[r"fewer samples"]):
        warnings.simplefilter("always")
        warnings.warn("To copy construct from a tensor, it is recommended", UserWarning, stacklevel=1)
        warnings.warn("The training dataset contains fewer samples (10)", UserWarning, stacklevel=1)
        for _ in range(3):
            logger.warning("override_model overrides cfg.model_name='x'")
            logger.warning("something SAELens says")
    assert shown_warnings == []
    assert [r.getMessage() for r in caplog.records] == ["something SAELens says"]
    assert not logger.filters  # removed on exit
