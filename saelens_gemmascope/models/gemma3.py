"""Gemma 3 model dimensions and the Gemma Scope 2 sites, in TransformerLens, Bridge and HF naming.

Gemma 3's decoder layer has Gemma 2's module names (pre/post RMSNorms around attention and the MLP,
``self_attn.o_proj``, ``model.embed_tokens``), so ``res``, ``mlp``, ``att`` and ``embedding`` are
Gemma 2's sites. ``transcoder`` differs: Gemma Scope 2's transcoders read the pre-MLP RMSNorm's
output *after* its ``(1 + w)`` gain (below), Gemma Scope's read it before.

What Gemma 3 changes inside the layer (checked numerically on the tiny Gemma 3, tests/models/test_gemma3.py):
RMSNorm on queries and keys (QK-norm) instead of attention soft-capping, no final-logit soft-cap,
5 local (sliding-window) layers per global layer, RoPE base 10,000 on local layers and 1,000,000 on
global ones (4b, 12b and 27b also scale global positions linearly by 8).

HF module paths are relative to a ``Gemma3ForCausalLM`` (as in Gemma Scope 2's configs). The 4b, 12b
and 27b checkpoints are published as ``Gemma3ForConditionalGeneration``, whose text layers sit at
``model.language_model.layers.L`` (prefix ``model.language_model.`` instead of ``model.``); the HF
reading and splicing of :mod:`~saelens_gemmascope.models.attach` takes a ``Gemma3ForCausalLM``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from saelens_gemmascope.models.gemma2 import gemma2_sites
from saelens_gemmascope.models.gemma_arch import GemmaDims, gemma_model_spec
from saelens_gemmascope.models.spec import ModelSpec, SiteSpec

#: Every sixth layer is global (layers 5, 11, 17, ...), the others local (transformers' default).
GLOBAL_LAYER_EVERY = 6
LOCAL_ROPE_BASE = 10_000.0
GLOBAL_ROPE_BASE = 1_000_000.0


@dataclass(frozen=True)
class Gemma3Dims(GemmaDims):
    """A Gemma 3 text model's shape, and the attention numbers that vary between sizes (the
    sliding window and the two below).

    ``query_pre_attn_scalar``: queries are scaled by its inverse square root (``d_head`` except
    27b's 168 = d_model / n_heads). ``global_rope_scaling``: the linear RoPE scaling factor of the
    global layers (1 = none).
    """

    sliding_window: int
    query_pre_attn_scalar: int
    global_rope_scaling: float = 1.0

    def is_global(self, layer: int) -> bool:
        return (layer + 1) % GLOBAL_LAYER_EVERY == 0


#: Checked against transformers' configs of the released models and TransformerLens 3.9's
#: ``loading_from_pretrained`` (tests/models/test_gemma3.py). 270m and 1b are text-only
#: (``Gemma3ForCausalLM``, vocabulary 262,144); 4b, 12b and 27b are the language model of
#: ``Gemma3ForConditionalGeneration`` (vocabulary 262,208, image tokens included).
GEMMA3_DIMS: dict[str, Gemma3Dims] = {
    "270m": Gemma3Dims(
        d_model=640,
        n_layers=18,
        n_heads=4,
        n_kv_heads=1,
        d_head=256,
        d_mlp=2048,
        d_vocab=262_144,
        sliding_window=512,
        query_pre_attn_scalar=256,
    ),
    "1b": Gemma3Dims(
        d_model=1152,
        n_layers=26,
        n_heads=4,
        n_kv_heads=1,
        d_head=256,
        d_mlp=6912,
        d_vocab=262_144,
        sliding_window=512,
        query_pre_attn_scalar=256,
    ),
    "4b": Gemma3Dims(
        d_model=2560,
        n_layers=34,
        n_heads=8,
        n_kv_heads=4,
        d_head=256,
        d_mlp=10240,
        d_vocab=262_208,
        sliding_window=1024,
        query_pre_attn_scalar=256,
        global_rope_scaling=8.0,
    ),
    "12b": Gemma3Dims(
        d_model=3840,
        n_layers=48,
        n_heads=16,
        n_kv_heads=8,
        d_head=256,
        d_mlp=15360,
        d_vocab=262_208,
        sliding_window=1024,
        query_pre_attn_scalar=256,
        global_rope_scaling=8.0,
    ),
    "27b": Gemma3Dims(
        d_model=5376,
        n_layers=62,
        n_heads=32,
        n_kv_heads=16,
        d_head=128,
        d_mlp=21504,
        d_vocab=262_208,
        sliding_window=1024,
        query_pre_attn_scalar=168,
        global_rope_scaling=8.0,
    ),
}

#: The four layers (about 25 / 50 / 65 / 85 % deep) of each size's sweeps: the non-``-all``
#: releases' SAEs and transcoders, and the layer set every multi-layer crosscoder reads
#: (``resid_post`` at these four layers, jointly). Same for PT and IT.
GEMMA3_SWEEP_LAYERS: dict[str, tuple[int, ...]] = {
    "270m": (5, 9, 12, 15),
    "1b": (7, 13, 17, 22),
    "4b": (9, 17, 22, 29),
    "12b": (12, 24, 31, 41),
    "27b": (16, 31, 40, 53),
}

#: Sizes with cross-layer transcoders (CLTs): one per model, reading the transcoder site of every
#: layer and writing the ``mlp`` site of that layer and every later one.
GEMMA3_CLT_SIZES: tuple[str, ...] = ("270m", "1b")


def gemma3_model_names(size: str) -> tuple[str, str]:
    """``(pt, it)`` model names of a size, as TransformerLens and SAELens spell them (without the
    ``google/`` prefix): the 270m PT model has no ``-pt`` suffix on the hub."""
    pt = "gemma-3-270m" if size == "270m" else f"gemma-3-{size}-pt"
    return pt, f"gemma-3-{size}-it"


def gemma3_sites(dims: Gemma3Dims) -> dict[str, SiteSpec]:
    """The Gemma Scope 2 sites of a Gemma 3 model, as templates over ``{layer}``.

    ``res``, ``mlp``, ``att`` and ``embedding`` are Gemma 2's (same module names; the HF hook
    points in Gemma Scope 2's ``config.json`` files are ``model.layers.L.output``,
    ``...post_feedforward_layernorm.output`` and ``...self_attn.o_proj.input``).
    """
    sites = gemma2_sites(dims)
    # Same module, width and output site as Gemma 2's transcoder site; only where on it they read differs.
    sites["transcoder"] = dataclasses.replace(
        sites["transcoder"],
        # Gemma Scope 2's transcoder configs read model.layers.L.pre_feedforward_layernorm.output:
        # the normalised MLP input *with* its (1 + w) gain, which is what the MLP itself reads (the
        # Gemma Scope 2 tutorial also reads after the whole pre-MLP norm). TransformerLens has it at
        # the MLP's input hook, which HookedSAETransformer adds (mlp.hook_in), and so does the
        # bridge. Not ln2.hook_normalized (before the gain: Gemma Scope's Gemma 2 transcoders), nor
        # hook_mlp_in (the residual stream before the norm, which SAELens 6.54's gemma_3 loader
        # names).
        tl_hook="blocks.{layer}.mlp.hook_in",
        bridge_hook="blocks.{layer}.mlp.hook_in",
        hf_tensor="output",
        hf_transform="none",
        description="transcoders: read the pre-MLP RMSNorm output (after its gain), write the mlp site",
    )
    return sites


def gemma3_spec(name: str, dims: Gemma3Dims, hf_repo: str, aliases: tuple[str, ...] = ()) -> ModelSpec:
    return gemma_model_spec(name, dims, gemma3_sites(dims), hf_repo=hf_repo, aliases=aliases)


def gemma3_model_specs() -> list[ModelSpec]:
    """gemma-3-{270m,1b,4b,12b,27b}, PT and IT.

    Names are TransformerLens's short names (``gemma-3-1b-pt``, ``gemma-3-270m``); the hub repo id
    (``google/gemma-3-1b-pt``, which is also the ``model`` SAELens's ``gemma-scope-2-*`` releases
    give) is an alias. The 270m PT model also answers to ``gemma-3-270m-pt``, the suffix its
    Gemma Scope 2 repo (``google/gemma-scope-2-270m-pt``) uses.
    """
    specs = []
    for size, dims in GEMMA3_DIMS.items():
        for name in gemma3_model_names(size):
            aliases = (f"google/{name}",)
            if name == "gemma-3-270m":
                aliases += ("gemma-3-270m-pt",)
            specs.append(gemma3_spec(name, dims, hf_repo=f"google/{name}", aliases=aliases))
    return specs
