"""The Gemma Scope 2 frequency penalty on the tiny model: high-frequency latents and FVU, with and without.

Trains the ``tiny-gemma-2/res/layer_1/width_256`` preset (stdlib text, CPU) once per penalty strength
μ (``frequency_penalty``; 0 = off) at the same λ, and measures on held-out stdlib tokens (BOS
excluded, as in training): the largest latent firing frequency, how many latents fire on more than
``--cap`` of tokens, L0 and FVU = Σ‖x - x̂‖² / Σ‖x - x̄‖².

    python benchmarks/bench_frequency_penalty.py [--strengths 0 1000] [--l0-coefficient 5e-3] [--training-tokens 1638400]
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
HELDOUT_ROWS = 48


@dataclass(frozen=True)
class Figures:
    strength: float
    max_frequency: float
    above_cap: int
    l0: float
    fvu: float
    seconds: float


def heldout_activations(model: Any, hook_name: str, context_size: int) -> torch.Tensor:
    from saelens_gemmascope.data.stdlib_text import stdlib_token_dataset

    rows = stdlib_token_dataset(model.tokenizer, context_size, holdout=True)["input_ids"][:HELDOUT_ROWS]
    tokens = torch.tensor(rows)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name][:, 1:].reshape(-1, cache[hook_name].shape[-1]).float()  # BOS dropped


@torch.no_grad()
def measure(sae: Any, x: torch.Tensor, cap: float) -> tuple[float, int, float, float]:
    acts = sae.encode(x.to(sae.dtype))
    x_hat = sae.decode(acts).float()
    frequency = (acts > 0).float().mean(dim=0)
    fvu = float((x - x_hat).square().sum() / (x - x.mean(dim=0)).square().sum())
    l0 = float((acts > 0).float().sum(dim=-1).mean())
    return float(frequency.max()), int((frequency > cap).sum()), l0, fvu


def run(strength: float, l0_coefficient: float, cap: float, overrides: dict[str, Any]) -> Figures:
    from saelens_gemmascope.runners import GemmaScopeTrainingRunner
    from saelens_gemmascope.suite.configs import training_config

    torch.manual_seed(0)
    cfg = training_config(PRESET, l0_coefficient, frequency_penalty=strength, frequency_cap=cap, **overrides)
    runner = GemmaScopeTrainingRunner(cfg)
    start = time.perf_counter()
    sae = runner.run()
    seconds = time.perf_counter() - start
    x = heldout_activations(runner.model, cfg.hook_name, cfg.context_size)
    return Figures(strength, *measure(sae, x, cap), seconds)


def main() -> None:
    import saelens_gemmascope  # noqa: F401  (registers the tiny models and presets)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1000.0])
    parser.add_argument("--l0-coefficient", type=float, default=5e-3)
    parser.add_argument("--cap", type=float, default=0.1)
    parser.add_argument("--training-tokens", type=int, default=1_638_400, help="6,400 steps of 256")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    overrides = {"training_tokens": args.training_tokens}
    print(f"{PRESET}, λ = {args.l0_coefficient:g}, cap {args.cap:.0%}, held-out stdlib tokens")
    print(f"{'μ':>8} {'max freq':>9} {'> cap':>6} {'L0':>7} {'FVU':>7} {'train s':>8}")
    for strength in args.strengths:
        f = run(strength, args.l0_coefficient, args.cap, overrides)
        print(
            f"{f.strength:>8g} {f.max_frequency:>9.3f} {f.above_cap:>6d} {f.l0:>7.1f} {f.fvu:>7.4f} "
            f"{f.seconds:>8.1f}"
        )


if __name__ == "__main__":
    main()
