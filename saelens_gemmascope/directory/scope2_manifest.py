"""The Gemma Scope 2 suite manifest (configs/gemma_scope_2_suite.yaml): one record per released SAE.

The file stores facts (each kind's folder, layers, widths, L0 labels and affine variants; the target
L0 per size, layer and label; where a repository departs from the layout; which SAEs have a
Neuronpedia page). Ids, hub folders, release names and Neuronpedia ids are derived here, once per
process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from saelens_gemmascope.directory.manifest import ManifestError, parse_yaml, read_shipped_config

MANIFEST_FILE = "gemma_scope_2_suite.yaml"
L0_LABELS = ("small", "medium", "big")
AFFINE_SUFFIX = "_affine"


@dataclass(frozen=True)
class Scope2Sae:
    """One released Gemma Scope 2 SAE or transcoder, and everything the manifest says about it."""

    release: str
    sae_id: str  # SAELens's id, e.g. layer_13_width_16k_l0_small
    repo_id: str
    folder: str  # hub folder, e.g. resid_post/layer_13_width_16k_l0_small
    model: str  # SAELens's model name, e.g. google/gemma-3-1b-pt
    site: str  # res, mlp, att or transcoder
    layer: int
    width: str
    d_sae: int
    l0_label: str  # small, medium or big
    l0: int  # the target L0 of that label at this layer
    affine: bool  # a skip transcoder with an affine skip connection
    every_layer: bool  # from a *-all release
    neuronpedia_id: str | None
    hf_hook_in: str  # the Hugging Face hook point it reads, as its config.json names it
    hf_hook_out: str | None  # where a transcoder writes; None for an SAE
    seed: int | None = None  # the second seed of a sweep SAE (``_seed_1``); None for the first
    #: Gemma Scope 2 has no canonical releases, and the paper gives no per-width token counts.
    canonical: bool = False
    training_tokens: int | None = None

    @property
    def variant(self) -> str:
        """How ``gemmascope ls`` names it among its layer and width: ``small``, ``big+affine``..."""
        extras = (["affine"] if self.affine else []) + ([f"seed{self.seed}"] if self.seed is not None else [])
        return "+".join([self.l0_label, *extras])


@dataclass(frozen=True)
class Scope2Release:
    """One SAELens release: a repository's SAEs of one kind (e.g. ``gemma-scope-2-1b-pt-res-all``)."""

    name: str
    repo_id: str
    model: str
    kind: str
    site: str
    saes: Mapping[str, Scope2Sae]  # SAELens id -> record


@dataclass(frozen=True)
class Scope2Manifest:
    widths: Mapping[str, int]
    releases: Mapping[str, Scope2Release]
    not_served: Mapping[str, str]  # kind -> why this package does not serve it

    def saes(self) -> Iterator[Scope2Sae]:
        for release in self.releases.values():
            yield from release.saes.values()

    @cached_property
    def by_folder(self) -> Mapping[tuple[str, str], Scope2Sae]:
        """(repo_id, hub folder) -> record: what the converter resolves."""
        return {(s.repo_id, s.folder): s for s in self.saes()}

    def repo_ids(self) -> list[str]:
        return sorted({r.repo_id for r in self.releases.values()})


def _layers(kind: Mapping[str, Any], size: Mapping[str, Any]) -> list[int]:
    if kind["layers"] == "sweep":
        return sorted(int(layer) for layer in size["sweep_layers"])
    if kind["layers"] == "every":
        return list(range(int(size["n_layers"])))
    raise ManifestError(f"kind layers must be 'sweep' or 'every', got {kind['layers']!r}")


def _target_l0(kind: Mapping[str, Any], size: Mapping[str, Any], layer: int, label: str) -> int:
    if kind["layers"] == "sweep":
        return int(size["sweep_layers"][layer][L0_LABELS.index(label)])
    return int(size["every_layer"][label][layer])


def _neuronpedia_ids(repo: Mapping[str, Any], kind_name: str, layers: list[int], site: str) -> dict[str, str]:
    """SAELens id -> Neuronpedia id, for the SAEs of ``kind_name`` the repository entry lists."""
    spec = (repo.get("neuronpedia") or {}).get(kind_name)
    if spec is None:
        return {}
    np_site = "transcoder" if site == "transcoder" else site
    out: dict[str, str] = {}
    for width, where in spec["at"].items():
        for layer in layers if where == "every" else where:
            sae_id = f"layer_{layer}_width_{width}_{spec['variant']}"
            out[sae_id] = f"{repo['neuronpedia_model']}/{layer}-gemmascope-2-{np_site}-{width}"
    return out


def _id_tail_seed(tail: str) -> tuple[str, bool, int | None]:
    """``l0_medium_seed_1`` -> (medium, affine False, seed 1)."""
    seed = None
    if "_seed_" in tail:
        tail, seed_text = tail.rsplit("_seed_", 1)
        seed = int(seed_text)
    affine = tail.endswith(AFFINE_SUFFIX)
    label = tail.removesuffix(AFFINE_SUFFIX).removeprefix("l0_")
    if label not in L0_LABELS:
        raise ManifestError(f"unknown L0 label in id tail {tail!r}")
    return label, affine, seed


def _kind_ids(kind: Mapping[str, Any], size: Mapping[str, Any], widths: list[str]) -> list[str]:
    """Every id ``layer_L_width_W_<tail>`` (without a folder prefix) the layout implies."""
    tails = [
        f"l0_{label}{AFFINE_SUFFIX if affine else ''}"
        for label in kind["l0"]
        for affine in kind.get("affine", [False])
    ]
    ids = []
    for layer in _layers(kind, size):
        for width in widths:
            ids += [f"layer_{layer}_width_{width}_{tail}" for tail in tails]
        ids += [f"layer_{layer}_{extra}" for extra in kind.get("extra_ids", [])]
    return ids


def _parse_release(
    repo_name: str, repo: Mapping[str, Any], kind_name: str, raw: Mapping[str, Any]
) -> Scope2Release:
    kind = raw["kinds"][kind_name]
    size = raw["sizes"][repo["size"]]
    widths = [str(w) for w in (repo.get("widths") or {}).get(kind_name, kind["widths"])]
    name = f"{repo_name}-{kind_name}"
    prefix = f"{kind['folder']}/" if kind.get("id_prefix") else ""
    ids = [prefix + i for i in _kind_ids(kind, size, widths)]
    only = (repo.get("only_ids") or {}).get(kind_name)
    missing = set((repo.get("missing_ids") or {}).get(kind_name, ()))
    for listed in [*(only or ()), *missing]:
        if listed not in ids:
            raise ManifestError(f"{name}: {listed!r} (only_ids / missing_ids) is not an id of the layout")
    if only is not None:
        ids = [i for i in ids if i in set(only)]
    ids = [i for i in ids if i not in missing]
    layers = _layers(kind, size)
    neuronpedia = _neuronpedia_ids(repo, kind_name, layers, kind["site"])
    saes: dict[str, Scope2Sae] = {}
    for sae_id in ids:
        base = sae_id.removeprefix(prefix)
        layer_text, rest = base.removeprefix("layer_").split("_width_", 1)
        width, tail = rest.split("_", 1)
        if width not in raw["widths"]:
            raise ManifestError(f"{name}: width {width!r} is not in the manifest's widths table")
        label, affine, seed = _id_tail_seed(tail)
        layer = int(layer_text)
        hf_hooks = raw["hf_hooks"][kind["site"]]
        saes[sae_id] = Scope2Sae(
            release=name,
            sae_id=sae_id,
            repo_id=f"google/{repo_name}",
            folder=f"{kind['folder']}/{base}",
            model=repo["model"],
            site=kind["site"],
            layer=layer,
            width=width,
            d_sae=int(raw["widths"][width]),
            l0_label=label,
            l0=_target_l0(kind, size, layer, label),
            affine=affine,
            every_layer=kind["layers"] == "every",
            neuronpedia_id=neuronpedia.get(base),
            hf_hook_in=hf_hooks["in"].format(layer=layer),
            hf_hook_out=hf_hooks["out"].format(layer=layer) if "out" in hf_hooks else None,
            seed=seed,
        )
    unknown_np = set(neuronpedia) - {s.sae_id.removeprefix(prefix) for s in saes.values()}
    if unknown_np:
        raise ManifestError(f"{name}: Neuronpedia ids for SAEs it does not list: {sorted(unknown_np)}")
    return Scope2Release(
        name=name,
        repo_id=f"google/{repo_name}",
        model=repo["model"],
        kind=kind_name,
        site=kind["site"],
        saes=saes,
    )


def parse_scope2_manifest(raw: Mapping[str, Any]) -> Scope2Manifest:
    """Build the manifest from its parsed YAML (tests pass small hand-written dicts)."""
    if raw.get("format") != 1:
        raise ManifestError(f"unsupported Gemma Scope 2 manifest format {raw.get('format')!r}")
    releases: dict[str, Scope2Release] = {}
    for repo_name, repo in raw["repos"].items():
        absent = set(repo.get("absent") or ())
        unknown = absent - set(raw["kinds"])
        if unknown:
            raise ManifestError(f"{repo_name}: absent names unknown kinds {sorted(unknown)}")
        for kind_name in raw["kinds"]:
            if kind_name not in absent:
                release = _parse_release(repo_name, repo, kind_name, raw)
                releases[release.name] = release
    return Scope2Manifest(
        widths={str(k): int(v) for k, v in raw["widths"].items()},
        releases=releases,
        not_served={str(k): " ".join(str(v).split()) for k, v in (raw.get("not_served") or {}).items()},
    )


def read_scope2_manifest_text() -> str:
    return read_shipped_config(MANIFEST_FILE)


@cache
def load_scope2_manifest() -> Scope2Manifest:
    """The Gemma Scope 2 manifest shipped with the package (parsed once per process)."""
    return parse_scope2_manifest(parse_yaml(read_scope2_manifest_text()))
