"""One run specification for every entry path (issue: one way to train).

* the device audit without a GPU: every entry path builds its SAELens configs with
  ``device="cuda"`` (no CUDA needed to build them) and every device and dtype field agrees;
* overrides say where they go, and bad ones fail in one line before anything runs;
* the Python API's defaults are the CLI's: a preset's config runs as it is, writing nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

from saelens_gemmascope.cli import main
from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.distributed.spec import DistributedSpec
from saelens_gemmascope.runners import GemmaScopeMultiSAETrainingRunner, GemmaScopeTrainingRunner
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite import passes as suite_training_module
from saelens_gemmascope.suite.configs import (
    PresetSAE,
    match_presets,
    single_config_for,
    training_config,
)

TINY = "tiny-gemma-2/res/layer_1/width_256"
GEMMA = "gemma-2-2b/res/layer_12/width_16k"
DEVICE_FIELDS = ("device", "llm_device", "act_store_device")


def device_fields(cfg: Any) -> dict[str, Any]:
    """Every device and dtype field of a runner config, its SAE configs and its trainer config."""
    found: dict[str, Any] = {}
    for name in (*DEVICE_FIELDS, "dtype"):
        found[f"runner.{name}"] = getattr(cfg, name)
    saes = cfg.saes if isinstance(cfg, MultiSAETrainingRunnerConfig) else {"sae": cfg.sae}
    for sae_name, sae_cfg in saes.items():
        found[f"{sae_name}.device"] = sae_cfg.device
        found[f"{sae_name}.dtype"] = sae_cfg.dtype
    found["trainer.device"] = cfg.to_sae_trainer_config().device
    return found


def assert_agree(cfg: Any, device: str = "cuda", dtype: str = "bfloat16") -> None:
    fields = device_fields(cfg)
    wrong = {k: v for k, v in fields.items() if v != (dtype if k.endswith("dtype") else device)}
    assert not wrong, f"fields disagree with the run's {device}/{dtype}: {wrong}"


def test_python_configs_put_everything_on_the_run_device() -> None:
    assert_agree(training_config(GEMMA, 6e-4, device="cuda", dtype="bfloat16"))
    assert_agree(training_config(GEMMA, [1e-3, 3e-3], device="cuda", dtype="bfloat16"))
    assert_agree(training_config([GEMMA], {GEMMA: [1e-3]}, spec=RunSpec(device="cuda", dtype="bfloat16")))
    # The cached-activations path builds single-SAE configs with the same builder.
    (preset,) = match_presets([GEMMA])
    spec = RunSpec(device="cuda", dtype="bfloat16")
    assert_agree(single_config_for(PresetSAE(preset, 1e-3), spec, use_cached_activations=True))
    # A value the caller gives for a derived device field is refused, not silently kept.
    with pytest.raises(ValueError, match="llm_device"):
        training_config(GEMMA, 1e-3, llm_device="cpu")


class _Captured(Exception):
    """Raised by the stand-in runner once the configs of the first training pass exist."""


@pytest.fixture
def captured_runner(monkeypatch: pytest.MonkeyPatch, tiny: TinyGemma2) -> list[tuple[Any, Any]]:
    """The suite's runner replaced by a recorder; the model (on the CPU) stands in for the run's,
    and CUDA counts as available, so the whole CLI path runs up to the first runner."""
    seen: list[tuple[Any, Any]] = []

    def record(cfg: Any, *args: Any, distributed: Any = None, **kwargs: Any) -> Any:
        seen.append((cfg, distributed))
        raise _Captured

    monkeypatch.setattr(suite_training_module, "GemmaScopeMultiSAETrainingRunner", record)
    monkeypatch.setattr(
        suite_training_module.PassTraining, "language_model", lambda self, name: tiny.tl_model
    )
    monkeypatch.setattr("saelens_gemmascope.runners.run_spec.check_device_available", lambda device: None)
    return seen


def test_the_cli_puts_everything_on_the_run_device(captured_runner: list[Any], tmp_path: Path) -> None:
    argv = ["train", TINY, "--device", "cuda", "--dtype", "bfloat16", "--l0-coefficients", "1e-3,2e-3",
            "--output", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(_Captured):
        main(argv)
    ((cfg, distributed),) = captured_runner
    assert_agree(cfg)
    assert distributed is None


def test_the_distributed_cli_puts_everything_on_the_run_device(
    captured_runner: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(
        "saelens_gemmascope.distributed.collectives.init_distributed",
        lambda spec, device, timeout_s=None: None,
    )
    argv = ["train", TINY, "--device", "cuda", "--dtype", "bfloat16", "--l0-coefficients", "1e-3,2e-3",
            "--distributed", "data", "--output", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(_Captured):
        main(argv)
    ((cfg, distributed),) = captured_runner
    assert_agree(cfg)
    assert distributed == DistributedSpec("data", 0, 1)


def test_cuda_without_cuda_prints_the_plan_then_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", TINY, "--device", "cuda", "--dry-run", "--output", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "3 SAEs from 1 presets" in captured.out
    (line, hint) = captured.err.strip().splitlines()
    assert "CUDA is not available on this machine" in line and "GEMMASCOPE_TRACEBACK" in hint
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("foo=1", "unknown setting 'foo'"),
        ("lrr=0.1", "did you mean 'lr'"),
        ("context_size=0", "context_size"),
        ("lr=nan", "finite"),
        ("training_tokens=-5", "training_tokens"),
        ("context_size='abc'", "expected an integer"),
        ("sae.device=cuda", "run-level"),
        ("fast_path='quick'", "fast_path"),
        ("verbose=False", "single-SAE runner"),
    ],
)
def test_bad_overrides_fail_in_one_line_before_anything_is_written(
    assignment: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    assert main(["train", TINY, "--set", assignment, "--dry-run", "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and message in err[0], err
    assert not output.exists()


def test_overrides_of_the_sae_width_and_lambda_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = training_config(GEMMA, 1e-3, d_sae=4096)
    assert cfg.sae.d_sae == 4096 and cfg.sae.l0_coefficient == 1e-3
    multi = training_config(GEMMA, [1e-3, 2e-3], **{"sae.d_sae": 2048, "runner.lr": 1e-4})
    assert {c.d_sae for c in multi.saes.values()} == {2048} and multi.lr == 1e-4
    with pytest.raises(ValueError, match="second argument"):
        training_config(GEMMA, 1e-3, l0_coefficient=2e-3)
    # On the command line, l0_coefficient is a one-rung ladder (no calibration), d_sae the width.
    argv = ["train", TINY, "--set", "l0_coefficient=5e-3", "--set", "d_sae=512", "--dry-run",
            "--output", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 SAEs from 1 presets" in out and "λ 0.005" in out
    assert main([*argv, "--l0-coefficients", "1e-3"]) == 2
    assert "not both" in capsys.readouterr().err


def _short(**overrides: Any) -> dict[str, Any]:
    return {"training_tokens": 20 * 256, "l0_warm_up_steps": 5, **overrides}


def test_a_preset_config_runs_as_it_is_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sae = GemmaScopeTrainingRunner(training_config(TINY, 5e-3, **_short())).run()
    assert sae.cfg.d_sae == 256 and sae.W_enc.isfinite().all()
    saes = GemmaScopeMultiSAETrainingRunner(training_config(TINY, [1e-3, 1e-2], **_short())).run()
    assert len(saes) == 2
    assert list(tmp_path.iterdir()) == []  # no ./output, ./checkpoints or ./wandb


def test_a_spec_with_an_output_folder_saves_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = RunSpec(output=tmp_path / "run", runner={"training_tokens": 20 * 256})
    GemmaScopeTrainingRunner(training_config(TINY, 5e-3, spec=spec)).run()
    assert (tmp_path / "run" / "cfg.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_single_process_runs_use_the_preset_config_types() -> None:
    assert isinstance(training_config(TINY, 1e-3), LanguageModelSAERunnerConfig)
    assert isinstance(training_config(TINY, [1e-3]), MultiSAETrainingRunnerConfig)


@pytest.mark.gpu
def test_a_cuda_run_trains_every_tensor_on_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    runner = GemmaScopeMultiSAETrainingRunner(training_config(TINY, [1e-3, 1e-2], device="cuda", **_short()))
    saes = runner.run()  # the first step audits every tensor it touches
    assert runner.trainer is not None
    for trainer in runner.trainer.trainers.values():
        assert trainer._audited
    assert all(p.device.type == "cuda" for sae in saes.values() for p in sae.parameters())
    assert next(runner.model.parameters()).device.type == "cuda"
    assert torch.cuda.max_memory_allocated() > 0
