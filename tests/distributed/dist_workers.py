"""Worker functions run in spawned processes by the distributed tests (importable by the children).

Each worker joins a real Gloo group through torchrun's environment variables and writes what the
test checks to ``out_dir``; the assertions run in the pytest process.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sae_lens.config import SAETrainerConfig

from saelens_gemmascope.training.config import gemmascope_sae_config
from saelens_gemmascope.training.distributed import (
    DistContext,
    broadcast_sae_weights,
    estimate_input_scale_distributed,
    init_distributed,
    load_rank_checkpoint,
    make_trainer,
    save_rank_checkpoint,
    train_data_parallel,
    train_sae_sharded,
)
from saelens_gemmascope.training.input_scale import estimate_input_scale
from saelens_gemmascope.training.sae import GemmaScopeTrainingSAE

D_IN, D_SAE = 16, 64
LOCAL_BATCH = 32
STEPS = 8
LADDER = {"a": 1e-3, "b": 3e-3, "c": 1e-2}  # three SAEs over two ranks: rank 0 owns a and c


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def join_group(rank: int, world_size: int, port: int, timeout_s: float) -> DistContext:
    # What torchrun would export for this rank.
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    return init_distributed(timeout_s=timeout_s)


def global_batches(world_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Structured activations (a mean offset plus a few strong directions), scale far from 1."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(D_IN, generator=generator)
    mixing = torch.randn(4, D_IN, generator=generator)
    while True:
        codes = torch.relu(torch.randn(LOCAL_BATCH * world_size, 4, generator=generator))
        noise = 0.1 * torch.randn(LOCAL_BATCH * world_size, D_IN, generator=generator)
        yield (codes @ mixing + mean + noise) * 7.0


def local_batches(ctx: DistContext, seed: int = 0) -> Iterator[torch.Tensor]:
    """This rank's shard of every global batch: rows ``rank::world_size``."""
    for batch in global_batches(ctx.world_size, seed):
        yield batch[ctx.rank :: ctx.world_size]


def skip(batches: Iterator[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    for _ in range(n):
        next(batches)
    return batches


def new_sae(seed: int, l0_coefficient: float = 3e-3) -> GemmaScopeTrainingSAE:
    torch.manual_seed(seed)
    cfg = gemmascope_sae_config(D_IN, D_SAE, l0_coefficient, l0_warm_up_steps=4, jumprelu_init_threshold=0.05)
    return GemmaScopeTrainingSAE(cfg)


def trainer_cfg(batch_size: int) -> SAETrainerConfig:
    # A larger η and a short warm-up than the recipe's, so that 8 steps move every parameter.
    return SAETrainerConfig(
        total_training_samples=batch_size * STEPS, train_batch_size_samples=batch_size, lr=3e-3,
        lr_end=3e-4, lr_warm_up_steps=4, adam_beta1=0.0, adam_beta2=0.999, n_batches_for_norm_estimate=4,
    )  # fmt: skip


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _data_parallel(ctx: DistContext, out: Path) -> None:
    scale = estimate_input_scale_distributed(local_batches(ctx, seed=1), 4, ctx)
    # Different seeds per rank: train_data_parallel must start every rank from rank 0's weights.
    sae = new_sae(seed=100 + ctx.rank)
    train_data_parallel(sae, local_batches(ctx), STEPS, ctx, trainer_cfg(LOCAL_BATCH), scale)
    result: dict[str, Any] = {"params": params(sae), "scale": scale}
    if ctx.is_main:
        reference_scale = estimate_input_scale(global_batches(ctx.world_size, seed=1), 4)
        reference = make_trainer(
            new_sae(seed=100), trainer_cfg(LOCAL_BATCH * ctx.world_size), reference_scale
        )
        batches = global_batches(ctx.world_size)
        for _ in range(STEPS):
            reference.step(next(batches))
            reference.n_training_steps += 1
        result |= {"reference": params(reference.sae), "reference_scale": reference_scale}
        result["initial"] = params(new_sae(seed=100))
    torch.save(result, out / f"data_parallel_rank{ctx.rank}.pt")


def _sae_sharded(ctx: DistContext, out: Path) -> None:
    scale = estimate_input_scale_distributed(local_batches(ctx, seed=1), 4, ctx)
    saes = {name: new_sae(seed=200, l0_coefficient=lam) for name, lam in LADDER.items()}
    trainers = train_sae_sharded(saes, local_batches(ctx), STEPS, ctx, trainer_cfg(LOCAL_BATCH * 2), scale)
    broadcast_sae_weights(saes, ctx)
    result: dict[str, Any] = {"owned": sorted(trainers), "params": {n: params(s) for n, s in saes.items()}}
    if ctx.is_main:
        result["reference"] = {}
        for name, lam in LADDER.items():
            alone = make_trainer(new_sae(seed=200, l0_coefficient=lam), trainer_cfg(LOCAL_BATCH * 2), scale)
            batches = global_batches(ctx.world_size)
            for _ in range(STEPS):
                alone.step(next(batches))
                alone.n_training_steps += 1
            result["reference"][name] = params(alone.sae)
    torch.save(result, out / f"sae_sharded_rank{ctx.rank}.pt")


def _checkpoint_round_trip(ctx: DistContext, out: Path) -> None:
    half = STEPS // 2
    cfg = trainer_cfg(LOCAL_BATCH)
    trainer = train_data_parallel(new_sae(seed=300), local_batches(ctx), half, ctx, cfg, 7.0)
    save_rank_checkpoint(out / "ckpt", ctx, {"sae": trainer}, step=half)
    train_data_parallel(trainer.sae, skip(local_batches(ctx), half), half, ctx, cfg, 7.0, trainer=trainer)
    # A fresh process state: other initial weights, fresh Adam and schedules, no C.
    resumed = make_trainer(new_sae(seed=999), cfg, input_scale=1.0)
    step = load_rank_checkpoint(out / "ckpt", ctx, {"sae": resumed})
    train_data_parallel(resumed.sae, skip(local_batches(ctx), step), half, ctx, cfg, 1.0, trainer=resumed)
    result = {
        "step": step,
        "continuous": params(trainer.sae),
        "resumed": params(resumed.sae),
        "n_training_steps": (trainer.n_training_steps, resumed.n_training_steps),
        "scaling_factor": (
            trainer.activation_scaler.scaling_factor,
            resumed.activation_scaler.scaling_factor,
        ),
        "files": sorted(p.name for p in (out / "ckpt").iterdir()),
    }
    torch.save(result, out / f"checkpoint_rank{ctx.rank}.pt")


def equivalence_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Runs the three equivalence scenarios in one group (one process start-up for all of them)."""
    ctx = join_group(rank, world_size, port, timeout_s=60)
    out = Path(out_dir)
    try:
        _data_parallel(ctx, out)
        _sae_sharded(ctx, out)
        _checkpoint_round_trip(ctx, out)
    finally:
        dist.destroy_process_group()


def failing_rank_worker(
    rank: int, world_size: int, port: int, out_dir: str, timeout_s: float, failure: str
) -> None:
    """Rank 1 dies (``failure="exit"``) or stalls (``"hang"``) before a collective; rank 0 records
    how its all_reduce ended and exits 3."""
    join_group(rank, world_size, port, timeout_s=timeout_s)
    dist.barrier()  # both ranks are in the group
    if rank == 1:
        if failure == "hang":
            time.sleep(600)  # alive but never joins: only the timeout can end rank 0's wait
        os._exit(1)
    started = time.monotonic()
    try:
        dist.all_reduce(torch.ones(4))
    except Exception as error:  # the backend's own error type varies (DistBackendError, RuntimeError)
        elapsed = time.monotonic() - started
        Path(out_dir, "error.txt").write_text(f"{type(error).__name__}\n{elapsed:.2f}\n{error}")
        os._exit(3)
    Path(out_dir, "error.txt").write_text("no error")
    os._exit(0)
