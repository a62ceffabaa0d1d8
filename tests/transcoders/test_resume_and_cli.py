"""A transcoder run resumes from its checkpoint to the weights of an uninterrupted run, bit for bit,
and `gemmascope train` trains, exports and registers a transcoder preset."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file

from saelens_gemmascope.cli import main
from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.calibration import CalibrationRecord, write_record
from saelens_gemmascope.suite.configs import match_presets
from saelens_gemmascope.suite.passes import pass_training
from saelens_gemmascope.suite.plan import plan_suite
from saelens_gemmascope.suite.run import run_suite

PRESET = "tiny-gemma-2/transcoder/layer_1/width_256"
LAMBDAS = {10.0: 1e-3, 30.0: 3e-4}


@pytest.fixture(scope="module")
def token_data(tiny: TinyGemma2) -> datasets.Dataset:
    from saelens_gemmascope.data import stdlib_token_dataset

    return stdlib_token_dataset(tiny.tokenizer, 128)


def _train(root: Path, tiny: TinyGemma2, data: datasets.Dataset, resume: bool = False) -> None:
    (preset,) = match_presets([PRESET])
    preset = dataclasses.replace(preset, l0_targets=tuple(LAMBDAS), training_tokens=30 * 256)
    write_record(root, CalibrationRecord(PRESET, 0, [], dict(LAMBDAS)))  # no probes
    trainers = pass_training(
        RunSpec(output=root, n_checkpoints=2), model=tiny.tl_model, dataset=data, resume=resume
    )
    run_suite(plan_suite([preset]), root, trainers, progress=lambda _: None)


def _weights(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        str(path.parent.relative_to(root)): load_file(path)
        for path in sorted((root / "saes").rglob("sae_weights.safetensors"))
    }


def test_a_crashed_transcoder_run_resumes_to_the_uninterrupted_weights(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tmp_path / "tr-whole"
    _train(whole, tiny, token_data)
    checkpoints = sorted(
        (p for p in (whole / "checkpoints").rglob("*") if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    assert len(checkpoints) == 2
    crashed = tmp_path / "tr-crashed"  # as a crash after the first checkpoint leaves it
    shutil.copytree(whole, crashed)
    shutil.rmtree(crashed / "saes")
    shutil.rmtree(crashed / checkpoints[1].relative_to(whole))
    # The pass must continue from the surviving checkpoint, not retrain from step 0 (which, being
    # deterministic on CPU, would also end with the same weights).
    from saelens_gemmascope.suite import passes

    chosen: list[str | None] = []
    original = passes._resume_from

    def spy(ctx: Any, pass_id: str) -> str | None:
        chosen.append(original(ctx, pass_id))
        return chosen[-1]

    monkeypatch.setattr(passes, "_resume_from", spy)
    _train(crashed, tiny, token_data, resume=True)
    assert chosen and chosen[-1] is not None
    assert Path(chosen[-1]).resolve() == (crashed / checkpoints[0].relative_to(whole)).resolve()
    want, got = _weights(whole), _weights(crashed)
    assert want.keys() == got.keys() and len(want) == len(LAMBDAS)
    for name, tensors in want.items():
        assert "W_dec" in tensors and tensors["W_dec"].shape == (256, 64)
        for key, tensor in tensors.items():
            assert torch.equal(got[name][key], tensor), (name, key)


def test_gemmascope_train_trains_exports_and_registers_a_transcoder(tmp_path: Path) -> None:
    out = tmp_path / "tr-cli"
    argv = [
        "train",
        PRESET,
        "--l0-coefficients",
        "1e-3",
        "--set",
        "training_tokens=5120",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["saes"]
    assert row["release"] and row["export_id"]
    loaded = SAE.from_pretrained(row["release"], row["export_id"], device="cpu")
    assert loaded.cfg.architecture() == "jumprelu_transcoder"
    assert loaded.cfg.metadata.hook_name == "blocks.1.ln2.hook_normalized"
    assert loaded.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
