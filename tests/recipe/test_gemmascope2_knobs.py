"""Gemma Scope 2's recipe knobs on ``jumprelu_gemmascope``: the quadratic L0 penalty, the frequency
penalty, the Gemma Scope 2 config helper and how the sparse fast path treats them.

The hand computations use ε = 0.1, θ = 0.5 for every latent and this batch of pre-activations
(``K`` = 1 where |pre - θ| < ε/2, the window where θ gets a gradient):

    row 0: [0.52, 0.90, 0.10]   fires [1, 1, 0]   K [1, 0, 0]   ‖f‖₀ = 2
    row 1: [0.48, 0.70, 0.53]   fires [0, 1, 1]   K [1, 0, 1]   ‖f‖₀ = 2
    row 2: [0.60, 0.46, 0.20]   fires [1, 0, 0]   K [0, 1, 0]   ‖f‖₀ = 1

The step estimator gives d‖f‖₀/dθ_j = -(1/ε)·K_rj = -10·K_rj for row r.
"""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from saelens_gemmascope.recipe.config import (
    GEMMASCOPE2_FREQUENCY_PENALTY,
    GEMMASCOPE2_L0_WARM_UP_STEPS,
    gemmascope2_sae_config,
    gemmascope_sae_config,
)
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE
from saelens_gemmascope.runners.overrides import OverrideError, route_overrides

EPS = 0.1
THETA = 0.5
LAMBDA = 0.3
PRE = [[0.52, 0.90, 0.10], [0.48, 0.70, 0.53], [0.60, 0.46, 0.20]]


def step_input(x: torch.Tensor, **coefficients: float) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=1, is_logging_step=False
    )


def hand_sae(d_sae: int = 3, **knobs: object) -> GemmaScopeTrainingSAE:
    cfg = gemmascope_sae_config(
        2, d_sae, LAMBDA, jumprelu_bandwidth=EPS, jumprelu_init_threshold=THETA, dtype="float64", **knobs
    )
    return GemmaScopeTrainingSAE(cfg)


def sparsity_losses_and_theta_grad(
    sae: GemmaScopeTrainingSAE, pre: torch.Tensor, **coefficients: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The SAE's sparsity losses on given pre-activations and θ's gradient from their sum."""
    sae.zero_grad(set_to_none=True)
    x = torch.zeros(pre.shape[0], 2, dtype=torch.float64)
    losses = sae.calculate_aux_loss(step_input(x, **coefficients), pre, pre, x)
    sum(losses.values()).backward()  # type: ignore[union-attr]
    assert sae.threshold.grad is not None
    return losses, sae.threshold.grad


def hand_pre() -> torch.Tensor:
    return torch.tensor(PRE, dtype=torch.float64)


# -- the quadratic L0 penalty --------------------------------------------------------------------


def test_linear_penalty_by_hand() -> None:
    losses, grad = sparsity_losses_and_theta_grad(hand_sae(), hand_pre(), l0=LAMBDA)
    # λ·mean(‖f‖₀) = 0.3·5/3; dθ_j = (λ/3)·Σ_r(-10·K_rj) = -ΣK_rj.
    assert set(losses) == {"l0_loss"}
    torch.testing.assert_close(losses["l0_loss"], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([-2.0, -1.0, -1.0], dtype=torch.float64))


def test_quadratic_penalty_by_hand() -> None:
    sae = hand_sae(l0_penalty="quadratic", target_l0=1.0)
    losses, grad = sparsity_losses_and_theta_grad(sae, hand_pre(), l0=LAMBDA)
    # Per row λ·(2/1)·(‖f‖₀ - 1)² = 0.3·[2, 2, 0], mean 0.4.
    torch.testing.assert_close(losses["l0_loss"], torch.tensor(0.4, dtype=torch.float64))
    # ∂loss/∂‖f‖₀_r = λ·(2/L0*)·2(‖f‖₀_r - L0*)/3 = [0.4, 0.4, 0]; times -10·K_rj, summed over rows:
    # θ0: rows 0 and 1 → -8; θ1: only row 2, whose weight is 0 → 0; θ2: row 1 → -4.
    torch.testing.assert_close(grad, torch.tensor([-8.0, 0.0, -4.0], dtype=torch.float64))


def window_batch(l0: int, d_sae: int = 8, rows: int = 4) -> torch.Tensor:
    """Every row fires on its first ``l0`` latents, all inside the window (pre = θ + ε/10)."""
    pre = torch.zeros(rows, d_sae, dtype=torch.float64)
    pre[:, :l0] = THETA + EPS / 10
    return pre


def test_quadratic_equals_linear_in_value_at_twice_the_target() -> None:
    pre = window_batch(l0=6)
    linear, _ = sparsity_losses_and_theta_grad(hand_sae(8), pre, l0=LAMBDA)
    quadratic, _ = sparsity_losses_and_theta_grad(
        hand_sae(8, l0_penalty="quadratic", target_l0=3.0), pre, l0=LAMBDA
    )
    # λ·(2/L0*)·(2L0* - L0*)² = 2λL0* = λ·‖f‖₀.
    torch.testing.assert_close(quadratic["l0_loss"], linear["l0_loss"])


@pytest.mark.parametrize(("target_l0", "gradient_ratio"), [(4.8, 1.0), (3.0, 4.0), (6.0, 0.0)])
def test_quadratic_theta_gradient_against_linear(target_l0: float, gradient_ratio: float) -> None:
    """The quadratic's slope in ‖f‖₀ is λ·4(‖f‖₀ - L0*)/L0*: the linear one's (λ) at ‖f‖₀ = 1.25·L0*,
    four times it at ‖f‖₀ = 2·L0*, zero at the target."""
    pre = window_batch(l0=6)
    _, linear = sparsity_losses_and_theta_grad(hand_sae(8), pre, l0=LAMBDA)
    sae = hand_sae(8, l0_penalty="quadratic", target_l0=target_l0)
    _, quadratic = sparsity_losses_and_theta_grad(sae, pre, l0=LAMBDA)
    assert float(linear[0]) == pytest.approx(-LAMBDA / EPS)  # -(1/ε)·K·λ, K = 1 on every row
    torch.testing.assert_close(quadratic, gradient_ratio * linear)


def test_quadratic_matches_saelens_quadratic_mode() -> None:
    """The same formula as SAELens's ``jumprelu_sparsity_loss_mode="quadratic"`` (loss and θ-gradient)."""
    pre = torch.tensor(PRE * 4, dtype=torch.float32)
    ours = GemmaScopeTrainingSAE(
        gemmascope_sae_config(
            2,
            3,
            LAMBDA,
            jumprelu_bandwidth=EPS,
            jumprelu_init_threshold=THETA,
            l0_penalty="quadratic",
            target_l0=1.5,
        )
    )
    theirs = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=2,
            d_sae=3,
            jumprelu_bandwidth=EPS,
            jumprelu_init_threshold=THETA,
            l0_coefficient=LAMBDA,
            jumprelu_sparsity_loss_mode="quadratic",
            target_l0=1.5,
            pre_act_loss_coefficient=None,
        )
    )
    x = torch.zeros(pre.shape[0], 2)
    expected = theirs.calculate_aux_loss(step_input(x, l0=LAMBDA), pre, pre, x)["l0_loss"]
    expected.backward()
    got, grad = sparsity_losses_and_theta_grad(ours, pre, l0=LAMBDA)
    torch.testing.assert_close(got["l0_loss"], expected)
    assert theirs.threshold.grad is not None
    torch.testing.assert_close(grad, theirs.threshold.grad)


def test_quadratic_needs_a_target_in_range() -> None:
    with pytest.raises(ValueError, match="target_l0"):
        gemmascope_sae_config(4, 8, l0_penalty="quadratic")
    with pytest.raises(ValueError, match="target_l0"):
        gemmascope_sae_config(4, 8, l0_penalty="quadratic", target_l0=9.0)
    with pytest.raises(ValueError, match="l0_penalty"):
        gemmascope_sae_config(4, 8, l0_penalty="cubic")


# -- the frequency penalty -----------------------------------------------------------------------


def test_frequency_penalty_by_hand() -> None:
    sae = hand_sae(frequency_penalty=3.0, frequency_cap=0.5)
    losses, grad = sparsity_losses_and_theta_grad(sae, hand_pre(), l0=LAMBDA)
    # p = [2/3, 2/3, 1/3]; excess over 0.5 = [1/6, 1/6, 0]; λ·μ·Σ excess² = 0.3·3·2/36.
    torch.testing.assert_close(losses["frequency_loss"], torch.tensor(0.05, dtype=torch.float64))
    # ∂/∂p_j = 2λμ·excess_j = [0.3, 0.3, 0]; ∂p_j/∂θ_j = (1/3)·Σ_r(-10·K_rj) = [-20/3, -10/3, -10/3]:
    # [-2, -1, 0], added to the linear penalty's [-2, -1, -1].
    torch.testing.assert_close(grad, torch.tensor([-4.0, -2.0, -1.0], dtype=torch.float64))


@pytest.mark.parametrize("input_gradient", [0.0, 1.0, 2.0])
def test_frequency_penalty_pushes_the_active_entries_of_latents_above_the_cap(input_gradient: float) -> None:
    sae = hand_sae(frequency_penalty=3.0, frequency_cap=0.5, frequency_input_gradient=input_gradient)
    pre = hand_pre().requires_grad_()
    losses, grad = sparsity_losses_and_theta_grad(sae, pre, l0=LAMBDA)
    # Values and θ's gradient as without the input gradient.
    torch.testing.assert_close(losses["frequency_loss"], torch.tensor(0.05, dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([-4.0, -2.0, -1.0], dtype=torch.float64))
    # ∂/∂p_j = [0.3, 0.3, 0]; ∂p_j/∂pre_rj = κ·H_rj/3: κ·0.1 where latents 0 and 1 fire (the L0
    # penalty's step sends nothing to pre), nothing to latent 2 (at the cap) or to inactive entries.
    fires = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    above_cap = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    expected = input_gradient * 0.1 * fires * above_cap
    # κ = 0: the graph does not reach pre at all.
    pre_grad = pre.grad if pre.grad is not None else torch.zeros_like(pre)
    torch.testing.assert_close(pre_grad, expected)


def bimodal_frequency(input_gradient: float, steps: int = 200) -> tuple[float, float]:
    """A latent firing on half the rows with θ in the gap between its two modes (no entry within
    ε/2 of θ), trained on the sparsity losses alone: its frequency before and after."""
    torch.manual_seed(0)
    sae = hand_sae(1, frequency_penalty=100.0, frequency_cap=0.1, frequency_input_gradient=input_gradient)
    sae.cfg.apply_b_dec_to_input = False
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0], [0.0]], dtype=torch.float64))
    rows = torch.linspace(0.0, 1.0, 64, dtype=torch.float64)
    x = torch.stack([torch.where(rows < 0.5, -1.0, 0.6 + rows), torch.zeros_like(rows)], dim=-1)
    optimiser = torch.optim.SGD(sae.parameters(), lr=0.05)

    def frequency() -> float:
        with torch.no_grad():
            return float((sae.encode(x) > 0).double().mean())

    before = frequency()
    for _ in range(steps):
        optimiser.zero_grad()
        pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
        sum(sae.calculate_aux_loss(step_input(x, l0=LAMBDA), pre, pre, x).values()).backward()  # type: ignore[union-attr]
        optimiser.step()
    return before, frequency()


def test_only_the_input_gradient_lowers_a_latent_with_theta_between_its_modes() -> None:
    assert bimodal_frequency(0.0) == (0.5, 0.5)  # θ gets no gradient: no entry in its window
    before, after = bimodal_frequency(1.0)
    assert before == 0.5 and after <= 0.1 + 1 / 64


def test_frequency_penalty_follows_the_warmed_up_lambda() -> None:
    sae = hand_sae(frequency_penalty=3.0, frequency_cap=0.5)
    losses, _ = sparsity_losses_and_theta_grad(sae, hand_pre(), l0=LAMBDA / 10)
    torch.testing.assert_close(losses["frequency_loss"], torch.tensor(0.005, dtype=torch.float64))
    assert set(sae.get_coefficients()) == {"l0"}  # no coefficient of its own to schedule


def test_frequency_penalty_ignores_latents_at_or_below_the_cap() -> None:
    sae = hand_sae(frequency_penalty=50.0, frequency_cap=0.7)
    losses, grad = sparsity_losses_and_theta_grad(sae, hand_pre(), l0=LAMBDA)
    torch.testing.assert_close(losses["frequency_loss"], torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([-2.0, -1.0, -1.0], dtype=torch.float64))


def test_frequency_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="frequency_penalty"):
        gemmascope_sae_config(4, 8, frequency_penalty=-1.0)
    with pytest.raises(ValueError, match="frequency_cap"):
        gemmascope_sae_config(4, 8, frequency_cap=1.0)
    with pytest.raises(ValueError, match="frequency_input_gradient"):
        gemmascope_sae_config(4, 8, frequency_input_gradient=-1.0)


# -- the Gemma Scope 2 helper and overrides ------------------------------------------------------


def test_gemmascope2_helper_sets_the_gemmascope2_recipe() -> None:
    cfg = gemmascope2_sae_config(16, 64, target_l0=20.0)
    assert (cfg.l0_penalty, cfg.target_l0) == ("quadratic", 20.0)
    assert cfg.l0_warm_up_steps == GEMMASCOPE2_L0_WARM_UP_STEPS == 50_000
    assert cfg.frequency_penalty == GEMMASCOPE2_FREQUENCY_PENALTY == 100.0
    assert gemmascope2_sae_config(16, 64, 20.0, frequency_penalty=0.0).frequency_penalty == 0.0
    # Gemma Scope keeps its own recipe.
    plain = gemmascope_sae_config(16, 64)
    assert (plain.l0_penalty, plain.l0_warm_up_steps, plain.frequency_penalty) == ("linear", 10_000, 0.0)


def test_overrides_route_and_bound_the_new_fields() -> None:
    routed = route_overrides(
        {"l0_penalty": "quadratic", "target_l0": 30, "frequency_penalty": 2, "frequency_cap": 0.05}
    )
    assert routed.sae == {
        "l0_penalty": "quadratic",
        "target_l0": 30.0,
        "frequency_penalty": 2.0,
        "frequency_cap": 0.05,
    }
    for bad in ({"frequency_penalty": -1}, {"target_l0": 0}, {"frequency_cap": 1.0}, {"l0_penalty": "cubic"}):
        with pytest.raises(OverrideError):
            route_overrides(bad)


# -- the sparse fast path ------------------------------------------------------------------------

D_IN, D_SAE, BATCH = 16, 64, 32


def fast_path_case(**knobs: object) -> tuple[GemmaScopeTrainingSAE, torch.Tensor]:
    """A float64 SAE whose latents fire on ~5 % of a batch, several of them with entries in the window."""
    torch.manual_seed(0)
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(D_IN, D_SAE, dtype="float64", **knobs))
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.normal_(0.3, 0.1)
        pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
        theta = torch.quantile(pre, 0.95, dim=0)
        top = pre.max(dim=0).values
        theta[:6] = top[:6] - torch.tensor([-0.4, -0.2, -0.05, 0.05, 0.2, 0.4], dtype=torch.float64) * 1e-3
        sae.threshold.copy_(theta)
    return sae, x


def forward_backward(sae: GemmaScopeTrainingSAE, x: torch.Tensor, **coefficients: float) -> TrainStepOutput:
    sae.zero_grad(set_to_none=True)
    output = sae.training_forward_pass(step_input(x, **coefficients))
    output.loss.backward()
    return output


def with_fast_path(sae: GemmaScopeTrainingSAE, fast_path: str) -> GemmaScopeTrainingSAE:
    twin = copy.deepcopy(sae)
    twin.cfg.fast_path = fast_path  # type: ignore[assignment]
    return twin


def test_sparse_path_runs_the_quadratic_penalty_with_the_dense_paths_numbers() -> None:
    sae, x = fast_path_case(l0_penalty="quadratic", target_l0=1.0)
    sparse, dense = with_fast_path(sae, "sparse"), with_fast_path(sae, "dense")
    got, expected = forward_backward(sparse, x, l0=0.5), forward_backward(dense, x, l0=0.5)
    assert (sparse.last_step_path, dense.last_step_path) == ("sparse", "dense")
    torch.testing.assert_close(got.losses["l0_loss"], expected.losses["l0_loss"], rtol=0, atol=0)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-12, atol=1e-12)
    assert float(expected.losses["l0_loss"].detach()) > 0
    for (name, param), (_, reference) in zip(
        sparse.named_parameters(), dense.named_parameters(), strict=True
    ):
        assert param.grad is not None and reference.grad is not None, name
        torch.testing.assert_close(param.grad, reference.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert dense.threshold.grad is not None and bool(dense.threshold.grad.abs().sum() > 0)


def test_frequency_penalty_takes_the_dense_path() -> None:
    sae, x = fast_path_case(frequency_penalty=1.0, frequency_cap=0.01)
    auto = with_fast_path(sae, "auto")
    output = forward_backward(auto, x, l0=0.5)
    # The batch is sparse enough for "auto" to pick the sparse path without the penalty.
    plain = with_fast_path(sae, "auto")
    plain.cfg.frequency_penalty = 0.0
    forward_backward(plain, x, l0=0.5)
    assert (auto.last_step_path, plain.last_step_path) == ("dense", "sparse")
    dense = with_fast_path(sae, "dense")
    expected = forward_backward(dense, x, l0=0.5)
    assert float(expected.losses["frequency_loss"].detach()) > 0
    torch.testing.assert_close(output.loss, expected.loss, rtol=0, atol=0)
    # κ acts on gradients only: "auto"'s fallback must give the dense step's gradients too.
    assert_same_gradients(auto, dense)
    with pytest.raises(ValueError, match="frequency_penalty"):
        forward_backward(with_fast_path(sae, "sparse"), x, l0=0.5)


def test_frequency_penalty_input_gradient_reaches_the_encoder_on_both_dense_paths() -> None:
    """The comparison above can see κ: without it the encoder's gradients differ (same loss)."""
    sae, x = fast_path_case(frequency_penalty=1.0, frequency_cap=0.01)
    for fast_path in ("auto", "dense"):
        with_kappa, without = with_fast_path(sae, fast_path), with_fast_path(sae, fast_path)
        without.cfg.frequency_input_gradient = 0.0
        loss = forward_backward(with_kappa, x, l0=0.5).loss
        torch.testing.assert_close(forward_backward(without, x, l0=0.5).loss, loss, rtol=0, atol=0)
        assert with_kappa.W_enc.grad is not None and without.W_enc.grad is not None
        assert not torch.allclose(with_kappa.W_enc.grad, without.W_enc.grad), fast_path


def assert_same_gradients(got: GemmaScopeTrainingSAE, expected: GemmaScopeTrainingSAE) -> None:
    for (name, param), (_, reference) in zip(
        got.named_parameters(), expected.named_parameters(), strict=True
    ):
        assert param.grad is not None and reference.grad is not None, name
        torch.testing.assert_close(param.grad, reference.grad, rtol=1e-12, atol=1e-15, msg=name)
    assert expected.threshold.grad is not None and bool(expected.threshold.grad.abs().sum() > 0)
