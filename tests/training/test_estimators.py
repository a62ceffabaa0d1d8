"""The rectangle-kernel straight-through estimators, on hand-computed cases."""

from __future__ import annotations

import torch

from saelens_gemmascope.recipe.estimators import jumprelu, rectangle_kernel, step
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig

EPS = 0.001
# Two latents with θ = 0.002 and 0.004. Per element, u = (pre - θ)/ε:
#   row 0: (0.0024-0.002)/ε = 0.4 (inside)    (0.0050-0.004)/ε = 1.0 (outside, above)
#   row 1: (0.0017-0.002)/ε = -0.3 (inside)   (0.0030-0.004)/ε = -1.0 (outside, below)
PRE = [[0.0024, 0.0050], [0.0017, 0.0030]]
THETA = [0.002, 0.004]


def _leaves() -> tuple[torch.Tensor, torch.Tensor]:
    pre = torch.tensor(PRE, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    return pre, theta


def test_rectangle_kernel_is_the_open_unit_window() -> None:
    u = torch.tensor([-0.75, -0.5, -0.49, 0.0, 0.49, 0.5, 0.75])
    assert rectangle_kernel(u).tolist() == [0, 0, 1, 1, 1, 0, 0]


def test_jumprelu_forward_and_gradients() -> None:
    pre, theta = _leaves()
    out = jumprelu(pre, theta, EPS)
    assert out.tolist() == [[0.0024, 0.0050], [0.0, 0.0]]
    out.sum().backward()
    # d/dpre = H(pre - θ): 1 above the threshold, 0 below, whatever the window says.
    assert pre.grad is not None and pre.grad.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    # d/dθ = -(θ/ε)·K(u), summed over the batch: latent 0 is inside the window in both rows
    # (-2 - 2), latent 1 in neither.
    assert theta.grad is not None
    torch.testing.assert_close(theta.grad, torch.tensor([-4.0, 0.0], dtype=torch.float64))


def test_jumprelu_threshold_gradient_scales_with_upstream_gradient() -> None:
    pre, theta = _leaves()
    upstream = torch.tensor([[3.0, 5.0], [-1.0, 7.0]], dtype=torch.float64)
    (jumprelu(pre, theta, EPS) * upstream).sum().backward()
    assert theta.grad is not None and pre.grad is not None
    torch.testing.assert_close(
        theta.grad, torch.tensor([-(2.0 * 3.0) - (2.0 * -1.0), 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(pre.grad, torch.tensor([[3.0, 5.0], [0.0, 0.0]], dtype=torch.float64))


def test_step_gradient_reaches_the_threshold_only() -> None:
    pre, theta = _leaves()
    out = step(pre, theta, EPS)
    assert out.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    out.sum().backward()
    # d/dθ = -(1/ε)·K(u): -1000 per in-window element; d/dpre = 0 (no gradient at all).
    assert theta.grad is not None
    torch.testing.assert_close(theta.grad, torch.tensor([-2000.0, 0.0], dtype=torch.float64))
    assert pre.grad is None or torch.all(pre.grad == 0)


def test_estimators_accept_sequence_batches() -> None:
    pre = torch.tensor([PRE, PRE], dtype=torch.float64)  # (batch, seq, d_sae)
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    step(pre, theta, EPS).sum().backward()
    assert theta.grad is not None
    torch.testing.assert_close(theta.grad, torch.tensor([-4000.0, 0.0], dtype=torch.float64))


def test_l0_penalty_never_reaches_the_encoder() -> None:
    torch.manual_seed(0)
    sae = GemmaScopeTrainingSAE(GemmaScopeTrainingSAEConfig(d_in=8, d_sae=16))
    x = torch.randn(32, 8) * 0.05
    _, hidden_pre = sae.encode_with_hidden_pre(x)
    threshold = sae.threshold_values
    # Put some pre-activations inside the window so that θ gets a gradient.
    with torch.no_grad():
        sae.threshold.copy_(hidden_pre[0].detach())
    _, hidden_pre = sae.encode_with_hidden_pre(x)
    l0 = step(hidden_pre, sae.threshold_values, sae.cfg.jumprelu_bandwidth).sum(-1).mean()
    l0.backward()
    assert sae.W_enc.grad is None and sae.b_enc.grad is None and sae.b_dec.grad is None
    assert sae.threshold.grad is not None and sae.threshold.grad.abs().sum() > 0
    assert threshold.shape == (16,)


def test_log_parametrised_threshold_gets_the_chain_rule() -> None:
    cfg = GemmaScopeTrainingSAEConfig(d_in=2, d_sae=2, threshold_parametrisation="log")
    sae = GemmaScopeTrainingSAE(cfg)
    with torch.no_grad():
        sae.log_threshold.copy_(torch.tensor(THETA).log())
    pre = torch.tensor(PRE)
    step(pre, sae.threshold_values, EPS).sum().backward()
    # d/dlogθ = θ · d/dθ
    assert sae.log_threshold.grad is not None
    torch.testing.assert_close(
        sae.log_threshold.grad, torch.tensor([0.002 * -2000.0, 0.0]), rtol=1e-4, atol=1e-6
    )
