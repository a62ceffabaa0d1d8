"""SAELens directory entries (``PretrainedSAELookup``) generated from the suite manifest, and the
reverse: finding the manifest record behind a (release, SAE id) with helpful errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

from saelens_gemmascope.directory.errors import UnknownReleaseError, UnknownSaeIdError
from saelens_gemmascope.directory.manifest import ReleaseSpec, SaeVariant, SuiteManifest, load_manifest
from saelens_gemmascope.directory.scope2_manifest import Scope2Sae

#: Converter names in SAELens's tables (distinct from SAELens's own ``gemma_2``/``gemma_2_transcoder``).
SAE_CONVERTER_NAME = "gemmascope"
TRANSCODER_CONVERTER_NAME = "gemmascope_transcoder"


def converter_name_for(site: str) -> str:
    return TRANSCODER_CONVERTER_NAME if site == "transcoder" else SAE_CONVERTER_NAME


@dataclass(frozen=True)
class DirectoryRelease:
    """One SAELens release name and its ids -> manifest records (a canonical release reuses records)."""

    name: str
    spec: ReleaseSpec
    saes: Mapping[str, SaeVariant]
    is_canonical: bool

    def lookup(self) -> PretrainedSAELookup:
        neuronpedia: dict[str, str] = {}
        for sae_id, variant in self.saes.items():
            np_id = (
                self.spec.canonical_neuronpedia.get(variant.folder)
                if self.is_canonical
                else variant.neuronpedia_id
            )
            if np_id is not None:
                neuronpedia[sae_id] = np_id
        return PretrainedSAELookup(
            release=self.name,
            repo_id=self.spec.repo_id,
            model=self.spec.model,
            conversion_func=converter_name_for(self.spec.site),
            saes_map={sae_id: v.folder for sae_id, v in self.saes.items()},
            expected_var_explained={sae_id: 1.0 for sae_id in self.saes},
            expected_l0={sae_id: float(v.l0) for sae_id, v in self.saes.items()},
            neuronpedia_id=neuronpedia,
            norm_scaling_factor={},
            config_overrides=None,
        )


def directory_releases(manifest: SuiteManifest) -> dict[str, DirectoryRelease]:
    """Every SAELens release name of the suite: each hub repo, plus its ``-canonical`` release."""
    out: dict[str, DirectoryRelease] = {}
    for spec in manifest.releases.values():
        out[spec.name] = DirectoryRelease(spec.name, spec, {v.folder: v for v in spec.variants}, False)
        if spec.canonical_release is not None:
            canonical = {v.canonical_id: v for v in spec.variants if v.canonical_id is not None}
            out[spec.canonical_release] = DirectoryRelease(spec.canonical_release, spec, canonical, True)  # type: ignore[arg-type]
    return out


@cache
def builtin_directory() -> dict[str, DirectoryRelease]:
    return directory_releases(load_manifest())


def resolve(release: str, sae_id: str, directory: Mapping[str, DirectoryRelease] | None = None) -> SaeVariant:
    """The Gemma Scope manifest record behind ``(release, sae_id)``; unknown names raise with close
    matches (:func:`resolve_any` also knows the Gemma Scope 2 releases)."""
    directory = builtin_directory() if directory is None else directory
    if release not in directory:
        raise UnknownReleaseError(release, directory)
    saes = directory[release].saes
    if sae_id not in saes:
        raise UnknownSaeIdError(release, sae_id, saes)
    return saes[sae_id]


def resolve_any(release: str, sae_id: str) -> SaeVariant | Scope2Sae:
    """The record behind ``(release, sae_id)`` in either suite; an unknown release's error lists both
    suites' names (and says why, for a Gemma Scope 2 crosscoder or CLT)."""
    from saelens_gemmascope.directory.scope2_releases import not_served_note, scope2_releases

    scope2 = scope2_releases()
    if release in scope2:
        saes = scope2[release].saes
        if sae_id not in saes:
            raise UnknownSaeIdError(release, sae_id, saes)
        return saes[sae_id]
    directory = builtin_directory()
    if release not in directory:
        raise UnknownReleaseError(release, [*directory, *scope2], note=not_served_note(release))
    return resolve(release, sae_id, directory)


def known_release_names() -> list[str]:
    """Every release name of both suites (Gemma Scope and Gemma Scope 2)."""
    from saelens_gemmascope.directory.scope2_releases import scope2_releases

    return [*builtin_directory(), *scope2_releases()]
