"""Reading and writing Gemma Scope ``params.npz`` files (the release's weight format)."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

#: Keys of a Gemma Scope SAE file. Some released files spell the matrices ``w_enc``/``w_dec``.
PARAM_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
#: The one optional array: a skip transcoder's ``W_skip`` (``d_out x d_in``), as SAELens holds it.
SKIP_KEY = "W_skip"


class ParamsFileError(ValueError):
    """A ``params.npz`` that is missing, unreadable, incomplete, of the wrong shape, dtype or values."""


#: Errors numpy and zipfile raise on damaged archives (zlib.error for compressed members).
_READ_ERRORS = (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error)
#: Float dtypes torch can take from numpy (any byte order: big-endian arrays are converted).
_FLOAT_ITEMSIZES = (2, 4, 8)


def _canonical_key(key: str) -> str:
    return "W_" + key[2:] if key.startswith("w_") else key


def _canonical_keys(files: list[str], path: Path) -> dict[str, str]:
    """Canonical key -> archive key; two spellings of one key (``W_enc`` and ``w_enc``) is an error,
    since either could be the intended one."""
    keys: dict[str, str] = {}
    for key in sorted(files):
        canonical = _canonical_key(key)
        if canonical in keys:
            raise ParamsFileError(
                f"{path}: has both {keys[canonical]!r} and {key!r}, two spellings of {canonical!r}; "
                f"keep only one of them"
            )
        keys[canonical] = key
    return keys


def _header(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """One member's shape and dtype from its .npy header alone (no array data is read)."""
    try:
        with archive.zip.open(f"{key}.npy") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _fortran, dtype = read_header(handle)
    except _READ_ERRORS as err:
        raise ParamsFileError(f"{path}: key {key!r} is corrupt or truncated ({err})") from err
    return tuple(int(n) for n in shape), dtype


def _check_dtype(key: str, dtype: np.dtype, path: Path) -> None:
    if dtype.kind != "f" or dtype.itemsize not in _FLOAT_ITEMSIZES:
        raise ParamsFileError(
            f"{path}: key {key!r} has dtype {dtype.name} ({dtype.str}); Gemma Scope parameters are "
            f"floating point (float16, float32 or float64)"
        )


def _inferred_shapes(
    shapes: Mapping[str, tuple[int, ...]], keys: Mapping[str, str], path: Path
) -> dict[str, tuple[int, ...]]:
    """The shapes the file must have, from its W_enc (d_in, d_sae), when the caller gave none."""
    w_enc = shapes[keys["W_enc"]]
    if len(w_enc) != 2:
        raise ParamsFileError(f"{path}: key 'W_enc' has shape {w_enc}, expected (d_in, d_sae)")
    return expected_param_shapes(*w_enc)


def check_param_values(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Every value finite, every threshold >= 0 (else the SAE computes NaN or is not a JumpReLU)."""
    for key, tensor in state_dict.items():
        # A finite sum means every element is finite (NaN and Inf propagate): one cheap pass,
        # with the exact count only when something is wrong (or the sum overflowed).
        if not torch.isfinite(tensor.sum()) and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ParamsFileError(
                f"{path}: key {key!r} has {bad} non-finite value(s) (NaN or Inf) out of {tensor.numel()}; "
                f"the file is damaged or the SAE diverged, so it is not used"
            )
    threshold = state_dict.get("threshold")
    if threshold is not None and bool((threshold < 0).any()):
        raise ParamsFileError(
            f"{path}: key 'threshold' has {int((threshold < 0).sum())} negative value(s) "
            f"(min {float(threshold.min()):.6g}); JumpReLU thresholds are >= 0"
        )


def read_params_npz(
    path: str | Path,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Read a Gemma Scope ``params.npz`` into a SAELens-style state dict.

    Keys are normalised to ``W_enc, W_dec, b_enc, b_dec, threshold`` (some files spell ``w_enc``;
    a file with both spellings is an error). Keys, dtypes (float16/32/64, either byte order) and
    shapes (``expected_shapes``, else those implied by ``W_enc``) are checked on the archive's
    headers before any array is read; then every value must be finite and every threshold >= 0.
    Every error names the file (and the key). A ``scaling_factor`` of all ones (which SAELens also
    drops) is ignored; any other extra key is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsFileError(f"{path}: no such file")
    try:
        archive = np.load(path)
    except _READ_ERRORS as err:
        raise ParamsFileError(f"{path}: not a readable .npz file ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ParamsFileError(f"{path}: holds a single array, not an .npz archive of SAE parameters")
    with archive:
        keys = _canonical_keys(archive.files, path)
        _check_key_set(
            keys, archive.files, path, skip=expected_shapes is not None and SKIP_KEY in expected_shapes
        )
        _check_headers(archive, keys, expected_shapes, path)
        arrays = {
            key: _read_member(archive, keys[key], path)
            for key in (*PARAM_KEYS, SKIP_KEY, "scaling_factor")
            if key in keys
        }
    scaling = arrays.pop("scaling_factor", None)
    if scaling is not None and not np.all(scaling == 1):
        raise ParamsFileError(
            f"{path}: has a scaling_factor that is not all ones; not a Gemma Scope SAE file"
        )
    state_dict = {key: torch.from_numpy(arr).to(dtype) for key, arr in arrays.items()}
    check_param_values(state_dict, path)
    return state_dict


def _check_headers(
    archive: np.lib.npyio.NpzFile,
    keys: Mapping[str, str],
    expected_shapes: Mapping[str, tuple[int, ...]] | None,
    path: Path,
) -> None:
    """Every member's dtype, and the parameters' shapes, from the headers alone."""
    headers = {key: _header(archive, key, path) for key in archive.files}
    for key, (_shape, member_dtype) in headers.items():
        _check_dtype(key, member_dtype, path)
    shapes = {key: shape for key, (shape, _dtype) in headers.items()}
    expected = expected_shapes if expected_shapes is not None else _inferred_shapes(shapes, keys, path)
    for key, shape in expected.items():
        got = shapes[keys[key]]
        if got != tuple(shape):
            raise ParamsFileError(f"{path}: key {key!r} has shape {got}, expected {tuple(shape)}")


def _check_key_set(keys: Mapping[str, str], files: list[str], path: Path, *, skip: bool = False) -> None:
    """The five keys (six with ``W_skip`` for a skip transcoder), and nothing else but a ones
    ``scaling_factor``."""
    wanted = (*PARAM_KEYS, SKIP_KEY) if skip else PARAM_KEYS
    missing = [k for k in wanted if k not in keys]
    extra = sorted(set(keys) - set(wanted) - {"scaling_factor"})
    if missing or extra:
        problems = [f"missing key(s) {', '.join(missing)}"] if missing else []
        problems += [f"unexpected key(s) {', '.join(extra)}"] if extra else []
        raise ParamsFileError(f"{path}: {'; '.join(problems)}; found {', '.join(sorted(files)) or 'none'}")


def _read_member(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array, contiguous and in native byte order (torch takes no big-endian arrays)."""
    try:
        arr = archive[key]
    except _READ_ERRORS as err:
        raise ParamsFileError(f"{path}: key {key!r} is corrupt or truncated ({err})") from err
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))


def expected_param_shapes(
    d_in: int, d_sae: int, d_out: int | None = None, *, skip: bool = False
) -> dict[str, tuple[int, ...]]:
    """Shapes of a Gemma Scope SAE with input width ``d_in`` and ``d_sae`` latents (a transcoder
    writes ``d_out`` wide; a skip transcoder adds ``W_skip``)."""
    d_out = d_in if d_out is None else d_out
    shapes = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_out),
        "b_enc": (d_sae,),
        "b_dec": (d_out,),
        "threshold": (d_sae,),
    }
    if skip:
        shapes[SKIP_KEY] = (d_out, d_in)
    return shapes


def write_params_npz(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write the five Gemma Scope keys (and a skip transcoder's ``W_skip``) as float32 to ``path``
    (parents created)."""
    path = Path(path)
    missing = [k for k in PARAM_KEYS if k not in state_dict]
    if missing:
        raise ParamsFileError(f"cannot write {path}: state dict lacks {', '.join(missing)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = (*PARAM_KEYS, SKIP_KEY) if SKIP_KEY in state_dict else PARAM_KEYS
    arrays = {k: state_dict[k].detach().to("cpu", torch.float32).numpy() for k in keys}
    # Write to a temporary name first so an interrupted export never leaves a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    tmp.replace(path)
    return path
