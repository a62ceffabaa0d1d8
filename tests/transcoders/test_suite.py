"""A transcoder preset through the suite: calibrated, trained, saved, exported, registered; cached
activations refused in one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest
import torch
from sae_lens import SAE

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.suite.calibration import CalibrationRecord, write_record
from saelens_gemmascope.suite.configs import match_presets
from saelens_gemmascope.suite.passes import pass_training
from saelens_gemmascope.suite.plan import plan_suite
from saelens_gemmascope.suite.run import run_suite

PRESET = "tiny-gemma-2/transcoder/layer_1/width_256"


@pytest.fixture
def preset() -> object:
    (found,) = match_presets([PRESET])
    assert found.trainable and found.architecture == "jumprelu_gemmascope_transcoder"
    return dataclasses.replace(found, l0_targets=(20.0,), training_tokens=60 * 256)


@pytest.fixture(scope="module")
def token_data(tiny: TinyGemma2) -> datasets.Dataset:
    from saelens_gemmascope.data import stdlib_token_dataset

    return stdlib_token_dataset(tiny.tokenizer, 128)


def test_transcoder_preset_trains_exports_and_registers_a_loadable_release(
    preset: object, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    write_record(tmp_path, CalibrationRecord(PRESET, 0, [], {20.0: 3e-4}))  # skip the probes
    trainers = pass_training(tmp_path, model=tiny.tl_model, dataset=token_data)
    result = run_suite(plan_suite([preset]), tmp_path, trainers, progress=lambda _: None)  # type: ignore[list-item]
    (sae,) = result.saes
    saved = SAE.load_from_disk(sae.saelens_path)
    assert saved.cfg.architecture() == "jumprelu_transcoder"
    assert saved.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    assert sae.export_id is not None and sae.release is not None
    (entry,) = json.loads((tmp_path / "release" / "tiny-gemma-2-transcoder" / "release.json").read_text())[
        "saes"
    ]
    assert entry["site"] == "transcoder" and entry["hook_name"] == "blocks.1.ln2.hook_normalized"
    assert (entry["architecture"], entry["hook_name_out"], entry["d_out"]) == (
        "jumprelu_transcoder", "blocks.1.hook_mlp_out", 64,
    )  # fmt: skip
    loaded = SAE.from_pretrained(sae.release, sae.export_id, device="cpu")
    # Loaded back from the local release as what it is: a transcoder writing the MLP output.
    assert loaded.cfg.architecture() == "jumprelu_transcoder"
    assert loaded.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    x = torch.randn(7, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), saved.decode(saved.encode(x)))


def test_cached_activations_refuse_transcoders_in_one_line(
    preset: object, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    trainers = pass_training(tmp_path, model=tiny.tl_model, dataset=token_data, cached=True)
    with pytest.raises(ValueError, match="--cached-activations is not supported for transcoders"):
        run_suite(plan_suite([preset]), tmp_path, trainers, progress=lambda _: None)  # type: ignore[list-item]
