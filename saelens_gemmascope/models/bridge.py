"""Wrap an in-memory Hugging Face ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM`` for TransformerLens,
without the hub.

Two wrappers, for the two TransformerLens APIs SAELens attaches SAEs to:

* :func:`hooked_transformer_from_hf` copies the weights into a ``sae_lens.HookedSAETransformer``
  (TransformerLens's own Gemma 2 / Gemma 3 implementation), unprocessed: no LayerNorm folding and no
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
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        PreTrainedTokenizerBase,
    )

GEMMA2_ARCHITECTURE = "Gemma2ForCausalLM"
GEMMA3_ARCHITECTURE = "Gemma3ForCausalLM"
#: ``model_type`` of a Gemma 3 text config (``Gemma3ForCausalLM``, or a multimodal model's text part).
GEMMA3_TEXT_MODEL_TYPE = "gemma3_text"

#: HF ``layer_types`` entries -> TransformerLens ``attn_types``.
_ATTN_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def _rope_theta(hf_config: Gemma2Config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10_000.0)))


def hooked_config_from_hf(
    hf_config: Gemma2Config | Gemma3TextConfig, model_name: str | None = None
) -> HookedTransformerConfig:
    """The ``HookedTransformerConfig`` TransformerLens would build for this Gemma 2 or Gemma 3 config.

    Mirrors the gemma-2 and gemma-3 entries of ``transformer_lens.loading_from_pretrained`` but
    reads every number from the HF config, so it also serves the tiny models and randomly
    initialised full-size models.
    """
    from transformer_lens import HookedTransformerConfig

    if getattr(hf_config, "model_type", None) == GEMMA3_TEXT_MODEL_TYPE:
        return HookedTransformerConfig(**_gemma3_fields(hf_config, model_name))
    return HookedTransformerConfig(**_gemma2_fields(hf_config, model_name))


def _gemma2_fields(hf_config: Gemma2Config, model_name: str | None) -> dict[str, Any]:
    return {
        **_shared_gemma_fields(hf_config),
        "rotary_base": _rope_theta(hf_config),
        "original_architecture": GEMMA2_ARCHITECTURE,
        "model_name": model_name or getattr(hf_config, "name_or_path", "") or "gemma-2",
    }


def _gemma3_fields(hf_config: Gemma3TextConfig, model_name: str | None) -> dict[str, Any]:
    """Gemma 3 on top of the shared fields: QK-norm, and RoPE per layer type (``rope_parameters``
    keyed by ``full_attention`` / ``sliding_attention``; the global layers may scale positions
    linearly, as 4b, 12b and 27b do)."""
    rope = hf_config.rope_parameters or {}
    global_rope, local_rope = rope["full_attention"], rope["sliding_attention"]
    if local_rope.get("rope_type", "default") != "default":
        raise ValueError(f"unsupported RoPE on Gemma 3's local layers: {local_rope}")
    global_type = global_rope.get("rope_type", "default")
    if global_type not in ("default", "linear"):
        raise ValueError(f"unsupported RoPE on Gemma 3's global layers: {global_rope}")
    return {
        **_shared_gemma_fields(hf_config),
        "use_qk_norm": True,
        "rotary_base": float(global_rope["rope_theta"]),
        "rotary_base_local": float(local_rope["rope_theta"]),
        "rotary_scaling_factor": float(global_rope.get("factor", 1.0)) if global_type == "linear" else 1.0,
        "original_architecture": GEMMA3_ARCHITECTURE,
        "model_name": model_name or getattr(hf_config, "name_or_path", "") or "gemma-3",
    }


def _shared_gemma_fields(hf_config: Gemma2Config | Gemma3TextConfig) -> dict[str, Any]:
    """What Gemma 2 and Gemma 3 configs convert alike."""
    import torch

    if hf_config.hidden_activation is None:
        raise ValueError(f"{type(hf_config).__name__} has no hidden_activation")
    return dict(
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
        rotary_dim=hf_config.head_dim,
        # HF scales queries by query_pre_attn_scalar**-0.5: d_head for most sizes, but 144 for
        # gemma-2-27b and 168 for gemma-3-27b (d_head 128 for both).
        use_attn_scale=True,
        attn_scale=float(hf_config.query_pre_attn_scalar) ** 0.5,
        use_local_attn=True,
        window_size=hf_config.sliding_window,
        attn_types=[_ATTN_TYPES[kind] for kind in hf_config.layer_types],
        attn_scores_soft_cap=hf_config.attn_logit_softcapping or -1.0,
        output_logits_soft_cap=hf_config.final_logit_softcapping or -1.0,
        gated_mlp=True,
        tokenizer_name=None,
        default_prepend_bos=True,
        init_weights=False,
        dtype=torch.float32,
        device="cpu",
    )


def hooked_transformer_from_hf(
    hf_model: Gemma2ForCausalLM | Gemma3ForCausalLM,
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
    hf_model: Gemma2ForCausalLM | Gemma3ForCausalLM,
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
