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

from saelens_gemmascope.demo.tiny_model import (
    TINY_WEIGHT_STD,
    TinyGemma,
    gemma_config_fields,
    random_gemma_hf,
    with_hooked_transformer,
)
from saelens_gemmascope.demo.tokenizer import BYTE_VOCAB_SIZE
from saelens_gemmascope.models.gemma3 import GLOBAL_ROPE_BASE, LOCAL_ROPE_BASE, Gemma3Dims, gemma3_spec

if TYPE_CHECKING:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

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


def gemma3_text_config(
    dims: Gemma3Dims, *, name: str, max_positions: int, initializer_range: float = 0.02
) -> Gemma3TextConfig:
    """A ``Gemma3TextConfig`` of any size with every Gemma 3 feature on, for models built locally."""
    from transformers import Gemma3TextConfig

    global_rope: dict[str, object] = {"rope_type": "default", "rope_theta": GLOBAL_ROPE_BASE}
    if dims.global_rope_scaling != 1.0:
        global_rope = {**global_rope, "rope_type": "linear", "factor": dims.global_rope_scaling}
    config = Gemma3TextConfig(
        **gemma_config_fields(dims, max_positions=max_positions, initializer_range=initializer_range),
        rope_parameters={
            "full_attention": global_rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_ROPE_BASE},
        },
        query_pre_attn_scalar=dims.query_pre_attn_scalar,
        sliding_window=dims.sliding_window,
        layer_types=[
            "full_attention" if dims.is_global(layer) else "sliding_attention"
            for layer in range(dims.n_layers)
        ],
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
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
        initializer_range=TINY_WEIGHT_STD,
    )


def build_tiny_gemma3_hf(seed: int = 0, config: Gemma3TextConfig | None = None) -> Gemma3ForCausalLM:
    """A randomly initialised Gemma 3 (tiny by default), deterministic given ``seed``, in eval mode.

    The global torch RNG is left untouched.
    """
    from transformers import Gemma3ForCausalLM

    return random_gemma_hf(Gemma3ForCausalLM, config or tiny_gemma3_hf_config(), seed)


def tiny_gemma3_spec() -> ModelSpec:
    # No hub repo: the model only exists in memory (build_tiny_gemma3).
    return gemma3_spec(TINY_GEMMA3_NAME, TINY_GEMMA3_DIMS, hf_repo="")


@dataclass
class TinyGemma3(TinyGemma["Gemma3ForCausalLM"]):
    """The tiny Gemma 3 in both forms, sharing weights by value (not by storage)."""


def build_tiny_gemma3(seed: int = 0) -> TinyGemma3:
    return with_hooked_transformer(TinyGemma3, build_tiny_gemma3_hf(seed), tiny_gemma3_spec())
