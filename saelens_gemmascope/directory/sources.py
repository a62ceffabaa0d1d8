"""Where a Gemma Scope ``params.npz`` (or a Gemma Scope 2 ``params.safetensors``) comes from, in order:
a local mirror, the Hugging Face cache, the hub.

A mirror is a folder laid out like the hub repositories, ``<root>/<repo_id>/<folder>/params.npz``
(for example ``<root>/google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz``),
named by the ``mirror`` argument or the ``SAELENS_GEMMASCOPE_MIRROR`` environment variable.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import get_session

from saelens_gemmascope.directory.errors import MIRROR_ENV_VAR, SaeFileUnavailableError

PARAMS_FILENAME = "params.npz"
Origin = Literal["mirror", "hf-cache", "hub"]


@dataclass(frozen=True)
class SourceFile:
    """A local params.npz, how it got there, and the root it was found under (the mirror root or the
    Hugging Face cache): recorded with its conversion."""

    path: Path
    origin: Origin
    root: Path

    def fingerprint(self) -> str:
        """Changes whenever the file does: hub cache blobs are named by content hash, and a mirror
        file's size and modification time change when it is replaced."""
        resolved = self.path.resolve()
        stat = resolved.stat()
        return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


def mirror_root(mirror: str | os.PathLike[str] | None = None) -> Path | None:
    """The mirror root: the argument if given, else ``$SAELENS_GEMMASCOPE_MIRROR``, else none."""
    value = mirror if mirror is not None else os.environ.get(MIRROR_ENV_VAR)
    return Path(value).expanduser() if value else None


def mirror_path(root: Path, repo_id: str, folder: str, filename: str = PARAMS_FILENAME) -> Path:
    return root / repo_id / folder / filename


def hf_cache_root() -> Path:
    """The Hugging Face hub cache in use now (read at each call, like huggingface_hub does)."""
    return Path(hf_constants.HF_HUB_CACHE).expanduser()


def root_key(root: Path) -> str:
    """How a source root is recorded and compared: absolute, symlinks resolved."""
    return str(root.resolve())


def source_roots(mirror: str | os.PathLike[str] | None = None) -> list[str]:
    """The places a load reads params.npz from now: the mirror root, if any, and the HF cache."""
    root = mirror_root(mirror)
    return [root_key(r) for r in (root, hf_cache_root()) if r is not None]


def find_local_params(
    repo_id: str,
    folder: str,
    mirror: str | os.PathLike[str] | None = None,
    filename: str = PARAMS_FILENAME,
) -> SourceFile | None:
    """The mirror's copy, else the Hugging Face cache's copy, else None. Never touches the network.
    ``filename``: params.npz (Gemma Scope), params.safetensors or config.json (Gemma Scope 2)."""
    root = mirror_root(mirror)
    if root is not None:
        candidate = mirror_path(root, repo_id, folder, filename)
        if candidate.is_file():
            return SourceFile(candidate, "mirror", root)
    cached = try_to_load_from_cache(repo_id, f"{folder}/{filename}")
    if isinstance(cached, str):
        return SourceFile(Path(cached), "hf-cache", hf_cache_root())
    return None


def hub_is_offline() -> bool:
    return bool(hf_constants.is_offline_mode())


#: The environment variables that turn on huggingface_hub's offline mode (read when it is imported).
OFFLINE_VARIABLES: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: Seconds the one probe of the hub waits: a hub that does not answer in this time is unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
#: The values huggingface_hub reads as true.
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def offline_variables() -> list[str]:
    """The offline-mode variables set (to a true value) in the environment now."""
    return [name for name in OFFLINE_VARIABLES if os.environ.get(name, "").upper() in _TRUE_VALUES]


def offline_state() -> tuple[str, str]:
    """Why the hub is off limits in offline mode, and how to lift it: the variables that are set."""
    set_now = offline_variables()
    if not set_now:  # turned on in-process, or the variable was unset after huggingface_hub read it
        return (
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)",
            "start the process without HF_HUB_OFFLINE to download from the hub",
        )
    shown = " and ".join(f"{name}={os.environ[name]}" for name in set_now)
    return (
        f"{shown} {'is' if len(set_now) == 1 else 'are'} set (huggingface_hub's offline mode)",
        f"`unset {' '.join(set_now)}` in the shell and run again, to download from the hub",
    )


def hub_unreachable_reason(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """One request to the hub endpoint (no retries, at most ``timeout_s`` seconds, DNS included): None
    when it answers (any HTTP status), else why not. huggingface_hub's own client is used so that its
    proxies, certificates and ``HF_ENDPOINT`` apply; downloads retry five times with back-off, which
    made an unreachable hub cost 30 s before this probe."""
    endpoint = hf_constants.ENDPOINT
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=timeout_s, follow_redirects=False)
            outcome.append(None)
        except Exception as err:  # any failure of the request (httpx2, httpx or requests errors)
            outcome.append(err)

    # A thread bounds the name lookup too, which the client's timeout does not cover.
    worker = threading.Thread(target=probe, name="gemmascope-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    if not outcome:
        return f"the Hugging Face hub at {endpoint} did not answer within {timeout_s:g} s"
    error = outcome[0]
    if error is None:
        return None
    return f"the Hugging Face hub at {endpoint} is unreachable ({type(error).__name__}: {error})"


def download_params(
    repo_id: str,
    folder: str,
    *,
    force_download: bool = False,
    mirror: str | os.PathLike[str] | None = None,
    note: str | None = None,
    filename: str = PARAMS_FILENAME,
) -> SourceFile:
    """Download (or re-use the cached) ``filename`` (params.npz unless given) from the hub; clear
    advice when that is impossible.
    ``note`` is added to that advice (e.g. why a conversion-cache file was not used). Offline mode or
    an unreachable hub fails at once (one probe, no retries), with advice that matches which it is."""
    looked = _looked_in(repo_id, folder, mirror, filename) + (f"; {note}" if note else "")
    if hub_is_offline():
        reason, remedy = offline_state()
        raise SaeFileUnavailableError(
            repo_id,
            folder,
            f"{reason} and there is no local copy ({looked})",
            remedy=remedy,
            filename=filename,
        )
    unreachable = hub_unreachable_reason()
    if unreachable is not None:
        raise SaeFileUnavailableError(
            repo_id,
            folder,
            f"{unreachable}; HF_HUB_OFFLINE is not set; there is no local copy ({looked})",
            remedy="run again where the hub can be reached (or with HF_ENDPOINT naming a hub mirror)",
            filename=filename,
        )
    try:
        path = hf_hub_download(
            repo_id=repo_id, filename=filename, subfolder=folder, force_download=force_download
        )
    except (OfflineModeIsEnabled, EntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise SaeFileUnavailableError(
            repo_id, folder, f"the hub download failed ({err}); {looked}", filename=filename
        ) from err
    return SourceFile(Path(path), "hub", hf_cache_root())


def _looked_in(
    repo_id: str, folder: str, mirror: str | os.PathLike[str] | None, filename: str = PARAMS_FILENAME
) -> str:
    root = mirror_root(mirror)
    where = (
        [f"mirror {mirror_path(root, repo_id, folder, filename)}"] if root is not None else ["no mirror set"]
    )
    where.append(f"Hugging Face cache {hf_constants.HF_HUB_CACHE}")
    return "looked in: " + "; ".join(where)
