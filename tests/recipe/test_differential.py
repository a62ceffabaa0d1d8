"""The recipe SAE against SAELens's own ``JumpReLUTrainingSAE``, and θ's precision under bf16.

One dense training step of ``jumprelu_gemmascope`` and of SAELens's JumpReLU configured to the same
loss (``jumprelu_sparsity_loss_mode="step"``, no pre-activation loss, ``jumprelu_ste_to_input=False``,
the same ε and λ, no λ warm-up) from the same weights on the same batch must give the same losses and
the same gradient for every parameter. The recipe-only extras do not enter a single step: the input
scale C is applied by the trainer (``input_scaling="none"`` here), the λ warm-up is a coefficient
schedule (the step receives λ itself), the unit-norm decoder and the projection of θ act around the
optimiser step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput

from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig

D_IN, D_SAE, BATCH = 16, 64, 48
L0_COEFFICIENT = 0.3
# Offsets of θ from a chosen pre-activation, in units of ε: that entry sits inside the rectangle
# kernel's window, firing (negative offset) or not (positive), so both estimators give θ a gradient.
WINDOW_OFFSETS = (-0.25, 0.25)
PARAMETERS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


@dataclass(frozen=True)
class Weights:
    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor


def make_weights_and_batch(bandwidth: float, dtype: torch.dtype) -> tuple[Weights, torch.Tensor]:
    """Random weights, and thresholds that put entries of the batch inside each latent's window."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).mul(scale).to(dtype)

    W_enc, W_dec = randn(D_IN, D_SAE, scale=0.3), randn(D_SAE, D_IN, scale=0.3)
    b_enc, b_dec = randn(D_SAE, scale=0.1).add(0.5), randn(D_IN, scale=0.1)
    x = randn(BATCH, D_IN, scale=1.0)
    pre = (x - b_dec) @ W_enc + b_enc
    # θ per latent: its 75th-percentile pre-activation, moved by a fraction of ε (alternately below
    # and above it). SAELens projects θ to θ ≥ 0 before its step, so θ must be positive already.
    anchor = pre.sort(dim=0).values[3 * BATCH // 4]
    offsets = torch.tensor(WINDOW_OFFSETS, dtype=dtype).repeat(D_SAE // len(WINDOW_OFFSETS))
    # Rounded to float32: SAELens stores θ in float32 even in a float64 SAE.
    threshold = (anchor + offsets * bandwidth).float()
    assert bool((threshold > 0).all())
    return Weights(W_enc, W_dec, b_enc, b_dec, threshold), x


def recipe_sae(weights: Weights, bandwidth: float, dtype: torch.dtype) -> GemmaScopeTrainingSAE:
    cfg = GemmaScopeTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, dtype=str(dtype).removeprefix("torch."), jumprelu_bandwidth=bandwidth,
        l0_coefficient=L0_COEFFICIENT, l0_warm_up_steps=0, input_scaling="none", fast_path="dense",
        threshold_parametrisation="direct", apply_b_dec_to_input=True,
    )  # fmt: skip
    sae = GemmaScopeTrainingSAE(cfg)
    sae.recipe_trainer_attached = True  # the step is called directly, not by a trainer
    return load_weights(sae, weights)


def saelens_sae(weights: Weights, dtype: torch.dtype, **overrides: Any) -> JumpReLUTrainingSAE:
    """SAELens's JumpReLU set to the recipe's loss (``overrides`` perturb it)."""
    settings: dict[str, Any] = {
        "jumprelu_bandwidth": 1e-3, "jumprelu_sparsity_loss_mode": "step", "l0_coefficient": L0_COEFFICIENT,
        "l0_warm_up_steps": 0, "pre_act_loss_coefficient": None, "jumprelu_ste_to_input": False,
        **overrides,
    }  # fmt: skip
    cfg = JumpReLUTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, dtype=str(dtype).removeprefix("torch."), apply_b_dec_to_input=True,
        normalize_activations="none", **settings,
    )  # fmt: skip
    return load_weights(JumpReLUTrainingSAE(cfg), weights)


def load_weights(sae: Any, weights: Weights) -> Any:
    with torch.no_grad():
        for name in PARAMETERS:
            getattr(sae, name).copy_(getattr(weights, name))
    return sae


def step_input(x: torch.Tensor) -> TrainStepInput:
    """A step past the first (whose λ would be 0 under a warm-up), with λ = L0_COEFFICIENT."""
    return TrainStepInput(
        sae_in=x, coefficients={"l0": L0_COEFFICIENT}, dead_neuron_mask=None, n_training_steps=1,
        is_logging_step=False,
    )  # fmt: skip


def one_step(sae: TrainingSAE[Any], x: torch.Tensor) -> TrainStepOutput:
    sae.zero_grad(set_to_none=True)
    output = sae.training_forward_pass(step_input(x))
    output.loss.backward()
    return output


def gradient(sae: TrainingSAE[Any], name: str) -> torch.Tensor:
    grad = getattr(sae, name).grad
    assert grad is not None, f"{name} got no gradient"
    return grad


def assert_close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    # θ's gradient is float32 in SAELens whatever the SAE's dtype; compare in the wider dtype.
    wider = torch.promote_types(got.dtype, expected.dtype)
    torch.testing.assert_close(
        got.to(wider), expected.to(wider), rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bandwidth", [1e-3, 0.05])  # the recipe's ε, SAELens's default
def test_dense_step_matches_saelens_jumprelu(bandwidth: float, dtype: torch.dtype) -> None:
    weights, x = make_weights_and_batch(bandwidth, dtype)
    recipe = recipe_sae(weights, bandwidth, dtype)
    reference = saelens_sae(weights, dtype, jumprelu_bandwidth=bandwidth)

    got, expected = one_step(recipe, x), one_step(reference, x)

    # The case exercises what it should: entries firing, entries in the window with and without firing.
    pre, theta = expected.hidden_pre.detach(), weights.threshold.to(dtype)
    in_window = ((pre - theta) / bandwidth).abs() < 0.5
    assert (pre > theta).any() and (in_window & (pre > theta)).any() and (in_window & (pre <= theta)).any()
    assert recipe.last_step_path == "dense"
    assert set(expected.losses) == {"mse_loss", "l0_loss"}
    for name in ("mse_loss", "l0_loss"):
        assert_close(got.losses[name], expected.losses[name], name)
    assert_close(got.loss, expected.loss, "total loss")
    assert_close(got.feature_acts, expected.feature_acts, "feature_acts")
    for name in PARAMETERS:
        assert_close(gradient(recipe, name), gradient(reference, name), f"∂L/∂{name}")
    assert gradient(recipe, "threshold").abs().min() > 0  # every latent has an entry in its window


@pytest.mark.parametrize(
    ("perturbation", "differs"),
    [
        ({"jumprelu_bandwidth": 2e-3}, "threshold"),  # twice the recipe's ε
        ({"jumprelu_ste_to_input": True}, "b_enc"),  # Anthropic's estimator: the kernel term reaches pre
        ({"jumprelu_sparsity_loss_mode": "tanh"}, "threshold"),  # Anthropic's tanh penalty, not L0
    ],
)
def test_the_comparison_sees_a_changed_setting(perturbation: dict[str, Any], differs: str) -> None:
    """The differential test can fail: one changed SAELens setting changes a gradient it checks."""
    bandwidth = 1e-3
    weights, x = make_weights_and_batch(bandwidth, torch.float32)
    recipe = recipe_sae(weights, bandwidth, torch.float32)
    one_step(recipe, x)
    perturbed = saelens_sae(weights, torch.float32, **perturbation)
    one_step(perturbed, x)
    with pytest.raises(AssertionError):
        assert_close(gradient(recipe, differs), gradient(perturbed, differs), f"∂L/∂{differs}")


# -- θ under bf16 ---------------------------------------------------------------------------------

# A pre-activation that is exactly representable in bf16, and a float32 θ just below it that bf16
# rounds up to it: in float32 the latent fires (pre > θ); with θ cast to bf16 it would not (pre == θ).
# (Both as Python floats holding the exact bf16 and float32 values.)
PRE_BF16 = torch.tensor(0.1, dtype=torch.bfloat16).item()  # 0.10009765625
THETA_F32 = torch.tensor(0.1, dtype=torch.float32).item()
# An Adam step on θ at the recipe's η moves it by about η.
ETA = 7e-5


def gate_case(dtype: str) -> tuple[GemmaScopeTrainingSAE, torch.Tensor]:
    """An SAE whose pre-activations are all PRE_BF16 (x = 0, b_dec = 0, b_enc = PRE_BF16), θ = THETA_F32."""
    cfg = GemmaScopeTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, dtype=dtype, jumprelu_bandwidth=1e-3, l0_coefficient=L0_COEFFICIENT,
        input_scaling="none", fast_path="dense",
    )  # fmt: skip
    sae = GemmaScopeTrainingSAE(cfg)
    sae.recipe_trainer_attached = True
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.b_enc.fill_(PRE_BF16)
        sae.threshold.fill_(THETA_F32)
    return sae, torch.zeros(BATCH, D_IN)


def test_threshold_is_float32_in_a_bf16_sae_and_the_gate_compares_in_float32() -> None:
    sae, x = gate_case("bfloat16")
    assert sae.W_enc.dtype == torch.bfloat16 and sae.threshold.dtype == torch.float32
    assert sae.threshold[0].item() == THETA_F32  # not rounded through bf16

    output = one_step(sae, x)

    assert output.hidden_pre.dtype == torch.bfloat16 and bool((output.hidden_pre == PRE_BF16).all())
    # float32 comparison: pre = 0.10009765625 > θ = 0.1, every latent fires.
    assert bool((output.feature_acts == PRE_BF16).all())
    # What casting θ to the pre-activations' dtype (as SAELens's JumpReLUTrainingSAE does) would give:
    assert not (output.hidden_pre > sae.threshold.to(torch.bfloat16)).any()
    grad = gradient(sae, "threshold")
    assert grad.dtype == torch.float32 and bool((grad != 0).all())


def test_adam_steps_on_the_threshold_survive_in_a_bf16_sae() -> None:
    sae, x = gate_case("bfloat16")
    optimizer = torch.optim.Adam(sae.parameters(), lr=ETA, betas=(0.0, 0.999))
    before = sae.threshold.detach().clone()
    one_step(sae, x)
    direction = -gradient(sae, "threshold").sign()
    optimizer.step()
    # Adam's first step (β1 = 0) moves each parameter by about η against its gradient's sign.
    moved = sae.threshold.detach() - before
    torch.testing.assert_close(moved, direction * ETA, rtol=1e-3, atol=0)
    # The same step on a bf16 θ (what θ was before: it followed the parameters' dtype) rounds away.
    bf16_theta = before.to(torch.bfloat16)
    assert torch.equal(bf16_theta + ETA, bf16_theta)


def test_threshold_stays_float32_through_casts_without_bf16_rounding() -> None:
    for parametrisation, name in (("direct", "threshold"), ("log", "log_threshold")):
        cfg = GemmaScopeTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, threshold_parametrisation=parametrisation)
        sae = GemmaScopeTrainingSAE(cfg)
        with torch.no_grad():
            getattr(sae, name).fill_(THETA_F32 if name == "threshold" else -2.3)
        stored = getattr(sae, name).detach().clone()
        sae.to(torch.bfloat16)
        assert sae.W_enc.dtype == torch.bfloat16
        assert getattr(sae, name).dtype == torch.float32
        assert torch.equal(getattr(sae, name).detach(), stored)  # restored, not widened back from bf16
        sae.half()
        assert getattr(sae, name).dtype == torch.float32
        sae.to(torch.float64)  # float32 is a floor: a float64 SAE keeps a float64 θ
        assert getattr(sae, name).dtype == torch.float64


def test_autocast_keeps_threshold_and_its_gradient_float32() -> None:
    sae, x = gate_case("float32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = sae.training_forward_pass(step_input(x))
    output.loss.backward()
    assert sae.threshold.dtype == torch.float32
    assert gradient(sae, "threshold").dtype == torch.float32
    # The gate compared pre = PRE_BF16 with θ = THETA_F32 in float32 under autocast: every latent
    # fires (θ cast to bf16 would equal pre, and none would).
    assert bool((output.feature_acts > 0).all())
