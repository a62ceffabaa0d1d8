"""attach_sae splices an SAE into a HookedSAETransformer, an SAETransformerBridge and plain HF alike."""

from __future__ import annotations

import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from saelens_gemmascope.demo.tiny_model import tiny_gemma2_spec
from saelens_gemmascope.models.attach import attach_sae

#: Clean logits with an exact-identity SAE spliced in: relu(x) - relu(-x) == x exactly.
IDENTITY_ATOL = 1e-5
#: The same random SAE spliced into three implementations of one fp32 model.
CROSS_ATOL = 1e-4

# The bridge warns that an edited hook_normalized is rebuilt outside HF's own RMSNorm; expected.
pytestmark = pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")

SPEC = tiny_gemma2_spec()
#: (site, layer): every site, layer 1 (global attention) and the local layer 0 for att.
CASES = [
    ("res", 1),
    ("mlp", 1),
    ("att", 0),
    ("att", 1),
    ("transcoder", 1),  # a plain SAE on the transcoders' input
    ("embedding", None),
]
KINDS = ["hooked", "bridge", "hf"]


def make_sae(site: str, layer: int | None, identity: bool, seed: int = 0) -> JumpReLUSAE:
    """A JumpReLU SAE at the site; threshold 0 (plain ReLU) keeps it continuous so tiny numeric
    differences between implementations cannot flip a latent."""
    d_in = SPEC.hook_point(site, layer).d_in
    cfg = JumpReLUSAEConfig(
        d_in=d_in,
        d_sae=2 * d_in,
        apply_b_dec_to_input=False,
        # SAELens's loaders give attention SAEs this; it is how SAELens handles hook_z's head axis.
        reshape_activations="hook_z" if site == "att" else "none",
        metadata=SAEMetadata(hook_name=None),
    )
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        eye = torch.eye(d_in)
        if identity:
            sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
            sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        else:
            generator = torch.Generator().manual_seed(seed)
            sae.W_enc.copy_(torch.randn(d_in, 2 * d_in, generator=generator) / d_in**0.5)
            sae.W_dec.copy_(torch.randn(2 * d_in, d_in, generator=generator) / d_in**0.5)
            sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=generator))
    return sae.eval()


@pytest.fixture(scope="module")
def models(tiny, tiny_bridge):
    return {"hooked": tiny.tl_model, "bridge": tiny_bridge, "hf": tiny.hf_model}


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


@pytest.fixture(scope="module")
def clean(models, tokens):
    return {kind: logits(model, tokens) for kind, model in models.items()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("site", "layer"), CASES)
def test_identity_sae_gives_the_clean_logits(models, clean, tokens, kind, site, layer) -> None:
    with attach_sae(models[kind], make_sae(site, layer, identity=True), site, layer):
        spliced = logits(models[kind], tokens)
    torch.testing.assert_close(spliced, clean[kind], atol=IDENTITY_ATOL, rtol=0)


@pytest.mark.parametrize(("site", "layer"), CASES)
def test_random_sae_changes_logits_identically_everywhere(models, clean, tokens, site, layer) -> None:
    spliced = {}
    for kind, model in models.items():
        with attach_sae(model, make_sae(site, layer, identity=False), site, layer):
            spliced[kind] = logits(model, tokens)
        # Detached again: the model is clean.
        torch.testing.assert_close(logits(model, tokens), clean[kind], atol=0, rtol=0)
    assert (spliced["hf"] - clean["hf"]).abs().max() > 0.1
    torch.testing.assert_close(spliced["hooked"], spliced["hf"], atol=CROSS_ATOL, rtol=0)
    torch.testing.assert_close(spliced["bridge"], spliced["hf"], atol=CROSS_ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_error_term_restores_the_clean_logits(models, clean, tokens, kind) -> None:
    with attach_sae(models[kind], make_sae("mlp", 2, identity=False), "mlp", 2, use_error_term=True):
        spliced = logits(models[kind], tokens)
    torch.testing.assert_close(spliced, clean[kind], atol=IDENTITY_ATOL, rtol=0)


def test_hooked_model_uses_saelens_add_sae(models, tokens) -> None:
    model = models["hooked"]
    sae = make_sae("res", 1, identity=False)
    handle = attach_sae(model, sae, "res", 1)
    try:
        assert model.acts_to_saes == {"blocks.1.hook_resid_post": sae}
        _, cache = model.run_with_cache(tokens)
        assert "blocks.1.hook_resid_post.hook_sae_acts_post" in cache
    finally:
        handle.detach()
    assert model.acts_to_saes == {}
    handle.detach()  # a second detach is harmless


def test_sets_a_missing_hook_name_and_rejects_a_wrong_one(models) -> None:
    sae = make_sae("res", 1, identity=True)
    with attach_sae(models["hf"], sae, "res", 1):
        pass
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_post"):
        attach_sae(models["hooked"], sae, "res", 2)


def test_rejects_a_width_mismatch(models) -> None:
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=32, d_sae=8))
    with pytest.raises(ValueError, match="d_in=32"):
        attach_sae(models["hf"], sae, "res", 0)


def test_att_sae_without_hook_z_mode_splices_everywhere(models, clean, tokens) -> None:
    """An att SAE saved with reshape_activations='none' (a training save, an older export) splices on
    TL too: attach_sae switches SAELens's hook_z mode on while attached, and off again after."""
    d_in = SPEC.hook_point("att", 1).d_in
    eye = torch.eye(d_in)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=2 * d_in, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    for kind in KINDS:
        with attach_sae(models[kind], sae, "att", 1):
            torch.testing.assert_close(logits(models[kind], tokens), clean[kind], atol=IDENTITY_ATOL, rtol=0)
        assert not sae.hook_z_reshaping_mode


def test_unknown_site_and_bad_layer(models) -> None:
    sae = make_sae("res", 1, identity=True)
    with pytest.raises(KeyError, match="Did you mean 'res'"):
        attach_sae(models["hf"], sae, "resid", 1)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        attach_sae(models["hf"], sae, "res", 4)


def test_error_term_keeps_edits_made_through_the_sae_hooks(models, clean, tokens) -> None:
    """As in SAELens, the error term comes from a hook-free pass, so ablating latents still shows."""
    sae = make_sae("res", 2, identity=False)
    sae.hook_sae_acts_post.add_hook(lambda acts, hook: torch.zeros_like(acts))
    spliced = {}
    try:
        for kind, model in models.items():
            with attach_sae(model, sae, "res", 2, use_error_term=True):
                spliced[kind] = logits(model, tokens)
    finally:
        sae.hook_sae_acts_post.remove_hooks()
    assert (spliced["hf"] - clean["hf"]).abs().max() > 0.1
    torch.testing.assert_close(spliced["hooked"], spliced["hf"], atol=CROSS_ATOL, rtol=0)
    torch.testing.assert_close(spliced["bridge"], spliced["hf"], atol=CROSS_ATOL, rtol=0)
