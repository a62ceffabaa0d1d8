"""A suite on the tiny model: calibrated λs, one shared forward pass, export, cached activations.

Stated tolerance: each trained SAE's L0 (SAELens's mean over the last 40-step window) lands within
a factor 1.5 of its target L0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from sae_lens import SAE

from saelens_gemmascope.models.tiny import TinyGemma2
from saelens_gemmascope.training.calibration import CalibrationRecord, read_record, write_record
from saelens_gemmascope.training.preset_config import match_presets
from saelens_gemmascope.training.suite import SuiteResult, plan_suite, run_suite
from saelens_gemmascope.training.suite_training import group_trainers

L0_TOLERANCE = 1.5
TARGETS = (12.0, 40.0)
PRESETS = ["tiny-gemma-2/res/layer_1/width_256", "tiny-gemma-2/mlp/layer_2/width_256"]


@dataclasses.dataclass
class ForwardCounter:
    """Tokens the language model ran on, per phase of the suite (calibration or training)."""

    phase: str = "calibration"
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    calls: dict[str, int] = dataclasses.field(default_factory=dict)

    def hook(self, module: Any, args: tuple[Any, ...]) -> None:
        self.tokens[self.phase] = self.tokens.get(self.phase, 0) + args[0].numel()
        self.calls[self.phase] = self.calls.get(self.phase, 0) + 1

    def progress(self, message: str) -> None:
        self.phase = "training" if "training" in message else "calibration"


@dataclasses.dataclass
class SuiteRun:
    result: SuiteResult
    counter: ForwardCounter
    root: Path


@pytest.fixture(scope="module")
def suite(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory
) -> SuiteRun:
    presets = [dataclasses.replace(p, l0_targets=TARGETS) for p in match_presets(PRESETS)]
    plan = plan_suite(presets)
    root = tmp_path_factory.mktemp("suite")
    counter = ForwardCounter()
    handle = tiny.tl_model.register_forward_pre_hook(counter.hook)
    try:
        trainers = group_trainers(root, model=tiny.tl_model, dataset=token_data)
        result = run_suite(plan, root, trainers, progress=counter.progress)
    finally:
        handle.remove()
    return SuiteRun(result, counter, root)


def test_calibrated_ladder_reaches_its_targets(suite: SuiteRun) -> None:
    print(suite.result.summary())
    assert len(suite.result.saes) == 4
    for sae in suite.result.saes:
        assert sae.target_l0 / L0_TOLERANCE <= sae.l0 <= sae.target_l0 * L0_TOLERANCE, sae
    for name in PRESETS:
        record = read_record(suite.root, dataclasses.replace(match_presets([name])[0], l0_targets=TARGETS))
        assert record is not None and len(record.probes) == 4 + 2  # grid, then one refinement per target


def test_one_forward_pass_per_batch_feeds_all_four_saes(suite: SuiteRun) -> None:
    training_tokens = 200 * 256
    lm_tokens = suite.counter.tokens["training"]
    # The model ran on the training tokens once (plus the norm estimate and the buffer's slack),
    # not once per SAE: four separate runs would need at least 4x.
    assert training_tokens <= lm_tokens <= 1.3 * training_tokens
    assert suite.counter.calls["training"] * 8 * 128 == lm_tokens  # 8 prompts of 128 tokens per forward
    # Each forward gives 1,024 tokens, i.e. four 256-token batches for each of the four SAEs.
    assert suite.counter.calls["training"] <= 1.3 * 200 / 4
    # Calibration: two rounds (8 grid probes, then 4 refinement probes), one shared pass each.
    assert suite.counter.calls["calibration"] == 2 * suite.counter.calls["training"]


def test_trained_saes_are_saved_exported_and_registered(suite: SuiteRun, tiny: TinyGemma2) -> None:
    assert sorted(suite.result.releases) == sorted(
        f"local/{suite.root.name}/tiny-gemma-2-{site}" for site in ("res", "mlp")
    )
    for sae in suite.result.saes:
        assert (Path(sae.saelens_path) / "cfg.json").is_file()
        assert sae.export_id is not None and sae.release is not None
        loaded = SAE.from_pretrained(sae.release, sae.export_id, device="cpu")
        assert loaded.cfg.d_sae == 256
    assert (suite.root / "summary.json").is_file() and (suite.root / "plan.json").is_file()


def test_cached_activations_path_trains_an_sae(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    (preset,) = match_presets(["tiny-gemma-2/att/layer_1/width_256"])
    preset = dataclasses.replace(preset, l0_targets=(20.0,), training_tokens=100 * 256)
    # A stored calibration record: the run starts from it instead of probing.
    write_record(tmp_path, CalibrationRecord(preset.name, 0, [], {20.0: 3e-3}))
    trainers = group_trainers(tmp_path, model=tiny.tl_model, dataset=token_data, cached=True)
    result = run_suite(plan_suite([preset]), tmp_path, trainers, progress=lambda _: None)
    (sae,) = result.saes
    assert (tmp_path / "activations" / "blocks.1.attn.hook_z" / "state.json").is_file()
    assert sae.l0_coefficient == 3e-3 and 0 < sae.l0 < 256
    loaded = SAE.load_from_disk(sae.saelens_path)
    assert loaded.cfg.d_in == 32
    assert torch.isfinite(loaded.W_dec).all()


def test_an_existing_checkpoint_needs_resume(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path, cli: Callable[[list[str]], Any]
) -> None:
    (preset,) = match_presets(["tiny-gemma-2/res/layer_0/width_256"])
    preset = dataclasses.replace(preset, l0_targets=(20.0,), training_tokens=60 * 256)
    write_record(tmp_path, CalibrationRecord(preset.name, 0, [], {20.0: 3e-3}))
    plan = plan_suite([preset])
    counter = ForwardCounter(phase="first")
    handle = tiny.tl_model.register_forward_pre_hook(counter.hook)
    try:
        run_suite(plan, tmp_path, group_trainers(tmp_path, model=tiny.tl_model, dataset=token_data, n_checkpoints=1),
                  progress=lambda _: None)  # fmt: skip
        # A crash after the checkpoint: the final outputs are gone, the checkpoint is there.
        for path in sorted((tmp_path / "saes").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        with pytest.raises(FileExistsError, match="--resume"):
            run_suite(plan, tmp_path, group_trainers(tmp_path, model=tiny.tl_model, dataset=token_data))
        counter.phase = "resumed"
        resumed = run_suite(
            plan, tmp_path, group_trainers(tmp_path, model=tiny.tl_model, dataset=token_data, resume=True),
            progress=lambda _: None,
        )  # fmt: skip
    finally:
        handle.remove()
    assert len(resumed.saes) == 1
    # Only the second half ran again (SAELens restores the store's position and the SAE's state).
    assert counter.tokens["resumed"] < 0.75 * counter.tokens["first"]
