"""The sparse fast path of the training step against the dense reference (``fast_path="dense"``).

Tolerance. Both paths compute the encoder product with the same op on the same values, so
``hidden_pre``, ``feature_acts``, the L0 and which entries are active or inside the window are
*identical*. Everything after it is the same arithmetic summed in another order (index_add /
embedding_bag over the non-zero terms instead of GEMMs and dense batch sums over mostly zeros).
Reordering a sum of n terms moves it by at most about n·u·Σ|terms| (u: unit round-off); here n ≤ 64
rows or d_in = 16, so we allow ``rtol = atol/scale = 2e-5`` in float32 (u ≈ 6e-8) and ``1e-12`` in
float64 (u ≈ 1e-16), ``scale`` being the largest magnitude of the expected tensor.

Parameters after several optimiser steps are compared in float64 only: Adam divides each gradient
by its own running magnitude, so a float32 round-off difference in a gradient that is zero up to
round-off (the decoder-gradient projection leaves such components) becomes an update of order η.
In float64 those residues stay far below Adam's ε = 1e-8 and the trajectories agree to ~1e-12.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from saelens_gemmascope.recipe import GemmaScopeSAETrainer, gemmascope_sae_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE
from saelens_gemmascope.recipe.sparse_step import SPARSE_DENSITY_CUTOFF, prefers_sparse

D_IN, D_SAE, BATCH = 16, 64, 32
EPS = 1e-3  # the recipe's bandwidth
L0_COEFFICIENT = 0.5  # large enough that the step estimator's θ gradient is not negligible
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}
# Latent i's top pre-activation sits at θ + WINDOW_OFFSETS[i]·ε: inside the window, below θ for
# latents 0-2 (they never fire) and above it for latents 3-5.
WINDOW_OFFSETS = [-0.4, -0.2, -0.05, 0.05, 0.2, 0.4]
WINDOW_LATENTS = list(range(len(WINDOW_OFFSETS)))
DEAD_LATENTS = [10, 11, 12]
# The window's edges, hit exactly: with ε = 2^-3, θ = 1 and pre = b_enc = 1 + u·ε (rows with x = 0),
# u = (pre - θ)/ε is computed without rounding. K is open (edges outside); pre = θ does not fire.
EDGE_BANDWIDTH = 0.125
EDGE_U = [-0.5, 0.5, 0.0, -0.25, 0.25]

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.float64]
PARAMETRISATIONS = ["direct", "log"]


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    tolerance = TOLERANCE.get(expected.dtype, 2e-5)
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.detach(),
        expected.detach(),
        rtol=tolerance,
        atol=tolerance * max(scale, 1e-30),
        msg=what or None,
    )


def _set_thresholds(sae: GemmaScopeTrainingSAE, theta: torch.Tensor) -> None:
    with torch.no_grad():
        if sae.cfg.threshold_parametrisation == "log":
            sae.log_threshold.copy_(theta.log())
        else:
            sae.threshold.copy_(theta)


@torch.no_grad()
def _pre(sae: GemmaScopeTrainingSAE, x: torch.Tensor) -> torch.Tensor:
    return sae.process_sae_in(x) @ sae.W_enc + sae.b_enc


def make_sae(
    scenario: str, parametrisation: str = "direct", dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[GemmaScopeTrainingSAE, torch.Tensor]:
    """An SAE and a batch for one scenario (thresholds set on that batch's pre-activations).

    * ``"typical"``: each latent fires on ~5% of rows; latents 0-5 have their top entry inside the
      window (3 just above θ, 3 just below); latents 10-12 are dead (never fire, no window).
    * ``"silent"``: nothing fires, nothing is in the window.
    * ``"full"``: every entry fires.
    * ``"edges"``: ε = 1/8 and half the rows are zero, where latents 0-4 sit exactly at
      ``u = EDGE_U``; the other latents as in ``"typical"``.
    """
    torch.manual_seed(0)
    cfg = gemmascope_sae_config(
        D_IN, D_SAE, threshold_parametrisation=parametrisation, dtype=str(dtype).removeprefix("torch."),
        device=device, jumprelu_bandwidth=EDGE_BANDWIDTH if scenario == "edges" else EPS,
    )  # fmt: skip
    sae = GemmaScopeTrainingSAE(cfg)
    x = torch.randn(BATCH, D_IN, dtype=torch.float32, device=device)
    edge_latents = list(range(len(EDGE_U)))
    with torch.no_grad():
        sae.b_enc.normal_(0.3, 0.1)
        sae.b_dec.normal_(0.0, 0.1)
        if scenario == "full":
            sae.b_enc.add_(100.0)  # every pre-activation far above θ
        if scenario == "edges":
            x[: BATCH // 2] = 0.0
            sae.b_dec.zero_()
            sae.b_enc[edge_latents] = (
                1.0 + torch.tensor(EDGE_U, dtype=sae.dtype, device=device) * EDGE_BANDWIDTH
            )
    pre = _pre(sae, x)
    if scenario == "edges":
        theta = torch.quantile(pre, 0.9, dim=0)
        theta[edge_latents] = 1.0
    elif scenario == "typical":
        theta = torch.quantile(pre, 0.95, dim=0)
        top = pre.max(dim=0).values
        for latent, offset in zip(WINDOW_LATENTS, WINDOW_OFFSETS, strict=True):
            theta[latent] = top[latent] - offset * EPS
        theta[DEAD_LATENTS] = 1e3
    elif scenario == "silent":
        theta = torch.full((D_SAE,), 1e3, dtype=sae.dtype, device=device)
    else:
        theta = torch.full((D_SAE,), 1e-3, dtype=sae.dtype, device=device)
    _set_thresholds(sae, theta)
    return sae, x


def with_fast_path(sae: GemmaScopeTrainingSAE, fast_path: str) -> GemmaScopeTrainingSAE:
    twin = copy.deepcopy(sae)
    twin.cfg.fast_path = fast_path  # type: ignore[assignment]
    return twin


def forward_backward(sae: GemmaScopeTrainingSAE, x: torch.Tensor) -> TrainStepOutput:
    sae.zero_grad(set_to_none=True)
    step_input = TrainStepInput(
        sae_in=x, coefficients={"l0": L0_COEFFICIENT}, dead_neuron_mask=None, n_training_steps=1,
        is_logging_step=False,
    )  # fmt: skip
    output = sae.training_forward_pass(step_input)
    output.loss.backward()
    return output


def assert_same_step(sparse: GemmaScopeTrainingSAE, dense: GemmaScopeTrainingSAE, x: torch.Tensor) -> None:
    got, expected = forward_backward(sparse, x), forward_backward(dense, x)
    # The encoder is the same op on the same values: identical pre-activations, firing and L0.
    assert torch.equal(got.hidden_pre, expected.hidden_pre)
    assert torch.equal(got.feature_acts, expected.feature_acts)
    assert torch.equal(got.losses["l0_loss"], expected.losses["l0_loss"])
    assert got.sae_out.dtype == expected.sae_out.dtype and got.loss.dtype == expected.loss.dtype
    assert_matches(got.sae_out, expected.sae_out, "sae_out")
    assert_matches(got.losses["mse_loss"], expected.losses["mse_loss"], "mse_loss")
    assert_matches(got.loss, expected.loss, "loss")
    for (name, param), (_, reference) in zip(
        sparse.named_parameters(), dense.named_parameters(), strict=True
    ):
        assert param.grad is not None and reference.grad is not None, name
        assert param.grad.shape == reference.grad.shape and param.grad.dtype == reference.grad.dtype
        assert_matches(param.grad, reference.grad, f"gradient of {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
@pytest.mark.parametrize("scenario", ["typical", "silent", "full", "edges"])
def test_sparse_step_matches_the_dense_reference(
    scenario: str, parametrisation: str, dtype: torch.dtype, device: str
) -> None:
    sae, x = make_sae(scenario, parametrisation, dtype, device)
    sparse, dense = with_fast_path(sae, "sparse"), with_fast_path(sae, "dense")
    assert_same_step(sparse, dense, x)
    assert sparse.last_step_path == "sparse" and dense.last_step_path == "dense"


def test_the_edges_scenario_hits_the_window_edges_exactly() -> None:
    sae, x = make_sae("edges")
    pre = _pre(sae, x)
    u = (pre - sae.threshold.detach()) / EDGE_BANDWIDTH
    assert u[0, : len(EDGE_U)].tolist() == EDGE_U


def test_the_typical_scenario_has_window_entries_on_both_sides_of_theta_and_dead_latents() -> None:
    """The constructed cases exist, and the sparse path gives them the estimators' gradients."""
    sae, x = make_sae("typical")
    pre, theta = _pre(sae, x), sae.threshold.detach()
    u = (pre - theta) / EPS
    window = (u > -0.5) & (u < 0.5)
    active = pre > theta
    for latent in WINDOW_LATENTS:
        assert window[:, latent].any()
    assert (window & active).any() and (window & ~active).any()
    assert not (active | window)[:, DEAD_LATENTS].any()
    sparse = with_fast_path(sae, "sparse")
    output = forward_backward(sparse, x)
    assert sparse.threshold.grad is not None and sparse.W_dec.grad is not None
    assert torch.all(sparse.threshold.grad[WINDOW_LATENTS] != 0)  # only the window trains θ
    assert torch.all(sparse.threshold.grad[DEAD_LATENTS] == 0)
    assert torch.all(sparse.W_dec.grad[DEAD_LATENTS] == 0) and torch.all(
        sparse.W_enc.grad[:, DEAD_LATENTS] == 0
    )
    # A window latent below θ fires nowhere, yet θ moves; one above fires in its top row.
    assert output.feature_acts[:, 0].count_nonzero() == 0 and output.feature_acts[:, 5].count_nonzero() > 0


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
def test_sequence_shaped_inputs_are_flattened(parametrisation: str) -> None:
    sae, x = make_sae("typical", parametrisation)
    batch = x.reshape(4, BATCH // 4, D_IN)
    assert_same_step(with_fast_path(sae, "sparse"), with_fast_path(sae, "dense"), batch)


def test_bf16_autocast_has_the_dense_paths_dtypes() -> None:
    """Under autocast only the encoder product runs in bf16 on the sparse path (the same op as the
    dense path's); the dense path's decoder and backward GEMMs are bf16 too, so compare loosely."""
    sae, x = make_sae("typical")
    sparse, dense = with_fast_path(sae, "sparse"), with_fast_path(sae, "dense")
    outputs = []
    for model in (sparse, dense):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            step_input = TrainStepInput(
                sae_in=x, coefficients={"l0": L0_COEFFICIENT}, dead_neuron_mask=None, n_training_steps=1,
                is_logging_step=False,
            )  # fmt: skip
            outputs.append(model.training_forward_pass(step_input))
        outputs[-1].loss.backward()
    got, expected = outputs
    assert sparse.last_step_path == "sparse"
    assert torch.equal(got.hidden_pre, expected.hidden_pre) and torch.equal(
        got.feature_acts, expected.feature_acts
    )
    for field in ("sae_out", "feature_acts", "hidden_pre", "loss"):
        assert getattr(got, field).dtype == getattr(expected, field).dtype, field
    torch.testing.assert_close(got.sae_out, expected.sae_out, rtol=2e-2, atol=2e-2)
    for (name, param), (_, reference) in zip(
        sparse.named_parameters(), dense.named_parameters(), strict=True
    ):
        assert param.grad is not None and reference.grad is not None
        assert param.grad.dtype == param.dtype, name
        scale = float(reference.grad.abs().max())
        torch.testing.assert_close(param.grad, reference.grad, rtol=3e-2, atol=3e-2 * scale, msg=name)


def test_auto_rule_at_both_extremes() -> None:
    cpu = torch.device("cpu")
    assert prefers_sparse(0.0, cpu) and not prefers_sparse(1.0, cpu)
    assert prefers_sparse(SPARSE_DENSITY_CUTOFF["cpu"], cpu)
    assert not prefers_sparse(SPARSE_DENSITY_CUTOFF["cpu"] + 1e-3, cpu)
    # Device kinds without a measured cut-off (CUDA until a GPU run measures it) stay dense.
    for unmeasured in ("cuda", "meta"):
        assert unmeasured not in SPARSE_DENSITY_CUTOFF
        assert not prefers_sparse(0.0, torch.device(unmeasured))


@pytest.mark.parametrize(
    ("scenario", "expected_path"), [("typical", "sparse"), ("silent", "sparse"), ("full", "dense")]
)
def test_auto_chooses_per_step_and_matches_the_reference(scenario: str, expected_path: str) -> None:
    sae, x = make_sae(scenario)
    auto, dense = with_fast_path(sae, "auto"), with_fast_path(sae, "dense")
    assert_same_step(auto, dense, x)
    assert auto.last_step_path == expected_path


def test_auto_falls_back_to_dense_and_sparse_refuses_when_the_step_needs_the_dense_graph() -> None:
    sae, x = make_sae("typical")
    hooked = with_fast_path(sae, "auto")
    hooked.hook_sae_acts_post.add_hook(lambda acts, hook: acts * 2)
    forward_backward(hooked, x)
    assert hooked.last_step_path == "dense"
    with pytest.raises(ValueError, match="hooks"):
        forward_backward(with_fast_path(hooked, "sparse"), x)
    with pytest.raises(ValueError, match="gradient"):
        forward_backward(with_fast_path(sae, "sparse"), x.clone().requires_grad_())
    auto = with_fast_path(sae, "auto")
    forward_backward(auto, x.clone().requires_grad_())
    assert auto.last_step_path == "dense"


# -- through the recipe's trainer --------------------------------------------------------------


def synthetic_batches(seed: int = 0, device: str = "cpu") -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(D_IN, generator=generator)
    while True:
        yield ((torch.randn(BATCH, D_IN, generator=generator) + mean) * 3.0).to(device)


def train(
    fast_path: str, steps: int, dtype: torch.dtype, device: str = "cpu", **overrides: Any
) -> tuple[GemmaScopeSAETrainer, GemmaScopeTrainingSAE]:
    """A few recipe steps with η large enough to move every parameter visibly; also returns the
    untrained SAE, folded like the trained one (fit() ends with the fold)."""
    torch.manual_seed(0)
    cfg = gemmascope_sae_config(
        D_IN, D_SAE, fast_path=fast_path, dtype=str(dtype).removeprefix("torch."), device=device,
        l0_warm_up_steps=0, l0_coefficient=1e-2, **overrides,
    )  # fmt: skip
    sae = GemmaScopeTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=1e-3, lr_end=1e-4,
        adam_beta1=0.0, adam_beta2=0.999, lr_warm_up_steps=2, n_batches_for_norm_estimate=2, device=device,
    )  # fmt: skip
    trainer = GemmaScopeSAETrainer(cfg=trainer_cfg, sae=sae, data_provider=synthetic_batches(device=device))
    trainer.ensure_input_scale()
    # Thresholds at each latent's 95th percentile of the scaled data: ~5% density, so "auto" goes
    # sparse, and pre-activations cross θ and its window as the weights move.
    scale = trainer.activation_scaler.scaling_factor
    assert scale is not None
    probe = next(synthetic_batches(device=device)) * scale
    theta = torch.quantile(_pre(sae, probe), 0.95, dim=0).clamp(min=1e-3)
    _set_thresholds(sae, theta.to(sae.dtype))
    untrained = copy.deepcopy(sae)
    untrained.fold_activation_norm_scaling_factor(scale)
    trainer.fit()
    return trainer, untrained


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
@pytest.mark.parametrize("fast_path", ["sparse", "auto"])
def test_parameters_after_optimiser_steps_match_the_dense_reference(
    fast_path: str, parametrisation: str, device: str
) -> None:
    steps = 6
    reference, initial = train(
        "dense", steps, torch.float64, device, threshold_parametrisation=parametrisation
    )
    trainer, _ = train(fast_path, steps, torch.float64, device, threshold_parametrisation=parametrisation)
    # "auto" goes sparse at ~5% density where the device has a measured cut-off (the CPU).
    expected_path = "sparse" if fast_path == "sparse" or device in SPARSE_DENSITY_CUTOFF else "dense"
    assert isinstance(trainer.sae, GemmaScopeTrainingSAE) and trainer.sae.last_step_path == expected_path
    for (name, param), (_, expected), (_, start) in zip(
        trainer.sae.named_parameters(),
        reference.sae.named_parameters(),
        initial.named_parameters(),
        strict=True,
    ):
        assert not torch.allclose(expected, start), f"{name} did not move: the comparison would be empty"
        assert_matches(param, expected, name)
    # The trainer's firing bookkeeping sees the same firing.
    assert torch.equal(trainer.act_freq_scores, reference.act_freq_scores)
    assert torch.equal(trainer.n_forward_passes_since_fired, reference.n_forward_passes_since_fired)
