"""A tiny randomly initialised Gemma 3 model: the offline stand-in for gemma-3-270m ... 27b.

Same architecture as the released Gemma 3 text models: pre- and post-RMSNorm around attention and
the MLP with the ``1 + w`` gain, RMSNorm on queries and keys (QK-norm), no soft-capping, 5 local
(sliding-window) layers per global layer, RoPE base 10,000 on local layers and 1,000,000 on global
ones with the linear position scaling of 4b/12b/27b, grouped-query attention, a query scale that is
not ``d_head`` (as in 27b), GeGLU, embeddings scaled by sqrt(d_model). Built in memory with the
byte-level tokenizer; nothing touches the hub.

Seven layers, so the pattern is local x 5, global, local. The sliding window is 8 tokens so local
attention differs from global attention at test context lengths, and the norm weights are random
so the ``1 + w`` gains (and the QK-norm's) visibly shape the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from saelens_gemmascope.demo.tokenizer import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, PAD_ID, build_byte_tokenizer
from saelens_gemmascope.models.gemma3 import GLOBAL_ROPE_BASE, LOCAL_ROPE_BASE, Gemma3Dims, gemma3_spec

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    from saelens_gemmascope.models.spec import ModelSpec

TINY_GEMMA3_NAME = "tiny-gemma-3"

#: Shaped unlike the tiny Gemma 2 (so a spec lookup by dimensions cannot confuse the two), with an
#: attention width (4 x 16 = 64) unlike d_model (48), and a query scale (24) unlike d_head.
TINY_GEMMA3_DIMS = Gemma3Dims(
    d_model=48,
    n_layers=7,
    n_heads=4,
    n_kv_heads=2,
    d_head=16,
    d_mlp=128,
    d_vocab=BYTE_VOCAB_SIZE,
    sliding_window=8,
    query_pre_attn_scalar=24,
    global_rope_scaling=8.0,
)
TINY_GEMMA3_MAX_POSITIONS = 256

#: Std of the random linear and embedding weights (Gemma's is 0.02), as for the tiny Gemma 2.
_WEIGHT_STD = 0.3
#: Std of the RMSNorm weights ``w`` (QK-norms included); HF applies ``1 + w``, so zeros would hide a
#: wrong convention.
_NORM_WEIGHT_STD = 0.5


def gemma3_text_config(
    dims: Gemma3Dims, *, name: str, max_positions: int, initializer_range: float = 0.02
) -> Gemma3TextConfig:
    """A ``Gemma3TextConfig`` of any size with every Gemma 3 feature on, for models built locally."""
    from transformers import Gemma3TextConfig

    global_rope: dict[str, object] = {"rope_type": "default", "rope_theta": GLOBAL_ROPE_BASE}
    if dims.global_rope_scaling != 1.0:
        global_rope = {**global_rope, "rope_type": "linear", "factor": dims.global_rope_scaling}
    config = Gemma3TextConfig(
        vocab_size=dims.d_vocab,
        hidden_size=dims.d_model,
        intermediate_size=dims.d_mlp,
        num_hidden_layers=dims.n_layers,
        num_attention_heads=dims.n_heads,
        num_key_value_heads=dims.n_kv_heads,
        head_dim=dims.d_head,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
        rms_norm_eps=1e-6,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        tie_word_embeddings=True,
        rope_parameters={
            "full_attention": global_rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_ROPE_BASE},
        },
        attention_bias=False,
        query_pre_attn_scalar=dims.query_pre_attn_scalar,
        sliding_window=dims.sliding_window,
        layer_types=[
            "full_attention" if dims.is_global(layer) else "sliding_attention"
            for layer in range(dims.n_layers)
        ],
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        use_cache=False,
    )
    # The attention TransformerLens's bridge also uses; the same kernel on both sides.
    config._attn_implementation = "eager"
    # The bridge picks its adapter by architecture; it has no mapping from model_type gemma3_text.
    config.architectures = ["Gemma3ForCausalLM"]
    config.name_or_path = name
    return config


def tiny_gemma3_hf_config() -> Gemma3TextConfig:
    return gemma3_text_config(
        TINY_GEMMA3_DIMS,
        name=TINY_GEMMA3_NAME,
        max_positions=TINY_GEMMA3_MAX_POSITIONS,
        initializer_range=_WEIGHT_STD,
    )


def build_tiny_gemma3_hf(seed: int = 0, config: Gemma3TextConfig | None = None) -> Gemma3ForCausalLM:
    """A randomly initialised Gemma 3 (tiny by default), deterministic given ``seed``, in eval mode.

    The global torch RNG is left untouched.
    """
    import torch
    from transformers import Gemma3ForCausalLM

    config = config or tiny_gemma3_hf_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(0.0, _NORM_WEIGHT_STD)
    return model.eval()


def tiny_gemma3_spec() -> ModelSpec:
    # No hub repo: the model only exists in memory (build_tiny_gemma3).
    return gemma3_spec(TINY_GEMMA3_NAME, TINY_GEMMA3_DIMS, hf_repo="")


@dataclass
class TinyGemma3:
    """The tiny Gemma 3 in both forms, sharing weights by value (not by storage)."""

    hf_model: Gemma3ForCausalLM
    tl_model: HookedSAETransformer
    tokenizer: PreTrainedTokenizerFast
    spec: ModelSpec


def build_tiny_gemma3(seed: int = 0) -> TinyGemma3:
    from saelens_gemmascope.models.bridge import hooked_transformer_from_hf

    tokenizer = build_byte_tokenizer()
    hf_model = build_tiny_gemma3_hf(seed)
    tl_model = hooked_transformer_from_hf(hf_model, tokenizer, model_name=TINY_GEMMA3_NAME)
    return TinyGemma3(hf_model=hf_model, tl_model=tl_model, tokenizer=tokenizer, spec=tiny_gemma3_spec())
