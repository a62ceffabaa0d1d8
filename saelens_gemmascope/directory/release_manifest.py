"""Validation of a local release's ``release.json``, at read time, with errors naming the file, the
entry and the field.

A ``release.json`` is written by :func:`saelens_gemmascope.directory.layout.export_gemmascope_sae`,
but it is a plain file the user can edit or copy, and its ``path`` fields decide which files a load
reads: an entry that points outside its release folder (``../x``, an absolute path, a symlink out)
or carries a string where a width belongs is refused before anything is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

#: Fields every entry must have (the others are optional metadata and may be null).
REQUIRED_FIELDS: tuple[str, ...] = ("id", "path", "d_in", "d_sae", "average_l0")


class ReleaseManifestError(ValueError):
    """A ``release.json`` that cannot be trusted: malformed, or an entry with a bad field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value > 0 else "expected a positive integer"


def _non_negative_number(value: Any) -> str | None:
    return None if _is_number(value) and value >= 0 else "expected a finite number >= 0"


def _positive_number(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "expected a finite number > 0"


def _non_negative_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "expected an integer >= 0"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "expected a non-empty string"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


#: field -> check returning the problem (None when the value is fine); optional fields may be null.
_REQUIRED_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "id": _text,
    "path": _text,
    "d_in": _positive_int,
    "d_sae": _positive_int,
    "average_l0": _non_negative_number,
}
_OPTIONAL_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model_name": _text,
    "hook_name": _text,
    "hook_head_index": _non_negative_int,
    "site": _text,
    "layer": _non_negative_int,
    "width": _text,
    "reshape_activations": _text,
    "context_size": _positive_int,
    "prepend_bos": _flag,
    "input_scale": _positive_number,
    "architecture": lambda value: (
        None
        if value in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder")
        else "expected jumprelu, jumprelu_transcoder or jumprelu_skip_transcoder"
    ),
    "hook_name_out": _text,
    "d_out": _positive_int,
    # Gemma Scope 2 exports (directory/scope2_layout.py); an entry without a layout is Gemma Scope's.
    "layout": lambda value: (
        None if value in ("gemma-scope", "gemma-scope-2") else "expected gemma-scope or gemma-scope-2"
    ),
    "l0_label": _text,
    "hf_hook_point_in": _text,
    "hf_hook_point_out": _text,
}
#: The files a load may read from an entry's folder (none may resolve outside the release folder).
_ENTRY_FILES = ("params.npz", "params.safetensors", "config.json")


def _path_problem(root: Path, relative: str) -> str | None:
    """Why ``relative`` does not name a folder inside ``root`` (None when it does)."""
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        return "an absolute path; expected a path inside the release folder"
    if ".." in posix.parts or ".." in windows.parts or "\\" in relative:
        return (
            "leaves the release folder ('..' or a backslash); expected e.g. layer_1/width_16k/average_l0_50"
        )
    real_root = root.resolve()
    for target in (root / relative, *(root / relative / name for name in _ENTRY_FILES)):
        if not target.resolve().is_relative_to(real_root):
            return f"resolves to {target.resolve()}, outside the release folder (a symlink out)"
    return None


def _entry_problems(root: Path, entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (field, problem) of one entry, or None."""
    for field in REQUIRED_FIELDS:
        if field not in entry:
            return field, "missing"
    for field, check in _REQUIRED_CHECKS.items():
        problem = check(entry[field])
        if problem is not None:
            return field, f"{problem}, got {entry[field]!r}"
    for field, check in _OPTIONAL_CHECKS.items():
        value = entry.get(field)
        problem = None if value is None else check(value)
        if problem is not None:
            return field, f"{problem} (or null), got {value!r}"
    if entry.get("architecture") in ("jumprelu_transcoder", "jumprelu_skip_transcoder"):
        for field in ("d_out", "hook_name_out"):
            if entry.get(field) is None:
                return field, f"missing (a {entry['architecture']} entry names what it writes)"
    path_problem = _path_problem(root, entry["path"])
    return ("path", f"{entry['path']!r} is {path_problem}") if path_problem else None


def check_release_manifest(file: Path, data: Any, *, expected_format: str, version: int) -> dict[str, Any]:
    """``data`` (the parsed ``file``) if it is a valid manifest; else :class:`ReleaseManifestError`."""
    advice = "fix or delete it (exporting again rewrites it)"
    if not isinstance(data, dict):
        raise ReleaseManifestError(f"{file}: expected a JSON object, got {type(data).__name__}; {advice}")
    if data.get("format") != expected_format:
        raise ReleaseManifestError(
            f"{file}: not a {expected_format} manifest (format={data.get('format')!r})"
        )
    if data.get("version") != version:
        raise ReleaseManifestError(
            f"{file}: manifest version {data.get('version')!r}, this package reads version {version}"
        )
    entries = data.get("saes")
    if not isinstance(entries, list):
        raise ReleaseManifestError(f"{file}: 'saes' must be a list of entries, got {entries!r}; {advice}")
    first_of_id: dict[str, int] = {}
    for index, entry in enumerate(entries):
        label = f"{file}: SAE entry {index}"
        if not isinstance(entry, dict):
            raise ReleaseManifestError(f"{label}: expected a JSON object, got {entry!r}; {advice}")
        label += f" ({entry['id']!r})" if isinstance(entry.get("id"), str) else ""
        problem = _entry_problems(file.parent, entry)
        if problem is not None:
            raise ReleaseManifestError(f"{label}: field {problem[0]!r}: {problem[1]}; {advice}")
        if entry["id"] in first_of_id:
            raise ReleaseManifestError(
                f"{label}: field 'id': {entry['id']!r} is also the id of entry {first_of_id[entry['id']]}; "
                f"{advice}"
            )
        first_of_id[entry["id"]] = index
    return data
