from __future__ import annotations

import torch

from saelens_gemmascope.demo.tiny_model import (
    ATTN_SOFT_CAP,
    FINAL_LOGIT_SOFT_CAP,
    TINY_GEMMA2_DIMS,
    TINY_SLIDING_WINDOW,
    build_tiny_hf,
    tiny_gemma2_hf_config,
)

#: HF and TransformerLens compute the same function in fp32 with differently ordered operations.
LOGIT_ATOL = 1e-4


def test_config_has_every_gemma2_feature(tokens) -> None:
    config = tiny_gemma2_hf_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 4, 4)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (2, 8, 256)
    assert config.vocab_size == TINY_GEMMA2_DIMS.d_vocab == 260
    assert config.attn_logit_softcapping == ATTN_SOFT_CAP == 50.0
    assert config.final_logit_softcapping == FINAL_LOGIT_SOFT_CAP == 30.0
    assert config.layer_types == ["sliding_attention", "full_attention"] * 2
    assert config.sliding_window == TINY_SLIDING_WINDOW < tokens.shape[1]
    assert config.hidden_activation == "gelu_pytorch_tanh"
    assert config.query_pre_attn_scalar == config.head_dim
    assert config._attn_implementation == "eager"


def test_build_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = build_tiny_hf(seed=0), build_tiny_hf(seed=0), build_tiny_hf(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if name.endswith("weight"):
            assert not torch.equal(pa, pc), name
    assert not a.training


def test_norm_weights_are_not_trivial() -> None:
    model = build_tiny_hf(seed=0)
    norm = model.model.layers[0].post_feedforward_layernorm.weight
    # HF applies (1 + w); all-zero w would hide a port that applied w alone or forgot the 1.
    assert norm.abs().mean() > 0.1


def test_hf_and_transformer_lens_logits_agree(tiny, tokens) -> None:
    with torch.no_grad():
        hf_logits = tiny.hf_model(tokens).logits
        tl_logits = tiny.tl_model(tokens)
    assert tl_logits.shape == (*tokens.shape, TINY_GEMMA2_DIMS.d_vocab)
    torch.testing.assert_close(tl_logits, hf_logits, atol=LOGIT_ATOL, rtol=0)


def test_tl_model_takes_strings_with_bos(tiny) -> None:
    tokens = tiny.tl_model.to_tokens("hello")
    assert tokens[0].tolist() == tiny.tokenizer("hello").input_ids
    assert tokens[0, 0].item() == tiny.tokenizer.bos_token_id


def test_every_gemma2_feature_changes_the_output(tokens) -> None:
    """Turning off the soft-caps or the sliding window changes the logits: parity above means something."""
    with torch.no_grad():
        reference = build_tiny_hf(seed=0)(tokens).logits
        for field, off in [
            ("attn_logit_softcapping", None),
            ("final_logit_softcapping", None),
            ("sliding_window", 4096),
        ]:
            config = tiny_gemma2_hf_config()
            setattr(config, field, off)
            changed = build_tiny_hf(seed=0, config=config)(tokens).logits
            assert (changed - reference).abs().max() > 0.1, field


def test_spec_matches_dims(tiny) -> None:
    assert tiny.spec.name == "tiny-gemma-2"
    assert tiny.spec.hook_point("att", 0).d_in == 32  # n_heads * d_head, not d_model
    assert tiny.spec.n_layers == 4


def test_conversion_follows_the_config_not_the_tiny_defaults(tokens) -> None:
    """27B-style query scaling (query_pre_attn_scalar != d_head), 3 layers, other widths: still parity."""
    from saelens_gemmascope.demo.tokenizer import build_byte_tokenizer
    from saelens_gemmascope.models.bridge import hooked_transformer_from_hf

    config = tiny_gemma2_hf_config()
    config.query_pre_attn_scalar = 40
    config.num_hidden_layers = 3
    config.layer_types = config.layer_types[:3]
    config.hidden_size, config.intermediate_size = 48, 96
    hf_model = build_tiny_hf(seed=3, config=config)
    tl_model = hooked_transformer_from_hf(hf_model, build_byte_tokenizer())
    assert tl_model.cfg.attn_scale == 40**0.5
    assert tl_model.cfg.attn_types == ["local", "global", "local"]
    with torch.no_grad():
        torch.testing.assert_close(tl_model(tokens), hf_model(tokens).logits, atol=LOGIT_ATOL, rtol=0)
