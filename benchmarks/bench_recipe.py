"""Benchmark: the Gemma Scope recipes vs SAELens's JumpReLU, on the same cached tiny-model activations.

Four methods, each trained by SAELens's trainer machinery on one shared stream of activations from
the tiny Gemma 2 (layer 1 residual stream, special tokens removed), with a sweep per method:

* ``recipe``: ``jumprelu_gemmascope`` through :class:`GemmaScopeSAETrainer` (every recipe point).
* ``gemmascope2``: the same SAE class and trainer with ``gemmascope2_sae_config`` (Gemma Scope 2):
  the quadratic L0 penalty λ·(2/L0*)·(‖f‖₀ - L0*)² around a target L0*, the frequency penalty on
  (the config's default strength and 10 % cap, printed in the header) and the λ warm-up. Its sweep
  is over L0* (a fixed grid spanning the L0s the λ sweeps reach) at one fixed λ = 1e-2 in recipe
  units; with the quadratic penalty λ mostly sets how tightly ‖f‖₀ is held at L0*, not where it
  goes. The λ warm-up is scaled as the
  recipe's: the recipe's 10,000 steps become steps/5 here, a factor of steps/50,000, so Gemma Scope
  2's 50,000 steps become the whole run (λ reaches its value at the last step). Everything else
  (η, its warm-up, β1 0, input scale) is the recipe row's.
* ``saelens-default`` (the baseline, (b)): SAELens's ``jumprelu`` with all its defaults, its η = 3e-4
  included (bandwidth 0.05, θ₀ 0.01, decoder rows 0.1, no normalisation, Adam β1 0.9, gradient
  clipping 1, no warm-ups); only λ, the steps and the batch are set here.
* ``saelens-closest``: SAELens's ``jumprelu`` as close to the paper as its knobs go (bandwidth and θ₀
  0.001, unit decoder rows at init, β1 0, linear warm-ups of the same lengths, its
  ``expected_average_only_in`` normalisation) at the recipe's η; it cannot keep decoder rows at unit
  norm, warm the learning rate up along a cosine from 0.1·η, skip clipping or scale to E‖x‖² = 1.

λ is the weight of the same per-token L0 count in the three λ sweeps (SAELens's default sparsity
mode is "step", not tanh), but it trades against a squared error on differently scaled inputs, so
each grid is given in recipe units (E‖x‖² = 1) and multiplied by that method's E‖x‖². Under Adam θ
moves by about η per step for a steady gradient (β1 0.9 caps a step near 3η; β1 0 allows bigger
steps on sparse gradients), so a threshold that must climb to the pre-activations' scale needs
η·steps of that order: the SAELens default's L0 stops responding to λ once θ is rate-limited, hence
the wider grids. Each run prints the training-space median positive pre-activation and median θ at
the end to show it.

Measured on held-out tokens, per run: L0, FVU = Σ‖x - x̂‖² / Σ‖x - x̄‖², dead latents (never fire)
and dense latents (fire on more than 10 % of tokens, Gemma Scope 2's cap), and for ``gemmascope2``
the reached L0 over its target. FVU, dead and dense are compared at matched held-out L0 by log-L0
linear interpolation between the sweep points bracketing each target, as ratios against the
baseline (b) and against the recipe (the baseline's L0 may never come down to the targets); steps/s
is the mean over a method's runs, with the share of the recipe's steps on its sparse path. With
d_sae = 256 a 10 % cap leaves room for an L0 of at most 25.6 with no latent above it, so at larger
target L0s the two Gemma Scope 2 penalties pull against each other. Runs are interleaved across
methods so that CPU contention hits them alike. CPU only.

    python benchmarks/bench_recipe.py [--steps 8000] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

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
from saelens_gemmascope.recipe import GemmaScopeSAETrainer, gemmascope2_sae_config, gemmascope_sae_config
from saelens_gemmascope.recipe.config import GEMMASCOPE2_FREQUENCY_PENALTY, GEMMASCOPE2_L0_WARM_UP_STEPS
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig

HOOK = "blocks.1.hook_resid_post"
D_IN, D_SAE, BATCH, CONTEXT = 64, 256, 256, 128
LR = 2e-4  # shared by the recipe and saelens-closest; above the paper's 7e-5 because the runs are short
SAELENS_DEFAULT_LR = SAETrainerConfig.__dataclass_fields__["lr"].default  # 3e-4 in SAELens 6.54
#: Gemma Scope's λ warm-up (the recipe config's default, 10,000 steps), which runs here as steps/5.
PAPER_L0_WARM_UP_STEPS: int = next(
    f.default for f in fields(GemmaScopeTrainingSAEConfig) if f.name == "l0_warm_up_steps"
)
RECIPE_L0_WARM_UP_FRACTION = 1 / 5
# λ grids in recipe units (inputs with E‖x‖² = 1). The SAELens variants' L0 saturates in λ once θ is
# rate-limited, so their grids reach further up; the recipe's spans its L0 ≈ 10-80 at these lengths.
RECIPE_GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
SAELENS_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1e-1)
QUICK_RECIPE_GRID = (1e-4, 1e-3, 1e-2)
QUICK_SAELENS_GRID = (1e-4, 1e-3, 1e-1)
# Gemma Scope 2: target L0s spanning the L0s the λ sweeps reach (about 10-80), at one λ.
GEMMASCOPE2_TARGETS = (10.0, 15.0, 25.0, 40.0, 60.0, 90.0)
QUICK_GEMMASCOPE2_TARGETS = (12.0, 30.0, 75.0)
GEMMASCOPE2_LAMBDA = 1e-2  # recipe units; the quadratic penalty's λ sets how tightly L0* holds
TARGET_L0S = (20.0, 40.0, 60.0)
#: A latent firing on more than this fraction of held-out tokens is dense (Gemma Scope 2's 10 % line).
DENSE_FREQUENCY = 0.1
BASELINE = "saelens-default"


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
    grid: tuple[float, ...]  # λ in recipe units, or target L0s when sweeps_target_l0
    input_msn: Callable[[float], float]  # raw E‖x‖² -> E‖x‖² of the inputs this method trains on
    build: Callable[[float, int], Built]  # (λ, or the target L0, steps) -> what to train
    departures: str  # what differs from the method's own defaults, printed in the header
    sweeps_target_l0: bool = False

    def sweep_value(self, grid_value: float, msn: float) -> float:
        """What ``build`` takes: a target L0 as it is, a λ in recipe units times the inputs' E‖x‖²."""
        return grid_value if self.sweeps_target_l0 else grid_value * self.input_msn(msn)


def recipe_l0_warm_up(steps: int) -> int:
    return int(steps * RECIPE_L0_WARM_UP_FRACTION)


def gemmascope2_l0_warm_up(steps: int) -> int:
    """Gemma Scope 2's 50,000 steps scaled by the factor that turns the recipe's 10,000 into steps/5."""
    return round(GEMMASCOPE2_L0_WARM_UP_STEPS * recipe_l0_warm_up(steps) / PAPER_L0_WARM_UP_STEPS)


def recipe_trainer_cfg(steps: int) -> SAETrainerConfig:
    return trainer_cfg(steps, adam_beta1=0.0, lr_warm_up_steps=steps // 20)


def recipe(lam: float, steps: int) -> Built:
    sae = GemmaScopeTrainingSAE(
        gemmascope_sae_config(D_IN, D_SAE, lam, l0_warm_up_steps=recipe_l0_warm_up(steps))
    )
    return sae, recipe_trainer_cfg(steps), GemmaScopeSAETrainer


def gemmascope2(target_l0: float, steps: int) -> Built:
    cfg = gemmascope2_sae_config(
        D_IN, D_SAE, target_l0, GEMMASCOPE2_LAMBDA, l0_warm_up_steps=gemmascope2_l0_warm_up(steps)
    )
    return GemmaScopeTrainingSAE(cfg), recipe_trainer_cfg(steps), GemmaScopeSAETrainer


def saelens_default(lam: float, steps: int) -> Built:
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l0_coefficient=lam))
    return sae, trainer_cfg(steps, lr=SAELENS_DEFAULT_LR), SAETrainer


def saelens_closest(lam: float, steps: int) -> Built:
    cfg = JumpReLUTrainingSAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        l0_coefficient=lam,
        l0_warm_up_steps=recipe_l0_warm_up(steps),
        jumprelu_bandwidth=0.001,
        jumprelu_init_threshold=0.001,
        decoder_init_norm=1.0,
        normalize_activations="expected_average_only_in",
    )
    return JumpReLUTrainingSAE(cfg), recipe_trainer_cfg(steps), SAETrainer


def build_methods(quick: bool) -> tuple[Method, ...]:
    recipe_grid, saelens_grid, targets = (
        (QUICK_RECIPE_GRID, QUICK_SAELENS_GRID, QUICK_GEMMASCOPE2_TARGETS)
        if quick
        else (RECIPE_GRID, SAELENS_GRID, GEMMASCOPE2_TARGETS)
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
            "gemmascope2",
            targets,
            lambda msn: 1.0,
            gemmascope2,
            f"as recipe, λ {GEMMASCOPE2_LAMBDA:g} fixed, λ warm-up the whole run (paper 50,000 = 5x the "
            f"recipe's, scaled alike), frequency penalty μ {GEMMASCOPE2_FREQUENCY_PENALTY:g} cap "
            f"{GemmaScopeTrainingSAEConfig.frequency_cap:.0%}",
            sweeps_target_l0=True,
        ),
        Method(
            BASELINE,
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
    target_l0: float | None  # gemmascope2's L0*; None for the λ sweeps
    l0: float
    fvu: float
    dead: int  # latents that never fire on held-out tokens
    dense: int  # latents that fire on more than DENSE_FREQUENCY of held-out tokens
    max_frequency: float  # the most frequent latent's firing frequency on held-out tokens
    steps_per_second: float
    sparse_steps: float | None  # fraction of training steps on the recipe's sparse path (None: SAELens)
    pre_median: float  # median positive pre-activation on the last training batch (training space)
    theta_median: float  # median θ at the end of training (training space)

    @property
    def reach(self) -> float | None:
        """Reached held-out L0 over the target L0 (1 = on target)."""
        return None if self.target_l0 is None else self.l0 / self.target_l0


class HeldoutFigures(NamedTuple):
    l0: float
    fvu: float
    dead: int
    dense: int
    max_frequency: float


def heldout_figures(sae: TrainingSAE[Any], heldout: torch.Tensor) -> HeldoutFigures:
    """L0, FVU, dead and dense latents of ``sae`` (in eval mode, raw-activation space) on ``heldout``."""
    with torch.no_grad():
        features = sae.encode(heldout)
        recon = sae.decode(features)
    fires = features > 0
    frequency = fires.float().mean(0)
    fvu = (heldout - recon).pow(2).sum() / (heldout - heldout.mean(0)).pow(2).sum()
    return HeldoutFigures(
        l0=float(fires.float().sum(-1).mean()),
        fvu=float(fvu),
        dead=int((frequency == 0).sum()),
        dense=int((frequency > DENSE_FREQUENCY).sum()),
        max_frequency=float(frequency.max()),
    )


def train_and_evaluate(
    method: Method, value: float, steps: int, train: torch.Tensor, heldout: torch.Tensor
) -> Result:
    torch.manual_seed(0)
    sae, cfg, trainer_class = method.build(value, steps)
    last: dict[str, torch.Tensor] = {}
    paths: list[str] = []

    def record(_module: torch.nn.Module, _inputs: Any, hidden_pre: torch.Tensor) -> None:
        # The last training batch's values survive; read before fit() folds the input scale into θ.
        if sae.training:
            theta = getattr(sae, "threshold_values", None)
            last["pre"] = hidden_pre.detach()
            last["theta"] = (sae.threshold if theta is None else theta).detach().clone()
            # The previous step's path (this step chooses after its encoder product, where this runs).
            paths.append(str(getattr(sae, "last_step_path", None)))

    # A plain torch hook, not a HookPoint hook, so the recipe's "auto" fast path still goes sparse
    # once few entries fire; gemmascope2's steps stay dense (its frequency penalty needs every entry).
    handle = sae.hook_sae_acts_pre.register_forward_hook(record)
    trainer = trainer_class(cfg=cfg, sae=sae, data_provider=batches(train))
    start = time.perf_counter()
    trainer.fit()  # ends with the SAE folded to raw-activation space
    elapsed = time.perf_counter() - start
    handle.remove()
    sae.eval()
    pre = last["pre"]
    figures = heldout_figures(sae, heldout)
    return Result(
        method=method.name,
        lam=float(getattr(sae.cfg, "l0_coefficient", value)),
        target_l0=value if method.sweeps_target_l0 else None,
        l0=figures.l0,
        fvu=figures.fvu,
        dead=figures.dead,
        dense=figures.dense,
        max_frequency=figures.max_frequency,
        steps_per_second=steps / elapsed,
        sparse_steps=sparse_fraction(paths),
        pre_median=float(pre[pre > 0].median()) if bool((pre > 0).any()) else 0.0,
        theta_median=float(last["theta"].median()),
    )


def sparse_fraction(paths: Sequence[str]) -> float | None:
    """The fraction of recorded steps that took the sparse path; None for SAEs without the choice."""
    known = [path for path in paths if path in ("dense", "sparse")]
    return known.count("sparse") / len(known) if known else None


def at_l0(results: Sequence[Result], target: float, value: Callable[[Result], float]) -> float | None:
    """``value`` linearly interpolated in log L0 between the two sweep points (adjacent in L0) that
    bracket the target; None when no pair brackets it. L0 need not be monotone in λ, hence sorting."""
    points = sorted((math.log(r.l0), value(r)) for r in results if r.l0 > 0)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not xs or not xs[0] <= math.log(target) <= xs[-1]:
        return None
    return float(np.interp(math.log(target), xs, ys))


def ratio_cell(value: float | None, base: float | None, width: int) -> str:
    """``value / base`` as '0.85x'; '-' when either is missing, 'inf' when only the base is 0."""
    if value is None or base is None:
        return f"{'-':>{width}}"
    if base == 0:
        return f"{'1.00x' if value == 0 else 'inf':>{width}}"
    return f"{value / base:>{width - 1}.2f}x"


def number_cell(value: float | None, width: int, spec: str) -> str:
    return f"{'-' if value is None else format(value, spec):>{width}}"


def print_run(r: Result) -> None:
    target = number_cell(r.target_l0, 5, "g")
    reach = number_cell(r.reach, 6, ".2f")
    sparse = number_cell(r.sparse_steps, 6, ".0%")
    print(
        f"{r.method:<16} {r.lam:>9.3g} {target} {r.l0:>6.1f} {reach} {r.fvu:>6.3f} {r.dead:>5d} "
        f"{r.dense:>6d} {r.max_frequency:>6.1%} {r.steps_per_second:>8.0f} {sparse} "
        f"{r.pre_median:>9.3g} {r.theta_median:>7.3g}",
        flush=True,
    )


#: What the matched-L0 table compares: the baseline (b) the issue names, and Gemma Scope's recipe,
#: since the baseline's L0 may never come down to the targets (θ rate-limited; see above).
REFERENCES = (BASELINE, "recipe")
MATCHED_METRICS: tuple[tuple[str, Callable[[Result], float], str], ...] = (
    ("FVU", lambda r: r.fvu, ".3f"),
    ("dead", lambda r: float(r.dead), ".1f"),
    ("dense", lambda r: float(r.dense), ".1f"),
)


def print_matched(results: dict[str, list[Result]]) -> None:
    """FVU, dead and dense at each matched L0, with their ratios to the baseline's and the recipe's."""
    print(
        "\nat matched held-out L0 (log-L0 interpolation between the bracketing sweep points; "
        "'-' = not bracketed); x(b), x(rec): ratio to the baseline's, to the recipe's"
    )
    header = " ".join(f"{name:>6} {'x(b)':>6} {'x(rec)':>6}" for name, _, _ in MATCHED_METRICS)
    print(f"{'L0':>4} {'method':<16} {header}")
    for target in TARGET_L0S:
        for name, rs in results.items():
            cells = []
            for _, metric, spec in MATCHED_METRICS:
                value = at_l0(rs, target, metric)
                ratios = [ratio_cell(value, at_l0(results[ref], target, metric), 6) for ref in REFERENCES]
                cells.append(f"{number_cell(value, 6, spec)} {' '.join(ratios)}")
            print(f"{target:>4g} {name:<16} {' '.join(cells)}")


def print_speed_and_reach(results: dict[str, list[Result]]) -> None:
    base_speed = mean([r.steps_per_second for r in results[BASELINE]])
    print(f"\n{'method':<16} {'L0 range':>9} {'steps/s':>8} {'x(b)':>6} {'sparse':>6} {'L0/L0*':>11}")
    for name, rs in results.items():
        l0s = [r.l0 for r in rs]
        speed = mean([r.steps_per_second for r in rs])
        sparse = [r.sparse_steps for r in rs if r.sparse_steps is not None]
        reaches = [r.reach for r in rs if r.reach is not None]
        reach = f"{min(reaches):.2f}-{max(reaches):.2f}" if reaches else "-"
        span = f"{min(l0s):.0f}-{max(l0s):.0f}"
        print(
            f"{name:<16} {span:>9} {speed:>8.0f} {ratio_cell(speed, base_speed, 6)} "
            f"{number_cell(mean(sparse) if sparse else None, 6, '.0%')} {reach:>11}"
        )
    print(
        f"(steps/s: mean over a method's runs; x(b): relative to the baseline, (b) = {BASELINE}; sparse: "
        "steps on the recipe's sparse path; L0/L0*: reached held-out L0 over the target, min-max)"
    )


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 8000, quick 2000)")
    parser.add_argument("--quick", action="store_true", help="3 sweep points per method and 2,000 steps")
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
        swept = "target L0s" if method.sweeps_target_l0 else "λ grid (recipe units, x E‖x‖² of its inputs)"
        print(f"  {method.name:<16} {method.departures}; {swept} {grid}")
    print()

    results: dict[str, list[Result]] = {m.name: [] for m in methods}
    print(
        f"{'method':<16} {'λ':>9} {'L0*':>5} {'L0':>6} {'L0/L0*':>6} {'FVU':>6} {'dead':>5} {'dense':>6} "
        f"{'max f':>6} {'steps/s':>8} {'sparse':>6} {'pre>0 med':>9} {'θ med':>7}   "
        "(held-out; pre, θ: training space, end)"
    )
    # Interleaved: the i-th point of every method, then the next, so that contention is shared alike.
    for i in range(max(len(m.grid) for m in methods)):
        for method in methods:
            if i < len(method.grid):
                value = method.sweep_value(method.grid[i], msn)
                results[method.name].append(train_and_evaluate(method, value, steps, train, heldout))
                print_run(results[method.name][-1])

    print_matched(results)
    print_speed_and_reach(results)


if __name__ == "__main__":
    main()
