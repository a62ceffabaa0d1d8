"""Errors a user can meet when choosing or loading a Gemma Scope SAE, each saying what to do next."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from saelens_gemmascope.directory.npz import ParamsFileError

__all__ = [
    "MIRROR_ENV_VAR",
    "ParamsFileError",
    "SaeFileUnavailableError",
    "UnknownReleaseError",
    "UnknownRepoError",
    "UnknownSaeIdError",
]

#: Environment variable naming a local mirror root (``<root>/<repo_id>/<folder>/params.npz``).
MIRROR_ENV_VAR = "SAELENS_GEMMASCOPE_MIRROR"


def _suggestion_text(word: str, candidates: Iterable[str], n: int = 5) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class UnknownReleaseError(ValueError):
    """A release name that the Gemma Scope manifests do not know. ``note`` says more where the name
    looks like something released but not served (a Gemma Scope 2 crosscoder or CLT)."""

    def __init__(self, release: str, known: Iterable[str], note: str | None = None) -> None:
        known = sorted(known)
        self.release = release
        extra = f" {note}" if note else ""
        super().__init__(
            f"Unknown Gemma Scope release {release!r}.{extra}{_suggestion_text(release, known)} "
            f"Known releases: {', '.join(known)}."
        )


class UnknownSaeIdError(ValueError):
    """An SAE id that is not in the (known) release."""

    def __init__(self, release: str, sae_id: str, known: Iterable[str]) -> None:
        self.release = release
        self.sae_id = sae_id
        hint = _suggestion_text(sae_id, known)
        super().__init__(
            f"SAE id {sae_id!r} is not in release {release!r}.{hint or ' No close match.'} "
            f"List the release with: gemmascope ls (or saelens_gemmascope.directory.list_saes())."
        )


class UnknownRepoError(ValueError):
    """The converter was asked for a repository that is not part of the suite."""

    def __init__(self, repo_id: str, known: Iterable[str]) -> None:
        super().__init__(
            f"{repo_id!r} is not a Gemma Scope repository.{_suggestion_text(repo_id, known)} "
            f"Known: {', '.join(sorted(known))}."
        )


#: What (3) of :class:`SaeFileUnavailableError` says when the caller names nothing more specific.
DOWNLOAD_REMEDY = "download it from the hub once the hub can be reached"


class SaeFileUnavailableError(FileNotFoundError):
    """No local copy of a params.npz and the hub cannot be used (offline mode, unreachable or failing).

    ``reason`` says which of these it is; ``remedy`` is the third way out, matching that state (unset
    HF_HUB_OFFLINE only when it is set)."""

    def __init__(
        self,
        repo_id: str,
        folder: str,
        reason: str,
        *,
        remedy: str = DOWNLOAD_REMEDY,
        filename: str = "params.npz",
    ) -> None:
        self.repo_id = repo_id
        self.folder = folder
        super().__init__(
            f"Cannot get {repo_id}/{folder}/{filename}: {reason}. "
            f"Provide a local copy in one of these ways: (1) a mirror folder laid out like the hub, "
            f"<root>/{repo_id}/{folder}/{filename}, named by --mirror <root> (gemmascope fetch, "
            f"gemmascope info), the mirror= argument or the {MIRROR_ENV_VAR} environment variable; "
            f"(2) run `gemmascope fetch <release> <id>` on a machine with network access (it fills the "
            f"Hugging Face cache and the conversion cache); or (3) {remedy}."
        )
