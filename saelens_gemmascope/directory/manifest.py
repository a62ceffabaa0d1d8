"""The Gemma Scope suite manifest (configs/gemma_scope_suite.yaml): parsed into one record per SAE.

The file stores facts only (the L0s of each (release, width, layer), tie-broken canonical choices,
which variants have a Neuronpedia page); ids, folders, canonical ids and Neuronpedia ids are derived
here. It is read when the package is imported, so parsing stays cheap: the C YAML loader, plain
tuples, and the result cached per process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import yaml

MANIFEST_FILE = "gemma_scope_suite.yaml"
EMBEDDING = "embedding"


@dataclass(frozen=True)
class SaeVariant:
    """One released SAE: a (release, layer, width, average L0) variant and everything known about it."""

    release: str
    repo_id: str
    model: str
    site: str  # res, mlp, att, transcoder or embedding
    layer: int | None  # None for the embedding SAEs
    width: str  # the hub's width name, e.g. "16k"
    d_sae: int
    l0: int
    canonical: bool
    neuronpedia_id: str | None
    training_tokens: int

    @property
    def folder(self) -> str:
        """The hub folder (and SAELens id) holding this SAE's params.npz."""
        where = EMBEDDING if self.layer is None else f"layer_{self.layer}"
        return f"{where}/width_{self.width}/average_l0_{self.l0}"

    @property
    def canonical_id(self) -> str | None:
        """The id in ``<release>-canonical``, if this variant is the canonical one of a layered group."""
        if not self.canonical or self.layer is None:
            return None
        return f"layer_{self.layer}/width_{self.width}/canonical"


@dataclass(frozen=True)
class ReleaseSpec:
    """One hub repository of the suite, as the manifest describes it."""

    name: str
    repo_id: str
    model: str
    site: str
    canonical_release: str | None
    variants: tuple[SaeVariant, ...]
    canonical_neuronpedia: Mapping[str, str]  # variant folder -> Neuronpedia id of its canonical entry


@dataclass(frozen=True)
class SuiteManifest:
    canonical_target_l0: int
    widths: Mapping[str, int]
    training_tokens: Mapping[str, int]
    releases: Mapping[str, ReleaseSpec]

    def variants(self) -> Iterator[SaeVariant]:
        for release in self.releases.values():
            yield from release.variants

    def release_for_repo(self, repo_id: str) -> ReleaseSpec | None:
        return next((r for r in self.releases.values() if r.repo_id == repo_id), None)

    def tokens_for_width(self, width: str) -> int:
        return self.training_tokens.get(width, self.training_tokens["default"])


class ManifestError(ValueError):
    """The manifest file is malformed (a packaging or editing mistake, not a user error)."""


def _canonical_l0(l0s: list[int], target: int, tie_choice: int | None, where: str) -> int:
    best = min(abs(v - target) for v in l0s)
    closest = [v for v in l0s if abs(v - target) == best]
    if tie_choice is not None:
        if tie_choice not in closest:
            raise ManifestError(
                f"{where}: canonical_ties names {tie_choice}, not among the closest {closest}"
            )
        return tie_choice
    if len(closest) > 1:
        raise ManifestError(f"{where}: L0s {closest} are equally close to {target}; add canonical_ties")
    return closest[0]


def _parse_release(name: str, raw: Mapping[str, Any], manifest: Mapping[str, Any]) -> ReleaseSpec:
    target = int(manifest["canonical_target_l0"])
    width_sizes: Mapping[str, int] = manifest["widths"]
    tokens: Mapping[str, int] = manifest["training_tokens"]
    model, site = raw["model"], raw["site"]
    has_canonical = raw.get("canonical_release") is not None
    plain_np = raw.get("neuronpedia_style") == "plain"
    overrides: Mapping[str, str] = raw.get("neuronpedia_overrides") or {}
    variants: list[SaeVariant] = []
    canonical_np: dict[str, str] = {}
    for width, group in raw["widths"].items():
        width = str(width)
        if width not in width_sizes:
            raise ManifestError(f"{name}: width {width!r} is not in the manifest's widths table")
        ties: Mapping[Any, int] = group.get("canonical_ties") or {}
        no_np = set(group.get("canonical_without_neuronpedia") or ())
        np_variants = group.get("neuronpedia_variants") or {}
        for layer_key, l0s in group["l0s"].items():
            layer = None if layer_key == EMBEDDING else int(layer_key)
            where = f"{name} width {width} {'embedding' if layer is None else f'layer {layer}'}"
            # Canonical = closest to the target L0, for every layered group (even without a canonical
            # release, e.g. the transcoders); embedding SAEs have none.
            canonical_l0 = None if layer is None else _canonical_l0(l0s, target, ties.get(layer_key), where)
            with_page = l0s if np_variants == "all" else np_variants.get(layer_key, ())
            np_base = f"{model}/{layer_key}-gemmascope-{site}-{width}"
            for l0 in l0s:
                folder = f"{'embedding' if layer is None else f'layer_{layer}'}/width_{width}/average_l0_{l0}"
                np_id = overrides.get(folder)
                if np_id is None and l0 in with_page:
                    np_id = np_base if plain_np else f"{np_base}__l0-{l0}"
                variant = SaeVariant(
                    release=name,
                    repo_id=raw["repo_id"],
                    model=model,
                    site=EMBEDDING if layer is None else site,
                    layer=layer,
                    width=width,
                    d_sae=int(width_sizes[width]),
                    l0=int(l0),
                    canonical=l0 == canonical_l0,
                    neuronpedia_id=np_id,
                    training_tokens=int(tokens.get(width, tokens["default"])),
                )
                variants.append(variant)
                if has_canonical and variant.canonical and layer not in no_np:
                    canonical_np[variant.folder] = np_base
    return ReleaseSpec(
        name=name,
        repo_id=raw["repo_id"],
        model=model,
        site=site,
        canonical_release=raw.get("canonical_release"),
        variants=tuple(variants),
        canonical_neuronpedia=canonical_np,
    )


def parse_manifest(raw: Mapping[str, Any]) -> SuiteManifest:
    """Build the manifest from its parsed YAML (tests pass small hand-written dicts)."""
    if raw.get("format") != 1:
        raise ManifestError(f"unsupported manifest format {raw.get('format')!r}")
    widths = {str(k): int(v) for k, v in raw["widths"].items()}
    tokens = {str(k): int(v) for k, v in raw["training_tokens"].items()}
    normalised = {**raw, "widths": widths, "training_tokens": tokens}
    releases = {name: _parse_release(name, spec, normalised) for name, spec in raw["releases"].items()}
    return SuiteManifest(
        canonical_target_l0=int(raw["canonical_target_l0"]),
        widths=widths,
        training_tokens=tokens,
        releases=releases,
    )


def read_shipped_config(filename: str) -> str:
    """The text of a file shipped in ``saelens_gemmascope/configs``."""
    return files("saelens_gemmascope.configs").joinpath(filename).read_text(encoding="utf-8")


def parse_yaml(text: str) -> Any:
    """YAML text parsed safely, with PyYAML's C loader where it is built (the manifests are large)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)


def read_manifest_text() -> str:
    return read_shipped_config(MANIFEST_FILE)


@cache
def load_manifest() -> SuiteManifest:
    """The suite manifest shipped with the package (parsed once per process)."""
    return parse_manifest(parse_yaml(read_manifest_text()))
