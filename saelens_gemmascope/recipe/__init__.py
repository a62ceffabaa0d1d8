"""The Gemma Scope training recipe: the JumpReLU training SAE, its estimators and sparse step, the
schedules, the input scale, and the trainer that steps it (a SAELens ``SAETrainer``).

Entry points: :func:`gemmascope_sae_config` (one SAE's config), :func:`gemmascope_ladder` (one per
λ), :func:`gemmascope_runner_config` / :func:`gemmascope_multi_runner_config` (SAELens runner configs
with the recipe's defaults). The runners that drive a training are in :mod:`saelens_gemmascope.runners`.
"""

from __future__ import annotations

from saelens_gemmascope.recipe.config import (
    RECIPE_RUNNER_DEFAULTS,
    gemmascope2_sae_config,
    gemmascope_ladder,
    gemmascope_multi_runner_config,
    gemmascope_runner_config,
    gemmascope_sae_config,
)
from saelens_gemmascope.recipe.sae import (
    ARCHITECTURE_NAME,
    GemmaScopeTrainingSAE,
    GemmaScopeTrainingSAEConfig,
)
from saelens_gemmascope.recipe.trainer import GemmaScopeMultiSAETrainer, GemmaScopeSAETrainer

__all__ = [
    "ARCHITECTURE_NAME",
    "RECIPE_RUNNER_DEFAULTS",
    "GemmaScopeMultiSAETrainer",
    "GemmaScopeSAETrainer",
    "GemmaScopeTrainingSAE",
    "GemmaScopeTrainingSAEConfig",
    "gemmascope2_sae_config",
    "gemmascope_ladder",
    "gemmascope_multi_runner_config",
    "gemmascope_runner_config",
    "gemmascope_sae_config",
]
