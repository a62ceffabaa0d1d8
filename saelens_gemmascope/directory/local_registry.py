"""The persistent list of local releases: release name -> export folder, in the package's cache directory.

:func:`saelens_gemmascope.directory.local.register_local_release` records every release it registers
here, and importing :mod:`saelens_gemmascope` registers them again, so a name printed by ``gemmascope
train`` (or returned by ``register_local_release``) loads with ``SAE.from_pretrained`` in any later
process. ``gemmascope releases`` lists the file (a folder that disappeared is reported, not fatal)
and ``gemmascope releases --remove NAME`` forgets one.

The file is small JSON, rewritten whole through a temporary file and ``os.replace`` under a lock, so
two runs finishing together never lose each other's entries and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from saelens_gemmascope.cache_dir import CACHE_HOME_ENV, user_cache_dir

REGISTRY_FILE = "local_releases.json"
REGISTRY_FORMAT = "saelens-gemmascope/local-releases"
REGISTRY_VERSION = 1


class ReleaseRegistryError(ValueError):
    """The registry file is unreadable, or a name asked for is not in it."""


class ReleaseRegistryWarning(UserWarning):
    """The registry could not be read or written; registrations then last for this process only."""


def warn_one_line(message: str) -> None:
    """A :class:`ReleaseRegistryWarning` printed as one line (no source line under it)."""
    warnings.warn_explicit(message, ReleaseRegistryWarning, filename="saelens_gemmascope", lineno=0)


def registry_path() -> Path:
    """Where the registry lives: ``<cache dir>/local_releases.json`` (``$SAELENS_GEMMASCOPE_CACHE``)."""
    return user_cache_dir() / REGISTRY_FILE


def _parse(path: Path, text: str) -> dict[str, Path]:
    advice = (
        f"delete it (the releases it listed can be registered again with register_local_release(folder)) "
        f"or set {CACHE_HOME_ENV} to another cache directory"
    )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReleaseRegistryError(f"{path}: not valid JSON ({err}); {advice}") from None
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise ReleaseRegistryError(f"{path}: not a {REGISTRY_FORMAT} file; {advice}")
    if data.get("version") != REGISTRY_VERSION:
        raise ReleaseRegistryError(f"{path}: version {data.get('version')!r}, expected {REGISTRY_VERSION}")
    releases = data.get("releases")
    if not isinstance(releases, dict):
        raise ReleaseRegistryError(f"{path}: 'releases' must map names to folders; {advice}")
    for name, folder in releases.items():
        if not (isinstance(folder, str) and Path(folder).is_absolute()):
            raise ReleaseRegistryError(
                f"{path}: release {name!r}: expected an absolute folder path, got {folder!r}; {advice}"
            )
    return {name: Path(folder) for name, folder in sorted(releases.items())}


def read_registry(path: Path | None = None) -> dict[str, Path]:
    """Name -> folder of every recorded release (empty when there is no file yet)."""
    path = registry_path() if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise ReleaseRegistryError(f"{path}: not UTF-8 text; delete it") from None
    return _parse(path, text)


def _write(path: Path, releases: dict[str, Path]) -> None:
    data = {
        "format": REGISTRY_FORMAT,
        "version": REGISTRY_VERSION,
        "releases": {name: str(folder) for name, folder in sorted(releases.items())},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write cycles between processes (POSIX ``flock``; elsewhere unlocked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; writes stay atomic, a race can drop an entry
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_for_update(path: Path) -> dict[str, Path]:
    """The current entries; a corrupt file is set aside (``.corrupt``) with a warning and restarted,
    so that a finished training run is never failed by a damaged list of names."""
    try:
        return read_registry(path)
    except ReleaseRegistryError as err:
        backup = path.with_name(path.name + ".corrupt")
        os.replace(path, backup)
        warnings.warn(
            f"{err}; moved it to {backup} and started a new one", ReleaseRegistryWarning, stacklevel=3
        )
        return {}


class RecordedNameTakenError(ReleaseRegistryError):
    """Another folder holds the name in the registry (another process registered it meanwhile)."""

    def __init__(self, name: str, holder: Path, folder: Path) -> None:
        super().__init__(f"release {name!r} is already recorded for {holder}; cannot also record {folder}")
        self.holder = holder


def record_release(name: str, folder: Path) -> None:
    """Record ``name`` -> ``folder`` (an absolute path); a name another folder holds is refused
    (checked under the lock, so two processes cannot both take one name)."""
    path = registry_path()
    with _locked(path):
        releases = _read_for_update(path)
        holder = releases.get(name)
        if holder is not None and holder != folder:
            raise RecordedNameTakenError(name, holder, folder)
        if holder is None:
            releases[name] = folder
            _write(path, releases)


def forget_release(name: str) -> Path:
    """Remove ``name`` from the registry and return the folder it named."""
    import difflib

    path = registry_path()
    with _locked(path):
        releases = read_registry(path)
        if name not in releases:
            close = difflib.get_close_matches(name, list(releases), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ReleaseRegistryError(
                f"no local release {name!r} in {path}.{hint} List them with: gemmascope releases"
            )
        folder = releases.pop(name)
        _write(path, releases)
    return folder
