"""A damaged or foreign SAE folder is refused in one line naming the folder, the fault and what to
do, by every command that takes one (``eval``, ``finetune-kl``, ``train --init-from``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from saelens_gemmascope.cli import main
from saelens_gemmascope.directory.saved import SavedSAEError, load_saved_sae


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=16))
    sae.save_model(tmp_path / "sae")
    return tmp_path / "sae"


def test_a_good_folder_loads(saved: Path) -> None:
    assert load_saved_sae(saved).cfg.d_sae == 16


def test_an_incomplete_config_names_the_missing_field(saved: Path) -> None:
    (saved / "cfg.json").write_text(json.dumps({"architecture": "jumprelu"}))
    with pytest.raises(SavedSAEError, match=r"cannot load the SAE saved in .*sae \(missing field"):
        load_saved_sae(saved)


def test_a_truncated_weights_file_is_named(saved: Path) -> None:
    weights = saved / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(SavedSAEError, match="damaged or was not written by SAELens"):
        load_saved_sae(saved)


def test_a_folder_without_the_files_says_where_runs_keep_their_saes(tmp_path: Path) -> None:
    with pytest.raises(SavedSAEError, match=r"no cfg.json or sae_weights.safetensors .*<output>/saes/"):
        load_saved_sae(tmp_path)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "{folder}", "--model", "tiny-gemma-3"],
        ["finetune-kl", "{folder}", "--model", "tiny-gemma-3", "--out", "{out}"],
        ["train", "tiny-gemma-3/res/layer_2/width_256", "--init-from", "{folder}", "--output", "{out}"],
    ],
    ids=["eval", "finetune-kl", "train-init-from"],
)
def test_every_command_reports_a_damaged_folder_in_one_line(
    argv: list[str], saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (saved / "cfg.json").write_text(json.dumps({"architecture": "jumprelu"}))
    args = [a.format(folder=saved, out=tmp_path / "out") for a in argv]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert f"cannot load the SAE saved in {saved}" in err, err
    assert "Traceback" not in err
