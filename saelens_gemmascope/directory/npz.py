"""Reading and writing Gemma Scope ``params.npz`` files (the release's weight format)."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

#: Keys of a Gemma Scope SAE file. Some released files spell the matrices ``w_enc``/``w_dec``.
PARAM_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


class ParamsFileError(ValueError):
    """A ``params.npz`` that is missing, unreadable, incomplete or of the wrong shape."""


def _canonical_key(key: str) -> str:
    return "W_" + key[2:] if key.startswith("w_") else key


def _header_shapes(archive: np.lib.npyio.NpzFile, path: Path) -> dict[str, tuple[int, ...]]:
    """Each member's shape from its .npy header alone (no array data is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key in archive.files:
        try:
            with archive.zip.open(f"{key}.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _fortran, _dtype = read_header(handle)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
            raise ParamsFileError(f"{path}: key {key!r} is corrupt or truncated ({err})") from err
        shapes[key] = tuple(int(n) for n in shape)
    return shapes


def read_params_npz(
    path: str | Path,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Read a Gemma Scope ``params.npz`` into a SAELens-style state dict.

    Keys are normalised to ``W_enc, W_dec, b_enc, b_dec, threshold`` (some files spell ``w_enc``).
    Keys and, when ``expected_shapes`` is given, shapes are checked on the archive's headers before
    any array is read; errors name the file, the key and both shapes. A ``scaling_factor`` of all
    ones (which SAELens also drops) is ignored; any other extra key is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsFileError(f"{path}: no such file")
    try:
        archive = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ParamsFileError(f"{path}: not a readable .npz file ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ParamsFileError(f"{path}: holds a single array, not an .npz archive of SAE parameters")
    with archive:
        keys = {_canonical_key(k): k for k in archive.files}
        missing = [k for k in PARAM_KEYS if k not in keys]
        extra = sorted(set(keys) - set(PARAM_KEYS) - {"scaling_factor"})
        if missing or extra:
            problems = [f"missing key(s) {', '.join(missing)}"] if missing else []
            problems += [f"unexpected key(s) {', '.join(extra)}"] if extra else []
            raise ParamsFileError(
                f"{path}: {'; '.join(problems)}; found {', '.join(sorted(archive.files)) or 'none'}"
            )
        shapes = _header_shapes(archive, path)
        if expected_shapes is not None:
            for key, shape in expected_shapes.items():
                got = shapes[keys[key]]
                if got != tuple(shape):
                    raise ParamsFileError(f"{path}: key {key!r} has shape {got}, expected {tuple(shape)}")
        arrays: dict[str, np.ndarray] = {}
        for key in (*PARAM_KEYS, "scaling_factor"):
            if key not in keys:
                continue
            try:
                arrays[key] = archive[keys[key]]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
                raise ParamsFileError(f"{path}: key {key!r} is corrupt or truncated ({err})") from err
    scaling = arrays.pop("scaling_factor", None)
    if scaling is not None and not np.all(scaling == 1):
        raise ParamsFileError(
            f"{path}: has a scaling_factor that is not all ones; not a Gemma Scope SAE file"
        )
    return {key: torch.from_numpy(np.ascontiguousarray(arr)).to(dtype) for key, arr in arrays.items()}


def expected_param_shapes(d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """Shapes of a Gemma Scope SAE with input width ``d_in`` and ``d_sae`` latents."""
    return {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
    }


def write_params_npz(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write the five Gemma Scope keys as float32 to ``path`` (parents created)."""
    path = Path(path)
    missing = [k for k in PARAM_KEYS if k not in state_dict]
    if missing:
        raise ParamsFileError(f"cannot write {path}: state dict lacks {', '.join(missing)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: state_dict[k].detach().to("cpu", torch.float32).numpy() for k in PARAM_KEYS}
    # Write to a temporary name first so an interrupted export never leaves a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    tmp.replace(path)
    return path
