"""Built-in plugin: the ``jumprelu_gemmascope`` training architecture (the Gemma Scope recipe).

Its inference entry is SAELens's own ``JumpReLUSAE``/``JumpReLUSAEConfig``: SAELens saves a
training SAE's inference model with the config class registered under the training name, and that
class says ``architecture: jumprelu``. So what the recipe trains loads as plain ``jumprelu`` in a
process that never imports this package.
"""

from __future__ import annotations

from collections.abc import Callable

from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

from saelens_gemmascope.contributions import Architecture
from saelens_gemmascope.hookspecs import hookimpl
from saelens_gemmascope.recipe.sae import (
    ARCHITECTURE_NAME,
    GemmaScopeTrainingSAE,
    GemmaScopeTrainingSAEConfig,
)

GEMMASCOPE_ARCHITECTURE = Architecture(
    name=ARCHITECTURE_NAME,
    sae_class=JumpReLUSAE,
    config_class=JumpReLUSAEConfig,
    training_class=GemmaScopeTrainingSAE,
    training_config_class=GemmaScopeTrainingSAEConfig,
)


@hookimpl
def register_sae_architectures(register: Callable[[Architecture], None]) -> None:
    register(GEMMASCOPE_ARCHITECTURE)
