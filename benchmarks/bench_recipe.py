"""Benchmark: the Gemma Scope recipe vs SAELens's JumpReLU, on the same cached tiny-model activations.

Three methods, each trained by SAELens's trainer machinery on one shared stream of activations from
the tiny Gemma 2 (layer 1 residual stream, special tokens removed), and a small λ sweep per method:

* ``recipe``: ``jumprelu_gemmascope`` through :class:`GemmaScopeSAETrainer` (every recipe point).
* ``saelens-default``: SAELens's ``jumprelu`` with its defaults (bandwidth 0.05, θ₀ 0.01, decoder
  rows 0.1, no normalisation, Adam β1 0.9, gradient clipping 1, no warm-ups).
* ``saelens-closest``: SAELens's ``jumprelu`` as close to the paper as its knobs go (bandwidth and θ₀
  0.001, unit decoder rows at init, β1 0, linear warm-ups of the same lengths, its
  ``expected_average_only_in`` normalisation); it cannot keep decoder rows at unit norm, warm the
  learning rate up along a cosine from 0.1·η, skip clipping or scale to E‖x‖² = 1.

λ means different things under different input scales, so each method's grid is the recipe's grid
times the mean squared norm of that method's inputs. Explained variance is then compared at matched
held-out L0 by interpolating each method's (log L0, EV) curve. All methods share η, the steps and
the batch size; warm-ups are scaled to the run's length. CPU only; runs in a few minutes.

    python benchmarks/bench_recipe.py [--steps 2000]
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

import numpy as np
import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer

import saelens_gemmascope  # noqa: F401  (registers jumprelu_gemmascope)
from saelens_gemmascope.models.tiny import build_tiny_gemma2
from saelens_gemmascope.models.tokenizer import BOS_ID, EOS_ID, PAD_ID
from saelens_gemmascope.training import GemmaScopeSAETrainer, gemmascope_sae_config
from saelens_gemmascope.training.sae import GemmaScopeTrainingSAE

HOOK = "blocks.1.hook_resid_post"
D_IN, D_SAE, BATCH, CONTEXT = 64, 256, 256, 128
LR = 2e-4
RECIPE_LAMBDAS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
TARGET_L0S = (20.0, 40.0, 90.0)


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


def trainer_cfg(steps: int, **overrides: Any) -> SAETrainerConfig:
    return SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=LR,
        lr_end=LR / 10,
        n_batches_for_norm_estimate=20,
        **overrides,
    )


@dataclass
class Method:
    name: str
    lambda_scale: Callable[[float, float], float]  # (λ, E‖x‖² raw) -> this method's λ
    build: Callable[[float, int], tuple[TrainingSAE[Any], SAETrainerConfig, type[SAETrainer[Any, Any]]]]


def recipe(lam: float, steps: int) -> tuple[TrainingSAE[Any], SAETrainerConfig, type[SAETrainer[Any, Any]]]:
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(D_IN, D_SAE, lam, l0_warm_up_steps=steps // 5))
    return sae, trainer_cfg(steps, adam_beta1=0.0, lr_warm_up_steps=steps // 20), GemmaScopeSAETrainer


def saelens_default(
    lam: float, steps: int
) -> tuple[TrainingSAE[Any], SAETrainerConfig, type[SAETrainer[Any, Any]]]:
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l0_coefficient=lam))
    return sae, trainer_cfg(steps), SAETrainer


def saelens_closest(
    lam: float, steps: int
) -> tuple[TrainingSAE[Any], SAETrainerConfig, type[SAETrainer[Any, Any]]]:
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


METHODS = (
    Method("recipe", lambda lam, msn: lam, recipe),  # inputs scaled to E‖x‖² = 1
    Method("saelens-default", lambda lam, msn: lam * msn, saelens_default),  # raw inputs
    Method("saelens-closest", lambda lam, msn: lam * D_IN, saelens_closest),  # E‖x‖ = √d_in
)


@dataclass
class Result:
    method: str
    lam: float
    l0: float
    explained_variance: float
    dead_fraction: float
    steps_per_second: float


def train_and_evaluate(
    method: Method, lam: float, steps: int, train: torch.Tensor, heldout: torch.Tensor
) -> Result:
    torch.manual_seed(0)
    sae, cfg, trainer_class = method.build(lam, steps)
    trainer = trainer_class(cfg=cfg, sae=sae, data_provider=batches(train))
    start = time.perf_counter()
    trainer.fit()  # ends with the SAE folded to raw-activation space
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        features = sae.encode(heldout)
        recon = sae.decode(features)
    fvu = (heldout - recon).pow(2).sum() / (heldout - heldout.mean(0)).pow(2).sum()
    return Result(
        method=method.name,
        lam=lam,
        l0=float((features > 0).float().sum(-1).mean()),
        explained_variance=float(1 - fvu),
        dead_fraction=float(((features > 0).sum(0) == 0).float().mean()),
        steps_per_second=steps / elapsed,
    )


def ev_at_l0(results: list[Result], target: float) -> float | None:
    """Linear interpolation of explained variance in log L0; None outside the swept range."""
    points = sorted((math.log(r.l0), r.explained_variance) for r in results if r.l0 > 0)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not xs or not xs[0] <= math.log(target) <= xs[-1]:
        return None
    return float(np.interp(math.log(target), xs, ys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    train, heldout = cached_activations(n_train_rows=1600, n_eval_rows=64)
    mean_squared_norm = float(train.pow(2).sum(-1).mean())
    print(
        f"cached {len(train)} training and {len(heldout)} held-out activations; E‖x‖² = {mean_squared_norm:.1f}"
    )
    print(f"{args.steps} steps x batch {BATCH}, d_sae {D_SAE}, η {LR}, same batches for every run\n")

    results: dict[str, list[Result]] = {}
    print(f"{'method':<16} {'λ':>10} {'L0':>7} {'EV':>7} {'dead':>6} {'steps/s':>8}")
    for method in METHODS:
        for recipe_lambda in RECIPE_LAMBDAS:
            lam = method.lambda_scale(recipe_lambda, mean_squared_norm)
            r = train_and_evaluate(method, lam, args.steps, train, heldout)
            results.setdefault(method.name, []).append(r)
            print(
                f"{r.method:<16} {r.lam:>10.3g} {r.l0:>7.1f} {r.explained_variance:>7.3f} "
                f"{r.dead_fraction:>6.1%} {r.steps_per_second:>8.0f}",
                flush=True,
            )

    print("\nexplained variance at matched held-out L0 (interpolated in log L0; '-' = outside the sweep)")
    header = " ".join(f"{'EV@L0=' + format(t, 'g'):>10}" for t in TARGET_L0S)
    print(f"{'method':<16} {header} {'dead (mean)':>12} {'steps/s':>8}")
    for name, rs in results.items():
        cells = []
        for target in TARGET_L0S:
            ev = ev_at_l0(rs, target)
            cells.append(f"{'-' if ev is None else format(ev, '.3f'):>10}")
        dead = sum(r.dead_fraction for r in rs) / len(rs)
        speed = sum(r.steps_per_second for r in rs) / len(rs)
        print(f"{name:<16} {' '.join(cells)} {dead:>12.1%} {speed:>8.0f}")


if __name__ == "__main__":
    main()
