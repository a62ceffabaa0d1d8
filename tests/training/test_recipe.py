"""The recipe's points one by one, on synthetic activations through the recipe's trainer."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sae_lens.config import SAETrainerConfig

from saelens_gemmascope.recipe import GemmaScopeSAETrainer, gemmascope_sae_config
from saelens_gemmascope.recipe.config import RECIPE_RUNNER_DEFAULTS
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE
from saelens_gemmascope.recipe.trainer import build_recipe_lr_scheduler

D_IN, D_SAE, BATCH = 16, 32, 64


def synthetic_batches(scale: float = 5.0, seed: int = 0) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(D_IN, generator=generator)
    while True:
        yield (torch.randn(BATCH, D_IN, generator=generator) + mean) * scale


def trainer_config(steps: int = 20, **overrides: Any) -> SAETrainerConfig:
    recipe = {k: RECIPE_RUNNER_DEFAULTS[k] for k in ("lr", "adam_beta1", "adam_beta2", "lr_warm_up_steps")}
    return SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr_end=recipe["lr"] / 10,
        n_batches_for_norm_estimate=4,
        **{**recipe, **overrides},
    )


def make_trainer(
    steps: int = 20, sae_overrides: dict[str, Any] | None = None, **cfg_overrides: Any
) -> GemmaScopeSAETrainer:
    torch.manual_seed(0)
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(D_IN, D_SAE, **(sae_overrides or {})))
    return GemmaScopeSAETrainer(
        cfg=trainer_config(steps, **cfg_overrides), sae=sae, data_provider=synthetic_batches()
    )


def test_initialisation() -> None:
    torch.manual_seed(0)
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(D_IN, D_SAE))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.all(sae.b_enc == 0) and torch.all(sae.b_dec == 0)
    assert torch.all(sae.threshold == 0.001)
    assert sae.cfg.apply_b_dec_to_input  # pre-encoder bias during training
    assert sae.cfg.jumprelu_bandwidth == 0.001


def test_decoder_rows_unit_norm_and_gradient_orthogonal_when_the_optimiser_steps() -> None:
    trainer = make_trainer(
        steps=15, lr=1e-2
    )  # a large η so that an unconstrained step would leave the sphere
    seen: list[float] = []

    def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grad, rows = trainer.sae.W_dec.grad, trainer.sae.W_dec.detach()
        assert grad is not None
        # Component of each row's gradient along that row, relative to the gradient's size.
        seen.append(float(((grad * rows).sum(-1).abs() / grad.norm(dim=-1).clamp(min=1e-12)).max()))

    trainer.optimizer.register_step_pre_hook(record)
    trainer.fit()
    assert len(seen) == 15 and max(seen) < 1e-5
    # fit() ends with the fold, which keeps W_dec unchanged: rows are still unit norm.
    torch.testing.assert_close(trainer.sae.W_dec.norm(dim=-1), torch.ones(D_SAE), rtol=0, atol=1e-6)


def test_without_the_constraint_rows_leave_the_sphere() -> None:
    trainer = make_trainer(steps=15, lr=1e-2, sae_overrides={"unit_norm_decoder": False})
    trainer.fit()
    assert (trainer.sae.W_dec.norm(dim=-1) - 1).abs().max() > 1e-3


def _gradient_norms(trainer: GemmaScopeSAETrainer) -> list[float]:
    norms: list[float] = []

    def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for p in trainer.sae.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    trainer.optimizer.register_step_pre_hook(record)
    trainer.fit()
    return norms


def test_no_gradient_clipping_by_default_and_clipping_on_request() -> None:
    # Inputs are normalised by C, so make the loss large through λ instead: big gradients on θ.
    unclipped = _gradient_norms(
        make_trainer(steps=5, sae_overrides={"l0_coefficient": 10.0, "l0_warm_up_steps": 0})
    )
    assert max(unclipped) > 10.0
    clipped = _gradient_norms(
        make_trainer(
            steps=5, sae_overrides={"l0_coefficient": 10.0, "l0_warm_up_steps": 0, "max_grad_norm": 1.0}
        )
    )
    assert max(clipped) <= 1.0 + 1e-5


def test_adam_betas_and_eps() -> None:
    trainer = make_trainer()
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    (group,) = trainer.optimizer.param_groups
    assert group["betas"] == (0.0, 0.999) and group["eps"] == 1e-8
    assert {id(p) for p in group["params"]} == {id(p) for p in trainer.sae.parameters()}


def test_adam_is_fused_where_pytorch_has_a_kernel_and_updates_like_the_default_one() -> None:
    fused = make_trainer(steps=5, lr=1e-2)
    assert fused.optimizer.defaults["fused"] is True  # float32 on the CPU has a fused kernel
    default = make_trainer(steps=5, lr=1e-2)
    # The same trainer on the textbook Adam loop, with its warm-up schedule rebuilt on it.
    default.optimizer = torch.optim.Adam(default.sae.parameters(), lr=1e-2, betas=(0.0, 0.999), eps=1e-8)
    default.lr_scheduler = build_recipe_lr_scheduler(default.optimizer, default.cfg, default.recipe)
    for trainer in (fused, default):
        trainer.ensure_input_scale()
        for _ in range(5):
            trainer.step(next(trainer.data_provider))
    for (name, got), (_, expected) in zip(
        fused.sae.named_parameters(), default.sae.named_parameters(), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_adam_falls_back_to_the_default_implementation_without_a_fused_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_adam = torch.optim.Adam

    def adam_without_fused_kernels(params: Any, **kwargs: Any) -> torch.optim.Adam:
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors")
        return real_adam(params, **kwargs)

    monkeypatch.setattr("saelens_gemmascope.recipe.trainer.Adam", adam_without_fused_kernels)
    trainer = make_trainer()
    assert not trainer.optimizer.defaults["fused"]
    (group,) = trainer.optimizer.param_groups
    assert group["betas"] == (0.0, 0.999) and group["eps"] == 1e-8


def _step_schedules(trainer: GemmaScopeSAETrainer, checkpoints: list[int]) -> dict[int, tuple[float, float]]:
    values: dict[int, tuple[float, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler stepped without optimizer steps
        for step in range(max(checkpoints) + 1):
            if step in checkpoints:
                values[step] = (trainer.optimizer.param_groups[0]["lr"], trainer.get_coefficients()["l0"])
            trainer.lr_scheduler.step()
            for scheduler in trainer.coefficient_schedulers.values():
                scheduler.step()
    return values


def test_learning_rate_and_sparsity_coefficient_schedules() -> None:
    lam = 6e-4
    trainer = make_trainer(steps=20_000, sae_overrides={"l0_coefficient": lam}, lr_warm_up_steps=1000)
    eta = 7e-5
    values = _step_schedules(trainer, [0, 500, 999, 1000, 10_000])
    lrs = {step: lr for step, (lr, _) in values.items()}
    lams = {step: coefficient for step, (_, coefficient) in values.items()}
    # Cosine warm-up from 0.1·η to η over 1,000 steps, then constant.
    assert lrs[0] == pytest.approx(0.1 * eta)
    assert lrs[500] == pytest.approx(0.55 * eta)
    assert lrs[999] == pytest.approx(
        eta * (0.1 + 0.45 * (1 - torch.cos(torch.tensor(torch.pi * 0.999)).item()))
    )
    assert eta * 0.99999 < lrs[999] < eta
    assert lrs[1000] == pytest.approx(eta) and lrs[10_000] == pytest.approx(eta)
    # λ linear from 0 over 10,000 steps.
    assert lams[0] == 0.0
    assert lams[500] == pytest.approx(0.05 * lam)
    assert lams[999] == pytest.approx(0.0999 * lam)
    assert lams[1000] == pytest.approx(0.1 * lam)
    assert lams[10_000] == pytest.approx(lam)


def test_input_scale_gives_unit_mean_squared_norm() -> None:
    trainer = make_trainer()
    trainer.ensure_input_scale()
    factor = trainer.activation_scaler.scaling_factor
    assert factor is not None
    batch = torch.cat([next(trainer.data_provider) for _ in range(8)])  # the same distribution, unseen rows
    assert float((batch * factor).pow(2).sum(-1).mean()) == pytest.approx(1.0, rel=0.05)


def test_cosine_warm_up_refuses_sae_lens_decay_schedules() -> None:
    with pytest.raises(ValueError, match="lr_warm_up_shape"):
        make_trainer(lr_scheduler_name="cosineannealing")


def test_fold_in_identity_on_random_weights() -> None:
    torch.manual_seed(1)
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(D_IN, D_SAE)).to(torch.float64)
    with torch.no_grad():
        for param in (sae.b_enc, sae.b_dec):
            param.normal_(0, 0.3)
        sae.threshold.uniform_(0.0, 0.2)
    scale = 7.3
    x = torch.randn(500, D_IN, dtype=torch.float64) * scale
    features_train = sae.encode(x / scale)
    recon_train = sae.decode(features_train)
    sae.fold_activation_norm_scaling_factor(1 / scale)
    assert not sae.cfg.apply_b_dec_to_input
    torch.testing.assert_close(sae.encode(x), scale * features_train)
    torch.testing.assert_close(sae.decode(sae.encode(x)), scale * recon_train)
    assert sae.cfg.metadata.gemmascope_input_scale == pytest.approx(scale)


def test_bf16_autocast_keeps_fp32_parameters() -> None:
    trainer = make_trainer(steps=5, autocast=True)
    trainer.fit()
    assert all(p.dtype == torch.float32 for p in trainer.sae.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.sae.parameters())
    torch.testing.assert_close(trainer.sae.W_dec.norm(dim=-1), torch.ones(D_SAE), rtol=0, atol=1e-6)


def test_folding_describes_the_sae_in_a_copy_of_the_callers_config() -> None:
    """A config reused for another run must still ask for the recipe's pre-encoder bias."""
    cfg = gemmascope_sae_config(d_in=8, d_sae=16)
    assert cfg.apply_b_dec_to_input
    sae = GemmaScopeTrainingSAE(cfg)
    sae.fold_activation_norm_scaling_factor(0.5)
    assert not sae.cfg.apply_b_dec_to_input and sae.cfg.metadata.gemmascope_input_scale == 2.0
    assert cfg.apply_b_dec_to_input
    assert getattr(cfg.metadata, "gemmascope_input_scale", None) is None
    assert GemmaScopeTrainingSAE(cfg).cfg.apply_b_dec_to_input
