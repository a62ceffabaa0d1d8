"""The Gemma Scope 2 directory generated from configs/gemma_scope_2_suite.yaml against SAELens's own
pretrained_saes.yaml (read straight from the file), every release, id and field; and the gaps the
manifest keeps as SAELens lists them."""

from __future__ import annotations

from importlib.resources import files

import pytest
import yaml

from saelens_gemmascope.directory.scope2_manifest import (
    ManifestError,
    load_scope2_manifest,
    parse_scope2_manifest,
)
from saelens_gemmascope.directory.scope2_releases import scope2_lookup, scope2_releases

# (release, sae_id, field, SAELens's value, ours): none; the manifest header says so.
DELIBERATE_DIFFERENCES: set[tuple[str, str | None, str, object, object]] = set()
ADDED_IDS: set[tuple[str, str]] = set()


@pytest.fixture(scope="module")
def saelens_scope2() -> dict[str, dict]:
    with files("sae_lens").joinpath("pretrained_saes.yaml").open() as handle:
        data = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {k: v for k, v in data.items() if k.startswith("gemma-scope-2-")}


def test_same_release_names(saelens_scope2):
    assert len(saelens_scope2) == 75
    assert set(scope2_releases()) == set(saelens_scope2)


def test_every_id_path_l0_and_neuronpedia_id_is_saelens_s(saelens_scope2):
    found: set[tuple] = set()
    for release, raw in saelens_scope2.items():
        ours = scope2_lookup(scope2_releases()[release])
        assert (ours.repo_id, ours.model) == (raw["repo_id"], raw["model"]), release
        assert ours.conversion_func == "gemmascope2"
        for sae in raw["saes"]:
            sae_id = sae["id"]
            assert ours.saes_map.get(sae_id) == sae["path"], (release, sae_id)
            for field, theirs, mine in (
                ("l0", sae.get("l0"), ours.expected_l0.get(sae_id)),
                ("neuronpedia", sae.get("neuronpedia"), ours.neuronpedia_id.get(sae_id)),
            ):
                if theirs != mine:
                    found.add((release, sae_id, field, theirs, mine))
    assert found == DELIBERATE_DIFFERENCES


def test_only_the_documented_ids_are_added(saelens_scope2):
    added = {
        (release, sae_id)
        for release, entry in scope2_releases().items()
        for sae_id in entry.saes
        if sae_id not in {s["id"] for s in saelens_scope2[release]["saes"]}
    }
    assert added == ADDED_IDS
    assert sum(len(r.saes) for r in scope2_releases().values()) == 8784


def test_the_gaps_the_header_names_are_kept():
    releases = scope2_releases()
    for kind in ("mlp", "mlp-all", "att", "att-all", "transcoders"):
        assert f"gemma-scope-2-27b-pt-{kind}" not in releases
        assert f"gemma-scope-2-27b-it-{kind}" in releases
    assert set(releases["gemma-scope-2-270m-pt-transcoders"].saes) == {
        "transcoder/layer_9_width_16k_l0_small_affine",
        "transcoder/layer_15_width_262k_l0_big_affine",
    }
    for variant in ("pt", "it"):
        saes = releases[f"gemma-scope-2-27b-{variant}-transcoders-all"].saes
        assert "layer_4_width_16k_l0_small" not in saes and "layer_4_width_16k_l0_small_affine" in saes
        assert len(saes) == 62 * 8 - 5
    assert {s.width for s in releases["gemma-scope-2-1b-pt-mlp"].saes.values()} == {
        "16k",
        "65k",
        "262k",
        "1m",
    }
    assert {s.width for s in releases["gemma-scope-2-4b-pt-mlp"].saes.values()} == {"16k", "65k", "262k"}


def test_records_carry_what_the_ids_say():
    sae = scope2_releases()["gemma-scope-2-1b-pt-transcoders"].saes[
        "transcoder/layer_7_width_65k_l0_big_affine"
    ]
    assert (sae.layer, sae.width, sae.d_sae, sae.l0_label, sae.l0, sae.affine) == (
        7,
        "65k",
        65536,
        "big",
        132,
        True,
    )
    assert sae.folder == "transcoder/layer_7_width_65k_l0_big_affine"
    assert sae.hf_hook_in == "model.layers.7.pre_feedforward_layernorm.output"
    assert sae.hf_hook_out == "model.layers.7.post_feedforward_layernorm.output"
    seeded = scope2_releases()["gemma-scope-2-1b-pt-res"].saes["layer_13_width_262k_l0_medium_seed_1"]
    assert (seeded.seed, seeded.l0_label, seeded.variant) == (1, "medium", "medium+seed1")
    assert set(load_scope2_manifest().not_served) == {"crosscoder", "clt"}


def test_manifest_mistakes_are_caught():
    from gemmascope_fakes import tiny_scope2_manifest_dict

    raw = tiny_scope2_manifest_dict()
    raw["repos"]["gemma-scope-2-1b-pt"]["missing_ids"] = {"res": ["layer_99_width_16k_l0_small"]}
    with pytest.raises(ManifestError, match="layer_99"):
        parse_scope2_manifest(raw)
    raw = tiny_scope2_manifest_dict()
    raw["repos"]["gemma-scope-2-1b-pt"]["neuronpedia"] = {
        "res": {"variant": "l0_huge", "at": {"16k": "every"}}
    }
    with pytest.raises(ManifestError, match="Neuronpedia"):
        parse_scope2_manifest(raw)


def test_registered_with_saelens_under_its_own_names():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from saelens_gemmascope.registry import registered_releases

    registered = registered_releases()
    directory = get_pretrained_saes_directory()
    for name in scope2_releases():
        assert name in registered
        assert directory[name].conversion_func == "gemmascope2"
