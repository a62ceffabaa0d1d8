"""Every user-facing error says what went wrong and what to do."""

from __future__ import annotations

import numpy as np
import pytest
from gemmascope_fakes import TINY_WIDTHS, random_params, save_npz

from saelens_gemmascope.directory import (
    ParamsFileError,
    UnknownReleaseError,
    UnknownRepoError,
    UnknownSaeIdError,
    load_sae,
)
from saelens_gemmascope.directory.converter import default_converter
from saelens_gemmascope.directory.npz import read_params_npz
from saelens_gemmascope.directory.releases import resolve

REPO, FOLDER = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"


def test_unknown_release_suggests_close_names():
    with pytest.raises(UnknownReleaseError, match="Did you mean: gemma-scope-2b-pt-res"):
        resolve("gemma-scope-2b-res", "layer_12/width_16k/canonical")


def test_unknown_id_suggests_close_ids():
    with pytest.raises(UnknownSaeIdError, match=r"Did you mean: layer_12/width_16k/average_l0_82"):
        load_sae("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_81")


def test_unknown_repo_for_the_converter():
    with pytest.raises(UnknownRepoError, match="gemma-scope-2b-pt-res"):
        default_converter().config("google/gemma-scope-2b-pt-ress", FOLDER)


def test_real_shapes_are_checked_before_anything_is_built(fake_hf_cache):
    """A file too small for a real 2B 16k SAE: the error names file, key and both shapes."""
    path = fake_hf_cache(REPO, FOLDER, random_params(8, TINY_WIDTHS["16k"]))
    with pytest.raises(ParamsFileError) as err:
        default_converter().load(REPO, FOLDER)
    assert str(path) in str(err.value) and "'W_enc'" in str(err.value)
    assert "(8, 12)" in str(err.value) and "(2304, 16384)" in str(err.value)


def test_missing_and_unexpected_keys(tmp_path):
    arrays = random_params(4, 6)
    del arrays["threshold"]
    arrays["extra"] = np.zeros(3, np.float32)
    with pytest.raises(ParamsFileError, match=r"missing key\(s\) threshold; unexpected key\(s\) extra"):
        read_params_npz(save_npz(tmp_path / "p.npz", arrays))


def test_lower_case_keys_are_accepted(tmp_path):
    state = read_params_npz(save_npz(tmp_path / "p.npz", random_params(4, 6, lower_case=True)))
    assert set(state) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}


def test_truncated_and_corrupt_files(tmp_path):
    good = save_npz(tmp_path / "good.npz", random_params(4, 6))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ParamsFileError, match=r"truncated\.npz: not a readable \.npz"):
        read_params_npz(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ParamsFileError, match=r"garbage\.npz"):
        read_params_npz(garbage)
    with pytest.raises(ParamsFileError, match="no such file"):
        read_params_npz(tmp_path / "absent.npz")
