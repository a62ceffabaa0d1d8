"""Benchmark: CPU scaling of the data-parallel recipe step, 1 process vs 2 (Gloo).

Each rank computes the tiny Gemma 2's layer-1 residual activations on its own shard of the stdlib
corpus (special tokens removed) with :func:`shard_activations`, caches ``warm_up + steps`` local
batches, then times ``steps`` recipe steps of :func:`train_data_parallel` (forward, backward,
gradient all-reduce, decoder constraint, Adam). Weak scaling: the local batch is fixed, so 2
processes step on twice the global batch; tokens/s counts global activations per second of the
slowest rank. One torch thread per process, so the 2-process run uses two cores against one.

    python benchmarks/bench_distributed.py [--d-sae 4096] [--batch 1024] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sae_lens.config import SAETrainerConfig

from saelens_gemmascope.data import stdlib_token_dataset
from saelens_gemmascope.models.tiny import build_tiny_gemma2
from saelens_gemmascope.models.tokenizer import BOS_ID, EOS_ID, PAD_ID
from saelens_gemmascope.training.config import gemmascope_sae_config
from saelens_gemmascope.training.distributed import (
    estimate_input_scale_distributed,
    init_distributed,
    shard_activations,
    train_data_parallel,
)
from saelens_gemmascope.training.sae import GemmaScopeTrainingSAE

HOOK = "blocks.1.hook_resid_post"
CONTEXT = 128
WARM_UP = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker(rank: int, world_size: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    ctx = init_distributed(timeout_s=120)
    tiny = build_tiny_gemma2(seed=0)
    n_rows = world_size * ((WARM_UP + args.steps) * args.batch // (CONTEXT - 1) + 2)
    dataset = stdlib_token_dataset(tiny.tokenizer, CONTEXT, n_sequences=n_rows)
    stream = shard_activations(tiny.tl_model, dataset, HOOK, ctx, args.batch, (BOS_ID, EOS_ID, PAD_ID))
    batches = [next(stream) for _ in range(WARM_UP + args.steps)]
    scale = estimate_input_scale_distributed(iter(batches), WARM_UP, ctx)
    torch.manual_seed(0)
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(batches[0].shape[1], args.d_sae, l0_warm_up_steps=100))
    cfg = SAETrainerConfig(
        total_training_samples=args.batch * (WARM_UP + args.steps), train_batch_size_samples=args.batch,
        lr=7e-5, lr_end=7e-6, lr_warm_up_steps=10, adam_beta1=0.0, adam_beta2=0.999,
    )  # fmt: skip
    trainer = train_data_parallel(sae, iter(batches[:WARM_UP]), WARM_UP, ctx, cfg, scale)
    if world_size > 1:
        dist.barrier()
    started = time.perf_counter()
    train_data_parallel(sae, iter(batches[WARM_UP:]), args.steps, ctx, cfg, scale, trainer=trainer)
    elapsed = time.perf_counter() - started
    Path(out_dir, f"{world_size}_{rank}.txt").write_text(f"{elapsed}")
    if world_size > 1:
        dist.destroy_process_group()


def run(world_size: int, args: argparse.Namespace, out_dir: str) -> float:
    """Global tokens per second, timed by the slowest rank."""
    mp.spawn(worker, args=(world_size, free_port(), args, out_dir), nprocs=world_size, join=True)
    slowest = max(float(Path(out_dir, f"{world_size}_{r}.txt").read_text()) for r in range(world_size))
    return world_size * args.batch * args.steps / slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1024, help="local batch (activations per rank)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        one = run(1, args, out_dir)
        two = run(2, args, out_dir)
    print(
        f"d_in 64, d_sae {args.d_sae}, local batch {args.batch}, {args.steps} timed steps, 1 thread/process"
    )
    print(f"1 process : {one:10.0f} tokens/s")
    print(f"2 processes: {two:10.0f} tokens/s")
    print(f"ratio (2/1): {two / one:.2f}  (ideal 2.00 on 2 free cores)")


if __name__ == "__main__":
    main()
