"""Where params come from (mirror, then HF cache, then hub) and the conversion cache."""

from __future__ import annotations

import os

import pytest
import torch
from gemmascope_fakes import TINY_WIDTHS, random_params

import saelens_gemmascope.directory.converter as converter_module
from saelens_gemmascope.directory.errors import SaeFileUnavailableError

REPO, FOLDER = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"
D_IN, D_SAE = 8, TINY_WIDTHS["16k"]


@pytest.fixture
def count_npz_reads(monkeypatch):
    reads: list[str] = []
    real = converter_module.read_params_npz

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(converter_module, "read_params_npz", counting)
    return reads


def test_mirror_wins_over_the_hf_cache(fake_hf_cache, mirror, tiny_converter):
    fake_hf_cache(REPO, FOLDER, random_params(D_IN, D_SAE, seed=1))
    mirrored = random_params(D_IN, D_SAE, seed=2)
    mirror(REPO, FOLDER, mirrored)
    target = tiny_converter.target(REPO, FOLDER)

    loaded = tiny_converter.read_params(target, mirror=mirror.root)
    assert loaded.origin == "mirror"
    assert torch.equal(loaded.state_dict["W_enc"], torch.from_numpy(mirrored["W_enc"]))
    assert tiny_converter.read_params(target).origin in {"hf-cache"}  # without the mirror: the HF cache


def test_mirror_from_the_environment_variable(mirror, tiny_converter, monkeypatch):
    mirror(REPO, FOLDER, random_params(D_IN, D_SAE))
    monkeypatch.setenv("SAELENS_GEMMASCOPE_MIRROR", str(mirror.root))
    _, state, _ = tiny_converter.load(REPO, FOLDER)
    assert state["W_enc"].shape == (D_IN, D_SAE)
    assert tiny_converter.read_params(tiny_converter.target(REPO, FOLDER)).origin == "conversion-cache"


def test_second_load_comes_from_the_conversion_cache(
    fake_hf_cache, tiny_converter, count_npz_reads, private_caches
):
    fake_hf_cache(REPO, FOLDER, random_params(D_IN, D_SAE))
    _, first, _ = tiny_converter.load(REPO, FOLDER)
    _, second, _ = tiny_converter.load(REPO, FOLDER)
    assert len(count_npz_reads) == 1
    assert all(torch.equal(first[k], second[k]) for k in first)
    cached = tiny_converter.cache_path(REPO, FOLDER)
    assert cached.is_file() and private_caches in cached.parents


def test_cache_survives_the_npz_disappearing(fake_hf_cache, tiny_converter):
    npz = fake_hf_cache(REPO, FOLDER, random_params(D_IN, D_SAE))
    _, first, _ = tiny_converter.load(REPO, FOLDER)
    npz.unlink()
    _, again, _ = tiny_converter.load(REPO, FOLDER)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_changed_source_invalidates_the_cache(mirror, tiny_converter, count_npz_reads):
    mirror(REPO, FOLDER, random_params(D_IN, D_SAE, seed=1))
    tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    path = mirror(REPO, FOLDER, random_params(D_IN, D_SAE, seed=2))
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse file systems
    new = random_params(D_IN, D_SAE, seed=2)
    _, state, _ = tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    assert len(count_npz_reads) == 2
    assert torch.equal(state["W_enc"], torch.from_numpy(new["W_enc"]))


def test_offline_without_a_copy_says_how_to_provide_one(tiny_converter, tmp_path):
    with pytest.raises(SaeFileUnavailableError) as err:
        tiny_converter.load(REPO, FOLDER, mirror=tmp_path / "empty-mirror")
    text = str(err.value)
    assert "HF_HUB_OFFLINE" in text and "SAELENS_GEMMASCOPE_MIRROR" in text and "gemmascope fetch" in text
    assert f"{tmp_path / 'empty-mirror'}/{REPO}/{FOLDER}/params.npz" in text
