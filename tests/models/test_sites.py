"""Every site reads the same tensor in TransformerLens, the TransformerBridge and plain HF (tiny model)."""

from __future__ import annotations

import math

import pytest
import torch

from saelens_gemmascope.demo.tiny_model import TINY_GEMMA2_DIMS, tiny_gemma2_spec
from saelens_gemmascope.models.attach import hf_activations
from saelens_gemmascope.models.spec import HookPoint

#: fp32, same weights, differently ordered operations; activations are O(1-10).
ATOL, RTOL = 1e-4, 1e-4

SPEC = tiny_gemma2_spec()
SITES = sorted(SPEC.sites)
ALL_POINTS = [
    SPEC.hook_point(site, layer)
    for site in SITES
    for layer in (range(SPEC.n_layers) if SPEC.sites[site].layered else [None])
]


def _id(hp: HookPoint) -> str:
    return f"{hp.site}-{hp.layer}"


@pytest.fixture(scope="module")
def caches(tiny, tiny_bridge, tokens):
    with torch.no_grad():
        _, tl_cache = tiny.tl_model.run_with_cache(tokens)
        _, bridge_cache = tiny_bridge.run_with_cache(tokens)
    hf = hf_activations(tiny.hf_model, tokens, ALL_POINTS)
    return tl_cache, bridge_cache, hf


def _flat(x: torch.Tensor, hp: HookPoint) -> torch.Tensor:
    return x.flatten(-2) if hp.site == "att" and x.dim() == 4 else x


@pytest.mark.parametrize("hp", ALL_POINTS, ids=_id)
def test_tl_bridge_and_hf_agree(caches, tokens, hp: HookPoint) -> None:
    tl_cache, bridge_cache, hf = caches
    tl = _flat(tl_cache[hp.tl_hook], hp)
    bridge = _flat(bridge_cache[hp.bridge_hook], hp)
    expected_shape = (*tokens.shape, hp.d_in)
    assert tl.shape == bridge.shape == hf[hp].shape == expected_shape
    torch.testing.assert_close(tl, hf[hp], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(bridge, hf[hp], atol=ATOL, rtol=RTOL)


def test_att_heads_are_flattened_head_major(caches) -> None:
    tl_cache, _, hf = caches
    hp = SPEC.hook_point("att", 1)
    z = tl_cache[hp.tl_hook]
    assert z.shape[-2:] == (TINY_GEMMA2_DIMS.n_heads, TINY_GEMMA2_DIMS.d_head)
    # Head 2 is columns 2*d_head .. 3*d_head - 1 of the flattened HF tensor.
    d_head = TINY_GEMMA2_DIMS.d_head
    torch.testing.assert_close(z[..., 2, :], hf[hp][..., 2 * d_head : 3 * d_head], atol=ATOL, rtol=RTOL)


def test_bridge_accepts_the_tl_names_as_aliases(tiny_bridge) -> None:
    for hp in ALL_POINTS:
        if hp.site == "embedding":
            # A list-valued alias, which SAETransformerBridge.add_sae cannot resolve (attach.py).
            assert hp.bridge_hook in tiny_bridge.hook_aliases[hp.tl_hook]
        else:
            assert tiny_bridge._resolve_hook_name(hp.tl_hook) == hp.bridge_hook


# -- what each HF tensor is, checked against the HF model's own computation ------------------------


def _module_io(hf_model, path: str, tokens: torch.Tensor):
    seen = {}

    def grab(module, args, output):
        # self_attn is called with keyword arguments only, so args may be empty.
        seen["in"], seen["out"] = (args[0] if args else None), output

    handle = hf_model.get_submodule(path).register_forward_hook(grab)
    with torch.no_grad():
        result = hf_model(tokens, output_hidden_states=True)
    handle.remove()
    return seen["in"], seen["out"], result


def test_res_is_the_hidden_state_after_the_block(tiny, tokens, caches) -> None:
    hf = caches[2]
    _, _, result = _module_io(tiny.hf_model, "model.layers.1", tokens)
    torch.testing.assert_close(hf[SPEC.hook_point("res", 1)], result.hidden_states[2])


def test_mlp_is_after_the_post_feedforward_norm_not_the_raw_mlp(tiny, tokens, caches) -> None:
    hf = caches[2]
    hp = SPEC.hook_point("mlp", 2)
    _, raw_mlp, _ = _module_io(tiny.hf_model, "model.layers.2.mlp", tokens)
    _, normed, _ = _module_io(tiny.hf_model, "model.layers.2.post_feedforward_layernorm", tokens)
    torch.testing.assert_close(hf[hp], normed)
    assert (hf[hp] - raw_mlp).abs().max() > 0.1


def test_att_through_o_proj_is_the_attention_output(tiny, tokens, caches) -> None:
    hf = caches[2]
    layer = tiny.hf_model.model.layers[3]
    _, attn_out, _ = _module_io(tiny.hf_model, "model.layers.3.self_attn", tokens)
    with torch.no_grad():
        torch.testing.assert_close(layer.self_attn.o_proj(hf[SPEC.hook_point("att", 3)]), attn_out[0])


def test_transcoder_reads_the_pre_mlp_norm_before_its_gain(tiny, tokens, caches) -> None:
    hf = caches[2]
    norm = tiny.hf_model.model.layers[0].pre_feedforward_layernorm
    _, normed, _ = _module_io(tiny.hf_model, "model.layers.0.pre_feedforward_layernorm", tokens)
    gain = 1.0 + norm.weight.detach()
    torch.testing.assert_close(hf[SPEC.hook_point("transcoder", 0)] * gain, normed, atol=ATOL, rtol=RTOL)
    assert (gain - 1.0).abs().max() > 0.1  # so the two conventions differ on this model


def test_transcoder_writes_the_mlp_site() -> None:
    assert SPEC.hook_point("transcoder", 1).output == SPEC.hook_point("mlp", 1)


def test_embedding_includes_the_sqrt_d_model_scale(tiny, tokens, caches) -> None:
    hf = caches[2]
    table = tiny.hf_model.model.embed_tokens.weight.detach()
    expected = table[tokens] * math.sqrt(TINY_GEMMA2_DIMS.d_model)
    torch.testing.assert_close(hf[SPEC.hook_point("embedding")], expected)
