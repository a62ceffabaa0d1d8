"""Benchmark: N SAEs trained on one shared model forward pass vs N separate runs (issue 5).

For N = 1, 4, 16 SAEs (a λ ladder on one hook; ``--spread`` puts them on residual streams spread
over the layers instead), each SAE trains on the same number of tokens (``--tokens``) in two ways:

* shared: one :class:`GemmaScopeMultiSAETrainingRunner` run, where each model forward pass feeds
  every SAE (SAELens's multi-hook activation store and ``MultiSAETrainer``);
* separate (the baseline): N :class:`GemmaScopeTrainingRunner` runs, one per SAE, one after the
  other, each with its own model forward passes.

Wall time covers each runner from construction (activation store, SAEs) to the end of ``run()``,
input-scale estimate and buffer fills included. A forward pre-hook on the model counts its
forward calls and the tokens they ran on, which shows the sharing. Ratio = tokens/s per SAE,
shared over separate (> 1: sharing is faster).

Models: ``tiny`` (default; the tiny Gemma 2 on the CPU, layer 1, context 128, batch 256) or
``gemma-2-2b-random`` (gemma-2-2b's dimensions with random weights, bf16 weights by default,
layer 12, context 1,024, the recipe's batch of 4,096; meant for a GPU).

    python benchmarks/bench_suite.py [--tokens 51200] [--n 1,4,16] [--device cpu] [--spread]
    python benchmarks/bench_suite.py --model gemma-2-2b-random [--precision fp32|tf32|bf16] [--tokens N]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Per script, before the imports below, which read these once (so not in _bench_common).
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's progress bars would bury the table

import datasets
import torch
from _bench_common import (
    GEMMA2_2B_RANDOM,
    NORM_ESTIMATE_BATCHES,
    PRECISIONS,
    TINY,
    BenchModel,
    add_model_arguments,
    build_bench_model,
    describe_device,
    resolve_device,
    set_matmul_precision,
    timed_training,
    training_token_dataset,
)
from sae_lens import LoggingConfig, logger

import saelens_gemmascope  # noqa: F401  (registers jumprelu_gemmascope)
from saelens_gemmascope.recipe import (
    gemmascope_ladder,
    gemmascope_multi_runner_config,
    gemmascope_runner_config,
)
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAEConfig
from saelens_gemmascope.runners import GemmaScopeMultiSAETrainingRunner, GemmaScopeTrainingRunner
from saelens_gemmascope.runners.run_spec import RunSpec


@dataclass(frozen=True)
class Sizes:
    """Runner settings per model: the recipe's batch and context for the 2B, the tests' for tiny."""

    d_sae: int
    batch: int
    store_prompts: int  # prompts per model forward
    buffer_batches: int  # SAELens's n_batches_in_buffer
    default_tokens: int  # per SAE


SIZES = {
    TINY: Sizes(d_sae=256, batch=256, store_prompts=8, buffer_batches=8, default_tokens=200 * 256),
    GEMMA2_2B_RANDOM: Sizes(
        d_sae=16384, batch=4096, store_prompts=16, buffer_batches=4, default_tokens=50 * 4096
    ),
}


@dataclass
class RunResult:
    n_saes: int
    wall_s: float
    forward_calls: int
    forward_tokens: int
    tokens_per_sae: int  # what each SAE trained on, as its trainer counted
    runs: int = 1
    l0s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s_per_sae(self) -> float:
        return self.tokens_per_sae / self.wall_s


def run_spec(args: argparse.Namespace) -> RunSpec:
    """The run's device for every SAE and runner field (the package's one source of it)."""
    return RunSpec(device=args.device)


def ladder(n: int, d_in: int, d_sae: int, spec: RunSpec) -> dict[str, GemmaScopeTrainingSAEConfig]:
    """n λs spread geometrically over 3e-4..3e-2 (one SAE: the recipe's default 1e-3)."""
    coefficients = [1e-3] if n == 1 else [3e-4 * 100 ** (i / (n - 1)) for i in range(n)]
    return gemmascope_ladder(d_in, d_sae, coefficients, l0_warm_up_steps=50, **spec.sae_fields())


def hook_names(names: list[str], bench: BenchModel, spread: bool) -> dict[str, str]:
    if not spread or len(names) == 1:
        return dict.fromkeys(names, bench.hook)
    last = bench.n_layers - 1
    return {name: bench.resid_hook(round(i * last / (len(names) - 1))) for i, name in enumerate(names)}


def runner_overrides(sizes: Sizes, bench: BenchModel, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "context_size": bench.context,
        "train_batch_size_tokens": sizes.batch,
        "n_batches_in_buffer": sizes.buffer_batches,
        "store_batch_size_prompts": sizes.store_prompts,
        "lr_warm_up_steps": 10,
        "n_batches_for_norm_estimate": NORM_ESTIMATE_BATCHES,
        "checkpoint_path": None,
        "output_path": None,
        "logger": LoggingConfig(log_to_wandb=False),
        **run_spec(args).runner_fields(),
        "autocast": args.precision == "bf16",
    }


def timed_run(
    bench: BenchModel, device: str, run: Callable[[], tuple[int, list[float]]], n_saes: int
) -> RunResult:
    (tokens_per_sae, l0s), wall, counter = timed_training(bench, device, run)
    return RunResult(n_saes, wall, counter.calls, counter.tokens, tokens_per_sae, l0s=l0s)


def run_shared(
    n: int, bench: BenchModel, dataset: datasets.Dataset, sizes: Sizes, tokens: int, args: argparse.Namespace
) -> RunResult:
    saes = ladder(n, bench.d_model, sizes.d_sae, run_spec(args))
    cfg = gemmascope_multi_runner_config(
        saes, hook_names(list(saes), bench, args.spread), model_name=bench.name, training_tokens=tokens,
        **runner_overrides(sizes, bench, args),
    )  # fmt: skip

    def run() -> tuple[int, list[float]]:
        runner = GemmaScopeMultiSAETrainingRunner(cfg, override_dataset=dataset, override_model=bench.model)
        trained = runner.run()
        assert runner.trainer is not None
        l0s = [float(sae.cfg.metadata.l0 or 0.0) for sae in trained.values()]
        return runner.trainer.n_training_samples, l0s

    return timed_run(bench, args.device, run, n)


def run_separate(
    n: int, bench: BenchModel, dataset: datasets.Dataset, sizes: Sizes, tokens: int, args: argparse.Namespace
) -> RunResult:
    saes = ladder(n, bench.d_model, sizes.d_sae, run_spec(args))
    hooks = hook_names(list(saes), bench, args.spread)
    overrides = {**runner_overrides(sizes, bench, args), "verbose": False}
    samples: list[int] = []

    def run() -> tuple[int, list[float]]:
        l0s = []
        for name, sae_cfg in saes.items():
            cfg = gemmascope_runner_config(
                sae_cfg, model_name=bench.name, hook_name=hooks[name], training_tokens=tokens, **overrides
            )
            runner = GemmaScopeTrainingRunner(cfg, override_dataset=dataset, override_model=bench.model)
            sae = runner.run()
            assert runner.trainer is not None
            samples.append(runner.trainer.n_training_samples)
            l0s.append(float(sae.cfg.metadata.l0 or 0.0))
            del runner, sae
        return min(samples), l0s

    result = timed_run(bench, args.device, run, n)
    result.runs = n
    return result


def token_dataset(bench: BenchModel, sizes: Sizes, tokens: int) -> datasets.Dataset:
    return training_token_dataset(
        bench,
        tokens=tokens,
        context=bench.context,
        batch=sizes.batch,
        buffer_batches=sizes.buffer_batches,
        store_prompts=sizes.store_prompts,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument(
        "--model-dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 for the 2B"
    )
    parser.add_argument(
        "--tokens", type=int, default=None, help="training tokens per SAE (tiny 51200, 2B 204800)"
    )
    parser.add_argument("--n", default="1,4,16", help="comma-separated numbers of SAEs")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="SAE steps; bf16 = autocast")
    parser.add_argument("--d-sae", type=int, default=None, help="default 256 (tiny), 16384 (2B)")
    parser.add_argument(
        "--spread", action="store_true", help="SAEs on residual streams spread over the layers"
    )
    args = parser.parse_args()
    resolve_device(args)
    args.model_dtype = args.model_dtype or ("bf16" if args.model == GEMMA2_2B_RANDOM else "fp32")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    set_matmul_precision(args.precision)
    # Every runner warns that override_model/override_dataset make it irreproducible; so be it.
    logger.setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="sae_lens")
    sizes = SIZES[args.model]
    if args.d_sae:
        sizes = dataclasses.replace(sizes, d_sae=args.d_sae)
    tokens = args.tokens or sizes.default_tokens
    ns = [int(v) for v in args.n.split(",")]

    start = time.perf_counter()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.model_dtype]
    bench = build_bench_model(args.model, args.device, dtype)
    built_s = time.perf_counter() - start
    dataset = token_dataset(bench, sizes, tokens)
    where = "residual streams spread over the layers" if args.spread else bench.hook
    print(
        f"device {describe_device(args.device)}; model {bench.name} ({args.model_dtype} weights, "
        f"built in {built_s:.1f} s); SAE steps in {args.precision}"
    )
    print(
        f"SAEs: jumprelu_gemmascope d_in {bench.d_model}, d_sae {sizes.d_sae}, λ ladder 3e-4..3e-2 on {where}; "
        f"{tokens} training tokens per SAE, batch {sizes.batch}, {sizes.store_prompts} x {bench.context} "
        f"tokens per model forward"
    )
    print(
        f"\n{'N':>3} {'mode':<9} {'runs':>4} {'wall s':>8} {'LM fwds':>8} {'LM tokens':>10} "
        f"{'tok/SAE':>8} {'tok/s total':>12} {'tok/s/SAE':>10} {'mean L0':>8}"
    )
    # One untimed run of each kind first: the first run of a process pays one-off costs (lazy
    # imports, kernel and allocator warm-up) that would otherwise all land on N = 1.
    for run in (run_shared, run_separate):
        run(1, bench, dataset, sizes, tokens, args)
    summary = []
    for n in ns:
        results = {}
        for mode, run in (("shared", run_shared), ("separate", run_separate)):
            r = run(n, bench, dataset, sizes, tokens, args)
            results[mode] = r
            print(
                f"{n:>3} {mode:<9} {r.runs:>4} {r.wall_s:>8.1f} {r.forward_calls:>8} {r.forward_tokens:>10} "
                f"{r.tokens_per_sae:>8} {n * r.tokens_per_s_per_sae:>12.0f} {r.tokens_per_s_per_sae:>10.0f} "
                f"{sum(r.l0s) / len(r.l0s):>8.1f}",
                flush=True,
            )
            gc.collect()
            if torch.device(args.device).type == "cuda":
                torch.cuda.empty_cache()
        ratio = results["shared"].tokens_per_s_per_sae / results["separate"].tokens_per_s_per_sae
        fwd_ratio = results["separate"].forward_tokens / max(1, results["shared"].forward_tokens)
        summary.append((n, ratio, fwd_ratio))
    print("\nper N: tokens/s per SAE, shared over separate (> 1: one shared forward pass is faster), and the")
    print("model tokens the N separate runs needed over the shared run's")
    for n, ratio, fwd_ratio in summary:
        print(f"  N = {n:>2}: shared/separate {ratio:5.2f}x; model tokens separate/shared {fwd_ratio:5.1f}x")


if __name__ == "__main__":
    main()
