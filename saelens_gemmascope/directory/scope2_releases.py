"""SAELens directory entries (``PretrainedSAELookup``) for every Gemma Scope 2 release, generated from
the Gemma Scope 2 manifest, all served by the ``gemmascope2`` converter."""

from __future__ import annotations

from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

from saelens_gemmascope.directory.scope2_converter import CONVERTER_NAME
from saelens_gemmascope.directory.scope2_manifest import Scope2Release, load_scope2_manifest


def scope2_lookup(release: Scope2Release) -> PretrainedSAELookup:
    """SAELens's entry for one release: ids -> hub folders, target L0s, Neuronpedia ids."""
    saes = release.saes
    return PretrainedSAELookup(
        release=release.name,
        repo_id=release.repo_id,
        model=release.model,
        conversion_func=CONVERTER_NAME,
        saes_map={sae_id: sae.folder for sae_id, sae in saes.items()},
        expected_var_explained={sae_id: 1.0 for sae_id in saes},
        expected_l0={sae_id: float(sae.l0) for sae_id, sae in saes.items()},
        neuronpedia_id={sae_id: sae.neuronpedia_id for sae_id, sae in saes.items() if sae.neuronpedia_id},
        norm_scaling_factor={},
        config_overrides=None,
    )


def scope2_releases() -> dict[str, Scope2Release]:
    """Every Gemma Scope 2 release by SAELens name."""
    return dict(load_scope2_manifest().releases)


def not_served_note(release: str) -> str | None:
    """Why a name that looks like a Gemma Scope 2 crosscoder or CLT release is not served, else None."""
    if not release.startswith("gemma-scope-2-"):
        return None
    for kind, reason in load_scope2_manifest().not_served.items():
        if kind in release.removeprefix("gemma-scope-2-").split("-"):
            return f"Gemma Scope 2 {kind}s are not served: {reason}"
    return None
