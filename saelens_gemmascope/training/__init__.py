"""Training with the exact Gemma Scope recipe through SAELens's own runners.

Entry points: :class:`GemmaScopeTrainingRunner` (one SAE) and
:class:`GemmaScopeMultiSAETrainingRunner` (several SAEs from one model forward pass), configured
with :func:`gemmascope_sae_config` and :func:`gemmascope_runner_config` /
:func:`gemmascope_multi_runner_config`. :func:`export_gemmascope_sae` writes any trained JumpReLU SAE
in the Gemma Scope release layout.
"""

from __future__ import annotations

from saelens_gemmascope.training.config import (
    RECIPE_RUNNER_DEFAULTS,
    gemmascope_ladder,
    gemmascope_multi_runner_config,
    gemmascope_runner_config,
    gemmascope_sae_config,
)
from saelens_gemmascope.training.export import ExportedSAE, export_gemmascope_sae, width_name
from saelens_gemmascope.training.runners import GemmaScopeMultiSAETrainingRunner, GemmaScopeTrainingRunner
from saelens_gemmascope.training.sae import (
    ARCHITECTURE_NAME,
    GemmaScopeTrainingSAE,
    GemmaScopeTrainingSAEConfig,
)
from saelens_gemmascope.training.trainer import GemmaScopeMultiSAETrainer, GemmaScopeSAETrainer

__all__ = [
    "ARCHITECTURE_NAME",
    "RECIPE_RUNNER_DEFAULTS",
    "ExportedSAE",
    "GemmaScopeMultiSAETrainer",
    "GemmaScopeMultiSAETrainingRunner",
    "GemmaScopeSAETrainer",
    "GemmaScopeTrainingRunner",
    "GemmaScopeTrainingSAE",
    "GemmaScopeTrainingSAEConfig",
    "export_gemmascope_sae",
    "gemmascope_ladder",
    "gemmascope_multi_runner_config",
    "gemmascope_runner_config",
    "gemmascope_sae_config",
    "width_name",
]
