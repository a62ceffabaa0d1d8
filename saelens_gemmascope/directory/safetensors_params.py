"""Reading and writing Gemma Scope 2 ``params.safetensors`` files: strict checks, then SAELens's key
names (and back, for exports).

A Gemma Scope 2 folder holds lower-case keys ``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_out]``,
``b_enc [d_sae]``, ``b_dec [d_out]``, ``threshold [d_sae]`` and, for affine skip transcoders,
``affine_skip_connection [d_in, d_out]``. Keys, dtypes and shapes are checked on the file's header
before any tensor is read; then every value must be finite and every threshold >= 0. Every error
names the file (and the key). :func:`write_params_safetensors` writes the same keys, float32,
through a temporary file renamed into place.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saelens_gemmascope.directory.npz import ParamsFileError, check_param_values, expected_param_shapes

BASE_KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
SKIP_KEY = "affine_skip_connection"
#: Release key -> SAELens state-dict key (the skip matrix is also transposed: see to_saelens_keys).
SAELENS_KEYS = {
    "w_enc": "W_enc",
    "w_dec": "W_dec",
    "b_enc": "b_enc",
    "b_dec": "b_dec",
    "threshold": "threshold",
}
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
#: A header larger than this is not a params file (the real ones are a few hundred bytes).
_MAX_HEADER_BYTES = 1 << 20


def expected_scope2_shapes(d_in: int, d_sae: int, d_out: int, affine: bool) -> dict[str, tuple[int, ...]]:
    """The release's keys and shapes for an SAE (``d_out == d_in``) or a transcoder."""
    # SAELens's shapes under the release's names; only the skip matrix is stored transposed.
    saelens_shapes = expected_param_shapes(d_in, d_sae, d_out)
    shapes = {key: saelens_shapes[SAELENS_KEYS[key]] for key in BASE_KEYS}
    if affine:
        shapes[SKIP_KEY] = (d_in, d_out)
    return shapes


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """key -> (dtype, shape) from the safetensors header alone (no tensor is read)."""
    try:
        with path.open("rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) != 8:
                raise ParamsFileError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
            (size,) = struct.unpack("<Q", size_bytes)
            if size > _MAX_HEADER_BYTES:
                raise ParamsFileError(f"{path}: not a safetensors file (header of {size} bytes)")
            header = json.loads(handle.read(size))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ParamsFileError(f"{path}: not a readable safetensors file ({err})") from err
    if not isinstance(header, dict):
        raise ParamsFileError(f"{path}: not a safetensors file (its header is not a JSON object)")
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or "dtype" not in entry or "shape" not in entry:
            raise ParamsFileError(f"{path}: key {key!r} has a malformed header entry")
        out[key] = (str(entry["dtype"]), tuple(int(n) for n in entry["shape"]))
    return out


def _check_header(
    header: Mapping[str, tuple[str, tuple[int, ...]]], expected: Mapping[str, tuple[int, ...]], path: Path
) -> None:
    missing = [k for k in expected if k not in header]
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        problems = [f"missing key(s) {', '.join(missing)}"] if missing else []
        if extra:
            hint = " (an affine skip matrix in a non-affine folder?)" if SKIP_KEY in extra else ""
            problems.append(f"unexpected key(s) {', '.join(extra)}{hint}")
        raise ParamsFileError(f"{path}: {'; '.join(problems)}; found {', '.join(sorted(header)) or 'none'}")
    for key, (dtype, shape) in header.items():
        if dtype not in _FLOAT_DTYPES:
            raise ParamsFileError(
                f"{path}: key {key!r} has dtype {dtype}; Gemma Scope 2 parameters are floating point "
                f"({', '.join(sorted(_FLOAT_DTYPES))})"
            )
        if shape != tuple(expected[key]):
            raise ParamsFileError(f"{path}: key {key!r} has shape {shape}, expected {tuple(expected[key])}")


def read_params_safetensors(
    path: str | Path, expected_shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The file's tensors under their release keys, as ``dtype``, after every check."""
    path = Path(path)
    if not path.is_file():
        raise ParamsFileError(f"{path}: no such file")
    _check_header(read_header(path), expected_shapes, path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key).to(dtype) for key in expected_shapes}
    except (SafetensorError, OSError, ValueError) as err:
        raise ParamsFileError(f"{path}: corrupt or truncated ({err})") from err
    check_param_values(tensors, path)
    return tensors


def to_saelens_keys(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Release keys -> SAELens's. ``affine_skip_connection`` is stored ``[d_in, d_out]`` and read as
    ``x @ A``; SAELens's skip transcoders hold ``W_skip [d_out, d_in]`` and compute ``x @ W_skip.T``,
    so ``W_skip = A.T`` (as SAELens's gemma_3 loader does)."""
    state = {SAELENS_KEYS[key]: raw[key] for key in BASE_KEYS}
    if SKIP_KEY in raw:
        state["W_skip"] = raw[SKIP_KEY].T.contiguous()
    return state


def to_scope2_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAELens's keys -> the release's (the inverse of :func:`to_saelens_keys`): ``W_skip [d_out, d_in]``
    is written as ``affine_skip_connection = W_skip.T [d_in, d_out]``."""
    raw = {key: state[saelens_key] for key, saelens_key in SAELENS_KEYS.items()}
    if "W_skip" in state:
        raw[SKIP_KEY] = state["W_skip"].T
    return raw


def write_params_safetensors(path: str | Path, raw: Mapping[str, torch.Tensor]) -> Path:
    """Write release-keyed tensors (see :func:`to_scope2_keys`) as float32 to ``path`` (parents
    created); an interrupted write leaves a ``.tmp`` file, never a half-written ``path``."""
    path = Path(path)
    unknown = sorted(set(raw) - {*BASE_KEYS, SKIP_KEY})
    missing = [key for key in BASE_KEYS if key not in raw]
    if unknown or missing:
        raise ParamsFileError(
            f"cannot write {path}: missing {', '.join(missing) or 'nothing'}, "
            f"unexpected {', '.join(unknown) or 'nothing'}"
        )
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in raw.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return path
