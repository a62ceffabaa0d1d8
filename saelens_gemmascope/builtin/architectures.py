"""Built-in plugin: the ``jumprelu_gemmascope`` training architecture (the Gemma Scope recipe).

Its inference entry is SAELens's own ``JumpReLUSAE``/``JumpReLUSAEConfig``: SAELens saves a
training SAE's inference model with the config class registered under the training name, and that
class says ``architecture: jumprelu``. So what the recipe trains loads as plain ``jumprelu`` in a
process that never imports this package. The recipe's transcoders likewise save as SAELens's own
``jumprelu_transcoder`` / ``jumprelu_skip_transcoder``.
"""

from __future__ import annotations

from collections.abc import Callable

from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.transcoder import (
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
)

from saelens_gemmascope.contributions import Architecture
from saelens_gemmascope.hookspecs import hookimpl
from saelens_gemmascope.recipe.sae import (
    ARCHITECTURE_NAME,
    GemmaScopeTrainingSAE,
    GemmaScopeTrainingSAEConfig,
)
from saelens_gemmascope.recipe.transcoder import (
    SKIP_TRANSCODER_ARCHITECTURE,
    TRANSCODER_ARCHITECTURE,
    GemmaScopeTrainingSkipTranscoder,
    GemmaScopeTrainingSkipTranscoderConfig,
    GemmaScopeTrainingTranscoder,
    GemmaScopeTrainingTranscoderConfig,
)

GEMMASCOPE_ARCHITECTURE = Architecture(
    name=ARCHITECTURE_NAME,
    sae_class=JumpReLUSAE,
    config_class=JumpReLUSAEConfig,
    training_class=GemmaScopeTrainingSAE,
    training_config_class=GemmaScopeTrainingSAEConfig,
)


GEMMASCOPE_TRANSCODER_ARCHITECTURE = Architecture(
    name=TRANSCODER_ARCHITECTURE,
    sae_class=JumpReLUTranscoder,
    config_class=JumpReLUTranscoderConfig,
    training_class=GemmaScopeTrainingTranscoder,
    training_config_class=GemmaScopeTrainingTranscoderConfig,
)

GEMMASCOPE_SKIP_TRANSCODER_ARCHITECTURE = Architecture(
    name=SKIP_TRANSCODER_ARCHITECTURE,
    sae_class=JumpReLUSkipTranscoder,
    config_class=JumpReLUSkipTranscoderConfig,
    training_class=GemmaScopeTrainingSkipTranscoder,
    training_config_class=GemmaScopeTrainingSkipTranscoderConfig,
)


@hookimpl
def register_sae_architectures(register: Callable[[Architecture], None]) -> None:
    register(GEMMASCOPE_ARCHITECTURE)
    register(GEMMASCOPE_TRANSCODER_ARCHITECTURE)
    register(GEMMASCOPE_SKIP_TRANSCODER_ARCHITECTURE)
