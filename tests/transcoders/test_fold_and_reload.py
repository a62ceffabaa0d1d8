"""The fold identity, the saved form (SAELens's own transcoder classes) and a reload without the plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.transcoder import JumpReLUSkipTranscoder, JumpReLUTranscoder

from saelens_gemmascope.recipe.config import gemmascope_transcoder_config
from saelens_gemmascope.recipe.transcoder import (
    GemmaScopeTrainingSkipTranscoder,
    GemmaScopeTrainingTranscoder,
    paired_hook,
)

D_IN, D_OUT, D_SAE = 12, 10, 40
C_IN, C_OUT = 3.0, 0.25


def trained_like(skip: bool, pre_encoder_bias: str = "none") -> GemmaScopeTrainingTranscoder:
    """A float64 transcoder with random weights everywhere (as if trained), scales set."""
    torch.manual_seed(0)
    cfg = gemmascope_transcoder_config(
        D_IN, D_SAE, d_out=D_OUT, skip=skip, dtype="float64", pre_encoder_bias=pre_encoder_bias
    )
    cls = GemmaScopeTrainingSkipTranscoder if skip else GemmaScopeTrainingTranscoder
    tc = cls(cfg)  # type: ignore[arg-type]
    with torch.no_grad():
        for name, param in tc.named_parameters():
            if name in ("threshold",):
                param.copy_(torch.rand_like(param) * 0.3)
            else:
                param.copy_(torch.randn_like(param) * 0.5)
    tc.set_scales(C_IN, C_OUT)
    tc.cfg.metadata.hook_name = paired_hook("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    return tc


@pytest.mark.parametrize(("skip", "bias"), [(False, "none"), (False, "learned"), (True, "learned")])
def test_saved_transcoder_on_raw_input_is_c_out_times_the_trained_one_on_scaled_input(
    skip: bool, bias: str
) -> None:
    tc = trained_like(skip, bias)
    x = torch.randn(64, D_IN, dtype=torch.float64) * C_IN
    with torch.no_grad():
        trained = tc(x / C_IN)
        tc.fold_activation_norm_scaling_factor(1.0 / C_IN)
        saved = tc.inference_transcoder()
        folded = saved(x)
    assert isinstance(saved, JumpReLUSkipTranscoder if skip else JumpReLUTranscoder)
    assert trained.abs().max() > 0.1  # latents fire: the identity is not 0 = 0
    torch.testing.assert_close(folded, C_OUT * trained, rtol=1e-12, atol=1e-12)
    assert saved.cfg.metadata.hook_name == "blocks.1.ln2.hook_normalized"
    assert saved.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"


def test_the_training_step_reads_scaled_input_and_target_from_one_paired_row() -> None:
    tc = trained_like(skip=False)
    x, y = torch.randn(5, D_IN, dtype=torch.float64), torch.randn(5, D_OUT, dtype=torch.float64)
    scaled = torch.cat([x, y], dim=-1) / C_IN  # what the trainer's activation scaler hands over
    x_in, target = tc.split_step_input(scaled)
    torch.testing.assert_close(x_in, x / C_IN)
    torch.testing.assert_close(target, y / C_OUT)
    with pytest.raises(ValueError, match="paired hook"):
        tc.split_step_input(x)


def test_skip_matrix_starts_at_zero_and_encoder_is_not_tied_by_default() -> None:
    tc = GemmaScopeTrainingSkipTranscoder(gemmascope_transcoder_config(D_IN, D_SAE, d_out=D_IN, skip=True))
    assert tc.W_skip.shape == (D_IN, D_IN) and not tc.W_skip.any()
    assert not torch.allclose(tc.W_enc, tc.W_dec.T)
    torch.testing.assert_close(tc.W_dec.norm(dim=-1), torch.ones(D_SAE))
    tied = GemmaScopeTrainingTranscoder(
        gemmascope_transcoder_config(D_IN, D_SAE, encoder_init="decoder_transpose")
    )
    torch.testing.assert_close(tied.W_enc, tied.W_dec.T)


_RELOAD = textwrap.dedent(
    """
    import sys
    import torch
    from sae_lens import SAE
    inputs, outputs, folders = sys.argv[1], sys.argv[2], sys.argv[3:]
    x = torch.load(inputs)
    saes = [SAE.load_from_disk(folder) for folder in folders]
    assert not any(name.startswith("saelens_gemmascope") for name in sys.modules), "plugin imported"
    with torch.no_grad():
        torch.save([{"out": sae(x), "cls": type(sae).__name__} for sae in saes], outputs)
    """
)


def test_saved_folders_reload_in_plain_saelens_with_identical_outputs(tmp_path: Path) -> None:
    """Plain and skip transcoders, in a fresh process that imports SAELens only."""
    x = torch.randn(32, D_IN, dtype=torch.float64) * C_IN
    torch.save(x, tmp_path / "x.pt")
    expected, folders = [], []
    for skip in (False, True):
        tc = trained_like(skip)
        tc.fold_activation_norm_scaling_factor(1.0 / C_IN)
        folder = tmp_path / f"saved_skip_{skip}"
        tc.save_inference_model(folder)
        folders.append(str(folder))
        with torch.no_grad():
            expected.append(tc.inference_transcoder()(x))
        # And in this process through SAELens's loader as well.
        assert torch.equal(SAE.load_from_disk(folder)(x).detach(), expected[-1])
    subprocess.run(
        [sys.executable, "-c", _RELOAD, str(tmp_path / "x.pt"), str(tmp_path / "y.pt"), *folders],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    reloaded = torch.load(tmp_path / "y.pt")
    assert [r["cls"] for r in reloaded] == ["JumpReLUTranscoder", "JumpReLUSkipTranscoder"]
    for got, want in zip(reloaded, expected, strict=True):
        assert torch.equal(got["out"], want)


@pytest.mark.parametrize("skip", [False, True])
def test_exported_transcoders_load_back_from_a_local_release_as_saelens_transcoders(
    skip: bool, tmp_path: Path
) -> None:
    """The Gemma Scope layout holds both kinds (a skip transcoder's W_skip as a sixth array) and the
    local release serves them as SAELens's own classes, with the hook they write."""
    from saelens_gemmascope.directory.layout import export_gemmascope_sae
    from saelens_gemmascope.directory.local import register_local_release

    saved = trained_like(skip).inference_transcoder()
    saved.cfg.metadata.hook_name, saved.cfg.metadata.hook_name_out = (
        "blocks.1.ln2.hook_normalized",
        "blocks.1.hook_mlp_out",
    )
    saved.cfg.metadata.model_name = "tiny-gemma-2"
    exported = export_gemmascope_sae(saved, tmp_path / "export", average_l0=5.0)
    assert exported.entry["architecture"] == ("jumprelu_skip_transcoder" if skip else "jumprelu_transcoder")
    name = register_local_release(tmp_path / "export")
    loaded = SAE.from_pretrained(name, exported.sae_id, device="cpu")
    assert isinstance(loaded, JumpReLUSkipTranscoder if skip else JumpReLUTranscoder)
    assert loaded.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out" and loaded.cfg.d_out == D_OUT
    x = torch.randn(5, D_IN, dtype=torch.float64)
    with torch.no_grad():  # the layout stores float32; the saved transcoder is float64
        torch.testing.assert_close(loaded(x.float()), saved(x).float(), rtol=1e-4, atol=1e-4)
