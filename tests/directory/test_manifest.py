"""The suite manifest against the release table (facts §4) and the canonical / token rules."""

from __future__ import annotations

from collections import defaultdict

import pytest
import yaml

from saelens_gemmascope.directory.manifest import (
    ManifestError,
    load_manifest,
    parse_manifest,
    read_manifest_text,
)


def groups(release: str) -> dict[str, set]:
    out: dict[str, set] = defaultdict(set)
    for v in load_manifest().releases[release].variants:
        out[v.width].add(v.layer)
    return out


def test_release_table_of_the_paper():
    all_2b, all_9b = set(range(26)), set(range(42))
    res2 = groups("gemma-scope-2b-pt-res")
    assert res2["16k"] == res2["65k"] == all_2b
    assert res2["1m"] == {5, 12, 19}
    assert all(res2[w] == {12} for w in ("32k", "131k", "262k", "524k"))
    assert res2["4k"] == {None}  # the embedding SAEs
    for site in ("mlp", "att"):
        assert dict(groups(f"gemma-scope-2b-pt-{site}")) == {"16k": all_2b, "65k": all_2b}
        assert dict(groups(f"gemma-scope-9b-pt-{site}")) == {"16k": all_9b, "131k": all_9b}
    res9 = groups("gemma-scope-9b-pt-res")
    assert res9["16k"] == res9["131k"] == all_9b and res9["1m"] == {9, 20, 31}
    assert all(res9[w] == {20} for w in ("32k", "65k", "262k", "524k"))
    assert dict(groups("gemma-scope-27b-pt-res")) == {"131k": {10, 22, 34}}
    assert dict(groups("gemma-scope-9b-it-res")) == {"16k": {9, 20, 31}, "131k": {9, 20, 31}}
    assert dict(groups("gemma-scope-2b-pt-transcoders")) == {"16k": all_2b}


def test_models_sites_and_sizes():
    m = load_manifest()
    assert m.releases["gemma-scope-9b-it-res"].model == "gemma-2-9b-it"
    assert m.widths["131k"] == 2**17 and m.widths["1m"] == 2**20 and m.widths["4k"] == 4096
    embedding = [v for v in m.variants() if v.site == "embedding"]
    assert {v.model for v in embedding} == {"gemma-2-2b", "gemma-2-9b"} and not any(
        v.canonical for v in embedding
    )


def test_one_canonical_per_layered_group_closest_to_100():
    by_group = defaultdict(list)
    for v in load_manifest().variants():
        if v.layer is not None:
            by_group[(v.release, v.layer, v.width)].append(v)
    for key, variants in by_group.items():
        canon = [v for v in variants if v.canonical]
        assert len(canon) == 1, key
        assert abs(canon[0].l0 - 100) == min(abs(v.l0 - 100) for v in variants), key


def test_recorded_ties_follow_the_hub():
    canon = {(v.release, v.layer, v.width): v.l0 for v in load_manifest().variants() if v.canonical}
    assert canon[("gemma-scope-9b-pt-att", 27, "16k")] == 136  # 64 and 136 are both 36 from 100
    assert canon[("gemma-scope-9b-pt-att", 23, "131k")] == 66  # 66 and 134 are both 34 from 100


def test_training_tokens_per_width():
    tokens = {v.width: v.training_tokens for v in load_manifest().variants()}
    assert tokens["16k"] == 4_000_000_000 and tokens["1m"] == 16_000_000_000
    assert tokens["131k"] == tokens["65k"] == tokens["4k"] == 8_000_000_000


def test_untied_manifest_is_rejected():
    raw = yaml.safe_load(read_manifest_text())
    del raw["releases"]["gemma-scope-9b-pt-att"]["widths"]["16k"]["canonical_ties"]
    with pytest.raises(ManifestError, match="equally close"):
        parse_manifest(raw)


def test_manifest_lists_every_released_sae():
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    manifest = parse_manifest(yaml.load(read_manifest_text(), Loader=loader))
    assert sum(1 for _ in manifest.variants()) == 2430
