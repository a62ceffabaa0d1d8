"""Benchmark: transcoder vs SAE training throughput on the same layer of the same model, in one run.

Both train through the public path, ``saelens_gemmascope.suite.configs.training_config(preset, λ)``
then ``GemmaScopeTrainingRunner(cfg).run()``, on the same token dataset and the same model object:

* ``mlp SAE`` (the baseline): the layer's MLP-output SAE preset, reading and reconstructing
  ``blocks.L.hook_mlp_out``;
* ``transcoder``: the layer's transcoder preset, reading the MLP input (``blocks.L.ln2.hook_normalized``)
  and reconstructing the MLP output, so each step needs two activations per token instead of one.

Wall time covers each runner from construction (activation store, SAE) to the end of ``run()``,
input-scale estimate and buffer fills included. Tokens/s = the tokens the trainer counted over that
wall time; ratio = transcoder over SAE (< 1: the transcoder trains slower). The kinds alternate over
``--repeats`` rounds after one untimed run of each, so that a busy CPU hits them alike; the best round
of each kind is reported. Where transcoder training is not built, its row says so and the SAE row stands.

Models: ``tiny`` (default; the tiny Gemma 2 on the CPU, layer 1, width 256, the tiny presets' batch of
256 and context 128) or ``gemma-2-2b-random`` (gemma-2-2b's dimensions with random weights, layer 12,
width 16k, the recipe's batch of 4,096 and context 1,024; meant for a GPU).

    python benchmarks/bench_transcoder.py [--tokens 51200] [--repeats 2] [--device cpu]
    python benchmarks/bench_transcoder.py --model gemma-2-2b-random [--device cuda] [--tokens N]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import time
import warnings
from dataclasses import dataclass
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
    TINY,
    BenchModel,
    add_model_arguments,
    build_bench_model,
    describe_device,
    resolve_device,
    timed_training,
    training_token_dataset,
)
from sae_lens import logger

import saelens_gemmascope  # noqa: F401  (registers the recipe and the presets)
from saelens_gemmascope.runners import GemmaScopeTrainingRunner
from saelens_gemmascope.suite.catalog import TRANSCODER, preset_name
from saelens_gemmascope.suite.configs import registered_preset, training_config
from saelens_gemmascope.suite.preset import PresetNotTrainableError

#: The baseline first: the ratio is every other kind over it.
KINDS = ("mlp", TRANSCODER)
KIND_NAMES = {"mlp": "mlp SAE", TRANSCODER: "transcoder"}
L0_COEFFICIENT = 1e-3


@dataclass(frozen=True)
class Setup:
    """The presets' model and width per bench model, and the runner settings that fit it."""

    preset_model: str
    width: str
    default_tokens: int
    overrides: dict[str, Any]


SETUPS = {
    # The tiny presets already carry the tiny model's batch (256) and context (128).
    TINY: Setup("tiny-gemma-2", "256", 200 * 256, {}),
    GEMMA2_2B_RANDOM: Setup(
        "gemma-2-2b",
        "16k",
        50 * 4096,
        {
            "context_size": 1024,
            "train_batch_size_tokens": 4096,
            "n_batches_in_buffer": 4,
            "store_batch_size_prompts": 16,
        },
    ),
}


@dataclass(frozen=True)
class Measured:
    kind: str
    wall_s: float
    tokens: int  # what the trainer counted
    forward_calls: int
    l0: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


@dataclass(frozen=True)
class Planned:
    """One kind's runner config and where it reads (and, for a transcoder, writes)."""

    cfg: Any
    hooks: str


def runner_config(
    kind: str, bench: BenchModel, setup: Setup, tokens: int, args: argparse.Namespace
) -> Planned:
    """The public training API's config for ``kind``'s preset at the bench model's layer (raises
    PresetNotTrainableError where that preset cannot be trained)."""
    preset = registered_preset(preset_name(setup.preset_model, kind, bench.layer, setup.width))
    hooks = preset.hook_name + (f" -> {preset.output_hook_name}" if preset.output_hook_name else "")
    cfg = training_config(
        preset,
        L0_COEFFICIENT,
        device=args.device,
        training_tokens=tokens,
        n_batches_for_norm_estimate=NORM_ESTIMATE_BATCHES,
        lr_warm_up_steps=10,
        verbose=False,
        **setup.overrides,
    )
    return Planned(cfg, hooks)


def train_once(cfg: Any, kind: str, bench: BenchModel, dataset: datasets.Dataset, device: str) -> Measured:
    def run() -> tuple[int, float]:
        runner = GemmaScopeTrainingRunner(cfg, override_dataset=dataset, override_model=bench.model)
        sae = runner.run()
        assert runner.trainer is not None
        return runner.trainer.n_training_samples, float(sae.cfg.metadata.l0 or 0.0)

    (tokens, l0), wall, counter = timed_training(bench, device, run)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return Measured(kind, wall, tokens, counter.calls, l0)


def token_dataset(bench: BenchModel, cfg: Any, tokens: int) -> datasets.Dataset:
    return training_token_dataset(
        bench,
        tokens=tokens,
        context=cfg.context_size,
        batch=cfg.train_batch_size_tokens,
        buffer_batches=cfg.n_batches_in_buffer,
        store_prompts=cfg.store_batch_size_prompts,
    )


def configs(
    bench: BenchModel, setup: Setup, tokens: int, args: argparse.Namespace
) -> dict[str, Planned | str]:
    """Each kind's config, or the reason it cannot train (a string)."""
    found: dict[str, Planned | str] = {}
    for kind in KINDS:
        try:
            found[kind] = runner_config(kind, bench, setup, tokens, args)
        except PresetNotTrainableError as err:
            found[kind] = f"{KIND_NAMES[kind]} training not available: {err}"
    return found


def measure(
    planned: dict[str, Planned | str], bench: BenchModel, dataset: datasets.Dataset, args: argparse.Namespace
) -> dict[str, Measured]:
    """The best of ``args.repeats`` alternating rounds per trainable kind, after one untimed run each."""
    cfgs = {kind: p.cfg for kind, p in planned.items() if isinstance(p, Planned)}
    # The first run of a process pays one-off costs (lazy imports, allocator warm-up).
    for kind, cfg in cfgs.items():
        train_once(cfg, kind, bench, dataset, args.device)
    best: dict[str, Measured] = {}
    for _ in range(args.repeats):
        for kind, cfg in cfgs.items():
            m = train_once(cfg, kind, bench, dataset, args.device)
            if kind not in best or m.tokens_per_s > best[kind].tokens_per_s:
                best[kind] = m
    return best


def print_table(planned: dict[str, Planned | str], best: dict[str, Measured]) -> None:
    print(f"\n{'kind':<11} {'hook(s)':<52} {'wall s':>7} {'tokens':>8} {'LM fwds':>8} {'tok/s':>9} {'L0':>7}")
    for kind in KINDS:
        entry = planned[kind]
        if isinstance(entry, str):
            print(f"{KIND_NAMES[kind]:<11} {entry}")
            continue
        m = best[kind]
        print(
            f"{KIND_NAMES[kind]:<11} {entry.hooks:<52} {m.wall_s:>7.1f} {m.tokens:>8} {m.forward_calls:>8} "
            f"{m.tokens_per_s:>9.0f} {m.l0:>7.1f}"
        )
    if TRANSCODER in best and "mlp" in best:
        ratio = best[TRANSCODER].tokens_per_s / best["mlp"].tokens_per_s
        print(f"\ntranscoder / mlp SAE tokens/s: {ratio:.2f}x (< 1: the transcoder trains slower)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument(
        "--tokens", type=int, default=None, help="training tokens per run (tiny 51200, 2B 204800)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per kind (best is reported)")
    args = parser.parse_args()
    resolve_device(args)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    # Every runner warns that override_model/override_dataset make it irreproducible; so be it.
    logger.setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="sae_lens")
    setup = SETUPS[args.model]
    tokens = args.tokens or setup.default_tokens
    dtype = torch.bfloat16 if args.model == GEMMA2_2B_RANDOM else torch.float32
    start = time.perf_counter()
    bench = build_bench_model(args.model, args.device, dtype)
    print(
        f"device {describe_device(args.device)}; model {bench.name} (built in {time.perf_counter() - start:.1f} s); "
        f"layer {bench.layer}, width {setup.width}, λ {L0_COEFFICIENT:g}, {tokens} training tokens per run, "
        f"best of {args.repeats}"
    )
    planned = configs(bench, setup, tokens, args)
    baseline = planned["mlp"]
    assert isinstance(baseline, Planned), baseline
    dataset = token_dataset(bench, baseline.cfg, tokens)
    print_table(planned, measure(planned, bench, dataset, args))


if __name__ == "__main__":
    main()
