"""A short recipe run on the tiny Gemma 2 through SAELens's runner: fold-in identity, loading in
plain SAELens (fresh process), Gemma Scope export, local release, and the quality it reaches."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from sae_lens import SAE
from training_helpers import explained_variance, tiny_runner_config

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.directory.layout import export_gemmascope_sae
from saelens_gemmascope.directory.local import register_local_release
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig
from saelens_gemmascope.runners import GemmaScopeTrainingRunner

STEPS = 1500
# What this run reaches on held-out text (measured: see the report); bounds leave room for noise.
MAX_L0 = 60.0
MIN_EXPLAINED_VARIANCE = 0.85


class KeepsTrainingSpaceCopy(GemmaScopeTrainingSAE):
    """Test double: remembers the training-space SAE just before SAELens's trainer folds it."""

    training_space: GemmaScopeTrainingSAE | None = None

    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        # object.__setattr__: a plain attribute, not a registered submodule of this SAE.
        object.__setattr__(self, "training_space", copy.deepcopy(self))
        super().fold_activation_norm_scaling_factor(scaling_factor)


@dataclass
class TrainedRun:
    runner: GemmaScopeTrainingRunner
    sae: KeepsTrainingSpaceCopy
    output: Path
    input_scale: float


@pytest.fixture(scope="module")
def trained(
    tiny: TinyGemma2,
    train_dataset: datasets.Dataset,
    make_sae_config: Callable[..., GemmaScopeTrainingSAEConfig],
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainedRun:
    output = tmp_path_factory.mktemp("recipe_run") / "final"
    sae_cfg = make_sae_config(l0_coefficient=1e-3)
    cfg = tiny_runner_config(sae_cfg, STEPS, lr=2e-4, output_path=str(output))
    torch.manual_seed(0)
    sae = KeepsTrainingSpaceCopy(sae_cfg)
    runner = GemmaScopeTrainingRunner(
        cfg, override_dataset=train_dataset, override_model=tiny.tl_model, override_sae=sae
    )
    runner.run()
    assert sae.training_space is not None
    return TrainedRun(
        runner=runner, sae=sae, output=output, input_scale=sae.cfg.metadata.gemmascope_input_scale
    )


def test_the_runner_used_the_recipe_optimiser(trained: TrainedRun) -> None:
    trainer = trained.runner.trainer
    assert trainer is not None and trainer.n_training_steps == STEPS
    (group,) = trainer.optimizer.param_groups
    assert group["betas"] == (0.0, 0.999) and group["eps"] == 1e-8 and group["lr"] == pytest.approx(2e-4)
    assert trainer.get_coefficients()["l0"] == pytest.approx(1e-3)


def test_fold_in_identity(trained: TrainedRun, heldout_activations: torch.Tensor) -> None:
    """Saved raw-space SAE on x == C * training-space SAE on x/C.

    Pre-activations and θ must agree to 1e-5 relative (atol 1e-5·C). A latent whose raw
    pre-activation lies within float32 rounding of its threshold can legitimately flip, so features
    and reconstructions are compared (rtol 1e-5, atol 1e-5·C) on the tokens (over 95%) where no
    latent is that close.
    """
    raw = SAE.load_from_disk(trained.output)
    train = trained.sae.training_space
    assert train is not None
    c, x = trained.input_scale, heldout_activations
    with torch.no_grad():
        pre_raw = x @ raw.W_enc + raw.b_enc
        _, pre_train = train.encode_with_hidden_pre(x / c)
        torch.testing.assert_close(pre_raw, c * pre_train, rtol=1e-5, atol=1e-5 * c)
        torch.testing.assert_close(raw.threshold, c * train.threshold_values, rtol=1e-6, atol=0.0)
        # A gate can only differ where pre sits closer to θ' than the two folds disagree.
        disagreement = (pre_raw - c * pre_train).abs().max() + (
            raw.threshold - c * train.threshold_values
        ).abs().max()
        clear = ((pre_raw - raw.threshold).abs() > 2 * disagreement).all(dim=-1)
        assert clear.float().mean() > 0.95
        features_raw, features_train = raw.encode(x), train.encode(x / c)
        torch.testing.assert_close(features_raw[clear], c * features_train[clear], rtol=1e-5, atol=1e-5 * c)
        recon_raw, recon_train = raw.decode(features_raw), train.decode(features_train)
        torch.testing.assert_close(recon_raw[clear], c * recon_train[clear], rtol=1e-5, atol=1e-5 * c)


def test_quality_reached(trained: TrainedRun, heldout_activations: torch.Tensor) -> None:
    raw = SAE.load_from_disk(trained.output)
    with torch.no_grad():
        features = raw.encode(heldout_activations)
        recon = raw.decode(features)
    l0 = float((features > 0).float().sum(-1).mean())
    ev = explained_variance(heldout_activations, recon)
    print(f"recipe run: {STEPS} steps, held-out L0 {l0:.1f}, explained variance {ev:.3f}")
    assert l0 < MAX_L0 and ev > MIN_EXPLAINED_VARIANCE


def test_saved_sae_loads_as_plain_jumprelu_without_the_plugin(
    trained: TrainedRun, heldout_activations: torch.Tensor, tmp_path: Path
) -> None:
    saved_cfg = json.loads((trained.output / "cfg.json").read_text())
    assert saved_cfg["architecture"] == "jumprelu" and saved_cfg["apply_b_dec_to_input"] is False
    x = heldout_activations[:200]
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from sae_lens import SAE
        from sae_lens.saes.jumprelu_sae import JumpReLUSAE
        sae = SAE.load_from_disk({str(trained.output)!r})
        assert type(sae) is JumpReLUSAE, type(sae)
        assert not any(m.startswith("saelens_gemmascope") for m in sys.modules), "plugin was imported"
        with torch.no_grad():
            torch.save(sae(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
        """
    )
    # -S would also drop site-packages; instead make sure no .pth or env var imports the plugin.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = SAE.load_from_disk(trained.output)(x).detach()
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=0, atol=0)


def reference_gemma_scope_sae(
    params: dict[str, np.ndarray], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gemma Scope tutorial's JumpReLU module, written out directly."""
    w_enc, w_dec, b_enc, b_dec, threshold = (
        torch.from_numpy(params[k]) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    )
    pre = x @ w_enc + b_enc
    acts = (pre > threshold) * torch.nn.functional.relu(pre)
    return acts, acts @ w_dec + b_dec


def _export(trained: TrainedRun, root: Path) -> Any:
    return export_gemmascope_sae(SAE.load_from_disk(trained.output), root)


def test_export_matches_the_reference_module(
    trained: TrainedRun, heldout_activations: torch.Tensor, tmp_path: Path
) -> None:
    exported = _export(trained, tmp_path / "release")
    l0 = round(trained.sae.cfg.metadata.l0)
    assert exported.sae_id == f"layer_1/width_256/average_l0_{l0}"
    assert exported.params_path == tmp_path / "release" / exported.sae_id / "params.npz"
    with np.load(exported.params_path) as npz:
        params = {k: npz[k] for k in npz.files}
    assert {k: v.dtype for k, v in params.items()} == dict.fromkeys(
        ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"), np.float32
    )
    sae = SAE.load_from_disk(trained.output)
    x = heldout_activations
    acts, recon = reference_gemma_scope_sae(params, x)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), acts, rtol=0, atol=0)
        torch.testing.assert_close(sae.decode(sae.encode(x)), recon, rtol=0, atol=0)
    manifest = json.loads((tmp_path / "release" / "release.json").read_text())
    (entry,) = manifest["saes"]
    assert entry["hook_name"] == "blocks.1.hook_resid_post" and entry["site"] == "res" and entry["layer"] == 1
    assert (entry["d_in"], entry["d_sae"], entry["model_name"]) == (64, 256, "tiny-gemma-2")
    assert entry["input_scale"] == pytest.approx(trained.input_scale)


def test_local_release_round_trip(
    trained: TrainedRun, heldout_activations: torch.Tensor, tmp_path: Path
) -> None:
    exported = _export(trained, tmp_path / "my-saes")
    name = register_local_release(tmp_path / "my-saes", release_name="test-local-release")
    assert name == "test-local-release"
    assert register_local_release(tmp_path / "my-saes", release_name=name) == name  # idempotent
    loaded = SAE.from_pretrained(name, exported.sae_id)
    assert (
        loaded.cfg.architecture() == "jumprelu"
        and loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    )
    original = SAE.load_from_disk(trained.output)
    with torch.no_grad():
        torch.testing.assert_close(loaded(heldout_activations), original(heldout_activations), rtol=0, atol=0)
    with pytest.raises(ValueError, match="already registered"):
        register_local_release(tmp_path / "my-saes", release_name="gemma-scope-2b-pt-res")
