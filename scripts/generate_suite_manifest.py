"""One-off: write configs/gemma_scope_suite.yaml from SAELens's pretrained_saes.yaml.

SAELens's list is the source of truth for which (layer, width, average L0) variants exist. The manifest
keeps only facts (L0s, tie-broken canonical choices, which variants have a Neuronpedia page) and drops
everything derivable (ids, paths, canonical ids, Neuronpedia ids that follow the naming pattern).
Corrections are applied here on purpose and listed in the manifest header.

Run:  python scripts/generate_suite_manifest.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

OUTPUT = Path(__file__).resolve().parent.parent / "configs" / "gemma_scope_suite.yaml"
FOLDER = re.compile(
    r"^(?:layer_(?P<layer>\d+)|(?P<embedding>embedding))/width_(?P<width>\w+)/average_l0_(?P<l0>\d+)$"
)
CANONICAL_ID = re.compile(r"^layer_(?P<layer>\d+)/width_(?P<width>\w+)/canonical$")
TARGET_L0 = 100
WIDTH_ORDER = ["4k", "16k", "32k", "65k", "131k", "262k", "524k", "1m"]

# Deliberate corrections of SAELens's list (see the header written below).
MODEL_FIXES = {"gemma-scope-9b-it-res": "gemma-2-9b-it"}
# A Neuronpedia id that names another SAE (layer 20, 131k) on a layer-2 16k entry: dropped.
DROPPED_NEURONPEDIA = {("gemma-scope-9b-pt-res", "layer_2/width_16k/average_l0_8")}

HEADER = """\
# Gemma Scope suite manifest: every released JumpReLU SAE of Gemma Scope (Lieberum et al., 2024).
#
# Generated once from SAELens 6.54's pretrained_saes.yaml by scripts/generate_suite_manifest.py, then
# maintained by hand. Read by saelens_gemmascope.directory.manifest; SAELens directory entries
# (release names, ids, paths, Neuronpedia ids) are generated from it.
#
# Layout: releases -> widths -> l0s: {layer: [average L0 of each sparsity variant]} ("embedding" in
# place of a layer for the embedding SAEs). A variant's id and hub folder are
# layer_{layer}/width_{width}/average_l0_{L0}. The canonical variant of a (layer, width) is the one
# whose L0 is closest to canonical_target_l0; canonical_ties records the hub's choice where two are
# equally close. Canonical releases (<release>-canonical) list layer_{layer}/width_{width}/canonical
# for every layered (layer, width); embedding SAEs have no canonical entry.
# Neuronpedia: canonical entries are {model}/{layer}-gemmascope-{site}-{width} unless the layer is in
# canonical_without_neuronpedia; non-canonical variants have a page only where neuronpedia_variants
# lists them ({...}__l0-{L0}; style "plain" drops the suffix); neuronpedia_overrides are verbatim.
#
# Deliberate differences from SAELens 6.54's list:
#  - gemma-scope-9b-it-res: model is gemma-2-9b-it (SAELens: gemma-2-9b).
#  - canonical entries added: gemma-scope-2b-pt-res-canonical layer_12/width_131k/canonical and
#    gemma-scope-9b-pt-res-canonical layer_20/width_262k/canonical (no Neuronpedia id is known for them).
#  - gemma-scope-9b-pt-res layer_2/width_16k/average_l0_8: Neuronpedia id dropped (SAELens gives
#    gemma-2-9b/20-gemmascope-res-131k__l0-10, a layer-20 131k SAE).
#  - expected L0 is the folder's L0 for every entry (SAELens leaves it unset on most canonical and
#    all embedding entries, and says 78 for 9b res layer_20/width_524k/canonical, whose folder is
#    average_l0_48).
# Hub irregularities known and kept in mind:
#  - gemma-scope-2b-pt-res layer_11/width_16k/average_l0_79 was deleted from the hub (a duplicate of
#    average_l0_80; SAELens PR #293); it is not listed.
#  - gemma-scope-9b-pt-res layer 20 has 8 variants at 16k and 131k (other layers 5-6): extra sweeps.
#  - gemma-scope-9b-pt-res layer_20/width_131k/average_l0_114 carries the Neuronpedia id
#    gemma-2-9b/20-gemmascope-res-131k__l0-12 (kept verbatim, unverified).
#  - the hub's canonical/ folders come and go: canonical ids always map to average_l0_* folders.
#  - gemma-scope-2b-pt-transcoders: SAELens lists one variant per layer; only those are listed here.
"""


def _flow(values: list[int]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _layer_key(layer: str) -> tuple[int, int]:
    return (1, int(layer)) if layer.isdigit() else (0, 0)


def build(saelens: dict[str, Any]) -> dict[str, Any]:
    gemma = {
        name: value
        for name, value in saelens.items()
        if name.startswith("gemma-scope-") and not name.startswith("gemma-scope-2-")
    }
    releases: dict[str, Any] = {}
    for name, value in gemma.items():
        if name.endswith("-canonical"):
            continue
        l0s: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        np_variants: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        np_overrides: dict[str, str] = {}
        site = {"transcoders": "transcoder"}.get(name.rsplit("-", 1)[1], name.rsplit("-", 1)[1])
        model = MODEL_FIXES.get(name, value["model"])
        plain_style = site == "transcoder"
        for sae in value["saes"]:
            match = FOLDER.match(sae["path"])
            assert match and sae["id"] == sae["path"], sae
            layer = match["layer"] or "embedding"
            width, l0 = match["width"], int(match["l0"])
            l0s[width][layer].append(l0)
            np_id = sae.get("neuronpedia")
            if np_id is None or (name, sae["id"]) in DROPPED_NEURONPEDIA:
                continue
            base = f"{model}/{layer}-gemmascope-{site}-{width}"
            expected = base if plain_style else f"{base}__l0-{l0}"
            if np_id == expected:
                np_variants[width][layer].append(l0)
            else:
                np_overrides[sae["id"]] = np_id
        canonical = gemma.get(f"{name}-canonical")
        chosen: dict[tuple[str, str], int] = {}
        canonical_np: dict[tuple[str, str], bool] = {}
        if canonical is not None:
            for sae in canonical["saes"]:
                cid, folder = CANONICAL_ID.match(sae["id"]), FOLDER.match(sae["path"])
                assert cid and folder and (cid["layer"], cid["width"]) == (folder["layer"], folder["width"])
                chosen[(cid["layer"], cid["width"])] = int(folder["l0"])
                expected = f"{canonical['model']}/{cid['layer']}-gemmascope-{site}-{cid['width']}"
                assert sae.get("neuronpedia") == expected, sae
                canonical_np[(cid["layer"], cid["width"])] = True
        widths: dict[str, Any] = {}
        for width in sorted(l0s, key=WIDTH_ORDER.index):
            layers = {layer: sorted(l0s[width][layer]) for layer in sorted(l0s[width], key=_layer_key)}
            entry: dict[str, Any] = {"l0s": layers}
            ties: dict[str, int] = {}
            missing_np: list[str] = []
            for layer, values in layers.items():
                if layer == "embedding" or canonical is None:
                    continue
                best = min(abs(v - TARGET_L0) for v in values)
                closest = [v for v in values if abs(v - TARGET_L0) == best]
                hub_choice = chosen.get((layer, width))
                if len(closest) > 1:
                    assert hub_choice in closest, (name, layer, width)
                    ties[layer] = hub_choice
                elif hub_choice is not None:
                    assert hub_choice == closest[0], (name, layer, width, hub_choice, closest)
                if not canonical_np.get((layer, width)):
                    missing_np.append(layer)
            if ties:
                entry["canonical_ties"] = ties
            if missing_np:
                entry["canonical_without_neuronpedia"] = [int(x) for x in missing_np]
            variants = np_variants.get(width, {})
            if plain_style and all(variants.get(layer) == values for layer, values in layers.items()):
                entry["neuronpedia_variants"] = "all"
            elif variants:
                entry["neuronpedia_variants"] = {
                    layer: sorted(variants[layer]) for layer in sorted(variants, key=_layer_key)
                }
            widths[width] = entry
        release: dict[str, Any] = {
            "repo_id": value["repo_id"],
            "model": model,
            "site": site,
            "canonical_release": f"{name}-canonical" if canonical is not None else None,
        }
        if plain_style:
            release["neuronpedia_style"] = "plain"
        if np_overrides:
            release["neuronpedia_overrides"] = np_overrides
        release["widths"] = widths
        releases[name] = release
    return releases


def render(releases: dict[str, Any]) -> str:
    lines = [HEADER, "format: 1", f"canonical_target_l0: {TARGET_L0}"]
    lines.append("widths: {" + ", ".join(f"{w}: {_width_size(w)}" for w in WIDTH_ORDER) + "}")
    lines.append("# Training tokens per width (paper: 4B at 2^14, 16B at 2^20, 8B otherwise).")
    lines.append("training_tokens: {default: 8_000_000_000, 16k: 4_000_000_000, 1m: 16_000_000_000}")
    lines.append("releases:")
    for name, release in releases.items():
        lines.append(f"  {name}:")
        for key in ("repo_id", "model", "site", "canonical_release", "neuronpedia_style"):
            if key in release:
                value = release[key]
                lines.append(f"    {key}: {'null' if value is None else value}")
        if "neuronpedia_overrides" in release:
            lines.append("    neuronpedia_overrides:")
            for sae_id, np_id in release["neuronpedia_overrides"].items():
                lines.append(f"      {sae_id}: {np_id}")
        lines.append("    widths:")
        for width, entry in release["widths"].items():
            lines.append(f"      {width}:")
            lines.append("        l0s:")
            for layer, values in entry["l0s"].items():
                lines.append(f"          {layer}: {_flow(values)}")
            if "canonical_ties" in entry:
                ties = ", ".join(f"{k}: {v}" for k, v in entry["canonical_ties"].items())
                lines.append(f"        canonical_ties: {{{ties}}}")
            if "canonical_without_neuronpedia" in entry:
                lines.append(
                    f"        canonical_without_neuronpedia: {_flow(entry['canonical_without_neuronpedia'])}"
                )
            variants = entry.get("neuronpedia_variants")
            if variants == "all":
                lines.append("        neuronpedia_variants: all")
            elif variants:
                lines.append("        neuronpedia_variants:")
                for layer, values in variants.items():
                    lines.append(f"          {layer}: {_flow(values)}")
    return "\n".join(lines) + "\n"


def _width_size(width: str) -> int:
    # Powers of two named by their rounded size (131k = 2^17 = 131,072; 1m = 2^20).
    exponents = {"4k": 12, "16k": 14, "32k": 15, "65k": 16, "131k": 17, "262k": 18, "524k": 19, "1m": 20}
    return 2 ** exponents[width]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the manifest on disk differs")
    args = parser.parse_args()
    with files("sae_lens").joinpath("pretrained_saes.yaml").open() as handle:
        saelens = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    text = render(build(saelens))
    if args.check:
        same = OUTPUT.is_file() and OUTPUT.read_text() == text
        print("up to date" if same else f"{OUTPUT} differs from a fresh generation")
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
