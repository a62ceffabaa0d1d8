"""Our generated directory against SAELens's own pretrained_saes.yaml, read straight from the file
(the cached directory is replaced by the host). Every difference is deliberate and named here."""

from __future__ import annotations

from importlib.resources import files

import pytest
import yaml

from saelens_gemmascope.directory.releases import builtin_directory

# (release, sae_id, field, SAELens's value, ours)
DELIBERATE_DIFFERENCES = {
    ("gemma-scope-9b-it-res", None, "model", "gemma-2-9b", "gemma-2-9b-it"),
    (
        "gemma-scope-9b-pt-res",
        "layer_2/width_16k/average_l0_8",
        "neuronpedia",
        "gemma-2-9b/20-gemmascope-res-131k__l0-10",
        None,
    ),
    ("gemma-scope-9b-pt-res-canonical", "layer_20/width_524k/canonical", "l0", 78, 48),
}
ADDED_IDS = {
    ("gemma-scope-2b-pt-res-canonical", "layer_12/width_131k/canonical"),
    ("gemma-scope-9b-pt-res-canonical", "layer_20/width_262k/canonical"),
}


@pytest.fixture(scope="module")
def saelens_gemma_scope() -> dict[str, dict]:
    with files("sae_lens").joinpath("pretrained_saes.yaml").open() as handle:
        data = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {
        k: v for k, v in data.items() if k.startswith("gemma-scope-") and not k.startswith("gemma-scope-2-")
    }


def test_same_release_names(saelens_gemma_scope):
    assert set(builtin_directory()) == set(saelens_gemma_scope)


def test_every_saelens_id_is_ours_with_the_same_path_and_metadata(saelens_gemma_scope):
    found: set[tuple] = set()
    for release, raw in saelens_gemma_scope.items():
        ours = builtin_directory()[release].lookup()
        assert ours.repo_id == raw["repo_id"]
        if ours.model != raw["model"]:
            found.add((release, None, "model", raw["model"], ours.model))
        for sae in raw["saes"]:
            sae_id = sae["id"]
            assert ours.saes_map.get(sae_id) == sae["path"], (release, sae_id)
            if ours.neuronpedia_id.get(sae_id) != sae.get("neuronpedia"):
                found.add(
                    (release, sae_id, "neuronpedia", sae.get("neuronpedia"), ours.neuronpedia_id.get(sae_id))
                )
            # SAELens leaves l0 unset on many entries; where it gives one, it must agree with ours.
            if "l0" in sae and ours.expected_l0[sae_id] != sae["l0"]:
                found.add((release, sae_id, "l0", sae["l0"], int(ours.expected_l0[sae_id])))
    assert found == DELIBERATE_DIFFERENCES


def test_only_the_documented_ids_are_added(saelens_gemma_scope):
    added = {
        (release, sae_id)
        for release, entry in builtin_directory().items()
        for sae_id in entry.saes
        if sae_id not in {s["id"] for s in saelens_gemma_scope[release]["saes"]}
    }
    assert added == ADDED_IDS


def test_added_canonical_entries_follow_the_closest_to_100_rule():
    directory = builtin_directory()
    assert directory["gemma-scope-2b-pt-res-canonical"].lookup().saes_map[
        "layer_12/width_131k/canonical"
    ] == (
        "layer_12/width_131k/average_l0_129"  # L0s 12, 20, 36, 67, 129, 264
    )
    assert directory["gemma-scope-9b-pt-res-canonical"].lookup().saes_map[
        "layer_20/width_262k/canonical"
    ] == (
        "layer_20/width_262k/average_l0_50"  # L0s 11, 50, 259
    )
