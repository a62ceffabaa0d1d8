"""Gemma 3: the registered specs (five sizes, PT and IT), and the tiny Gemma 3 read, spliced and
evaluated alike in TransformerLens, the TransformerBridge and plain HF."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from sae_lens import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
)
from sae_lens.saes.sae import SAEMetadata

from saelens_gemmascope.demo.tiny_gemma3 import TINY_GEMMA3_DIMS, TINY_GEMMA3_NAME, tiny_gemma3_spec
from saelens_gemmascope.demo.tokenizer import BOS_ID
from saelens_gemmascope.models import attach_sae, hook_point, model_spec
from saelens_gemmascope.models.attach import hf_activations, model_spec_of
from saelens_gemmascope.models.bridge import hooked_config_from_hf
from saelens_gemmascope.models.gemma3 import (
    GEMMA3_CLT_SIZES,
    GEMMA3_DIMS,
    GEMMA3_SWEEP_LAYERS,
    gemma3_model_names,
)
from saelens_gemmascope.models.spec import HookPoint
from saelens_gemmascope.registry import registered_models

#: fp32, same weights, differently ordered operations.
ATOL, RTOL = 1e-4, 1e-4

# -- the five sizes -------------------------------------------------------------------------------

#: size -> (d_model, n_layers, n_heads, n_kv_heads, d_head, d_mlp, d_vocab), from the models' configs.
EXPECTED_DIMS = {
    "270m": (640, 18, 4, 1, 256, 2048, 262_144),
    "1b": (1152, 26, 4, 1, 256, 6912, 262_144),
    "4b": (2560, 34, 8, 4, 256, 10240, 262_208),
    "12b": (3840, 48, 16, 8, 256, 15360, 262_208),
    "27b": (5376, 62, 32, 16, 128, 21504, 262_208),
}
SHAPE = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab")
ALL_NAMES = [name for size in EXPECTED_DIMS for name in gemma3_model_names(size)]


@pytest.mark.parametrize("size", EXPECTED_DIMS)
def test_both_variants_of_each_size_are_registered_with_its_dims(size: str) -> None:
    models = registered_models()
    for name in gemma3_model_names(size):
        spec = models[name]
        assert tuple(getattr(spec, f) for f in SHAPE) == EXPECTED_DIMS[size]
        assert spec.hf_repo == f"google/{name}"
        assert model_spec(f"google/{name}") is spec
        assert spec.hook_point("att", 0).d_in == spec.n_heads * spec.d_head
        assert {hp.d_in for hp in (spec.hook_point(s, 0) for s in ("res", "mlp", "transcoder"))} == {
            spec.d_model
        }


@pytest.mark.parametrize("name", ALL_NAMES)
def test_dims_and_attention_layout_match_transformer_lens(name: str) -> None:
    """TransformerLens 3.9's own Gemma 3 configs (hard-coded by name: no hub access)."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    size = name.split("-")[2]
    dims, spec = GEMMA3_DIMS[size], model_spec(name)
    tl = convert_hf_model_config(f"google/{name}")
    assert [getattr(spec, f) for f in SHAPE] == [
        tl[k] for k in ("d_model", "n_layers", "n_heads", "n_key_value_heads", "d_head", "d_mlp", "d_vocab")
    ]
    assert dims.sliding_window == tl["window_size"]
    assert dims.global_rope_scaling == tl.get("rotary_scaling_factor", 1.0)
    assert tl["attn_types"] == ["global" if dims.is_global(i) else "local" for i in range(dims.n_layers)]


def test_the_270m_pt_model_has_no_pt_suffix_but_answers_to_it() -> None:
    assert gemma3_model_names("270m") == ("gemma-3-270m", "gemma-3-270m-it")
    assert model_spec("gemma-3-270m-pt") is model_spec("google/gemma-3-270m")


def test_hook_points_of_gemma_3_1b() -> None:
    res = hook_point("gemma-3-1b-pt", "res", 13)
    assert (res.tl_hook, res.bridge_hook, res.hf_module, res.hf_tensor, res.d_in) == (
        "blocks.13.hook_resid_post",
        "blocks.13.hook_out",
        "model.layers.13",
        "output",
        1152,
    )
    att = hook_point("google/gemma-3-1b-it", "att", 13)
    assert (att.tl_hook, att.hf_module, att.hf_tensor, att.d_in) == (
        "blocks.13.attn.hook_z",
        "model.layers.13.self_attn.o_proj",
        "input",
        1024,
    )
    mlp = hook_point("gemma-3-1b-pt", "mlp", 13)
    assert (mlp.tl_hook, mlp.hf_module, mlp.hf_tensor) == (
        "blocks.13.hook_mlp_out",
        "model.layers.13.post_feedforward_layernorm",
        "output",
    )
    tc = hook_point("gemma-3-1b-pt", "transcoder", 13)
    assert (tc.tl_hook, tc.bridge_hook, tc.hf_module, tc.hf_tensor, tc.hf_transform) == (
        "blocks.13.mlp.hook_in",
        "blocks.13.mlp.hook_in",
        "model.layers.13.pre_feedforward_layernorm",
        "output",
        "none",
    )
    assert tc.output == mlp
    with pytest.raises(ValueError, match=r"0\.\.25"):
        hook_point("gemma-3-1b-pt", "res", 26)


def test_gemma_2_keeps_its_own_transcoder_site() -> None:
    assert hook_point("gemma-2-2b", "transcoder", 3).tl_hook == "blocks.3.ln2.hook_normalized"


def test_every_gemma_scope_2_release_names_a_registered_gemma_3() -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    releases = {k: v for k, v in get_pretrained_saes_directory().items() if k.startswith("gemma-scope-2-")}
    assert releases
    for name, release in releases.items():
        spec = model_spec(release.model)
        size = name.split("-")[3]
        assert spec.n_layers == GEMMA3_DIMS[size].n_layers, name


def test_sweep_layers_are_the_25_50_65_85_percent_depths_saelens_lists() -> None:
    import re

    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    for size, layers in GEMMA3_SWEEP_LAYERS.items():
        n_layers = GEMMA3_DIMS[size].n_layers
        # round half up, as the released layers do (1b: 0.25 x 26 = 6.5 -> 7)
        assert layers == tuple(int(f * n_layers + 0.5) for f in (0.25, 0.5, 0.65, 0.85))
        ids = directory[f"gemma-scope-2-{size}-pt-res"].saes_map
        assert {int(re.search(r"layer_(\d+)", sae_id).group(1)) for sae_id in ids} == set(layers)  # type: ignore[union-attr]
    assert set(GEMMA3_CLT_SIZES) <= set(GEMMA3_DIMS)


# -- the tiny Gemma 3: what it is -----------------------------------------------------------------

SPEC = tiny_gemma3_spec()
ALL_POINTS = [
    SPEC.hook_point(site, layer)
    for site in sorted(SPEC.sites)
    for layer in (range(SPEC.n_layers) if SPEC.sites[site].layered else [None])
]


def _id(hp: HookPoint) -> str:
    return f"{hp.site}-{hp.layer}"


def test_tiny_gemma3_has_every_gemma3_feature(tiny3) -> None:
    config = tiny3.hf_model.config
    assert config.model_type == "gemma3_text"
    assert config.attn_logit_softcapping is None and config.final_logit_softcapping is None
    assert config.layer_types.count("full_attention") == 1 and config.layer_types[5] == "full_attention"
    rope = config.rope_parameters
    assert rope["sliding_attention"]["rope_theta"] == 10_000.0
    assert rope["full_attention"]["rope_theta"] == 1_000_000.0
    assert rope["full_attention"]["rope_type"] == "linear" and rope["full_attention"]["factor"] == 8.0
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.query_pre_attn_scalar != config.head_dim
    assert config.sliding_window < 24  # shorter than the test sequences
    assert registered_models()[TINY_GEMMA3_NAME].d_model == TINY_GEMMA3_DIMS.d_model


def _tl_logits(
    tiny3, tokens: torch.Tensor, params: dict[str, torch.Tensor] | None = None, **cfg_changes: Any
) -> torch.Tensor:
    """Logits of a fresh HookedTransformer with the tiny's weights, ``params`` replacing some of
    them, and ``cfg_changes`` applied to its config."""
    from sae_lens import HookedSAETransformer

    cfg = hooked_config_from_hf(tiny3.hf_model.config, TINY_GEMMA3_NAME)
    cfg = dataclasses.replace(cfg, **cfg_changes) if cfg_changes else cfg
    model = HookedSAETransformer(cfg, tokenizer=tiny3.tokenizer, move_to_device=False)
    # Parameters only: the buffers (RoPE tables, attention masks) are what cfg_changes rebuild.
    weights = {**dict(tiny3.tl_model.named_parameters()), **(params or {})}
    missing, _ = model.load_state_dict(weights, strict=False)
    assert not set(missing) & set(weights)
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize(
    "change",
    [
        {"rotary_base_local": None},  # local layers on the global base
        {"rotary_scaling_factor": 1.0},  # no linear scaling on the global layer
        {"attn_types": ["global"] * TINY_GEMMA3_DIMS.n_layers},  # no sliding window
        {"attn_scale": TINY_GEMMA3_DIMS.d_head**0.5},  # query scale d_head, not query_pre_attn_scalar
    ],
    ids=["local-rope-base", "global-rope-scaling", "sliding-window", "query-scale"],
)
def test_each_feature_shapes_the_logits(tiny3, tokens, change: dict[str, Any]) -> None:
    """So the agreement below would catch a port that got any of them wrong."""
    same = _tl_logits(tiny3, tokens)
    with torch.no_grad():
        torch.testing.assert_close(same, tiny3.hf_model(tokens).logits, atol=ATOL, rtol=RTOL)
    assert (_tl_logits(tiny3, tokens, **change) - same).abs().max() > 1e-2


def test_qk_norm_gains_shape_the_logits(tiny3, tokens) -> None:
    layer = tiny3.hf_model.model.layers[0].self_attn
    assert layer.q_norm.weight.abs().max() > 0.1 and layer.k_norm.weight.abs().max() > 0.1
    unit_gains = {
        f"blocks.{i}.attn.{norm}.w": torch.ones(TINY_GEMMA3_DIMS.d_head)
        for i in range(TINY_GEMMA3_DIMS.n_layers)
        for norm in ("q_norm", "k_norm")
    }
    assert (_tl_logits(tiny3, tokens, unit_gains) - _tl_logits(tiny3, tokens)).abs().max() > 1e-2


# -- every site, every layer, three implementations ----------------------------------------------


@pytest.fixture(scope="module")
def caches(tiny3, tiny3_bridge, tokens):
    with torch.no_grad():
        tl_logits, tl_cache = tiny3.tl_model.run_with_cache(tokens)
        bridge_logits, bridge_cache = tiny3_bridge.run_with_cache(tokens)
        hf_logits = tiny3.hf_model(tokens).logits
    hf = hf_activations(tiny3.hf_model, tokens, ALL_POINTS)
    return tl_cache, bridge_cache, hf, (tl_logits, bridge_logits, hf_logits)


def _flat(x: torch.Tensor, hp: HookPoint) -> torch.Tensor:
    return x.flatten(-2) if hp.site == "att" and x.dim() == 4 else x


@pytest.mark.parametrize("hp", ALL_POINTS, ids=_id)
def test_tl_bridge_and_hf_agree(caches, tokens, hp: HookPoint) -> None:
    tl_cache, bridge_cache, hf, _ = caches
    tl = _flat(tl_cache[hp.tl_hook], hp)
    bridge = _flat(bridge_cache[hp.bridge_hook], hp)
    assert tl.shape == bridge.shape == hf[hp].shape == (*tokens.shape, hp.d_in)
    torch.testing.assert_close(tl, hf[hp], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(bridge, hf[hp], atol=ATOL, rtol=RTOL)


def test_logits_agree(caches) -> None:
    tl, bridge, hf = caches[3]
    assert hf.abs().max() > 1.0
    torch.testing.assert_close(tl, hf, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(bridge, hf, atol=ATOL, rtol=RTOL)


def _mlp_io(hf_model, layer: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen = {}
    mlp = hf_model.model.layers[layer].mlp
    handle = mlp.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    with torch.no_grad():
        hf_model(tokens)
    handle.remove()
    return seen["x"], seen["y"]


def test_transcoder_reads_what_the_mlp_reads_after_the_norm_gain(tiny3, tokens, caches) -> None:
    tl_cache, _, hf, _ = caches
    hp = SPEC.hook_point("transcoder", 3)
    mlp_in, mlp_out = _mlp_io(tiny3.hf_model, 3, tokens)
    torch.testing.assert_close(hf[hp], mlp_in)
    # Gemma Scope's Gemma 2 convention (before the gain) would read a visibly different tensor.
    assert (tl_cache["blocks.3.ln2.hook_normalized"] - mlp_in).abs().max() > 0.1
    # ... and the mlp site is after the post-MLP norm, not the raw MLP output.
    assert (hf[SPEC.hook_point("mlp", 3)] - mlp_out).abs().max() > 0.1


# -- attach_sae -----------------------------------------------------------------------------------

CASES = [("res", 5), ("mlp", 2), ("att", 0), ("att", 5), ("transcoder", 4)]


def _sae(site: str, layer: int, identity: bool) -> JumpReLUSAE:
    d_in = SPEC.hook_point(site, layer).d_in
    sae = JumpReLUSAE(
        JumpReLUSAEConfig(
            d_in=d_in,
            d_sae=2 * d_in,
            apply_b_dec_to_input=False,
            reshape_activations="hook_z" if site == "att" else "none",
            metadata=SAEMetadata(hook_name=None),
        )
    )
    generator = torch.Generator().manual_seed(layer)
    with torch.no_grad():
        eye = torch.eye(d_in)
        w_enc = torch.cat([eye, -eye], 1) if identity else torch.randn(d_in, 2 * d_in, generator=generator)
        sae.W_enc.copy_(w_enc if identity else w_enc / d_in**0.5)
        sae.W_dec.copy_(w_enc.T if identity else torch.randn(2 * d_in, d_in, generator=generator) / d_in**0.5)
    return sae.eval()


def _transcoder(layer: int, skip: bool = True, seed: int = 0) -> JumpReLUTranscoder:
    d = SPEC.hook_point("transcoder", layer).d_in
    cls, cfg_cls = (
        (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig)
        if skip
        else (JumpReLUTranscoder, JumpReLUTranscoderConfig)
    )
    tc = cls(cfg_cls(d_in=d, d_sae=2 * d, d_out=d, apply_b_dec_to_input=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(d, 2 * d, generator=generator) / d**0.5)
        tc.W_dec.copy_(torch.randn(2 * d, d, generator=generator) / (2 * d) ** 0.5)
        tc.b_dec.copy_(0.1 * torch.randn(d, generator=generator))
        if skip:
            tc.W_skip.copy_(torch.randn(d, d, generator=generator) / d**0.5)
    return tc.eval()


@pytest.fixture(scope="module")
def models(tiny3, tiny3_bridge):
    return {"hooked": tiny3.tl_model, "bridge": tiny3_bridge, "hf": tiny3.hf_model}


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


def test_models_resolve_to_the_tiny_gemma3_spec(models) -> None:
    for model in models.values():
        assert model_spec_of(model).name == TINY_GEMMA3_NAME


@pytest.mark.parametrize(("site", "layer"), CASES)
def test_identity_sae_keeps_and_random_sae_changes_logits_alike(models, tokens, site, layer) -> None:
    clean = {kind: _logits(model, tokens) for kind, model in models.items()}
    spliced = {}
    for kind, model in models.items():
        with attach_sae(model, _sae(site, layer, identity=True), site, layer):
            torch.testing.assert_close(_logits(model, tokens), clean[kind], atol=1e-5, rtol=0)
        with attach_sae(model, _sae(site, layer, identity=False), site, layer):
            spliced[kind] = _logits(model, tokens)
        torch.testing.assert_close(_logits(model, tokens), clean[kind], atol=0, rtol=0)
    assert (spliced["hf"] - clean["hf"]).abs().max() > 0.1
    torch.testing.assert_close(spliced["hooked"], spliced["hf"], atol=ATOL, rtol=0)
    torch.testing.assert_close(spliced["bridge"], spliced["hf"], atol=ATOL, rtol=0)


def test_skip_transcoder_replaces_the_mlp_output_from_the_mlp_input(models, tiny3, tokens) -> None:
    """Expected logits built with plain HF hooks: the post-MLP norm's output replaced by the
    transcoder applied to the MLP's own input."""
    layer = 4
    tc = _transcoder(layer)
    hf_layer = tiny3.hf_model.model.layers[layer]
    seen = {}
    handles = [
        hf_layer.mlp.register_forward_pre_hook(lambda m, args: seen.update(x=args[0])),
        hf_layer.post_feedforward_layernorm.register_forward_hook(lambda m, args, out: tc(seen["x"])),
    ]
    try:
        expected = _logits(tiny3.hf_model, tokens)
    finally:
        for handle in handles:
            handle.remove()
    assert (expected - _logits(tiny3.hf_model, tokens)).abs().max() > 0.1
    for kind, model in models.items():
        with attach_sae(model, tc, "transcoder", layer):
            torch.testing.assert_close(_logits(model, tokens), expected, atol=ATOL, rtol=0, msg=kind)
    assert tc.cfg.metadata.hook_name == f"blocks.{layer}.mlp.hook_in"
    assert tc.cfg.metadata.hook_name_out == f"blocks.{layer}.hook_mlp_out"


# -- evaluation -----------------------------------------------------------------------------------


def _manual_delta_loss(tl_model, tokens: torch.Tensor, sae: Any) -> tuple[float, float]:
    """(delta loss, FVU) of ``sae`` spliced by hand with TransformerLens hooks, BOS excluded."""
    read, write = sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out or sae.cfg.metadata.hook_name
    keep = tokens != BOS_ID
    with torch.no_grad():
        clean, cache = tl_model.run_with_cache(tokens, names_filter=[read, write])
        x, target = cache[read], cache[write]
        flat = x.ndim == 4 and not getattr(sae, "hook_z_reshaping_mode", False)
        recon = sae(x.flatten(-2) if flat else x).reshape(target.shape)

        def splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return torch.where(keep.reshape(*keep.shape, *([1] * (act.ndim - 2))), recon, act)

        spliced = tl_model.run_with_hooks(tokens, fwd_hooks=[(write, splice)])
    ce = [F.cross_entropy(lg[:, :-1].transpose(1, 2), tokens[:, 1:]) for lg in (clean, spliced)]
    t, err = target.flatten(2)[keep].double(), (target - recon).flatten(2)[keep].double()
    fvu = err.pow(2).sum(-1).mean() / (t - t.mean(0)).pow(2).sum(-1).mean()
    return float(ce[1] - ce[0]), float(fvu)


def test_evaluation_runs_on_tiny_gemma3(tiny3, tokens) -> None:
    from saelens_gemmascope.evaluation import evaluate_saes

    # The evaluation splices plain SAEs where they read, so none at the transcoders' input site.
    plain = [(site, layer) for site, layer in CASES if site != "transcoder"]
    saes: list[Any] = []
    for site, layer in plain:
        sae = _sae(site, layer, identity=False)
        sae.cfg.metadata.hook_name = SPEC.hook_point(site, layer).tl_hook
        saes.append(sae)
    saes.append(_evaluated_transcoder(skip=False))
    result = evaluate_saes(saes, model=tiny3.tl_model, dataset=tokens, batch_size=2)
    assert [got.site for got in result.saes] == [site for site, _ in plain] + ["transcoder"]
    for sae, got in zip(saes, result.saes, strict=True):
        _assert_metrics_match(got.metrics, tiny3.tl_model, tokens, sae)


def _evaluated_transcoder(skip: bool) -> JumpReLUTranscoder:
    tc = _transcoder(4, skip=skip)
    tc.cfg.metadata.hook_name, tc.cfg.metadata.hook_name_out = "blocks.4.mlp.hook_in", "blocks.4.hook_mlp_out"
    return tc


def _assert_metrics_match(metrics: dict[str, Any], tl_model: Any, tokens: torch.Tensor, sae: Any) -> None:
    delta_loss, fvu = _manual_delta_loss(tl_model, tokens, sae)
    assert metrics["delta_loss"] == pytest.approx(delta_loss, rel=1e-3, abs=1e-4)
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert abs(metrics["delta_loss"]) > 1e-3


def test_evaluation_of_a_skip_transcoder_includes_its_skip(tiny3, tokens) -> None:
    from saelens_gemmascope.evaluation import evaluate_saes

    tc = _evaluated_transcoder(skip=True)
    result = evaluate_saes([tc], model=tiny3.tl_model, dataset=tokens, batch_size=3)
    _assert_metrics_match(result.saes[0].metrics, tiny3.tl_model, tokens, tc)
