"""The straight-through estimators of the Gemma Scope recipe (paper §2, rectangle kernel): SAELens's own.

With ``K(u) = 1[-1/2 < u < 1/2]`` and bandwidth ``ε``:

* ``JumpReLU_θ(pre) = pre · H(pre - θ)``: ``∂/∂θ = -(θ/ε)·K((pre - θ)/ε)``, ``∂/∂pre = H(pre - θ)``.
* ``H(pre - θ)`` inside the L0 penalty: ``∂/∂θ = -(1/ε)·K((pre - θ)/ε)``, ``∂/∂pre = 0``, so the
  sparsity penalty trains the thresholds only.

SAELens's ``Step`` and ``JumpReLU`` (``sae_lens/saes/jumprelu_sae.py``) compute exactly these with
``ste_to_input=False`` (DeepMind's setting; ``True`` is Anthropic's, which also sends the kernel term
to ``pre``), so the recipe uses them rather than copies; ``tests/recipe/test_differential.py`` holds
the recipe SAE's step to SAELens's ``JumpReLUTrainingSAE``. Their threshold gradient sums over
dimension 0 only; for ``(batch, seq, d_sae)`` inputs autograd sums the remaining leading dimension
down to θ's shape (and casts it to θ's dtype) itself.

Precision: pass θ as it is stored (float32 or wider), not cast to ``pre``'s dtype. With a bf16
``pre`` (a bf16 SAE) the comparisons ``pre > θ`` and ``(pre - θ)/ε`` then promote to float32; cast
to bf16, θ ≈ 0.1 would be compared to the nearest multiple of about 5e-4, half the window's width
ε = 1e-3 and seven times what Adam (~η = 7e-5) moves θ per step. The outputs keep ``pre``'s dtype
and θ's gradient comes out in θ's dtype. SAELens's ``JumpReLUTrainingSAE`` stores θ in float32 too
but casts it to ``pre``'s dtype before these calls. (Under autocast with float32 parameters ``pre``
is float32 anyway: adding the float32 ``b_enc`` promotes the bf16 product.)
"""

from __future__ import annotations

import torch
from sae_lens.saes.jumprelu_sae import JumpReLU, Step, rectangle

#: ``K(u) = 1[-1/2 < u < 1/2]`` in ``u``'s dtype (open interval: the edges get no gradient).
rectangle_kernel = rectangle

#: The recipe never passes the kernel term to ``pre`` (see the module docstring).
_STE_TO_INPUT = False


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``pre · H(pre - θ)`` with the recipe's straight-through estimator (SAELens's ``JumpReLU``)."""
    return JumpReLU.apply(pre, threshold, bandwidth, _STE_TO_INPUT)  # type: ignore[no-any-return]


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Heaviside step ``H(pre - θ)`` with the recipe's estimator, gradient to θ only (SAELens's ``Step``)."""
    return Step.apply(pre, threshold, bandwidth, _STE_TO_INPUT)  # type: ignore[no-any-return]
