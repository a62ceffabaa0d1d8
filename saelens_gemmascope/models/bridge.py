"""Wrap an in-memory Hugging Face ``Gemma2ForCausalLM`` for TransformerLens, without the hub.

Two wrappers, for the two TransformerLens APIs SAELens attaches SAEs to:

* :func:`hooked_transformer_from_hf` copies the weights into a ``sae_lens.HookedSAETransformer``
  (TransformerLens's own Gemma 2 implementation), unprocessed: no LayerNorm folding and no
  centering, so every hook sees the tensor Hugging Face computes.
* :func:`transformer_bridge_from_hf` wraps the HF model itself in a ``SAETransformerBridge``
  (TransformerLens 3's ``TransformerBridge`` with SAELens's SAE attachment). The bridge inserts its
  wrappers into the HF module tree, so give it a model you do not also use bare.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge
    from transformer_lens import HookedTransformerConfig
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerBase

GEMMA2_ARCHITECTURE = "Gemma2ForCausalLM"

#: HF ``layer_types`` entries -> TransformerLens ``attn_types``.
_ATTN_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def _rope_theta(hf_config: Gemma2Config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10_000.0)))


def hooked_config_from_hf(hf_config: Gemma2Config, model_name: str | None = None) -> HookedTransformerConfig:
    """The ``HookedTransformerConfig`` TransformerLens would build for this Gemma 2 config.

    Mirrors the gemma-2 entries of ``transformer_lens.loading_from_pretrained`` but reads every
    number from the HF config, so it also serves the tiny model and randomly initialised
    full-size models.
    """
    import torch
    from transformer_lens import HookedTransformerConfig

    if hf_config.hidden_activation is None:
        raise ValueError("Gemma 2 config has no hidden_activation")
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=hf_config.head_dim,
        n_heads=hf_config.num_attention_heads,
        n_key_value_heads=hf_config.num_key_value_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=hf_config.max_position_embeddings,
        d_vocab=hf_config.vocab_size,
        eps=hf_config.rms_norm_eps,
        act_fn=hf_config.hidden_activation,
        initializer_range=hf_config.initializer_range,
        normalization_type="RMS",
        final_rms=True,
        use_normalization_before_and_after=True,
        positional_embedding_type="rotary",
        rotary_base=_rope_theta(hf_config),
        rotary_dim=hf_config.head_dim,
        # HF scales queries by query_pre_attn_scalar**-0.5 (256 for 2b/9b = d_head; 144 for 27b).
        use_attn_scale=True,
        attn_scale=float(hf_config.query_pre_attn_scalar) ** 0.5,
        use_local_attn=True,
        window_size=hf_config.sliding_window,
        attn_types=[_ATTN_TYPES[kind] for kind in hf_config.layer_types],
        attn_scores_soft_cap=hf_config.attn_logit_softcapping or -1.0,
        output_logits_soft_cap=hf_config.final_logit_softcapping or -1.0,
        gated_mlp=True,
        original_architecture=GEMMA2_ARCHITECTURE,
        model_name=model_name or getattr(hf_config, "name_or_path", "") or "gemma-2",
        tokenizer_name=None,
        default_prepend_bos=True,
        init_weights=False,
        dtype=torch.float32,
        device="cpu",
    )


def hooked_transformer_from_hf(
    hf_model: Gemma2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase | None,
    model_name: str | None = None,
) -> HookedSAETransformer:
    """A ``HookedSAETransformer`` holding ``hf_model``'s weights, unprocessed, on ``hf_model``'s device.

    ``tokenizer`` must add BOS on its own (``add_bos_token=True``) and carry
    ``init_kwargs["name_or_path"]``; otherwise TransformerLens re-loads it from the hub.
    """
    from sae_lens import HookedSAETransformer
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights

    cfg = hooked_config_from_hf(hf_model.config, model_name)
    cfg.dtype = next(hf_model.parameters()).dtype
    device = next(hf_model.parameters()).device
    cfg.device = str(device)
    model = HookedSAETransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state_dict = convert_gemma_weights(hf_model, cfg)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return model.to(device, print_details=False).eval()


def transformer_bridge_from_hf(
    hf_model: Gemma2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str | None = None,
    **boot_kwargs: Any,
) -> SAETransformerBridge:
    """A SAELens ``SAETransformerBridge`` around ``hf_model`` (which it modifies in place).

    Passing the model and the tokenizer is what keeps ``boot_transformers`` off the hub.
    """
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge

    name = model_name or getattr(hf_model.config, "name_or_path", "") or "gemma-2"
    device = next(hf_model.parameters()).device
    bridge = SAETransformerBridge.boot_transformers(
        name,
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=device,
        dtype=next(hf_model.parameters()).dtype,
        **boot_kwargs,
    )
    return bridge.eval()
