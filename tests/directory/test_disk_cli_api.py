"""The disk converter, the public load/fetch/info functions, and the ls/fetch/info commands."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from gemmascope_fakes import TINY_WIDTHS, as_tensors, random_params, save_npz
from sae_lens import SAE

import saelens_gemmascope.directory.api as api
from saelens_gemmascope.cli.directory import add_commands
from saelens_gemmascope.directory.disk import disk_converter_for, identify_folder
from saelens_gemmascope.directory.npz import read_params_npz

REPO, FOLDER = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"
D_IN, D_SAE = 8, TINY_WIDTHS["16k"]


def test_load_sae_from_a_mirror_end_to_end(mirror, tiny_converter):
    arrays = random_params(D_IN, D_SAE)
    mirror(REPO, FOLDER, arrays)
    sae = api.load_sae(
        "gemma-scope-2b-pt-res-canonical",
        "layer_12/width_16k/canonical",
        mirror=mirror.root,
        converter=tiny_converter,
    )
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post"
    assert sae.cfg.metadata.neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k"
    assert torch.equal(sae.W_dec.detach(), as_tensors(arrays)["W_dec"])


def test_disk_converter_from_the_hub_layout_a_sidecar_or_an_argument(tmp_path, tiny_converter):
    arrays = random_params(D_IN, D_SAE)
    hub_like = save_npz(
        tmp_path / "anywhere" / "gemma-scope-2b-pt-res" / FOLDER / "params.npz", arrays
    ).parent
    assert identify_folder(hub_like, tiny_converter) == (REPO, FOLDER)
    hf_like = tmp_path / "models--google--gemma-scope-2b-pt-res" / "snapshots" / ("a" * 40) / FOLDER
    assert identify_folder(hf_like, tiny_converter) == (REPO, FOLDER)

    plain = save_npz(tmp_path / "my-sae" / "params.npz", arrays).parent
    with pytest.raises(ValueError, match=r"gemmascope\.json"):
        identify_folder(plain, tiny_converter)
    (plain / "gemmascope.json").write_text(json.dumps({"release": "gemma-scope-2b-pt-res", "sae_id": FOLDER}))
    assert identify_folder(plain, tiny_converter) == (REPO, FOLDER)

    loader = disk_converter_for("gemma-scope-2b-pt-res", FOLDER, converter=tiny_converter)
    sae = SAE.load_from_disk(tmp_path / "my-sae", converter=loader)
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post"
    assert torch.equal(sae.W_enc.detach(), as_tensors(arrays)["W_enc"])


@pytest.fixture
def tiny_default(monkeypatch, tiny_converter):
    """Serve the public functions from the tiny world."""
    monkeypatch.setattr(api, "default_converter", lambda: tiny_converter)
    return tiny_converter


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_ls_filters_and_marks_canonical(capsys):
    assert run_cli(["ls", "--model", "gemma-2-2b", "--site", "res", "--layer", "12", "--width", "16k"]) == 0
    out = capsys.readouterr().out
    assert "layer_12   width_16k   L0: 22 41 *82 176 445" in out and "5 SAEs" in out
    assert run_cli(["ls", "--site", "embedding"]) == 0
    assert "embedding" in capsys.readouterr().out


def test_info_and_fetch(capsys, mirror, tiny_default):
    assert run_cli(["info", "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical"]) == 0
    out = capsys.readouterr().out
    assert "blocks.12.hook_resid_post" in out and "average_l0_82" in out and "unavailable: offline" in out
    mirror(REPO, FOLDER, random_params(D_IN, D_SAE))
    assert run_cli(["fetch", "gemma-scope-2b-pt-res", FOLDER, "--mirror", str(mirror.root)]) == 0
    out = capsys.readouterr().out
    converted = tiny_default.cache_path(REPO, FOLDER)
    assert "source:    mirror" in out and str(converted) in out and converted.is_file()
    assert run_cli(["info", "gemma-scope-2b-pt-res", FOLDER]) == 0
    assert f"conversion cache {converted}" in capsys.readouterr().out


def test_cli_errors_are_messages_not_tracebacks(capsys):
    assert run_cli(["info", "gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_81"]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert run_cli(["fetch", "gemma-scope-2b-pt-res", FOLDER]) == 2
    assert "SAELENS_GEMMASCOPE_MIRROR" in capsys.readouterr().err


def test_fetch_result_is_what_a_load_reads(mirror, tiny_default):
    arrays = random_params(D_IN, D_SAE, seed=4)
    mirror(REPO, FOLDER, arrays)
    result = api.fetch_sae("gemma-scope-2b-pt-res", FOLDER, mirror=mirror.root)
    assert result.source == "mirror" and result.npz_path == mirror.root / REPO / FOLDER / "params.npz"
    assert torch.equal(read_params_npz(result.npz_path)["b_enc"], as_tensors(arrays)["b_enc"])
