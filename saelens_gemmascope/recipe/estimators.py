"""The straight-through estimators of the Gemma Scope recipe (paper §2, rectangle kernel).

With ``K(u) = 1[-1/2 < u < 1/2]`` and bandwidth ``ε``:

* ``JumpReLU_θ(pre) = pre · H(pre - θ)``: ``∂/∂θ = -(θ/ε)·K((pre - θ)/ε)``, ``∂/∂pre = H(pre - θ)``.
* ``H(pre - θ)`` inside the L0 penalty: ``∂/∂θ = -(1/ε)·K((pre - θ)/ε)``, ``∂/∂pre = 0``, so the
  sparsity penalty trains the thresholds only.

SAELens has equivalent functions, but its threshold gradient sums over dimension 0 only; these sum
over every leading dimension, so they accept ``(batch, seq, d_sae)`` inputs as well.
"""

from __future__ import annotations

from typing import Any

import torch


def rectangle_kernel(u: torch.Tensor) -> torch.Tensor:
    """``K(u) = 1[-1/2 < u < 1/2]`` in ``u``'s dtype (open interval: the edges get no gradient)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to_threshold_shape(grad: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Reduce a per-element gradient to ``threshold``'s shape (``threshold`` broadcasts over rows)."""
    leading = grad.ndim - threshold.ndim
    if leading > 0:
        grad = grad.sum(dim=tuple(range(leading)))
    return grad.to(threshold.dtype)


class JumpReLUSTE(torch.autograd.Function):
    """``pre · H(pre - θ)`` with the recipe's pseudo-derivative with respect to ``θ``."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        window = rectangle_kernel((pre - threshold) / eps)
        grad_pre = (pre > threshold).to(grad_out.dtype) * grad_out
        grad_threshold = -(threshold / eps) * window * grad_out
        return grad_pre, _sum_to_threshold_shape(grad_threshold, threshold), None


class StepSTE(torch.autograd.Function):
    """``H(pre - θ)`` for the L0 penalty: gradient to ``θ`` only, none to ``pre``."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, torch.Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * rectangle_kernel((pre - threshold) / eps) * grad_out
        return None, _sum_to_threshold_shape(grad_threshold, threshold), None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """JumpReLU with the recipe's straight-through estimator."""
    return JumpReLUSTE.apply(pre, threshold, bandwidth)  # type: ignore[no-any-return]


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Heaviside step ``H(pre - θ)`` with the recipe's straight-through estimator (θ only)."""
    return StepSTE.apply(pre, threshold, bandwidth)  # type: ignore[no-any-return]
