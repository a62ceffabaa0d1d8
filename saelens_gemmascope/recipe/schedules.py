"""The recipe's learning-rate schedule: cosine warm-up from a fraction of η to η, then constant.

(λ's linear warm-up is SAELens's own ``CoefficientScheduler``, driven by the SAE's
``get_coefficients``; nothing to add for it.)
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_warm_up_factor(step: int, warm_up_steps: int, start_fraction: float) -> float:
    """Multiplier of η at ``step``: ``start_fraction`` at 0, rising along a half cosine to 1 at
    ``warm_up_steps``, 1 afterwards."""
    if step >= warm_up_steps:
        return 1.0
    progress = step / warm_up_steps
    return start_fraction + (1.0 - start_fraction) * 0.5 * (1.0 - math.cos(math.pi * progress))


def cosine_warm_up_scheduler(optimizer: Optimizer, warm_up_steps: int, start_fraction: float) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`cosine_warm_up_factor`; its state (the step count) is what
    SAELens's checkpoints save, so a resumed run continues the same curve."""

    def factor(step: int) -> float:
        return cosine_warm_up_factor(step, warm_up_steps, start_fraction)

    return LambdaLR(optimizer, lr_lambda=factor)
