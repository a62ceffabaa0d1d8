"""A tiny randomly initialised Gemma 2 model: the offline test workhorse.

Same architecture as gemma-2-2b/9b/27b (pre- and post-RMSNorm around attention and MLP with the
``1 + w`` gain, attention and final-logit soft-caps, sliding-window attention on alternating
layers, grouped-query attention, GeGLU, embeddings scaled by sqrt(d_model)), at a size that builds
in milliseconds. Built in memory with the byte-level tokenizer; nothing touches the hub.

Weights are scaled up from Gemma's 0.02 init so that the soft-caps and the norm gains visibly shape
the output (a wrong convention in a port would show), and the sliding window is 8 tokens so local
attention differs from global attention at test context lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from saelens_gemmascope.demo.tokenizer import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, PAD_ID, build_byte_tokenizer
from saelens_gemmascope.models.gemma2 import Gemma2Dims, gemma2_spec
from saelens_gemmascope.models.gemma_arch import GemmaDims

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

    from saelens_gemmascope.models.spec import ModelSpec

TINY_GEMMA2_NAME = "tiny-gemma-2"

HFModelT = TypeVar("HFModelT", bound="PreTrainedModel")
TinyT = TypeVar("TinyT", bound="TinyGemma[Any]")

#: d_head 8 makes the attention SAE width (4 x 8 = 32) differ from d_model, so a test that confuses
#: the two widths fails.
TINY_GEMMA2_DIMS = Gemma2Dims(
    d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, d_head=8, d_mlp=256, d_vocab=BYTE_VOCAB_SIZE
)
TINY_SLIDING_WINDOW = 8
TINY_MAX_POSITIONS = 256
ATTN_SOFT_CAP = 50.0
FINAL_LOGIT_SOFT_CAP = 30.0

#: Std of the random linear and embedding weights (Gemma's is 0.02). Large enough that attention
#: scores and logits reach the soft-cap's curved range.
TINY_WEIGHT_STD = 0.3
#: Std of the RMSNorm weights ``w``; HF applies ``1 + w``, so zeros would hide a wrong convention.
TINY_NORM_WEIGHT_STD = 0.5


def gemma_config_fields(dims: GemmaDims, *, max_positions: int, initializer_range: float) -> dict[str, Any]:
    """The config fields Gemma 2 and Gemma 3 models built locally share: the shape, GeGLU, the byte
    tokenizer's special ids, tied embeddings, no attention bias, no KV cache."""
    return {
        "vocab_size": dims.d_vocab,
        "hidden_size": dims.d_model,
        "intermediate_size": dims.d_mlp,
        "num_hidden_layers": dims.n_layers,
        "num_attention_heads": dims.n_heads,
        "num_key_value_heads": dims.n_kv_heads,
        "head_dim": dims.d_head,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": max_positions,
        "initializer_range": initializer_range,
        "rms_norm_eps": 1e-6,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "bos_token_id": BOS_ID,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "use_cache": False,
    }


def small_gemma2_config(
    dims: Gemma2Dims,
    *,
    name: str,
    max_positions: int,
    sliding_window: int,
    initializer_range: float,
) -> Gemma2Config:
    """A Gemma 2 config of any size with every Gemma 2 feature on, for models built locally."""
    from transformers import Gemma2Config

    config = Gemma2Config(
        **gemma_config_fields(dims, max_positions=max_positions, initializer_range=initializer_range),
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        query_pre_attn_scalar=dims.d_head,
        sliding_window=sliding_window,
        # Same pattern as the real models: even layers local, odd layers global.
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(dims.n_layers)],
        attn_logit_softcapping=ATTN_SOFT_CAP,
        final_logit_softcapping=FINAL_LOGIT_SOFT_CAP,
    )
    # Eager is the only HF attention that applies Gemma 2's attention soft-cap.
    config._attn_implementation = "eager"
    config.name_or_path = name
    return config


def tiny_gemma2_hf_config() -> Gemma2Config:
    return small_gemma2_config(
        TINY_GEMMA2_DIMS,
        name=TINY_GEMMA2_NAME,
        max_positions=TINY_MAX_POSITIONS,
        sliding_window=TINY_SLIDING_WINDOW,
        initializer_range=TINY_WEIGHT_STD,
    )


def build_tiny_hf(seed: int = 0, config: Gemma2Config | None = None) -> Gemma2ForCausalLM:
    """A randomly initialised Gemma 2 (tiny by default), deterministic given ``seed``, in eval mode.

    The global torch RNG is left untouched.
    """
    from transformers import Gemma2ForCausalLM

    return random_gemma_hf(Gemma2ForCausalLM, config or tiny_gemma2_hf_config(), seed)


def random_gemma_hf(model_class: type[HFModelT], config: Any, seed: int) -> HFModelT:
    """``model_class(config)`` with random weights and random RMSNorm gains (Gemma 3's QK-norms
    included), deterministic given ``seed``, in eval mode; the global torch RNG is left untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(0.0, TINY_NORM_WEIGHT_STD)
    return model.eval()


def tiny_gemma2_spec() -> ModelSpec:
    # No hub repo: the model only exists in memory (build_tiny_gemma2).
    return gemma2_spec(TINY_GEMMA2_NAME, TINY_GEMMA2_DIMS, hf_repo="")


@dataclass
class TinyGemma(Generic[HFModelT]):
    """A tiny model in both forms, sharing weights by value (not by storage)."""

    hf_model: HFModelT
    tl_model: HookedSAETransformer
    tokenizer: PreTrainedTokenizerFast
    spec: ModelSpec


@dataclass
class TinyGemma2(TinyGemma["Gemma2ForCausalLM"]):
    """The tiny Gemma 2 in both forms, sharing weights by value (not by storage)."""


def with_hooked_transformer(kind: type[TinyT], hf_model: Any, spec: ModelSpec) -> TinyT:
    """``kind`` holding ``hf_model`` and its HookedSAETransformer port, named ``spec.name``."""
    from saelens_gemmascope.models.bridge import hooked_transformer_from_hf

    tokenizer = build_byte_tokenizer()
    tl_model = hooked_transformer_from_hf(hf_model, tokenizer, model_name=spec.name)
    return kind(hf_model=hf_model, tl_model=tl_model, tokenizer=tokenizer, spec=spec)


def build_tiny_gemma2(seed: int = 0) -> TinyGemma2:
    return with_hooked_transformer(TinyGemma2, build_tiny_hf(seed), tiny_gemma2_spec())
