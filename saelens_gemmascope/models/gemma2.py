"""Gemma 2 model dimensions and the Gemma Scope sites, in TransformerLens, Bridge and HF naming.

Source of truth for every model-dependent number in the package (SAE input widths included).
"""

from __future__ import annotations

from dataclasses import dataclass

from saelens_gemmascope.models.gemma_arch import GemmaDims, gemma_model_spec
from saelens_gemmascope.models.spec import ModelSpec, SiteSpec


@dataclass(frozen=True)
class Gemma2Dims(GemmaDims):
    """A Gemma 2 model's shape; every released size has the same vocabulary."""

    d_vocab: int = 256_000


GEMMA2_DIMS: dict[str, Gemma2Dims] = {
    "gemma-2-2b": Gemma2Dims(d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, d_head=256, d_mlp=9216),
    "gemma-2-9b": Gemma2Dims(d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, d_head=256, d_mlp=14336),
    "gemma-2-27b": Gemma2Dims(d_model=4608, n_layers=46, n_heads=32, n_kv_heads=16, d_head=128, d_mlp=36864),
}


def gemma2_sites(dims: GemmaDims) -> dict[str, SiteSpec]:
    """The Gemma Scope sites of a Gemma 2 model (facts §3), as templates over ``{layer}``.

    Every name below was checked against TransformerLens 3.9 (``HookedTransformer`` and
    ``TransformerBridge``) and transformers 5 on the tiny model (tests/models/test_sites.py).
    Bridge names are the bridge's canonical ones; it also accepts the TL names as aliases.
    The site names are the suite's (``configs/gemma_scope_suite.yaml``): one vocabulary for the
    release list, the presets, ``hook_point`` and ``attach_sae``.
    """
    d_att = dims.n_heads * dims.d_head
    sites = [
        SiteSpec(
            name="res",
            tl_hook="blocks.{layer}.hook_resid_post",
            bridge_hook="blocks.{layer}.hook_out",
            # transformers 5 returns the hidden state itself; 4.x returned a tuple (use [0]).
            hf_module="model.layers.{layer}",
            hf_tensor="output",
            d_in=dims.d_model,
            description="residual stream after the block",
        ),
        SiteSpec(
            name="mlp",
            tl_hook="blocks.{layer}.hook_mlp_out",
            bridge_hook="blocks.{layer}.ln2_post.hook_out",
            # Not the output of .mlp: Gemma Scope reads after the post-MLP RMSNorm.
            hf_module="model.layers.{layer}.post_feedforward_layernorm",
            hf_tensor="output",
            d_in=dims.d_model,
            description="MLP output after the post-MLP RMSNorm",
        ),
        SiteSpec(
            name="att",
            # TL hooks and caches see (batch, pos, head, d_head), HF the heads flattened. The
            # bridge's hook converts its flat tensor to (batch, pos, head, d_head) for hook
            # functions and caches; SAELens's add_sae, which replaces the hook, sees it flat.
            tl_hook="blocks.{layer}.attn.hook_z",
            bridge_hook="blocks.{layer}.attn.o.hook_in",
            hf_module="model.layers.{layer}.self_attn.o_proj",
            hf_tensor="input",
            d_in=d_att,
            description="attention heads' outputs before W_O, concatenated",
        ),
        SiteSpec(
            name="transcoder",
            # TL's ln2.hook_normalized is the pre-MLP RMSNorm *before* its (1 + w) gain. It is the
            # hook SAELens's get_gemma_2_transcoder_config_from_hf gives the Gemma Scope transcoders
            # and the one Neuronpedia and circuit-tracer run them on (circuit-tracer's HF mapping
            # reads pre_feedforward_layernorm's _norm output), so it is what they were evaluated
            # on. HF has no module whose output is this tensor: it is the RMS-normalised input of
            # pre_feedforward_layernorm. The post-gain MLP input is TL's mlp.hook_in (added by
            # HookedSAETransformer) and the bridge's blocks.{layer}.mlp.hook_in.
            tl_hook="blocks.{layer}.ln2.hook_normalized",
            bridge_hook="blocks.{layer}.ln2.hook_normalized",
            hf_module="model.layers.{layer}.pre_feedforward_layernorm",
            hf_tensor="input",
            hf_transform="rms_normalize",
            d_in=dims.d_model,
            description="transcoders: read the pre-MLP RMSNorm output before its gain, write the mlp site",
            # A transcoder replaces the MLP: its reconstruction is written over the mlp site's tensor.
            output_site="mlp",
        ),
        SiteSpec(
            name="embedding",
            # All three include the sqrt(d_model) scale: TL folds it into W_E, HF's
            # Gemma2TextScaledWordEmbedding multiplies at run time, the bridge wraps that module.
            tl_hook="hook_embed",
            bridge_hook="embed.hook_out",
            hf_module="model.embed_tokens",
            hf_tensor="output",
            d_in=dims.d_model,
            layered=False,
            description="token embeddings, scaled by sqrt(d_model)",
        ),
    ]
    return {site.name: site for site in sites}


def gemma2_spec(name: str, dims: Gemma2Dims, hf_repo: str, aliases: tuple[str, ...] = ()) -> ModelSpec:
    return gemma_model_spec(name, dims, gemma2_sites(dims), hf_repo=hf_repo, aliases=aliases)


def gemma2_model_specs() -> list[ModelSpec]:
    """gemma-2-{2b,9b,27b} and their -it variants."""
    specs = []
    for base, dims in GEMMA2_DIMS.items():
        for name in (base, f"{base}-it"):
            specs.append(gemma2_spec(name, dims, hf_repo=f"google/{name}", aliases=(f"google/{name}",)))
    return specs
