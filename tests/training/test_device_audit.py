"""The device audit on real CPU trainers: tensors planted on the ``meta`` device stand in for CPU
tensors left behind in a CUDA run, so the check is proven without a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sae_lens.config import SAETrainerConfig

from saelens_gemmascope.recipe import gemmascope_sae_config
from saelens_gemmascope.recipe.device_audit import (
    DeviceMismatchError,
    audit_devices,
    audit_training_start,
    batch_tensors,
    named_training_tensors,
    same_device,
)
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE
from saelens_gemmascope.recipe.trainer import GemmaScopeMultiSAETrainer, GemmaScopeSAETrainer

D_IN, D_SAE, BATCH = 8, 16, 32
HOOKS = {"a": "blocks.0.hook_resid_post", "b": "blocks.1.hook_resid_post"}
PARAMS = ("b_dec", "W_dec", "W_enc", "b_enc", "threshold")
ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")


def trainer_config() -> SAETrainerConfig:
    return SAETrainerConfig(
        total_training_samples=10 * BATCH, train_batch_size_samples=BATCH, lr=1e-3, lr_end=1e-4,
        adam_beta1=0.0, adam_beta2=0.999, lr_warm_up_steps=2, n_batches_for_norm_estimate=1,
    )  # fmt: skip


def make_sae() -> GemmaScopeTrainingSAE:
    return GemmaScopeTrainingSAE(gemmascope_sae_config(D_IN, D_SAE, 1e-3))


def no_batches() -> Iterator[torch.Tensor]:
    return iter(())


def single_trainer() -> tuple[GemmaScopeSAETrainer, torch.Tensor]:
    """A recipe trainer after one optimiser step (so that Adam has state), and its batch."""
    torch.manual_seed(0)
    trainer = GemmaScopeSAETrainer(cfg=trainer_config(), sae=make_sae(), data_provider=no_batches())
    batch = torch.randn(BATCH, D_IN)
    trainer.train_step(trainer.sae, batch)
    return trainer, batch


def multi_trainer() -> tuple[GemmaScopeMultiSAETrainer, dict[str, torch.Tensor]]:
    """A two-SAE recipe trainer after one lockstep optimiser step, and its multi-hook batch."""
    torch.manual_seed(0)
    trainer = GemmaScopeMultiSAETrainer(
        cfg=trainer_config(),
        saes={name: make_sae() for name in HOOKS},
        hook_names=HOOKS,
        data_provider=iter(()),
    )
    batch = {hook: torch.randn(BATCH, D_IN) for hook in HOOKS.values()}
    for name, sub in trainer.trainers.items():
        sub.step(batch[HOOKS[name]])
    return trainer, batch


def mismatch(trainer: Any, batch: Any, device: str = "cpu") -> str:
    with pytest.raises(DeviceMismatchError) as caught:
        audit_training_start(trainer, batch, device)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_fresh_cpu_trainer_passes_and_every_tensor_is_named() -> None:
    trainer, batch = single_trainer()
    audit_training_start(trainer, batch, "cpu")
    audit_training_start(trainer, batch, torch.device("cpu"))
    names = [name for name, _ in named_training_tensors(trainer)]
    expected = [f"sae.{p}" for p in PARAMS]
    expected += ["trainer.act_freq_scores", "trainer.n_forward_passes_since_fired"]
    # The recipe's Adam is fused where PyTorch has a CPU kernel: its step counters then live with
    # the parameters and are audited; otherwise they are PyTorch's host scalars and are not.
    keys = ADAM_KEYS if trainer.optimizer.param_groups[0]["fused"] else ADAM_KEYS[1:]
    expected += [f"optimizer.state[{p}].{key}" for p in PARAMS for key in keys]
    assert sorted(names) == sorted(expected)


def test_a_fresh_cpu_multi_trainer_passes_and_names_carry_the_sae() -> None:
    trainer, batch = multi_trainer()
    audit_training_start(trainer, batch, "cpu")
    names = {name for name, _ in named_training_tensors(trainer)}
    for prefix in HOOKS:
        assert {f"{prefix}/sae.W_enc", f"{prefix}/trainer.act_freq_scores"} <= names
        assert f"{prefix}/optimizer.state[W_dec].exp_avg" in names
    keys = len(ADAM_KEYS) if trainer.trainers["a"].optimizer.param_groups[0]["fused"] else len(ADAM_KEYS) - 1
    assert len(names) == 2 * (len(PARAMS) * (1 + keys) + 2)


def test_a_planted_sae_parameter_is_named() -> None:
    trainer, batch = single_trainer()
    trainer.sae.b_dec = torch.nn.Parameter(torch.empty(D_IN, device="meta"))
    message = mismatch(trainer, batch)
    assert "sae.b_dec on meta" in message
    assert message.startswith("tensors not on the run's device cpu: ")


def test_a_planted_sae_buffer_is_named() -> None:
    trainer, batch = single_trainer()
    trainer.sae.register_buffer("planted", torch.zeros(3, device="meta"))
    assert "sae.planted on meta" in mismatch(trainer, batch)


def test_a_planted_trainer_buffer_is_named() -> None:
    trainer, batch = single_trainer()
    trainer.act_freq_scores = torch.zeros(D_SAE, device="meta")
    message = mismatch(trainer, batch)
    assert "trainer.act_freq_scores on meta" in message
    assert "n_forward_passes_since_fired" not in message


def test_a_planted_optimiser_state_tensor_is_named_by_its_parameter() -> None:
    trainer, batch = single_trainer()
    param = trainer.sae.W_dec
    trainer.optimizer.state[param]["exp_avg"] = torch.empty_like(param, device="meta")
    message = mismatch(trainer, batch)
    assert "optimizer.state[W_dec].exp_avg on meta" in message
    assert "exp_avg_sq" not in message


def test_a_planted_batch_is_named() -> None:
    trainer, _ = single_trainer()
    assert "batch on meta" in mismatch(trainer, torch.empty(BATCH, D_IN, device="meta"))


def test_planted_tensors_in_a_multi_trainer_are_named_with_their_sae_and_hook() -> None:
    trainer, batch = multi_trainer()
    sub = trainer.trainers["b"]
    sub.n_forward_passes_since_fired = torch.zeros(D_SAE, device="meta")
    sub.optimizer.state[sub.sae.b_enc]["exp_avg_sq"] = torch.empty(D_SAE, device="meta")
    batch[HOOKS["a"]] = torch.empty(BATCH, D_IN, device="meta")
    message = mismatch(trainer, batch)
    assert "b/trainer.n_forward_passes_since_fired on meta" in message
    assert "b/optimizer.state[b_enc].exp_avg_sq on meta" in message
    assert f"batch[{HOOKS['a']}] on meta" in message
    assert "a/" not in message and f"batch[{HOOKS['b']}]" not in message


def test_the_expected_device_is_honoured() -> None:
    trainer, batch = single_trainer()
    message = mismatch(trainer, batch, device="meta")
    assert message.startswith("tensors not on the run's device meta: sae.b_dec on cpu, ")
    # Five named, the rest counted: parameters, buffers, optimiser state and the batch.
    n_tensors = len(list(named_training_tensors(trainer))) + 1
    assert message.count(" on cpu") == 5 and f"({n_tensors - 5} more)" in message
    assert message.endswith("must be on the run's device")
    with pytest.raises(DeviceMismatchError, match="x on cpu"):
        audit_devices("meta", [("x", torch.zeros(1))])
    audit_devices("meta", [("x", torch.zeros(1, device="meta"))])
    audit_devices("cpu", [])


def test_a_cpu_step_counter_is_exempt_only_where_pytorch_keeps_it_there() -> None:
    # Non-fused, non-capturable Adam hosts its 0-dim step on the CPU whatever the parameters'
    # device; fused Adam keeps it with the parameters. Audited against another device, the
    # non-fused step must be skipped and the fused one reported.
    param = torch.nn.Parameter(torch.ones(4))
    for fused in (False, True):
        trainer, _ = single_trainer()
        trainer.sae.W_enc.grad = torch.ones_like(trainer.sae.W_enc)
        param.grad = torch.ones_like(param)
        try:
            optimizer = torch.optim.Adam([trainer.sae.W_enc, param], fused=fused)
            optimizer.step()
        except RuntimeError:  # no fused CPU kernel in this PyTorch
            continue
        trainer.optimizer = optimizer
        assert optimizer.state[param]["step"].device.type == "cpu"
        names = [name for name, _ in named_training_tensors(trainer) if name.startswith("optimizer.")]
        # A parameter the SAE does not own is named by its place in the optimiser.
        expected = ["exp_avg", "exp_avg_sq", *(["step"] if fused else [])]
        assert sorted(names) == sorted(
            f"optimizer.state[{p}].{key}" for p in ("W_enc", "param_groups[0][1]") for key in expected
        )


def test_batch_tensors_names() -> None:
    x, y = torch.zeros(1), torch.ones(1)
    assert list(batch_tensors(x)) == [("batch", x)]
    assert list(batch_tensors({"h.0": x, "h.1": y}, name="acts")) == [("acts[h.0]", x), ("acts[h.1]", y)]
    with pytest.raises(TypeError):
        list(batch_tensors([x]))  # type: ignore[arg-type]


def test_an_object_that_is_not_a_trainer_is_refused() -> None:
    with pytest.raises(TypeError, match="SAETrainer"):
        list(named_training_tensors(object()))


@pytest.mark.parametrize(
    ("actual", "expected", "same"),
    [
        (torch.device("cpu"), torch.device("cpu"), True),
        (torch.device("cpu"), "cpu", True),
        (torch.device("cpu"), "cuda", False),
        (torch.device("meta"), "meta", True),
        (torch.device("meta"), "cpu", False),
        (torch.device("cuda", 0), "cuda:0", True),
        (torch.device("cuda", 1), "cuda:0", False),
    ],
)
def test_same_device(actual: torch.device, expected: torch.device | str, same: bool) -> None:
    assert same_device(actual, expected) is same


def test_bare_cuda_is_the_current_cuda_device() -> None:
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    assert same_device(torch.device("cuda", current), "cuda")
    assert not same_device(torch.device("cuda", current + 1), "cuda")


def test_the_trainer_audits_its_first_step_and_names_the_planted_tensor() -> None:
    """The check runs inside training (the recipe trainer's first step), not only when called."""
    torch.manual_seed(0)
    sae = make_sae()
    sae.register_buffer("planted", torch.zeros(3, device="meta"))
    trainer = GemmaScopeSAETrainer(cfg=trainer_config(), sae=sae, data_provider=no_batches())
    with pytest.raises(DeviceMismatchError, match=r"sae\.planted on meta"):
        trainer.step(torch.randn(BATCH, D_IN))
    # The same trainer without the planted tensor steps, audits once and then stops checking.
    clean = GemmaScopeSAETrainer(cfg=trainer_config(), sae=make_sae(), data_provider=no_batches())
    clean.step(torch.randn(BATCH, D_IN))
    assert clean._audited
