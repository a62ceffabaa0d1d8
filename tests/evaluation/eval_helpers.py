"""Independent helpers for the evaluation tests: the masking rules written out again, site
activations, and JumpReLU SAEs (and a transcoder) fitted in closed form to the tiny model."""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.transcoder import JumpReLUTranscoder, JumpReLUTranscoderConfig

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID

CONTEXT = 32
N_SEQUENCES = 6


def counted(tokens: torch.Tensor) -> torch.Tensor:
    """The activation rule, written out independently of the package."""
    return (tokens != BOS_ID) & (tokens != EOS_ID) & (tokens != PAD_ID)


def counted_predictions(tokens: torch.Tensor) -> torch.Tensor:
    """The loss rule, written out independently of the package."""
    current, target = tokens[:, :-1], tokens[:, 1:]
    return (current != PAD_ID) & (target != PAD_ID) & (target != BOS_ID)


def site_activations(tiny: TinyGemma2, tokens: torch.Tensor, hook: str) -> torch.Tensor:
    _, cache = tiny.tl_model.run_with_cache(tokens, names_filter=[hook])
    act = cache[hook]
    return act.flatten(-2) if act.ndim == 4 else act


def _pca_basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, v  # rows of v: principal directions


def pca_sae(acts: torch.Tensor, hook: str, threshold: float, **cfg: Any) -> JumpReLUSAE:
    """A JumpReLU SAE whose latents are the ± principal directions of ``acts``: it keeps the PCA
    coefficients above ``threshold``, so a higher threshold gives a lower L0 and a worse fit."""
    x = acts.reshape(-1, acts.shape[-1]).double()
    mean, v = _pca_basis(x)
    d_in = x.shape[1]
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=2 * d_in, apply_b_dec_to_input=False, **cfg))
    directions = torch.cat([v, -v]).float()  # (2 d_in, d_in)
    with torch.no_grad():
        sae.W_enc.copy_(directions.T)
        sae.W_dec.copy_(directions)
        sae.b_dec.copy_(mean.float())
        sae.b_enc.copy_(-(mean.float() @ directions.T))
        sae.threshold.fill_(threshold)
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "tiny-gemma-2"
    return sae.eval()


def random_sae(hook: str, d_in: int, d_sae: int = 96, seed: int = 0, **cfg: Any) -> JumpReLUSAE:
    generator = torch.Generator().manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, **cfg))
    with torch.no_grad():
        w = torch.randn(d_in, d_sae, generator=generator) / d_in**0.5
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w.T)
        sae.threshold.fill_(0.3)
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "tiny-gemma-2"
    return sae.eval()


def least_squares_transcoder(
    inputs: torch.Tensor, outputs: torch.Tensor, layer: int, threshold: float
) -> JumpReLUTranscoder:
    """A JumpReLU transcoder: ± principal directions of the MLP input, decoded by least squares."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    y = outputs.reshape(-1, outputs.shape[-1]).double()
    mean, v = _pca_basis(x)
    directions = torch.cat([v, -v])
    codes = torch.relu((x - mean) @ directions.T)
    design = torch.cat([codes, torch.ones(len(codes), 1, dtype=codes.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    d_in = x.shape[1]
    cfg = JumpReLUTranscoderConfig(d_in=d_in, d_sae=2 * d_in, d_out=y.shape[1], apply_b_dec_to_input=False)
    tc = JumpReLUTranscoder(cfg)
    with torch.no_grad():
        tc.W_enc.copy_(directions.T.float())
        tc.b_enc.copy_(-(mean @ directions.T).float())
        tc.W_dec.copy_(solution[:-1].float())
        tc.b_dec.copy_(solution[-1].float())
        tc.threshold.fill_(threshold)
    tc.cfg.metadata.hook_name = f"blocks.{layer}.ln2.hook_normalized"
    tc.cfg.metadata.hook_name_out = f"blocks.{layer}.hook_mlp_out"
    tc.cfg.metadata.model_name = "tiny-gemma-2"
    return tc.eval()
