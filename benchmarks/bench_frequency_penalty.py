"""The Gemma Scope 2 frequency penalty on the tiny model: high-frequency latents and FVU, with and without.

Trains the ``tiny-gemma-2/res/layer_1/width_256`` preset (stdlib text, CPU) at λ = 5e-3 with the
penalty off (μ = 0), at our default (μ = ``GEMMASCOPE2_FREQUENCY_PENALTY``, cap 10 %) and at the
aggressive setting (``GEMMASCOPE2_AGGRESSIVE_FREQUENCY_PENALTY`` with
``GEMMASCOPE2_AGGRESSIVE_FREQUENCY_CAP``), all with the config's input gradient κ. Each SAE is
measured on held-out stdlib tokens and on as many tokens of its training split (BOS excluded, as in
training): how many latents fire on more than 10 % of tokens, the largest firing frequency, L0 and
FVU = Σ‖x - x̂‖² / Σ‖x - x̄‖². The penalty lowers L0 at a given λ, so FVU is also compared at equal
L0: against the baseline's FVU interpolated (linearly in L0) along a λ ladder without the penalty
(``--ladder``, the baseline's λ included).

    python benchmarks/bench_frequency_penalty.py [--training-tokens 1638400] [--ladder 1e-2 2e-2]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch

PRESET = "tiny-gemma-2/res/layer_1/width_256"
EVAL_ROWS = 48  # of 128 tokens: 6,096 tokens per split
HIGH_FREQUENCY = 0.1  # the acceptance's line: no latent above 10 %
SPLITS = ("held-out", "training")


@dataclass(frozen=True)
class Split:
    above: int
    max_frequency: float
    l0: float
    fvu: float


@dataclass(frozen=True)
class Figures:
    strength: float
    splits: dict[str, Split]
    seconds: float


def split_activations(model: Any, hook_name: str, context_size: int) -> dict[str, torch.Tensor]:
    from saelens_gemmascope.data.stdlib_text import stdlib_token_dataset

    out = {}
    for name in SPLITS:
        dataset = stdlib_token_dataset(model.tokenizer, context_size, holdout=name == "held-out")
        tokens = torch.tensor(dataset["input_ids"][:EVAL_ROWS])
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        acts = cache[hook_name][:, 1:]  # BOS dropped
        out[name] = acts.reshape(-1, acts.shape[-1]).float()
    return out


@torch.no_grad()
def measure(sae: Any, x: torch.Tensor) -> Split:
    acts = sae.encode(x.to(sae.dtype))
    x_hat = sae.decode(acts).float()
    frequency = (acts > 0).float().mean(dim=0)
    fvu = float((x - x_hat).square().sum() / (x - x.mean(dim=0)).square().sum())
    l0 = float((acts > 0).float().sum(dim=-1).mean())
    return Split(int((frequency > HIGH_FREQUENCY).sum()), float(frequency.max()), l0, fvu)


@dataclass(frozen=True)
class Setting:
    label: str
    l0_coefficient: float
    strength: float
    cap: float | None  # None: the config's


def run(setting: Setting, overrides: dict[str, Any]) -> Figures:
    from saelens_gemmascope.runners import GemmaScopeTrainingRunner
    from saelens_gemmascope.suite.configs import training_config

    torch.manual_seed(0)
    knobs: dict[str, Any] = {"frequency_penalty": setting.strength, **overrides}
    if setting.cap is not None:
        knobs["frequency_cap"] = setting.cap
    cfg = training_config(PRESET, setting.l0_coefficient, **knobs)
    runner = GemmaScopeTrainingRunner(cfg)
    start = time.perf_counter()
    sae = runner.run()
    seconds = time.perf_counter() - start
    data = split_activations(runner.model, cfg.hook_name, cfg.context_size)
    return Figures(setting.strength, {name: measure(sae, x) for name, x in data.items()}, seconds)


def fvu_at_l0(ladder: list[Split], l0: float) -> float:
    """The penalty-free FVU at ``l0``: linear between the two ladder points around it (or the nearest two)."""
    points = sorted((s.l0, s.fvu) for s in ladder)
    below = [p for p in points if p[0] <= l0]
    above = [p for p in points if p[0] > l0]
    (l0_a, fvu_a), (l0_b, fvu_b) = (
        (below[-1], above[0])
        if below and above
        else (points[0], points[1])
        if not below
        else (points[-2], points[-1])
    )
    return fvu_a + (fvu_b - fvu_a) * (l0 - l0_a) / (l0_b - l0_a)


def report(settings: list[Setting], figures: list[Figures], ladder: list[Figures]) -> None:
    header = f"{'setting':>32} {'split':>9} {'> 10%':>6} {'max freq':>9} {'L0':>6} {'FVU':>7} {'train s':>8}"
    print(header)
    for setting, f in zip([*settings, *[None] * len(ladder)], [*figures, *ladder], strict=True):
        label = setting.label if setting is not None else "ladder (μ = 0)"
        for name, s in f.splits.items():
            print(
                f"{label:>32} {name:>9} {s.above:>6d} {s.max_frequency:>9.3f} {s.l0:>6.2f} {s.fvu:>7.4f} "
                f"{f.seconds:>8.1f}"
            )
    baseline = figures[0]
    print(f"against {settings[0].label}: latents above 10 %, FVU ratio, FVU ratio at equal L0 (ladder)")
    for setting, f in zip(settings[1:], figures[1:], strict=True):
        cells = []
        for name, s in f.splits.items():
            base = baseline.splits[name]
            matched = fvu_at_l0([base, *(g.splits[name] for g in ladder)], s.l0)
            cells.append(
                f"{name}: {base.above} -> {s.above}, FVU {base.fvu:.4f} -> {s.fvu:.4f} (x{s.fvu / base.fvu:.2f}), "
                f"x{s.fvu / matched:.2f} at L0 {s.l0:.1f}"
            )
        print(f"{setting.label:>32}  " + "; ".join(cells))


def main() -> None:
    import saelens_gemmascope  # noqa: F401  (registers the tiny models and presets)
    from saelens_gemmascope.recipe.config import (
        GEMMASCOPE2_AGGRESSIVE_FREQUENCY_CAP,
        GEMMASCOPE2_AGGRESSIVE_FREQUENCY_PENALTY,
        GEMMASCOPE2_FREQUENCY_PENALTY,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l0-coefficient", type=float, default=5e-3)
    parser.add_argument("--ladder", type=float, nargs="*", default=[1e-2, 2e-2], help="extra penalty-free λs")
    parser.add_argument("--input-gradient", type=float, default=None, help="κ (default: the config's)")
    parser.add_argument("--training-tokens", type=int, default=1_638_400, help="6,400 steps of 256")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    overrides: dict[str, Any] = {"training_tokens": args.training_tokens}
    if args.input_gradient is not None:
        overrides["frequency_input_gradient"] = args.input_gradient
    lam = args.l0_coefficient
    default, aggressive = GEMMASCOPE2_FREQUENCY_PENALTY, GEMMASCOPE2_AGGRESSIVE_FREQUENCY_PENALTY
    settings = [
        Setting("off (μ = 0)", lam, 0.0, None),
        Setting(f"default (μ = {default:g})", lam, default, None),
        Setting(
            f"aggressive (μ = {aggressive:g}, c = {GEMMASCOPE2_AGGRESSIVE_FREQUENCY_CAP:g})",
            lam,
            aggressive,
            GEMMASCOPE2_AGGRESSIVE_FREQUENCY_CAP,
        ),
    ]
    print(f"{PRESET}, λ = {lam:g}, {args.training_tokens // 256:,} steps, {overrides}")
    figures = [run(setting, overrides) for setting in settings]
    ladder = [run(Setting("ladder", value, 0.0, None), overrides) for value in args.ladder]
    report(settings, figures, ladder)


if __name__ == "__main__":
    main()
