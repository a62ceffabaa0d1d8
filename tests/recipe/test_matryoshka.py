"""Matryoshka prefixes on ``jumprelu_gemmascope`` (``matryoshka_widths``): the loss by hand, which
latents each prefix term trains, validation, the sparse path's fallback, the saved form, a transcoder
step, and a short training run where the smallest prefix reconstructs better than the same latents
of an SAE trained without prefixes.

The hand case (float64, ε tiny so no entry sits in the estimators' window; no pre-encoder bias):

    x = [[1, 0], [0, 2]],  W_enc = [[1, 0, 1], [0, 1, 1]],  θ = 0.5  ->  f = [[1, 0, 1], [0, 2, 2]]
    W_dec rows: [1, 0], [0, 1], [0.5, 0.5];  b_dec = [0.1, -0.1];  widths (1,) -> prefixes 1 and 3

    full:     x̂ = [[1.6, 0.4], [1.1, 2.9]]    errors [0.6, 0.4], [1.1, 0.9]   MSE (0.52 + 2.02)/2 = 1.27
    prefix 1: x̂ = [[1.1, -0.1], [0.1, -0.1]]  errors [0.1, -0.1], [0.1, -2.1] MSE (0.02 + 4.42)/2 = 2.22
    mse_loss = (2.22 + 1.27)/2 = 1.745
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from saelens_gemmascope.recipe import GemmaScopeSAETrainer, gemmascope_sae_config
from saelens_gemmascope.recipe.config import gemmascope_transcoder_config
from saelens_gemmascope.recipe.matryoshka import partial_decodes
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig
from saelens_gemmascope.recipe.transcoder import GemmaScopeTrainingSkipTranscoder

F64 = torch.float64


def step_input(x: torch.Tensor, l0: float = 0.0) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x, coefficients={"l0": l0}, dead_neuron_mask=None, n_training_steps=1, is_logging_step=False
    )


def hand_sae(fast_path: str = "auto", widths: tuple[int, ...] | None = (1,)) -> GemmaScopeTrainingSAE:
    cfg = gemmascope_sae_config(
        2, 3, 0.0, dtype="float64", jumprelu_bandwidth=1e-6, jumprelu_init_threshold=0.5,
        apply_b_dec_to_input=False, fast_path=fast_path, matryoshka_widths=widths,
    )  # fmt: skip
    sae = GemmaScopeTrainingSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=F64))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=F64))
        sae.b_dec.copy_(torch.tensor([0.1, -0.1], dtype=F64))
    return sae


HAND_X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)


def forward_backward(sae: GemmaScopeTrainingSAE, x: torch.Tensor, l0: float = 0.0) -> TrainStepOutput:
    sae.zero_grad(set_to_none=True)
    output = sae.training_forward_pass(step_input(x, l0))
    output.loss.backward()
    return output


# -- the loss and its gradients by hand ----------------------------------------------------------


@pytest.mark.parametrize("fast_path", ["dense", "auto"])
def test_loss_is_the_mean_of_the_prefix_mses_by_hand(fast_path: str) -> None:
    sae = hand_sae(fast_path)
    output = forward_backward(sae, HAND_X)
    assert sae.last_step_path == "dense"
    torch.testing.assert_close(output.losses["mse_loss"], torch.tensor(1.745, dtype=F64))
    torch.testing.assert_close(output.loss, torch.tensor(1.745, dtype=F64))
    # sae_out stays the full reconstruction (what SAELens's explained variance is about).
    torch.testing.assert_close(output.sae_out, torch.tensor([[1.6, 0.4], [1.1, 2.9]], dtype=F64))
    # ∂/∂W_dec[j] = (1/2)·Σ_terms mean_r 2·err_r·f_rj over the terms that contain latent j:
    # latent 0 in both: (1/2)·([0.1, -0.1] + [0.6, 0.4]); latents 1, 2 only in the full term:
    # (1/2)·mean_r 2·err_r·f_rj = (1/2)·[2.2, 1.8] and (1/2)·[2.8, 2.2].
    expected = torch.tensor([[0.35, 0.15], [1.1, 0.9], [1.4, 1.1]], dtype=F64)
    assert sae.W_dec.grad is not None
    torch.testing.assert_close(sae.W_dec.grad, expected)


def test_without_prefixes_the_loss_is_the_full_mse() -> None:
    output = forward_backward(hand_sae(widths=None), HAND_X)
    torch.testing.assert_close(output.losses["mse_loss"], torch.tensor(1.27, dtype=F64))


def test_each_prefix_term_trains_only_the_latents_inside_it() -> None:
    torch.manual_seed(0)
    feature_acts = torch.rand(5, 6, dtype=F64, requires_grad=True)
    W_dec, target = torch.randn(6, 4, dtype=F64), torch.randn(5, 4, dtype=F64)
    widths = (2, 4, 6)
    decodes = partial_decodes(feature_acts, W_dec, widths)
    for width, decoded in zip(widths, decodes, strict=True):
        torch.testing.assert_close(decoded, feature_acts[:, :width] @ W_dec[:width])
        term = (decoded - target).square().sum(dim=-1).mean()
        (grad,) = torch.autograd.grad(term, feature_acts, retain_graph=True)
        assert bool((grad[:, :width] != 0).all()), f"a latent inside prefix {width} got no gradient"
        assert bool((grad[:, width:] == 0).all()), f"a latent beyond prefix {width} got gradient"


# -- the config --------------------------------------------------------------------------------


def test_widths_are_checked_and_end_at_d_sae() -> None:
    assert gemmascope_sae_config(4, 8).matryoshka_widths is None
    assert gemmascope_sae_config(4, 8, matryoshka_widths=[]).matryoshka_widths is None
    assert gemmascope_sae_config(4, 8, matryoshka_widths=[2, 4]).matryoshka_widths == (2, 4, 8)
    assert gemmascope_sae_config(4, 8, matryoshka_widths=(2, 8)).matryoshka_widths == (2, 8)
    for bad in ([4, 2], [2, 2], [0, 4], [4, 9], [2.5], "24"):
        with pytest.raises(ValueError, match="matryoshka"):
            gemmascope_sae_config(4, 8, matryoshka_widths=bad)


def test_config_round_trips_through_dict_and_json() -> None:
    cfg = gemmascope_sae_config(4, 8, matryoshka_widths=[2, 4])
    again = GemmaScopeTrainingSAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.matryoshka_widths == (2, 4, 8)
    assert again.to_dict() == cfg.to_dict()


def test_saved_form_is_plain_jumprelu(tmp_path: Path) -> None:
    sae = hand_sae(widths=(1, 2))
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert loaded.cfg.architecture() == "jumprelu"
    details = loaded.cfg.metadata.training_architecture_details  # type: ignore[attr-defined]
    assert details["matryoshka_widths"] == [1, 2, 3]
    torch.testing.assert_close(loaded.decode(loaded.encode(HAND_X)), sae.decode(sae.encode(HAND_X)))


# -- the sparse fast path ----------------------------------------------------------------------


def sparse_case(**knobs: object) -> tuple[GemmaScopeTrainingSAE, torch.Tensor]:
    """Latents firing on ~5 % of a batch: sparse enough for "auto" to go sparse on the CPU."""
    torch.manual_seed(0)
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(16, 64, dtype="float64", **knobs))
    x = torch.randn(32, 16, dtype=F64)
    with torch.no_grad():
        sae.threshold.copy_(torch.quantile(sae.process_sae_in(x) @ sae.W_enc + sae.b_enc, 0.95, dim=0))
    return sae, x


def test_auto_falls_back_to_dense_and_sparse_refuses() -> None:
    """The path taken; the numbers of that path are checked independently below."""
    plain, x = sparse_case()
    forward_backward(plain, x, l0=0.5)
    assert plain.last_step_path == "sparse"
    sae, x = sparse_case(matryoshka_widths=[8, 32])
    forward_backward(sae, x, l0=0.5)
    assert sae.last_step_path == "dense"
    sae.cfg.fast_path = "sparse"
    with pytest.raises(ValueError, match="matryoshka_widths"):
        forward_backward(sae, x, l0=0.5)


def plain_torch_matryoshka_step(
    sae: GemmaScopeTrainingSAE, x: torch.Tensor, l0: float
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``mse_loss``, the whole loss and every parameter's gradient, from the SAE's weights with plain
    torch ops: no method of the SAE, its estimators or ``partial_decodes``. θ's gradient is the
    rectangle-kernel formula written out: -(θ/ε)·Σ_rows K·∂loss/∂f from the JumpReLU, plus
    -(λ/ε)·Σ_rows K/n from the L0 penalty."""
    W_enc, b_enc, W_dec, b_dec = (
        param.detach().clone().requires_grad_() for param in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    )
    theta, eps, n_rows = sae.threshold.detach(), sae.cfg.jumprelu_bandwidth, x.shape[0]
    pre = (x - b_dec) @ W_enc + b_enc  # the recipe's pre-encoder bias
    fires = (pre.detach() > theta).to(F64)
    f = pre * fires
    f.retain_grad()
    mses = [
        ((f[:, :width] @ W_dec[:width] + b_dec - x) ** 2).sum(dim=-1).mean()
        for width in sae.cfg.matryoshka_widths or ()
    ]
    mse_loss = torch.stack(mses).mean()
    # The prefixes' terms differ: their mean is not the full MSE.
    assert abs(float(mses[0].detach() - mses[-1].detach())) > 0.1
    mse_loss.backward()
    assert f.grad is not None
    in_window = ((pre.detach() - theta) / eps).abs() < 0.5
    theta_grad = (-(theta / eps) * in_window * f.grad).sum(dim=0) - (l0 / eps) * in_window.sum(dim=0) / n_rows
    loss = mse_loss.detach() + l0 * fires.sum(dim=-1).mean()
    grads = {"W_enc": W_enc.grad, "b_enc": b_enc.grad, "W_dec": W_dec.grad, "b_dec": b_dec.grad}
    return mse_loss.detach(), loss, {**grads, "threshold": theta_grad}  # type: ignore[dict-item]


@pytest.mark.parametrize("fast_path", ["auto", "dense"])
def test_matryoshka_step_matches_a_plain_torch_computation(fast_path: str) -> None:
    sae, x = sparse_case(matryoshka_widths=[8, 32], fast_path=fast_path)
    with torch.no_grad():  # a few entries inside θ's window, so θ's estimator has something to send
        pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
        sae.threshold[:4] = pre[0, :4] + torch.tensor([-2e-4, -1e-4, 1e-4, 2e-4], dtype=F64)
    output = forward_backward(sae, x, l0=0.5)
    mse_loss, loss, grads = plain_torch_matryoshka_step(sae, x, l0=0.5)
    torch.testing.assert_close(output.losses["mse_loss"], mse_loss)
    torch.testing.assert_close(output.loss, loss)
    assert bool(grads["threshold"][:4].ne(0).all())
    for name, expected in grads.items():
        got = getattr(sae, name).grad
        assert got is not None, name
        torch.testing.assert_close(got, expected, msg=name)


# -- a transcoder ------------------------------------------------------------------------------


def test_skip_transcoder_step_averages_its_prefixes_with_the_skip_term() -> None:
    torch.manual_seed(0)
    cfg = gemmascope_transcoder_config(
        4, 6, 0.0, d_out=3, skip=True, dtype="float64", matryoshka_widths=[2], jumprelu_init_threshold=0.0
    )
    transcoder = GemmaScopeTrainingSkipTranscoder(cfg)
    with torch.no_grad():
        transcoder.W_skip.normal_()
    x, y = torch.randn(8, 4, dtype=F64), torch.randn(8, 3, dtype=F64)
    output = forward_backward(transcoder, torch.cat([x, y], dim=-1))
    with torch.no_grad():
        f = transcoder.encode(x)
        skip = x @ transcoder.W_skip.T + transcoder.b_dec
        prefix = f[:, :2] @ transcoder.W_dec[:2] + skip
        full = f @ transcoder.W_dec + skip

        def mse(y_hat: torch.Tensor) -> torch.Tensor:
            return (y_hat - y).square().sum(dim=-1).mean()

        assert abs(float(mse(prefix) - mse(full))) > 0.1  # the terms differ: the average is not trivial
    torch.testing.assert_close(output.losses["mse_loss"], (mse(prefix) + mse(full)) / 2)
    torch.testing.assert_close(output.sae_out, full)
    assert transcoder.W_skip.grad is not None and bool(transcoder.W_skip.grad.abs().sum() > 0)


# -- what Matryoshka promises: the first latents reconstruct on their own ------------------------

D_IN, D_SAE, N_TRUE, FIRST_PREFIX, BATCH, STEPS = 24, 48, 40, 6, 256, 300


def sparse_feature_data(seed: int) -> Iterator[torch.Tensor]:
    """Sums of N_TRUE random unit directions with Zipf-like frequencies and magnitudes in [1, 2]."""
    generator = torch.Generator().manual_seed(1234)  # the same features for every stream
    directions = torch.nn.functional.normalize(torch.randn(N_TRUE, D_IN, generator=generator), dim=-1)
    frequency = 0.4 / torch.arange(1, N_TRUE + 1).float() ** 0.8
    sampler = torch.Generator().manual_seed(seed)
    while True:
        on = torch.rand(BATCH, N_TRUE, generator=sampler) < frequency
        magnitude = 1.0 + torch.rand(BATCH, N_TRUE, generator=sampler)
        yield (on * magnitude) @ directions


def train_tiny(widths: list[int] | None) -> GemmaScopeTrainingSAE:
    torch.manual_seed(0)
    cfg = gemmascope_sae_config(
        D_IN, D_SAE, 3e-3, l0_warm_up_steps=50, matryoshka_widths=widths, fast_path="dense"
    )
    sae = GemmaScopeTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=STEPS * BATCH, train_batch_size_samples=BATCH, lr=3e-3, lr_end=3e-3,
        adam_beta1=0.0, adam_beta2=0.999, lr_warm_up_steps=20, n_batches_for_norm_estimate=4, device="cpu",
    )  # fmt: skip
    trainer = GemmaScopeSAETrainer(cfg=trainer_cfg, sae=sae, data_provider=sparse_feature_data(seed=0))
    trainer.fit()
    return sae


@torch.no_grad()
def prefix_fvu(sae: GemmaScopeTrainingSAE, x: torch.Tensor, width: int) -> float:
    f = sae.encode(x)  # folded: the SAE reads raw inputs
    x_hat = f[:, :width] @ sae.W_dec[:width] + sae.b_dec
    return float((x - x_hat).square().sum() / (x - x.mean(dim=0)).square().sum())


def test_the_first_prefix_reconstructs_better_than_the_same_latents_of_a_plain_sae() -> None:
    x = next(sparse_feature_data(seed=1))  # held out: another sample of the same features
    matryoshka, plain = train_tiny([FIRST_PREFIX, 24]), train_tiny(None)
    ours, theirs = prefix_fvu(matryoshka, x, FIRST_PREFIX), prefix_fvu(plain, x, FIRST_PREFIX)
    full_ours, full_theirs = prefix_fvu(matryoshka, x, D_SAE), prefix_fvu(plain, x, D_SAE)
    print(
        f"prefix {FIRST_PREFIX} FVU {ours:.3f} vs {theirs:.3f}; full FVU {full_ours:.3f} vs {full_theirs:.3f}"
    )
    assert ours < 0.6 * theirs and ours < 0.6
    assert full_ours < 0.5  # both SAEs trained: the full width still reconstructs
