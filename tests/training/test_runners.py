"""The recipe through SAELens's runners: special-token exclusion, the multi-SAE λ ladder, resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from sae_lens import LoggingConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from training_helpers import BATCH, HOOK, SPECIAL_IDS, rows_of, tiny_runner_config

from saelens_gemmascope.demo.tiny_model import TinyGemma2, build_tiny_gemma2
from saelens_gemmascope.demo.tokenizer import EOS_ID, PAD_ID
from saelens_gemmascope.recipe import gemmascope_ladder, gemmascope_multi_runner_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig
from saelens_gemmascope.runners import GemmaScopeMultiSAETrainingRunner, GemmaScopeTrainingRunner


class RecordsInputs(GemmaScopeTrainingSAE):
    """Test double: counts steps and keeps the largest input row norm relative to the median."""

    steps = 0
    worst_ratio = 0.0

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        norms = step_input.sae_in.norm(dim=-1)
        object.__setattr__(self, "steps", self.steps + 1)
        object.__setattr__(self, "worst_ratio", max(self.worst_ratio, float(norms.max() / norms.median())))
        return super().training_forward_pass(step_input)


@pytest.fixture(scope="module")
def loud_special_tokens() -> TinyGemma2:
    """A tiny model whose PAD/EOS/BOS embeddings are 1000x too large: their residual activations
    stand out by orders of magnitude (Gemma 2's post-norms keep every other position bounded)."""
    model = build_tiny_gemma2(seed=0)
    with torch.no_grad():
        model.tl_model.embed.W_E[list(SPECIAL_IDS)] *= 1000.0
    return model


def _with_special_tokens(corpus_ids: list[int]) -> datasets.Dataset:
    rows = rows_of(corpus_ids, 200)
    for i, row in enumerate(rows):
        row[10::37] = [EOS_ID] * len(row[10::37])
        if i % 3 == 0:
            row[-20:] = [PAD_ID] * 20
    return datasets.Dataset.from_dict({"input_ids": rows})


@pytest.mark.parametrize("exclude", [True, False])
def test_special_token_activations_never_reach_the_sae(
    exclude: bool,
    loud_special_tokens: TinyGemma2,
    corpus_ids: list[int],
    make_sae_config: Callable[..., GemmaScopeTrainingSAEConfig],
) -> None:
    sae = RecordsInputs(make_sae_config())
    cfg = tiny_runner_config(sae.cfg, steps=30, exclude_special_tokens=exclude)
    runner = GemmaScopeTrainingRunner(
        cfg,
        override_dataset=_with_special_tokens(corpus_ids),
        override_model=loud_special_tokens.tl_model,
        override_sae=sae,
    )
    runner.run()
    assert sae.steps == 30
    if exclude:
        assert sae.worst_ratio < 10.0  # ordinary activations only
    else:
        assert sae.worst_ratio > 100.0  # the same set-up does let them through when asked to


def test_lambda_ladder_with_one_forward_pass_gives_decreasing_l0(
    tiny: TinyGemma2,
    train_dataset: datasets.Dataset,
    heldout_activations: torch.Tensor,
    tmp_path: Path,
) -> None:
    coefficients = (3e-4, 1e-3, 3e-3)
    saes = gemmascope_ladder(64, 256, coefficients, l0_warm_up_steps=300)
    cfg = gemmascope_multi_runner_config(
        saes, HOOK, model_name="tiny-gemma-2", training_tokens=800 * BATCH, context_size=128,
        train_batch_size_tokens=BATCH, n_batches_in_buffer=8, store_batch_size_prompts=8, lr=2e-4,
        lr_warm_up_steps=100, n_batches_for_norm_estimate=8, checkpoint_path=None,
        output_path=str(tmp_path / "ladder"), logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    trained = GemmaScopeMultiSAETrainingRunner(
        cfg, override_dataset=train_dataset, override_model=tiny.tl_model
    ).run()
    l0s = []
    for name in saes:
        with torch.no_grad():
            l0s.append(float((trained[name].encode(heldout_activations) > 0).float().sum(-1).mean()))
        assert (tmp_path / "ladder" / name / "cfg.json").is_file()
    print(f"λ ladder {coefficients}: held-out L0 {[round(v, 1) for v in l0s]}")
    assert l0s[0] > l0s[1] > l0s[2]
    # One activation stream for all three: they saw the same C.
    scales = {trained[name].cfg.metadata.gemmascope_input_scale for name in saes}
    assert len(scales) == 1


def _checkpoint_run(
    tiny: TinyGemma2, dataset: datasets.Dataset, sae: GemmaScopeTrainingSAE, **overrides: Any
) -> Any:
    cfg = tiny_runner_config(sae.cfg, steps=60, lr_warm_up_steps=40, **overrides)
    runner = GemmaScopeTrainingRunner(
        cfg, override_dataset=dataset, override_model=tiny.tl_model, override_sae=sae
    )
    runner.run()
    return runner


def test_interrupted_training_resumes_from_its_checkpoint(
    tiny: TinyGemma2,
    train_dataset: datasets.Dataset,
    make_sae_config: Callable[..., GemmaScopeTrainingSAEConfig],
    tmp_path: Path,
) -> None:
    first = RecordsInputs(make_sae_config(l0_warm_up_steps=100))
    _checkpoint_run(tiny, train_dataset, first, n_checkpoints=1, checkpoint_path=str(tmp_path / "ckpt"))
    (checkpoint,) = [p for p in (tmp_path / "ckpt").glob("*/*") if p.name.isdigit()]
    done_steps = int(checkpoint.name) // BATCH
    assert 0 < done_steps < 60

    resumed = RecordsInputs(make_sae_config(l0_warm_up_steps=100))
    runner = _checkpoint_run(tiny, train_dataset, resumed, resume_from_checkpoint=str(checkpoint))
    trainer = runner.trainer
    assert trainer is not None
    # Only the remaining steps ran, with the checkpoint's C (not a fresh estimate) ...
    # (SAELens saves n_training_steps one behind n_training_samples, so that counter ends at 59;
    # the schedulers and Adam, which this package's state rides on, are exact.)
    assert resumed.steps == 60 - done_steps and trainer.lr_scheduler.last_epoch == 60
    assert resumed.cfg.metadata.gemmascope_input_scale == first.cfg.metadata.gemmascope_input_scale
    # ... and the schedules continued where they were: past the η warm-up, λ at 60/100 of its value.
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(7e-5)
    assert trainer.get_coefficients()["l0"] == pytest.approx(0.6 * 1e-3)
    adam_steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert adam_steps == {60}
