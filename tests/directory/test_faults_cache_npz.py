"""Faults injected into the conversion cache and the npz reader (issue 14, items 5, 6 and 9).

5: a cache that cannot be written (full disk: safetensors raises SafetensorError) warns once and the
   load goes on from the source.
6: the cache records its provenance and a checksum, checked on read: a flipped byte, a same-size
   replacement, another SAE's file or a conversion made from a temporary Hugging Face cache is not
   served; a writer SIGKILLed mid-write leaves nothing behind once the folder is next used.
9: the npz reader refuses what it used to guess at, naming the file, the key and the problem.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gemmascope_fakes import FAKE_REVISION, TINY_WIDTHS, as_tensors, random_params, save_npz
from huggingface_hub import constants as hf_constants
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import saelens_gemmascope.directory.cache as cache_module
import saelens_gemmascope.directory.converter as converter_module
from saelens_gemmascope.directory.errors import ParamsFileError, SaeFileUnavailableError
from saelens_gemmascope.directory.npz import read_params_npz

REPO, FOLDER = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"
OTHER_FOLDER = "layer_12/width_16k/average_l0_41"
D_IN, D_SAE = 8, TINY_WIDTHS["16k"]
CACHE_LOGGER = "saelens_gemmascope.directory.cache"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees its own once-per-process warnings."""
    monkeypatch.setattr(cache_module, "_warned", set(), raising=False)


@pytest.fixture
def npz_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = converter_module.read_params_npz

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(converter_module, "read_params_npz", counting)
    return reads


def assert_state_is(state: dict[str, torch.Tensor], arrays: dict[str, np.ndarray]) -> None:
    want = as_tensors(arrays)
    assert set(state) == set(want)
    assert all(torch.equal(state[key], want[key]) for key in want)


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CACHE_LOGGER and r.levelno >= logging.WARNING]


# -- 5: a cache that cannot be written -----------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        ),
        OSError(28, "No space left on device"),
    ],
    ids=["SafetensorError", "OSError"],
)
def test_full_disk_while_caching_warns_once_and_loads_from_the_source(
    error, mirror, tiny_converter, monkeypatch, caplog
):
    arrays = random_params(D_IN, D_SAE, seed=5)
    mirror(REPO, FOLDER, arrays)

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # what was written before the disk filled up
        raise error

    monkeypatch.setattr(cache_module, "save_file", disk_full)
    caplog.set_level(logging.WARNING, CACHE_LOGGER)
    target = tiny_converter.target(REPO, FOLDER)
    for _ in range(2):
        loaded = tiny_converter.read_params(target, mirror=mirror.root)
        assert loaded.origin == "mirror"
        assert_state_is(loaded.state_dict, arrays)

    cached = tiny_converter.cache_path(REPO, FOLDER)
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1 and str(cached) in warnings[0] and "No space left" in warnings[0]
    assert list(cached.parent.iterdir()) == []  # no cache file, no partial write left behind


# -- 6: provenance and integrity -----------------------------------------------------------------


def test_every_conversion_records_where_it_came_from(mirror, fake_hf_cache, tiny_converter):
    target = tiny_converter.target(REPO, FOLDER)
    npz = mirror(REPO, FOLDER, random_params(D_IN, D_SAE))
    tiny_converter.read_params(target, mirror=mirror.root)
    loaded = tiny_converter.read_params(target, mirror=mirror.root)
    assert loaded.origin == "conversion-cache" and loaded.provenance is not None
    prov = loaded.provenance
    assert (prov.repo_id, prov.folder, prov.origin) == (REPO, FOLDER, "mirror")
    assert prov.source_path == str(npz) and prov.source_root == str(mirror.root.resolve())
    assert not prov.fetched

    hf_npz = fake_hf_cache(REPO, FOLDER, random_params(D_IN, D_SAE, seed=1))
    assert tiny_converter.read_params(target).origin == "hf-cache"  # the mirror's conversion: another source
    prov = tiny_converter.read_params(target).provenance
    assert (prov.origin, prov.source_path) == ("hf-cache", str(hf_npz))
    assert prov.source_root == str(Path(hf_constants.HF_HUB_CACHE).resolve())


def flip_one_byte(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset_from_end", [1, 4 * D_IN * D_SAE])
def test_a_flipped_byte_is_not_served(offset_from_end, mirror, tiny_converter, npz_reads, caplog):
    arrays = random_params(D_IN, D_SAE, seed=6)
    mirror(REPO, FOLDER, arrays)
    tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    cached = tiny_converter.cache_path(REPO, FOLDER)
    stat = cached.stat()
    flip_one_byte(cached, offset_from_end)
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # nothing but the content betrays it

    caplog.set_level(logging.WARNING, CACHE_LOGGER)
    _, state, _ = tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    assert len(npz_reads) == 2  # converted again from the source
    assert_state_is(state, arrays)
    assert any("CRC-32" in w and str(cached) in w for w in cache_warnings(caplog))
    # ...and the cache is whole again.
    target = tiny_converter.target(REPO, FOLDER)
    assert tiny_converter.read_params(target, mirror=mirror.root).origin == "conversion-cache"


def test_a_same_size_replacement_is_not_served(mirror, tiny_converter, npz_reads):
    arrays = random_params(D_IN, D_SAE, seed=7)
    mirror(REPO, FOLDER, arrays)
    tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    cached = tiny_converter.cache_path(REPO, FOLDER)
    with safe_open(str(cached), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: torch.full_like(handle.get_tensor(key), 0.5) for key in handle.keys()}  # noqa: SIM118
    size = cached.stat().st_size
    save_file(tensors, str(cached), metadata=metadata)  # same shapes, same provenance record
    assert cached.stat().st_size == size

    _, state, _ = tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    assert len(npz_reads) == 2
    assert_state_is(state, arrays)


def test_another_saes_conversion_is_not_served(mirror, tiny_converter, npz_reads):
    """A conversion copied to another SAE's place (same shapes) is refused for that SAE."""
    mirror(REPO, OTHER_FOLDER, random_params(D_IN, D_SAE, seed=8))
    tiny_converter.load(REPO, OTHER_FOLDER, mirror=mirror.root)
    wanted = random_params(D_IN, D_SAE, seed=9)
    mirror(REPO, FOLDER, wanted)
    tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    shutil.copyfile(tiny_converter.cache_path(REPO, OTHER_FOLDER), tiny_converter.cache_path(REPO, FOLDER))
    (mirror.root / REPO / FOLDER / "params.npz").unlink()  # no local npz: only the record can tell
    with pytest.raises(SaeFileUnavailableError, match=f"it holds {REPO}/{OTHER_FOLDER}"):
        tiny_converter.load(REPO, FOLDER, mirror=mirror.root)


def test_a_conversion_from_a_temporary_hf_cache_is_not_served_as_the_release(
    tmp_path, fake_hf_cache, tiny_converter, monkeypatch, npz_reads
):
    """A load against a throwaway HF cache writes the shared conversion cache; a later process with
    the real HF cache (no copy of this SAE) must not take that conversion for the release."""
    real_hf_cache = hf_constants.HF_HUB_CACHE
    throwaway = tmp_path / "throwaway-hf-cache"
    repo_dir = throwaway / f"models--{REPO.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(FAKE_REVISION)
    fake = save_npz(
        repo_dir / "snapshots" / FAKE_REVISION / FOLDER / "params.npz", random_params(D_IN, D_SAE)
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(throwaway))
    assert tiny_converter.read_params(tiny_converter.target(REPO, FOLDER)).path == fake
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", real_hf_cache)

    with pytest.raises(SaeFileUnavailableError) as err:  # offline: nothing else to load from
        tiny_converter.load(REPO, FOLDER)
    message = str(err.value)
    assert str(tiny_converter.cache_path(REPO, FOLDER)) in message and str(fake) in message
    assert "\n" not in message

    real = random_params(D_IN, D_SAE, seed=11)
    fake_hf_cache(REPO, FOLDER, real)  # the real cache gets its copy: that one is converted and served
    _, state, _ = tiny_converter.load(REPO, FOLDER)
    assert_state_is(state, real)
    assert len(npz_reads) == 2


def test_a_fetched_conversion_is_served_without_its_source(mirror, tiny_converter):
    """`gemmascope fetch` keeps an SAE for offline use on purpose: served later without the mirror."""
    arrays = random_params(D_IN, D_SAE, seed=12)
    mirror(REPO, FOLDER, arrays)
    target = tiny_converter.target(REPO, FOLDER)
    tiny_converter.read_params(target, mirror=mirror.root)  # a plain load: not kept
    with pytest.raises(SaeFileUnavailableError):
        tiny_converter.read_params(target)
    tiny_converter.read_params(target, mirror=mirror.root, fetch=True)  # marks the cached conversion
    loaded = tiny_converter.read_params(target)
    assert loaded.origin == "conversion-cache" and loaded.provenance.fetched
    assert_state_is(loaded.state_dict, arrays)


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from gemmascope_fakes import tiny_manifest, tiny_models
    import saelens_gemmascope.directory.cache as cache
    from saelens_gemmascope.directory.converter import GemmaScopeConverter

    real_save = cache.save_file

    def killed_half_way(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    cache.save_file = killed_half_way
    GemmaScopeConverter(tiny_manifest(), tiny_models()).load(sys.argv[2], sys.argv[3], mirror=sys.argv[4])
    """
)


def test_a_conversion_killed_mid_write_leaves_nothing_behind(mirror, tiny_converter, private_caches):
    arrays = random_params(D_IN, D_SAE, seed=13)
    mirror(REPO, FOLDER, arrays)
    env = {
        **os.environ,
        "SAELENS_GEMMASCOPE_CACHE": str(private_caches),
        "HF_HUB_CACHE": hf_constants.HF_HUB_CACHE,
    }
    worker = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(Path(__file__).parent), REPO, FOLDER, str(mirror.root)],
        env=env,
        cwd=private_caches.parent,  # not the repository: import the package the tests import
        capture_output=True,
        timeout=120,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()[-2000:]
    cached = tiny_converter.cache_path(REPO, FOLDER)
    left = [p for p in cached.parent.rglob("*") if p.is_file()]
    assert not cached.exists() and len(left) == 1  # the half-written file of the killed writer

    _, state, _ = tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    assert_state_is(state, arrays)
    assert list(cached.parent.iterdir()) == [cached]  # the leftover is gone, the cache is whole
    target = tiny_converter.target(REPO, FOLDER)
    assert tiny_converter.read_params(target, mirror=mirror.root).origin == "conversion-cache"


def test_old_partial_writes_are_removed_live_ones_kept(tmp_path):
    cached = tmp_path / "converted" / REPO / FOLDER / "params.safetensors"
    cached.parent.mkdir(parents=True)
    live = cache_module._partial_dir(cached)  # this process: alive
    abandoned = cache_module._partial_dir(cached)  # also "alive" by pid (or reused), but long untouched
    legacy = cached.parent / ".tmpAb12Cd"  # safetensors's own temporary file, from an older version
    for entry in (live, abandoned):
        entry.mkdir()
        (entry / ".tmpXyZ123").write_bytes(b"half")
    legacy.write_bytes(b"half")
    long_ago = time.time() - cache_module.STALE_PARTIAL_SECONDS - 60
    for path in (abandoned / ".tmpXyZ123", abandoned, legacy):
        os.utime(path, (long_ago, long_ago))

    assert cache_module.read_converted(cached, None) is None
    assert sorted(cached.parent.iterdir()) == [live]


# -- 9: the npz reader refuses to guess ----------------------------------------------------------


def test_both_spellings_of_a_key_is_an_error(tmp_path):
    arrays = random_params(D_IN, D_SAE)
    arrays["w_enc"] = arrays["W_enc"] * 2
    path = save_npz(tmp_path / "dup.npz", arrays)
    with pytest.raises(ParamsFileError) as err:
        read_params_npz(path)
    assert str(path) in str(err.value) and "'W_enc'" in str(err.value) and "'w_enc'" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "dtype_name"),
    [
        ("W_enc", np.ones((D_IN, D_SAE), np.complex64), "complex64"),
        ("threshold", np.ones(D_SAE, bool), "bool"),
        ("b_enc", np.ones(D_SAE, np.int32), "int32"),
        ("b_dec", np.ones(D_IN, np.uint8), "uint8"),
        ("W_dec", np.array([[object()] * D_IN] * D_SAE, dtype=object), "object"),
        ("b_dec", np.array(["x"] * D_IN), "str32"),
        ("b_dec", np.array([b"x"] * D_IN), "bytes8"),
    ],
)
def test_non_float_arrays_are_errors(key, value, dtype_name, tmp_path):
    path = save_npz(tmp_path / "typed.npz", {**random_params(D_IN, D_SAE), key: value})
    with pytest.raises(ParamsFileError) as err:
        read_params_npz(path)
    message = str(err.value)
    assert str(path) in message and repr(key) in message and f"dtype {dtype_name}" in message


@pytest.mark.parametrize(
    ("key", "bad", "what"),
    [
        ("W_enc", np.nan, "non-finite"),
        ("W_dec", np.inf, "non-finite"),
        ("b_enc", -np.inf, "non-finite"),
        ("threshold", -0.25, "negative"),
    ],
)
def test_bad_values_are_errors_and_never_cached(key, bad, what, mirror, tiny_converter):
    arrays = random_params(D_IN, D_SAE)
    arrays[key].flat[3] = bad
    path = mirror(REPO, FOLDER, arrays)
    with pytest.raises(ParamsFileError) as err:
        tiny_converter.load(REPO, FOLDER, mirror=mirror.root)
    assert str(path) in str(err.value) and repr(key) in str(err.value) and what in str(err.value)
    assert not tiny_converter.cache_path(REPO, FOLDER).exists()


def test_float64_overflowing_float32_is_an_error(tmp_path):
    arrays = {k: v.astype(np.float64) for k, v in random_params(D_IN, D_SAE).items()}
    arrays["W_dec"][0, 0] = 1e300  # finite in the file, Inf once converted
    path = save_npz(tmp_path / "big.npz", arrays)
    with pytest.raises(ParamsFileError, match=r"'W_dec' has 1 non-finite"):
        read_params_npz(path)


@pytest.mark.parametrize("byte_order", [">f4", ">f8", "<f2"])
def test_big_endian_and_half_floats_are_converted(byte_order, tmp_path):
    arrays = random_params(D_IN, D_SAE)
    stored = {k: v.astype(byte_order) for k, v in arrays.items()}
    state = read_params_npz(save_npz(tmp_path / "be.npz", stored))
    for key, value in stored.items():
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], torch.from_numpy(value.astype(np.float32)))


def test_inconsistent_shapes_are_errors_without_expected_shapes(tmp_path):
    arrays = random_params(D_IN, D_SAE)
    arrays["W_dec"] = arrays["W_dec"][:, :-1]
    path = save_npz(tmp_path / "shapes.npz", arrays)
    with pytest.raises(ParamsFileError) as err:
        read_params_npz(path)
    assert str(path) in str(err.value) and f"(12, 7), expected ({D_SAE}, {D_IN})" in str(err.value)
