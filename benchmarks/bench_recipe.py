"""Benchmark: the Gemma Scope recipe vs SAELens's JumpReLU, on the same cached tiny-model activations.

Three methods, each trained by SAELens's trainer machinery on one shared stream of activations from
the tiny Gemma 2 (layer 1 residual stream, special tokens removed), with a λ sweep per method:

* ``recipe``: ``jumprelu_gemmascope`` through :class:`GemmaScopeSAETrainer` (every recipe point).
* ``saelens-default`` (the baseline, (b)): SAELens's ``jumprelu`` with all its defaults, its η = 3e-4
  included (bandwidth 0.05, θ₀ 0.01, decoder rows 0.1, no normalisation, Adam β1 0.9, gradient
  clipping 1, no warm-ups); only λ, the steps and the batch are set here.
* ``saelens-closest``: SAELens's ``jumprelu`` as close to the paper as its knobs go (bandwidth and θ₀
  0.001, unit decoder rows at init, β1 0, linear warm-ups of the same lengths, its
  ``expected_average_only_in`` normalisation) at the recipe's η; it cannot keep decoder rows at unit
  norm, warm the learning rate up along a cosine from 0.1·η, skip clipping or scale to E‖x‖² = 1.

λ is the weight of the same per-token L0 count in all three (SAELens's default sparsity mode is
"step", not tanh), but it trades against a squared error on differently scaled inputs, so each grid
is given in recipe units (E‖x‖² = 1) and multiplied by that method's E‖x‖². Under Adam θ moves by
about η per step for a steady gradient (β1 0.9 caps a step near 3η; β1 0 allows bigger steps on
sparse gradients), so a threshold that must climb to the pre-activations' scale needs η·steps of
that order: the SAELens default's L0 stops responding to λ once θ is rate-limited, hence the wider
grids. Each run prints the training-space median positive
pre-activation and median θ at the end to show it. Explained variance is compared at matched
held-out L0 by log-L0 linear interpolation between the sweep points bracketing each target.
Runs are interleaved across methods so that CPU contention hits them alike. CPU only.

    python benchmarks/bench_recipe.py [--steps 8000] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's progress bars would bury the tables

import numpy as np
import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer

import saelens_gemmascope  # noqa: F401  (registers jumprelu_gemmascope)
from saelens_gemmascope.demo.tiny_model import build_tiny_gemma2
from saelens_gemmascope.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID
from saelens_gemmascope.recipe import GemmaScopeSAETrainer, gemmascope_sae_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE

HOOK = "blocks.1.hook_resid_post"
D_IN, D_SAE, BATCH, CONTEXT = 64, 256, 256, 128
LR = 2e-4  # shared by the recipe and saelens-closest; above the paper's 7e-5 because the runs are short
SAELENS_DEFAULT_LR = SAETrainerConfig.__dataclass_fields__["lr"].default  # 3e-4 in SAELens 6.54
# λ grids in recipe units (inputs with E‖x‖² = 1). The SAELens variants' L0 saturates in λ once θ is
# rate-limited, so their grids reach further up; the recipe's spans its L0 ≈ 10-80 at these lengths.
RECIPE_GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
SAELENS_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1e-1)
QUICK_RECIPE_GRID = (1e-4, 1e-3, 1e-2)
QUICK_SAELENS_GRID = (1e-4, 1e-3, 1e-1)
TARGET_L0S = (20.0, 40.0, 60.0)


def cached_activations(n_train_rows: int, n_eval_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw layer-1 residual activations of the tiny model on standard-library text, specials removed."""
    tiny = build_tiny_gemma2(seed=0)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-m]*.py"))[:60]
    text = "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    body = CONTEXT - 1
    rows = torch.tensor(
        [[BOS_ID, *ids[i * body : (i + 1) * body]] for i in range(n_train_rows + n_eval_rows)]
    )
    chunks = []
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            tokens = rows[start : start + 32]
            _, cache = tiny.tl_model.run_with_cache(tokens, names_filter=[HOOK])
            keep = ~torch.isin(tokens.reshape(-1), torch.tensor([PAD_ID, EOS_ID, BOS_ID]))
            chunks.append(cache[HOOK].reshape(-1, D_IN)[keep])
    n_train_tokens = sum(len(c) for c in chunks[: n_train_rows // 32])
    acts = torch.cat(chunks)
    return acts[:n_train_tokens], acts[n_train_tokens:]


def batches(acts: torch.Tensor, seed: int = 0) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(acts), generator=generator).split(BATCH):
            if len(idx) == BATCH:
                yield acts[idx]


def trainer_cfg(steps: int, lr: float = LR, **overrides: Any) -> SAETrainerConfig:
    return SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=lr,
        lr_end=lr / 10,  # unused: every method runs SAELens's constant schedule
        n_batches_for_norm_estimate=20,
        **overrides,
    )


Built = tuple[TrainingSAE[Any], SAETrainerConfig, type[SAETrainer[Any, Any]]]


@dataclass
class Method:
    name: str
    grid: tuple[float, ...]  # λ in recipe units
    input_msn: Callable[[float], float]  # raw E‖x‖² -> E‖x‖² of the inputs this method trains on
    build: Callable[[float, int], Built]
    departures: str  # what differs from the method's own defaults, printed in the header


def recipe(lam: float, steps: int) -> Built:
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(D_IN, D_SAE, lam, l0_warm_up_steps=steps // 5))
    return sae, trainer_cfg(steps, adam_beta1=0.0, lr_warm_up_steps=steps // 20), GemmaScopeSAETrainer


def saelens_default(lam: float, steps: int) -> Built:
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l0_coefficient=lam))
    return sae, trainer_cfg(steps, lr=SAELENS_DEFAULT_LR), SAETrainer


def saelens_closest(lam: float, steps: int) -> Built:
    cfg = JumpReLUTrainingSAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        l0_coefficient=lam,
        l0_warm_up_steps=steps // 5,
        jumprelu_bandwidth=0.001,
        jumprelu_init_threshold=0.001,
        decoder_init_norm=1.0,
        normalize_activations="expected_average_only_in",
    )
    return (
        JumpReLUTrainingSAE(cfg),
        trainer_cfg(steps, adam_beta1=0.0, lr_warm_up_steps=steps // 20),
        SAETrainer,
    )


def build_methods(quick: bool) -> tuple[Method, ...]:
    recipe_grid, saelens_grid = (
        (QUICK_RECIPE_GRID, QUICK_SAELENS_GRID) if quick else (RECIPE_GRID, SAELENS_GRID)
    )
    return (
        Method(
            "recipe",
            recipe_grid,
            lambda msn: 1.0,  # inputs scaled to E‖x‖² = 1
            recipe,
            f"η {LR:g} (paper 7e-5), η warm-up steps/20 and λ warm-up steps/5 (paper 1,000 and 10,000)",
        ),
        Method(
            "saelens-default",
            saelens_grid,
            lambda msn: msn,  # raw inputs
            saelens_default,
            f"none beyond λ, steps, batch (η {SAELENS_DEFAULT_LR:g} = SAELens's default)",
        ),
        Method(
            "saelens-closest",
            saelens_grid,
            lambda msn: float(D_IN),  # E‖x‖ = √d_in, so E‖x‖² ≈ d_in
            saelens_closest,
            f"the paper-like knobs above; η {LR:g} as the recipe, warm-ups as the recipe",
        ),
    )


@dataclass
class Result:
    method: str
    lam: float
    l0: float
    explained_variance: float
    dead_fraction: float
    steps_per_second: float
    pre_median: float  # median positive pre-activation on the last training batch (training space)
    theta_median: float  # median θ at the end of training (training space)


def train_and_evaluate(
    method: Method, lam: float, steps: int, train: torch.Tensor, heldout: torch.Tensor
) -> Result:
    torch.manual_seed(0)
    sae, cfg, trainer_class = method.build(lam, steps)
    last: dict[str, torch.Tensor] = {}

    def record(_module: torch.nn.Module, _inputs: Any, hidden_pre: torch.Tensor) -> None:
        # The last training batch's values survive; read before fit() folds the input scale into θ.
        if sae.training:
            theta = getattr(sae, "threshold_values", None)
            last["pre"] = hidden_pre.detach()
            last["theta"] = (sae.threshold if theta is None else theta).detach().clone()

    handle = sae.hook_sae_acts_pre.register_forward_hook(record)
    trainer = trainer_class(cfg=cfg, sae=sae, data_provider=batches(train))
    start = time.perf_counter()
    trainer.fit()  # ends with the SAE folded to raw-activation space
    elapsed = time.perf_counter() - start
    handle.remove()
    sae.eval()
    with torch.no_grad():
        features = sae.encode(heldout)
        recon = sae.decode(features)
    fvu = (heldout - recon).pow(2).sum() / (heldout - heldout.mean(0)).pow(2).sum()
    pre = last["pre"]
    return Result(
        method=method.name,
        lam=lam,
        l0=float((features > 0).float().sum(-1).mean()),
        explained_variance=float(1 - fvu),
        dead_fraction=float(((features > 0).sum(0) == 0).float().mean()),
        steps_per_second=steps / elapsed,
        pre_median=float(pre[pre > 0].median()) if bool((pre > 0).any()) else 0.0,
        theta_median=float(last["theta"].median()),
    )


def ev_at_l0(results: list[Result], target: float) -> float | None:
    """EV linearly interpolated in log L0 between the two sweep points (adjacent in L0) that bracket
    the target; None when no pair brackets it. L0 need not be monotone in λ, hence sorting by L0."""
    points = sorted((math.log(r.l0), r.explained_variance) for r in results if r.l0 > 0)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not xs or not xs[0] <= math.log(target) <= xs[-1]:
        return None
    return float(np.interp(math.log(target), xs, ys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 8000, quick 2000)")
    parser.add_argument("--quick", action="store_true", help="3 λ per method and 2,000 steps")
    # One thread: these matmuls are tiny, and extra threads only thrash on a shared, busy CPU.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    steps: int = args.steps or (2000 if args.quick else 8000)
    torch.set_num_threads(args.threads)
    methods = build_methods(args.quick)

    train, heldout = cached_activations(n_train_rows=1600, n_eval_rows=64)
    msn = float(train.pow(2).sum(-1).mean())
    print(f"cached {len(train)} training and {len(heldout)} held-out activations; E‖x‖² = {msn:.1f}")
    print(
        f"{steps} steps x batch {BATCH}, d_sae {D_SAE}, {args.threads} thread(s), same batches for every run"
    )
    print("departures from each method's own defaults:")
    for method in methods:
        grid = ", ".join(f"{g:g}" for g in method.grid)
        print(f"  {method.name:<16} {method.departures}; λ grid (recipe units, x E‖x‖² of its inputs) {grid}")
    print()

    results: dict[str, list[Result]] = {m.name: [] for m in methods}
    print(
        f"{'method':<16} {'λ':>9} {'L0':>6} {'EV':>6} {'dead':>6} {'steps/s':>8} "
        f"{'pre>0 med':>9} {'θ med':>7}   (pre, θ: training space, end of run)"
    )
    # Interleaved: the i-th λ of every method, then the next, so that contention is shared alike.
    for i in range(max(len(m.grid) for m in methods)):
        for method in methods:
            if i >= len(method.grid):
                continue
            lam = method.grid[i] * method.input_msn(msn)
            r = train_and_evaluate(method, lam, steps, train, heldout)
            results[method.name].append(r)
            print(
                f"{r.method:<16} {r.lam:>9.3g} {r.l0:>6.1f} {r.explained_variance:>6.3f} "
                f"{r.dead_fraction:>6.1%} {r.steps_per_second:>8.0f} {r.pre_median:>9.3g} {r.theta_median:>7.3g}",
                flush=True,
            )

    baseline = "saelens-default"
    base_speed = sum(r.steps_per_second for r in results[baseline]) / len(results[baseline])
    print(
        "\nexplained variance at matched held-out L0 (log-L0 interpolation; '-' = not bracketed by the sweep)"
    )
    header = " ".join(f"{'EV@L0=' + format(t, 'g'):>9}" for t in TARGET_L0S)
    print(f"{'method':<16} {'L0 range':>12} {header} {'dead (mean)':>11} {'steps/s':>8} {'vs (b)':>7}")
    for name, rs in results.items():
        cells = []
        for target in TARGET_L0S:
            ev = ev_at_l0(rs, target)
            cells.append(f"{'-' if ev is None else format(ev, '.3f'):>9}")
        l0s = [r.l0 for r in rs]
        dead = sum(r.dead_fraction for r in rs) / len(rs)
        speed = sum(r.steps_per_second for r in rs) / len(rs)
        span = f"{min(l0s):.0f}-{max(l0s):.0f}"
        print(
            f"{name:<16} {span:>12} {' '.join(cells)} {dead:>11.1%} {speed:>8.0f} {speed / base_speed:>6.2f}x"
        )
    print(f"(vs (b): mean steps/s relative to the baseline, method (b) = {baseline})")


if __name__ == "__main__":
    main()
