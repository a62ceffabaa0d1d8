"""Benchmark: which fixed λ the Gemma Scope 2 presets should use with the quadratic L0 penalty.

The recipe SAE (``jumprelu_gemmascope``, ``l0_penalty="quadratic"``) adds λ·(2/L0*)·(‖f‖₀ - L0*)²
per token (mean over tokens) to the MSE, on inputs scaled to E‖x‖² = 1. The penalty is per token and
squared, so a large λ pulls *every* token's L0 towards L0* (costing reconstruction where a token
needs more or fewer latents), while a small λ mostly steers the mean and may converge slowly.

Setup: the tiny Gemma 3 (``build_tiny_gemma3(seed=0)``), ``blocks.2.hook_resid_post`` cached once on
the standard-library text (training rows and the held-out tail, BOS/EOS/PAD removed); d_sae = 256
SAEs from ``gemmascope2_sae_config`` with the frequency penalty OFF (``frequency_penalty=0``, to
isolate λ) and the λ warm-up at steps/5, trained by :class:`GemmaScopeSAETrainer` (Adam β1 0,
batch 256, constant η after its warm-up): η 2e-3 with 20 warm-up steps for the short runs (the tiny
presets' values), η 2e-4 with steps/20 warm-up steps for the long ones. Every run sees the same
batches. Measured on held-out tokens: L0, L0/L0*, FVU = Σ‖x - x̂‖² / Σ‖x - x̄‖², the standard
deviation of the per-token L0, dead latents; L0 on as many training tokens (does a miss of the
target generalise?); and wall seconds. Then FVU (and per-token L0 std)
ratios against λ = 1 at each (target, steps), both as they are and at matched held-out L0 (against
extra λ = 1 runs at targets around each L0*, interpolated in log L0), since a λ that misses its
target trades FVU for L0. CPU only, one thread.

The tiny Gemma 3's d_model is 48, so L0* = 48 lets a long run (10,000 steps) reconstruct almost
exactly with a 48-latent basis (FVU ~0.001, half the latents dead, per-token L0 std ~0.2): that
target is degenerate there; its FVU ratios then compare noise.

    python benchmarks/bench_scope2_lambda.py [--steps 300 3000] [--targets 12 48]
        [--lambdas 0.01 0.1 1 10] [--skip-long-lambdas 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's progress bars would bury the table
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from _bench_common import BenchModel, describe_device
from sae_lens.config import SAETrainerConfig

import saelens_gemmascope  # noqa: F401  (registers jumprelu_gemmascope)
from saelens_gemmascope.data import stdlib_token_dataset
from saelens_gemmascope.demo.tiny_gemma3 import build_tiny_gemma3
from saelens_gemmascope.recipe import GemmaScopeSAETrainer, gemmascope2_sae_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE

LAYER, D_SAE, BATCH, CONTEXT = 2, 256, 256, 128
LAMBDAS = (1e-2, 1e-1, 1.0, 10.0)
TARGETS = (12.0, 48.0)
REFERENCE_LAMBDA = (
    1.0  # the tiny presets' λ (TINY_SCOPE2_L0_COEFFICIENT); the real presets chose 0.03 from this benchmark
)
SHORT_STEPS = 300
SHORT_LR, SHORT_LR_WARM_UP = 2e-3, 20  # the tiny presets' TINY_OVERRIDES
LONG_LR = 2e-4
#: λ = 1 also runs at these multiples of each target, for FVU at matched L0.
FRONTIER_FACTORS = (0.8, 0.9, 1.1, 1.25)
FORWARD_ROWS = 32  # rows per model forward pass while caching


def cached_activations() -> tuple[torch.Tensor, torch.Tensor]:
    """Residual-stream activations (training rows, held-out rows) with the special tokens removed."""
    tiny = build_tiny_gemma3(seed=0)
    tokenizer = tiny.tokenizer
    specials = torch.tensor([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id])
    hook = BenchModel.resid_hook(LAYER)
    splits = []
    for holdout in (False, True):
        rows = torch.tensor(stdlib_token_dataset(tokenizer, CONTEXT, holdout=holdout)["input_ids"])
        chunks = []
        with torch.no_grad():
            for tokens in rows.split(FORWARD_ROWS):
                _, cache = tiny.tl_model.run_with_cache(tokens, names_filter=[hook])
                keep = ~torch.isin(tokens.reshape(-1), specials)
                chunks.append(cache[hook].reshape(-1, cache[hook].shape[-1])[keep])
        splits.append(torch.cat(chunks))
    return splits[0], splits[1]


def batches(acts: torch.Tensor, seed: int = 0) -> Iterator[torch.Tensor]:
    """Shuffled full batches, epoch after epoch; the same sequence for every run."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(acts), generator=generator).split(BATCH):
            if len(idx) == BATCH:
                yield acts[idx]


@dataclass(frozen=True)
class Schedule:
    steps: int
    lr: float
    lr_warm_up_steps: int


def schedule_for(steps: int) -> Schedule:
    if steps <= SHORT_STEPS:
        return Schedule(steps, SHORT_LR, SHORT_LR_WARM_UP)
    return Schedule(steps, LONG_LR, steps // 20)


@dataclass(frozen=True)
class Result:
    lam: float
    target: float
    steps: int
    l0: float
    train_l0: float  # the same SAE's L0 on as many training tokens as held-out ones
    fvu: float
    l0_std: float  # std over held-out tokens of each token's L0
    dead: int  # latents that never fire on held-out tokens
    seconds: float
    target_group: float | None = None  # matched-L0 reference runs: the ladder target they surround

    @property
    def reach(self) -> float:
        return self.l0 / self.target


def train(lam: float, target: float, schedule: Schedule, acts: torch.Tensor) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(0)
    cfg = gemmascope2_sae_config(
        acts.shape[-1],
        D_SAE,
        target,
        lam,
        frequency_penalty=0.0,
        l0_warm_up_steps=schedule.steps // 5,
    )
    sae = GemmaScopeTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=schedule.steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=schedule.lr,
        lr_end=schedule.lr / 10,  # unused: constant schedule
        lr_warm_up_steps=schedule.lr_warm_up_steps,
        adam_beta1=0.0,
        n_batches_for_norm_estimate=20,
    )
    trainer = GemmaScopeSAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches(acts))
    start = time.perf_counter()
    trainer.fit()  # ends with the SAE folded back to raw-activation space
    return sae, time.perf_counter() - start


def evaluate(
    sae: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    lam: float,
    target: float,
    steps: int,
    seconds: float,
) -> Result:
    train_acts, heldout = data
    sae.eval()
    with torch.no_grad():
        features = sae.encode(heldout)
        recon = sae.decode(features)
        train_l0 = float((sae.encode(train_acts[: len(heldout)]) > 0).float().sum(-1).mean())
    fires = features > 0
    per_token_l0 = fires.float().sum(-1)
    fvu = (heldout - recon).pow(2).sum() / (heldout - heldout.mean(0)).pow(2).sum()
    return Result(
        lam=lam,
        target=target,
        steps=steps,
        l0=float(per_token_l0.mean()),
        train_l0=train_l0,
        fvu=float(fvu),
        l0_std=float(per_token_l0.std()),
        dead=int((fires.sum(0) == 0).sum()),
        seconds=seconds,
    )


def print_run(r: Result, note: str = "") -> None:
    print(
        f"{r.lam:>6g} {r.target:>5g} {r.steps:>5d} {r.l0:>6.1f} {r.reach:>6.2f} {r.train_l0:>6.1f} "
        f"{r.fvu:>6.3f} {r.l0_std:>7.2f} {r.dead:>4d} {r.seconds:>6.1f}{note}",
        flush=True,
    )


def frontier_fvu(frontier: Sequence[Result], l0: float) -> float | None:
    """λ = 1's FVU at held-out ``l0``, linear in log L0 between the reference runs bracketing it."""
    points = sorted((math.log(r.l0), r.fvu) for r in frontier)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if not xs[0] <= math.log(l0) <= xs[-1]:
        return None
    return float(np.interp(math.log(l0), xs, ys))


def print_ratios(results: Sequence[Result], frontier: Sequence[Result]) -> None:
    """Per (target, steps): FVU / λ=1's FVU, that at matched held-out L0, and the per-token L0 std ratio."""
    print(
        f"\nratios against λ = {REFERENCE_LAMBDA:g} at each (target, steps): FVU / FVU(λ=1) | FVU over "
        f"λ=1's FVU at the same held-out L0 (log-L0 interpolation over the λ=1 runs at L0* x "
        f"{', '.join(format(f, 'g') for f in FRONTIER_FACTORS)}; '-' = outside) | std of per-token L0"
    )
    lambdas = sorted({r.lam for r in results})
    targets = sorted({r.target for r in results})
    print(f"{'L0*':>4} {'steps':>5} " + " ".join(f"{'λ ' + format(lam, 'g'):>20}" for lam in lambdas))
    for target in targets:
        for steps in sorted({r.steps for r in results}):
            runs = {r.lam: r for r in results if r.target == target and r.steps == steps}
            ref = runs.get(REFERENCE_LAMBDA)
            line = [r for r in frontier if r.steps == steps and r.target_group == target] if ref else []
            cells = []
            for lam in lambdas:
                run = runs.get(lam)
                if run is None or ref is None:
                    cells.append(f"{'-':>20}")
                    continue
                matched = frontier_fvu([*line, ref], run.l0)
                matched_cell = "-" if matched is None else f"{run.fvu / matched:.2f}"
                cells.append(
                    f"{run.fvu / ref.fvu:>5.2f} | {matched_cell:>4} | {run.l0_std / ref.l0_std:>4.2f}"
                )
            print(f"{target:>4g} {steps:>5d} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[SHORT_STEPS, 3000], help="run lengths")
    parser.add_argument(
        "--skip-long-lambdas", type=float, nargs="*", default=[], help=f"λs run only at {SHORT_STEPS} steps"
    )
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    data = cached_activations()
    train_acts, heldout = data
    msn = float(train_acts.pow(2).sum(-1).mean())
    print(
        f"tiny Gemma 3, {BenchModel.resid_hook(LAYER)}: {len(train_acts)} training and {len(heldout)} "
        f"held-out activations (specials removed), E‖x‖² = {msn:.1f}; cached in "
        f"{time.perf_counter() - start:.0f}s on {describe_device('cpu')}"
    )
    print(
        f"d_sae {D_SAE}, batch {BATCH}, frequency penalty OFF, λ warm-up steps/5, Adam β1 0, same batches "
        f"for every run; {SHORT_STEPS} steps: η {SHORT_LR:g} warm-up {SHORT_LR_WARM_UP}; longer: "
        f"η {LONG_LR:g} warm-up steps/20\n"
    )
    print(
        f"{'λ':>6} {'L0*':>5} {'steps':>5} {'L0':>6} {'L0/L0*':>6} {'trainL0':>6} {'FVU':>6} "
        f"{'L0 std':>7} {'dead':>4} {'wall s':>6}   (held-out unless train)"
    )
    results: list[Result] = []
    frontier: list[Result] = []
    for steps in args.steps:
        schedule = schedule_for(steps)
        for target in args.targets:
            for lam in args.lambdas:
                if steps != SHORT_STEPS and lam in args.skip_long_lambdas:
                    continue
                sae, seconds = train(lam, target, schedule, train_acts)
                results.append(evaluate(sae, data, lam, target, steps, seconds))
                print_run(results[-1])
            # λ = 1 at nearby targets: the FVU-L0 line the other λs are compared on at matched L0.
            for factor in FRONTIER_FACTORS:
                sae, seconds = train(REFERENCE_LAMBDA, target * factor, schedule, train_acts)
                run = evaluate(sae, data, REFERENCE_LAMBDA, target * factor, steps, seconds)
                frontier.append(dataclasses.replace(run, target_group=target))
                print_run(frontier[-1], "   (matched-L0 reference)")
    print_ratios(results, frontier)
    print(f"\ntotal {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
