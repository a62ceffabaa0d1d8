"""Our converter against SAELens's own gemma_2 / gemma_2_transcoder converters (same fake HF cache) and
against the Gemma Scope reference computation."""

from __future__ import annotations

import math

import pytest
import torch
from gemmascope_fakes import TINY_DIMS, TINY_WIDTHS, as_tensors, random_params
from sae_lens import SAE
from sae_lens.loading.pretrained_sae_loaders import (
    gemma_2_sae_huggingface_loader,
    gemma_2_transcoder_huggingface_loader,
    get_gemma_2_config_from_hf,
    get_gemma_2_transcoder_config_from_hf,
    handle_config_defaulting,
)

from saelens_gemmascope.directory.converter import GemmaScopeConverter, default_converter
from saelens_gemmascope.directory.manifest import load_manifest

# (repo, folder, site d_in) for each site of the tiny world.
CASES = {
    "res": ("google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82", TINY_DIMS.d_model),
    "mlp": ("google/gemma-scope-2b-pt-mlp", "layer_3/width_16k/average_l0_95", TINY_DIMS.d_model),
    "att": (
        "google/gemma-scope-2b-pt-att",
        "layer_3/width_16k/average_l0_117",
        TINY_DIMS.n_heads * TINY_DIMS.d_head,
    ),
    "embedding": ("google/gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_111", TINY_DIMS.d_model),
    "transcoder": (
        "google/gemma-scope-2b-pt-transcoders",
        "layer_3/width_16k/average_l0_54",
        TINY_DIMS.d_model,
    ),
}

# Deliberate differences from SAELens's output (configs are identical once SAELens's defaulting runs).
STATE_DIFFERENCES = {"embedding": {"b_dec"}}  # we scale b_dec by sqrt(d_in) with W_dec; SAELens does not


@pytest.mark.parametrize("site", sorted(CASES))
def test_matches_saelens_converter_on_the_same_cache(site, fake_hf_cache, tiny_converter):
    repo, folder, d_in = CASES[site]
    width = folder.split("/")[1].removeprefix("width_")
    arrays = random_params(d_in, TINY_WIDTHS[width], seed=len(site), lower_case=site == "mlp")
    fake_hf_cache(repo, folder, arrays)
    # SAELens's converters take d_in/d_sae from the names (real sizes): tell them the tiny ones.
    overrides = {"neuronpedia_id": "x/y", "d_in": d_in, "d_sae": TINY_WIDTHS[width]}
    if site == "transcoder":
        overrides["d_out"] = d_in
    saelens_load = (
        gemma_2_transcoder_huggingface_loader if site == "transcoder" else gemma_2_sae_huggingface_loader
    )

    theirs_cfg, theirs, _ = saelens_load(repo, folder, "cpu", False, dict(overrides))
    ours_cfg, ours, sparsity = tiny_converter.load(repo, folder, "cpu", False, {"neuronpedia_id": "x/y"})

    assert sparsity is None
    theirs_cfg, ours_cfg = handle_config_defaulting(theirs_cfg), handle_config_defaulting(ours_cfg)
    differing = {k for k in theirs_cfg.keys() | ours_cfg.keys() if theirs_cfg.get(k) != ours_cfg.get(k)}
    assert differing == set()
    assert ours_cfg.get("normalize_activations") == "none"
    assert set(ours) == set(theirs) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    for key in ours:
        if key in STATE_DIFFERENCES.get(site, set()):
            continue
        assert torch.equal(ours[key], theirs[key]), key
    if site == "embedding":
        assert torch.allclose(ours["b_dec"], theirs["b_dec"] * math.sqrt(d_in))


@pytest.mark.parametrize("release", sorted(load_manifest().releases))
def test_real_configs_match_saelens_config_getters(release):
    """For every released SAE (no files needed): the same config as SAELens's own getter."""
    converter = default_converter()
    spec = load_manifest().releases[release]
    getter = (
        get_gemma_2_transcoder_config_from_hf if spec.site == "transcoder" else get_gemma_2_config_from_hf
    )
    for variant in spec.variants:
        ours = handle_config_defaulting(converter.config(variant.repo_id, variant.folder, "cpu"))
        theirs = handle_config_defaulting(getter(variant.repo_id, variant.folder, "cpu"))
        assert ours == theirs, variant.folder


def test_27b_attention_width_comes_from_the_model():
    """SAELens's table says 4608 for 27B attention; 32 heads x 128 = 4096 (facts §3)."""
    manifest = load_manifest()
    raw_27b = {"format": 1, "canonical_target_l0": 100, "widths": dict(manifest.widths)}
    from saelens_gemmascope.directory.manifest import parse_manifest

    fake = parse_manifest(
        {
            **raw_27b,
            "training_tokens": dict(manifest.training_tokens),
            "releases": {
                "att27": {
                    "repo_id": "google/gemma-scope-27b-pt-att",
                    "model": "gemma-2-27b",
                    "site": "att",
                    "canonical_release": None,
                    "widths": {"131k": {"l0s": {10: [100]}}},
                }
            },
        }
    )
    cfg = GemmaScopeConverter(fake).config(
        "google/gemma-scope-27b-pt-att", "layer_10/width_131k/average_l0_100"
    )
    assert cfg["d_in"] == 4096
    assert (
        get_gemma_2_config_from_hf(
            "google/gemma-scope-27b-pt-att", "layer_10/width_131k/average_l0_100", "cpu"
        )["d_in"]
        == 4608
    )


def reference_encode(x, p):
    pre = x @ p["W_enc"] + p["b_enc"]
    return (pre > p["threshold"]) * torch.relu(pre)


@pytest.mark.parametrize("site", ["res", "att", "transcoder"])
def test_loaded_sae_computes_the_gemma_scope_reference(site, fake_hf_cache, tiny_converter):
    repo, folder, d_in = CASES[site]
    arrays = random_params(d_in, TINY_WIDTHS["16k"], seed=7)
    fake_hf_cache(repo, folder, arrays)
    release = {"res": "gemma-scope-2b-pt-res", "att": "gemma-scope-2b-pt-att"}.get(
        site, "gemma-scope-2b-pt-transcoders"
    )
    sae = SAE.from_pretrained(release, folder, device="cpu", converter=tiny_converter.load)
    params = as_tensors(arrays)
    x = torch.randn(64, d_in, generator=torch.Generator().manual_seed(0)) * 2
    acts = reference_encode(x, params)
    assert (acts > 0).any() and (acts == 0).any()  # the threshold actually gates something
    # Attention SAEs read hook_z, (..., n_heads, d_head); SAELens flattens the heads, as Gemma Scope did.
    hook_input = x.reshape(64, TINY_DIMS.n_heads, TINY_DIMS.d_head) if site == "att" else x
    torch.testing.assert_close(sae.encode(hook_input), acts)
    recon = sae.decode(sae.encode(hook_input)).reshape(64, d_in)
    torch.testing.assert_close(recon, acts @ params["W_dec"] + params["b_dec"])
    assert sae.cfg.metadata.hook_name == tiny_converter.target(repo, folder).hook_name


def test_embedding_sae_reads_the_scaled_embeddings(fake_hf_cache, tiny_converter):
    """On hook_embed (sqrt(d) * raw embedding) the SAE gives the released latents and sqrt(d) * x_hat."""
    repo, folder, d_in = CASES["embedding"]
    arrays = random_params(d_in, TINY_WIDTHS["4k"], seed=3)
    fake_hf_cache(repo, folder, arrays)
    _, state, _ = tiny_converter.load(repo, folder, "cpu")
    params = as_tensors(arrays)
    raw = torch.randn(32, d_in, generator=torch.Generator().manual_seed(0)) * 2
    scaled = raw * math.sqrt(d_in)
    ours_acts = reference_encode(scaled, state)
    torch.testing.assert_close(ours_acts, reference_encode(raw, params))
    recon = ours_acts @ state["W_dec"] + state["b_dec"]
    # float32 products summed in another order, then scaled by sqrt(d_in): rounding of ~1e-5 (the
    # default 1.3e-6 relative tolerance failed on an unlucky draw of the unseeded global generator).
    expected = math.sqrt(d_in) * (ours_acts @ params["W_dec"] + params["b_dec"])
    torch.testing.assert_close(recon, expected, rtol=1e-4, atol=1e-4)


def test_dtype_override_is_applied(fake_hf_cache, tiny_converter):
    repo, folder, d_in = CASES["res"]
    fake_hf_cache(repo, folder, random_params(d_in, TINY_WIDTHS["16k"]))
    cfg, state, _ = tiny_converter.load(repo, folder, "cpu", False, {"dtype": "bfloat16"})
    assert cfg["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in state.values())
