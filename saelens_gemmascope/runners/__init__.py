"""SAELens's runners with the recipe's trainer in them, and what a run needs around them: the run
specification, the resumable activation stream, checkpoints, interrupts, data sources, wandb.

Entry points: :class:`GemmaScopeTrainingRunner` (one SAE) and
:class:`GemmaScopeMultiSAETrainingRunner` (several SAEs from one model forward pass), configured
with :func:`saelens_gemmascope.recipe.gemmascope_runner_config` /
:func:`~saelens_gemmascope.recipe.gemmascope_multi_runner_config`.
"""

from __future__ import annotations

from saelens_gemmascope.runners.training_runners import (
    GemmaScopeMultiSAETrainingRunner,
    GemmaScopeTrainingRunner,
)

__all__ = ["GemmaScopeMultiSAETrainingRunner", "GemmaScopeTrainingRunner"]
