"""What to evaluate: SAEs in memory, SAELens save folders, released SAEs and local export folders.

Each becomes an :class:`EvalSAE` carrying a display label and a *source* (``released`` for a
directory release, ``local`` for a folder of exports, ``trained`` for an SAE object or a SAELens save
folder), which the plots use to tell a trained SAE from the released one at the same site.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from sae_lens import SAE

SAE_CONFIG_FILE = "cfg.json"  # what SAE.save_model writes next to the weights
RELEASE_MANIFEST_FILE = "release.json"  # what the Gemma Scope export writes at its root


@dataclass
class EvalSAE:
    sae: Any  # a sae_lens SAE (or transcoder)
    label: str
    source: str
    release: str | None = None
    sae_id: str | None = None


#: ``SAE`` | ``EvalSAE`` | ``(release_or_export_folder, sae_id)`` | a SAELens save folder
SAESpec: TypeAlias = "EvalSAE | SAE[Any] | tuple[str, str] | str | Path"


def _is_local_release(release: str) -> bool:
    from saelens_gemmascope.compat import pretrained_directory
    from saelens_gemmascope.directory.local import LOCAL_CONVERTER_NAME

    entry = pretrained_directory().get(release)
    return entry is not None and entry.conversion_func == LOCAL_CONVERTER_NAME


def _release_name(release_or_folder: str | Path) -> str:
    """The release name, registering an export folder (one with ``release.json``) first."""
    path = Path(release_or_folder)
    if (path / RELEASE_MANIFEST_FILE).is_file():
        from saelens_gemmascope.directory.local import register_local_release

        return register_local_release(path)
    return str(release_or_folder)


def load_pretrained(release: str, sae_id: str, device: str) -> EvalSAE:
    from sae_lens import SAE

    from saelens_gemmascope.registry import registrations

    registrations()  # the releases and converters; a plugin that failed at import raises here
    sae = SAE.from_pretrained(release, sae_id, device=device)
    source = "local" if _is_local_release(release) else "released"
    return EvalSAE(sae=sae, label=f"{release}/{sae_id}", source=source, release=release, sae_id=sae_id)


def load_saved(folder: str | Path, device: str) -> EvalSAE:
    from saelens_gemmascope.directory.saved import load_saved_sae

    sae = load_saved_sae(folder, device=device)
    return EvalSAE(sae=sae, label=Path(folder).name, source="trained")


def resolve_spec(spec: SAESpec, device: str) -> EvalSAE:
    if isinstance(spec, EvalSAE):
        return spec
    if isinstance(spec, tuple):
        release, sae_id = spec
        return load_pretrained(_release_name(release), sae_id, device)
    if isinstance(spec, (str, Path)):
        if not (Path(spec) / SAE_CONFIG_FILE).is_file():
            raise ValueError(f"{spec}: not a SAELens save folder (no {SAE_CONFIG_FILE})")
        return load_saved(spec, device)
    meta = spec.cfg.metadata
    label = f"{meta.hook_name} d_sae={spec.cfg.d_sae}"
    return EvalSAE(sae=spec, label=label, source="trained")


def unique_labels(saes: list[EvalSAE]) -> None:
    """Number repeated labels (``name #2``) so every row of a report is distinct."""
    seen: dict[str, int] = {}
    for item in saes:
        count = seen.get(item.label, 0) + 1
        seen[item.label] = count
        if count > 1:
            item.label = f"{item.label} #{count}"


def expand_source(
    source: str | Path, ids: list[str] | None = None, pattern: str | None = None, all_ids: bool = False
) -> list[SAESpec]:
    """The specs one command-line group names: ``SOURCE [ID ...]``.

    ``SOURCE`` is a SAELens save folder (one SAE; takes no ids), a folder of such folders (all of
    them), a Gemma Scope export folder (``release.json``; every SAE unless ids or ``pattern`` pick
    some) or a release name, which needs ids, a glob ``pattern`` or ``all_ids`` (releases hold
    hundreds of SAEs and each would be downloaded).
    """
    path = Path(source)
    ids = list(ids or [])
    if (path / SAE_CONFIG_FILE).is_file():
        if ids or pattern:
            raise ValueError(f"{source} is one saved SAE; it takes no ids")
        return [path]
    if path.is_dir() and not (path / RELEASE_MANIFEST_FILE).is_file():
        saved = sorted(p.parent for p in path.glob(f"*/{SAE_CONFIG_FILE}"))
        if not saved:
            raise ValueError(f"{source}: neither a SAELens save folder nor a Gemma Scope export folder")
        return [p for p in saved if pattern is None or fnmatch.fnmatch(p.name, pattern)]

    from saelens_gemmascope.compat import pretrained_directory
    from saelens_gemmascope.registry import registrations

    registrations()  # the releases and converters; a plugin that failed at import raises here
    release = _release_name(path if path.is_dir() else str(source))
    entry = pretrained_directory().get(release)
    if entry is None:
        raise ValueError(f"unknown release {release!r} (and no such folder)")
    known = list(entry.saes_map)
    unknown = [i for i in ids if i not in entry.saes_map]
    if unknown:
        raise ValueError(f"release {release!r} has no SAE {', '.join(map(repr, unknown))}")
    if not ids:
        if pattern is not None:
            ids = [i for i in known if fnmatch.fnmatch(i, pattern)]
        elif all_ids or path.is_dir():
            ids = known
        else:
            raise ValueError(f"name SAEs of release {release!r}: ids, --filter GLOB or --all")
    if not ids:
        raise ValueError(f"no SAE of release {release!r} matches {pattern!r}")
    return [(release, sae_id) for sae_id in ids]
