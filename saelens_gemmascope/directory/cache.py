"""The conversion cache: each converted SAE as a memory-mappable safetensors file, so a second load
skips the npz entirely.

Location: ``converted/<repo_id>/<folder>/params.safetensors`` under the package's cache directory
(:func:`saelens_gemmascope.cache_dir.user_cache_dir`).

Every file records its provenance in its metadata (:class:`Provenance`: the repository and folder,
where the npz was read from, the mirror root or Hugging Face cache it was read under, and the npz's
fingerprint) and a CRC-32 of its tensors. A read checks both and treats any doubt as a miss, so the
caller converts again from the source:

- a local npz exists: its fingerprint must equal the recorded one;
- no local npz: the conversion must come from a place this load would read from (the current mirror
  root or Hugging Face cache, e.g. after the HF cache was cleared) or have been made by
  ``gemmascope fetch`` (an explicit request to keep it for offline use); so a conversion that a load
  made from a temporary Hugging Face cache or mirror is never served as the release;
- the tensors' CRC-32 must match (a flipped byte or a same-size replacement is not served).

Why CRC-32 and not SHA-256: the threat is accidental damage (anyone who can write the cache can also
rewrite its metadata), and on a 300 MB file the CRC costs ~0.09 s against ~0.16 s (SHA-256 of the
file) to ~0.37 s (SHA-256 of the mapped tensors); the npz conversion it saves is ~0.09 s from the page
cache and seconds from disk. The tensors stay memory-mapped; the CRC pass reads each page once.

Writes are atomic and best effort: safetensors writes through a temporary file of its own, so each
writer works in a private ``.<name>.<pid>.<token>.<host>.partial`` folder next to the target and
renames the finished file into place. A writer killed mid-write leaves that folder; the next read or
write of the folder removes it once its writer is gone (same host, dead pid) or it is older than
:data:`STALE_PARTIAL_SECONDS`. A cache that cannot be written (a full disk raises ``SafetensorError``
as well as ``OSError``) warns once and the load goes on from the source.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saelens_gemmascope.cache_dir import user_cache_dir
from saelens_gemmascope.directory.sources import source_roots

CONVERTED_FILENAME = "params.safetensors"
#: Bump when the cached content changes meaning, so old files are re-converted.
#: 2: provenance and a CRC-32 of the tensors in the metadata.
CACHE_FORMAT = "2"
#: A partial write older than this is abandoned even when its writer's pid looks alive (pid reuse,
#: another host). Writers touch their files continuously, so a live one never looks this old.
STALE_PARTIAL_SECONDS = 600.0

logger = logging.getLogger(__name__)

_PARTIAL = re.compile(
    r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]+)\.(?P<host>[A-Za-z0-9_-]*)\.partial$"
)
# Left by earlier versions: safetensors's own temporary file, and our pid-named one.
_LEGACY_TEMP = re.compile(r"^(?:\.tmp[A-Za-z0-9]{6}|.+\.\d+\.tmp)$")
_warned: set[str] = set()


@dataclass(frozen=True)
class Provenance:
    """Where a conversion came from: stored in the cache file and checked on every read."""

    repo_id: str
    folder: str
    origin: str  # mirror, hf-cache or hub
    source_path: str  # the params.npz that was converted
    source_root: str  # the mirror root or Hugging Face cache that file was read under
    source_fingerprint: str
    #: Made by ``gemmascope fetch`` (an explicit request to keep this SAE for offline use): served
    #: even when its source is gone or out of this load's reach.
    fetched: bool = False

    def as_metadata(self) -> dict[str, str]:
        return {
            key: str(value).lower() if isinstance(value, bool) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> Provenance | None:
        """The recorded provenance, or None when any field is missing or malformed."""
        values = {field.name: meta.get(field.name) for field in fields(cls)}
        if not all(isinstance(value, str) for value in values.values()):
            return None
        if values["fetched"] not in {"true", "false"}:
            return None
        return cls(**{**values, "fetched": values["fetched"] == "true"})  # type: ignore[arg-type]

    def describe(self) -> str:
        how = "fetched" if self.fetched else "converted"
        return f"{self.repo_id}/{self.folder} {how} from {self.origin} {self.source_path}"


@dataclass(frozen=True)
class CachedConversion:
    state_dict: dict[str, torch.Tensor]
    provenance: Provenance


@dataclass(frozen=True)
class CacheLookup:
    """A read's outcome: the conversion, or None and why (None when there simply is no file)."""

    conversion: CachedConversion | None
    refused: str | None = None


def cache_root() -> Path:
    return user_cache_dir()


def converted_path(repo_id: str, folder: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "converted" / repo_id / folder / CONVERTED_FILENAME


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """CRC-32 over each tensor's name, dtype, shape and bytes (sorted by name)."""
    crc = 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        crc = zlib.crc32(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode(), crc)
        crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def _warn_once(path: Path, message: str, *args: object) -> None:
    """One warning per cache file and kind of problem per process: repeated loads do not repeat it."""
    key = f"{path}|{message}"
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, path, *args)


def read_converted(
    path: Path,
    source_fingerprint: str | None,
    device: str = "cpu",
    *,
    repo_id: str | None = None,
    folder: str | None = None,
    trusted_roots: Iterable[str] | None = None,
) -> CachedConversion | None:
    """The cached conversion, or None on a miss (absent, unreadable, other format, other source,
    failing its checksum). See :func:`look_up_converted`."""
    return look_up_converted(
        path, source_fingerprint, device, repo_id=repo_id, folder=folder, trusted_roots=trusted_roots
    ).conversion


def look_up_converted(
    path: Path,
    source_fingerprint: str | None,
    device: str = "cpu",
    *,
    repo_id: str | None = None,
    folder: str | None = None,
    trusted_roots: Iterable[str] | None = None,
) -> CacheLookup:
    """Read and check one cache file.

    ``source_fingerprint``: the local npz's, which the recorded one must equal; None when there is
    no local npz, and then the recorded source root must be one of ``trusted_roots`` (default: the
    mirror root from the environment and the current Hugging Face cache). ``repo_id``/``folder``,
    when given, must equal the recorded ones.
    """
    remove_stale_partials(path)
    if not path.is_file():
        return CacheLookup(None)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            provenance = Provenance.from_metadata(meta)
            refused = _provenance_refusal(
                meta, provenance, source_fingerprint, repo_id, folder, trusted_roots
            )
            if refused is not None or provenance is None:
                return CacheLookup(None, refused)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        _warn_once(path, "ignoring unreadable conversion cache file %s (%s)", err)
        return CacheLookup(None, f"it is unreadable ({err})")
    if tensors_checksum(tensors) != meta.get("crc32"):
        _warn_once(
            path, "conversion cache file %s fails its CRC-32 check (damaged or replaced); converting again"
        )
        return CacheLookup(None, "it fails its CRC-32 check (damaged or replaced)")
    if device != "cpu":
        tensors = {key: value.to(device) for key, value in tensors.items()}
    return CacheLookup(CachedConversion(tensors, provenance))


def _provenance_refusal(
    meta: Mapping[str, str],
    provenance: Provenance | None,
    source_fingerprint: str | None,
    repo_id: str | None,
    folder: str | None,
    trusted_roots: Iterable[str] | None,
) -> str | None:
    """Why this file may not be served for this load, or None when it may."""
    if meta.get("format") != CACHE_FORMAT:
        return f"it has cache format {meta.get('format')!r}, not {CACHE_FORMAT!r}"
    if provenance is None:
        return "it records no provenance"
    if (repo_id, folder) != (None, None) and (provenance.repo_id, provenance.folder) != (repo_id, folder):
        return f"it holds {provenance.repo_id}/{provenance.folder}"
    if source_fingerprint is not None:
        if provenance.source_fingerprint != source_fingerprint:
            return "its source npz has changed since"
        return None
    if provenance.fetched:
        return None
    roots = list(trusted_roots) if trusted_roots is not None else source_roots()
    if provenance.source_root not in roots:
        return (
            f"it was converted from {provenance.origin} {provenance.source_path}, outside the places "
            f"this load reads from ({', '.join(roots)})"
        )
    return None


def write_converted(
    path: Path, state_dict: Mapping[str, torch.Tensor], provenance: Provenance
) -> Path | None:
    """Write atomically with its provenance and checksum; a cache that cannot be written only costs
    speed, so it warns (once per file) and returns None."""
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    metadata = {"format": CACHE_FORMAT, "crc32": tensors_checksum(tensors), **provenance.as_metadata()}
    partial: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        partial = _partial_dir(path)
        partial.mkdir()
        save_file(tensors, str(partial / path.name), metadata=metadata)
        os.replace(partial / path.name, path)
    except (OSError, SafetensorError) as err:
        _warn_once(path, "could not write the conversion cache %s (%s); loading from the source instead", err)
        return None
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
    return path


def _this_host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def _partial_dir(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.{_this_host()}.partial")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process: rely on the age rule alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _newest_mtime(entry: Path) -> float:
    stamps = [entry.lstat().st_mtime]
    if entry.is_dir():
        stamps += [child.lstat().st_mtime for child in entry.iterdir()]
    return max(stamps)


def _is_stale(entry: Path, now: float) -> bool:
    partial = _PARTIAL.match(entry.name)
    if partial is None and _LEGACY_TEMP.match(entry.name) is None:
        return False
    try:
        if now - _newest_mtime(entry) > STALE_PARTIAL_SECONDS:
            return True
    except OSError:  # vanished meanwhile: its writer finished
        return False
    return partial is not None and partial["host"] == _this_host() and not _pid_alive(int(partial["pid"]))


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove what killed writers left next to ``path`` (see the module docstring); the removed paths."""
    folder = path.parent
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    now = time.time()
    removed = []
    for entry in entries:
        if not _is_stale(entry, now):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        except OSError as err:
            logger.debug("could not remove %s (%s)", entry, err)
            continue
        removed.append(entry)
        logger.info("removed %s, left by an interrupted conversion", entry)
    return removed
