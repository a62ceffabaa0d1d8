"""A recipe SAE or transcoder stepped by a trainer that does not apply the recipe says so once, at
step 0, naming what it misses and the runner to use; under the recipe's trainer it stays silent."""

from __future__ import annotations

import warnings

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

from saelens_gemmascope.recipe.config import gemmascope_sae_config, gemmascope_transcoder_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE
from saelens_gemmascope.recipe.transcoder import GemmaScopeTrainingTranscoder


def _input(width: int, step: int) -> TrainStepInput:
    return TrainStepInput(
        sae_in=torch.randn(4, width), coefficients={"l0": 1e-3}, dead_neuron_mask=None,
        n_training_steps=step, is_logging_step=False,
    )  # fmt: skip


CASES = [
    (
        lambda: GemmaScopeTrainingSAE(gemmascope_sae_config(8, 16)),
        8,
        "input scale C",
        "GemmaScopeTrainingRunner",
    ),
    (
        lambda: GemmaScopeTrainingTranscoder(gemmascope_transcoder_config(8, 16)),
        16,  # a transcoder trains on its input and target side by side
        "input and output scales",
        "GemmaScopeMultiSAETrainingRunner",
    ),
]


@pytest.mark.parametrize(("build", "width", "misses", "runner"), CASES, ids=["sae", "transcoder"])
def test_warns_once_without_the_recipe_trainer(build, width: int, misses: str, runner: str) -> None:  # type: ignore[no-untyped-def]
    model = build()
    with pytest.warns(UserWarning, match=rf"does not apply the recipe \(.*{misses}.*\)\. Use .*{runner}"):
        model.training_forward_pass(_input(width, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.training_forward_pass(_input(width, 1))  # only at step 0
        model.recipe_trainer_attached = True
        model.training_forward_pass(_input(width, 0))
