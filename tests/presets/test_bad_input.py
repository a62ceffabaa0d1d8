"""Bad input to the preset path fails early, with a message that says what to change.

Each case also checks that nothing ran first: no model forward pass, no output folder.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest

from saelens_gemmascope.cli import main
from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.models.spec import UnknownNameError
from saelens_gemmascope.recipe.config import BufferTooSmallError
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite import checks
from saelens_gemmascope.suite.calibration import CalibrationRecord, write_record
from saelens_gemmascope.suite.checks import InputWidthError, InsufficientDiskSpaceError
from saelens_gemmascope.suite.configs import match_presets, training_config
from saelens_gemmascope.suite.passes import pass_training
from saelens_gemmascope.suite.plan import plan_suite
from saelens_gemmascope.suite.run import run_suite

TINY_RES = "tiny-gemma-2/res/layer_1/width_256"


@pytest.fixture
def forward_calls(tiny: TinyGemma2) -> Iterator[list[int]]:
    """Token counts of every forward pass of the tiny model during the test."""
    calls: list[int] = []
    handle = tiny.tl_model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].numel()))
    yield calls
    handle.remove()


def test_unknown_preset_suggests_close_matches_without_listing_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(UnknownNameError) as err:
        match_presets(["gemma-2-2b/res/layer_12/width_16kk"])
    message = str(err.value)
    assert "Did you mean 'gemma-2-2b/res/layer_12/width_16k'" in message
    assert "gemmascope presets 'gemma-2-2b/*'" in message
    assert len(message) < 400  # 500+ presets are not dumped into the error
    # The command line prints it as one error line (exit status 2), not a traceback.
    assert main(["presets", "gemma-2-2b/res/layer_12/width_16kk"]) == 2
    stderr = capsys.readouterr().err
    assert "error: Unknown preset 'gemma-2-2b/res/layer_12/width_16kk'" in stderr
    assert "Traceback" not in stderr


def test_unknown_model_in_a_pattern_points_to_the_full_list() -> None:
    with pytest.raises(UnknownNameError, match=r"list them with: gemmascope presets$"):
        match_presets(["gemma-3-1b/res/*"])


def test_a_d_in_override_that_does_not_match_the_hook(capsys: pytest.CaptureFixture[str]) -> None:
    (preset,) = match_presets(["gemma-2-2b/res/layer_12/width_16k"])
    with pytest.raises(
        InputWidthError, match=r"d_in=100 does not match blocks\.12\.hook_resid_post .* 2304 wide"
    ):
        plan_suite([preset], RunSpec.from_overrides({"d_in": 100}))
    with pytest.raises(InputWidthError, match="2304 wide"):
        training_config(preset, 1e-3, d_in=100)
    # The same d_in as the hook's is accepted (and gives the preset's SAE).
    assert training_config(preset, 1e-3, d_in=2304).sae.d_in == 2304
    args = ["train", "gemma-2-2b/res/layer_12/width_16k", "--dry-run", "--set", "d_in=100"]
    assert main(args) == 2
    assert "2304 wide" in capsys.readouterr().err


def test_a_preset_whose_width_is_wrong_for_the_loaded_model(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path, forward_calls: list[int]
) -> None:
    # A third-party preset claiming 48-wide activations where the tiny model's residual stream is 64.
    (preset,) = match_presets([TINY_RES])
    wrong = dataclasses.replace(preset, d_in=48, l0_targets=(20.0,), training_tokens=20 * 256)
    write_record(tmp_path, CalibrationRecord(wrong.name, 0, [], {20.0: 3e-3}))
    trainers = pass_training(tmp_path, model=tiny.tl_model, dataset=token_data, progress=lambda _: None)
    with pytest.raises(
        InputWidthError, match=r"blocks\.1\.hook_resid_post: activations 64 wide, SAE d_in 48"
    ):
        run_suite(plan_suite([wrong]), tmp_path, trainers, progress=lambda _: None)
    assert forward_calls == [2]  # only the check's two-token probe ran
    assert not (tmp_path / "checkpoints").exists()


def test_attention_hook_widths_are_checked_with_heads_flattened(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    (att,) = match_presets(["tiny-gemma-2/att/layer_1/width_256"])
    checks.check_hook_widths(tiny.tl_model, {att.hook_name: att.d_in})  # 4 heads x 8 = 32
    with pytest.raises(InputWidthError, match="activations 32 wide, SAE d_in 64"):
        checks.check_hook_widths(tiny.tl_model, {att.hook_name: 64})


def test_a_buffer_too_small_for_the_batch_names_the_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    (preset,) = match_presets([TINY_RES])
    overrides = {"train_batch_size_tokens": 4096, "context_size": 128, "n_batches_in_buffer": 8}
    with pytest.raises(BufferTooSmallError) as err:
        plan_suite([preset], RunSpec.from_overrides(overrides))
    message = str(err.value)
    assert "8 * 128 = 1,024 tokens" in message and "train_batch_size_tokens = 4,096" in message
    assert (
        "n_batches_in_buffer=32 (or more)" in message and "train_batch_size_tokens=1024 (or less)" in message
    )
    # The config builders stop before SAELens sees the config, with the same message.
    with pytest.raises(BufferTooSmallError, match="n_batches_in_buffer=32"):
        training_config(preset, 1e-3, **overrides)
    with pytest.raises(BufferTooSmallError, match="n_batches_in_buffer=32"):
        training_config(preset, [1e-3, 2e-3], **overrides)
    args = ["train", TINY_RES, "--dry-run"] + [f"--set={k}={v}" for k, v in overrides.items()]
    assert main(args) == 2
    assert "never yield a batch" in capsys.readouterr().err


def test_no_disk_space_for_the_activation_cache_fails_before_it_starts(
    tiny: TinyGemma2,
    token_data: datasets.Dataset,
    tmp_path: Path,
    forward_calls: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    presets = [
        dataclasses.replace(p, l0_targets=(20.0,), training_tokens=1000 * 250)
        for p in match_presets([TINY_RES, "tiny-gemma-2/att/layer_1/width_256"])
    ]
    for preset in presets:
        write_record(tmp_path, CalibrationRecord(preset.name, 0, [], {20.0: 3e-3}))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda _: usage._replace(free=10 * 2**20))
    root = tmp_path / "suite"
    trainers = pass_training(root, model=tiny.tl_model, dataset=token_data, cached=True)
    with pytest.raises(InsufficientDiskSpaceError) as err:
        run_suite(plan_suite(presets), root, trainers, progress=lambda _: None)
    message = str(err.value)
    # 250,000 tokens rounded up to whole model batches (the tiny presets': 8 prompts x 128): 250,880.
    n = 250_880
    expected = {"blocks.1.hook_resid_post": n * (64 * 4 + 4), "blocks.1.attn.hook_z": n * (32 * 4 + 4)}
    assert f"about {checks.format_bytes(sum(expected.values()))}" in message
    assert f"blocks.1.attn.hook_z {checks.format_bytes(expected['blocks.1.attn.hook_z'])}" in message
    assert "only 10.0 MiB are free" in message and "--cached-activations" in message
    assert forward_calls == [] and not root.exists()


def test_the_disk_check_counts_only_caches_still_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saelens_gemmascope.suite import activation_cache

    held: dict[str, int] = {"blocks.0.hook_resid_post": 10**6, "blocks.1.hook_resid_post": 10}
    monkeypatch.setattr(activation_cache, "cached_tokens", lambda path, _context: held[path.name])
    settings: dict[str, Any] = {"store_batch_size_prompts": 4, "context_size": 100}
    needed = activation_cache.caches_to_write(tmp_path, {h: 64 for h in held}, 1000, settings)
    assert needed == {"blocks.1.hook_resid_post": 1200 * (64 * 4 + 4)}  # 1,000 tokens -> 3 batches of 400


def test_checkpoint_interval_and_token_counts() -> None:
    from saelens_gemmascope.cli.train import parse_count
    from saelens_gemmascope.suite.passes import PassTraining

    assert [parse_count(t) for t in ("500M", "2B", "250k", "1_000")] == [
        500 * 10**6,
        2 * 10**9,
        250_000,
        1000,
    ]
    with pytest.raises(ValueError, match="token count"):
        parse_count("lots")
    plan = plan_suite(match_presets(["gemma-2-2b/res/layer_12/width_16k"]))
    (group,) = plan.groups
    assert group.training_tokens == 4 * 10**9
    assert (
        PassTraining(RunSpec(output=Path("x"), checkpoint_every_tokens=500 * 10**6)).checkpoints_for(group)
        == 7
    )
    assert PassTraining(RunSpec(output=Path("x"), checkpoint_every_tokens=10**10)).checkpoints_for(group) == 0
    assert PassTraining(RunSpec(output=Path("x"), n_checkpoints=3)).checkpoints_for(group) == 3
