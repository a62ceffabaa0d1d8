"""Benchmark: ``gemmascope train`` in one process vs under torchrun in both modes (the one path).

Runs the production command three ways on the same preset, λ ladder and token budget (strong
scaling: the same global batch and SAEs in every run) and prints wall time, the training pass's own
time (``pass_seconds`` in the run's ``summary.json``), SAE tokens per second and the ratio to the
baseline, **one process**:

* ``single``: ``python -m saelens_gemmascope.cli train PRESET --l0-coefficients ...``
* ``data``: ``torchrun --nproc-per-node N ... --distributed data`` (each rank 1/N of each batch)
* ``sae``: ``torchrun --nproc-per-node N ... --distributed sae`` (each rank 1/N of the SAEs)

One torch thread per process (``OMP_NUM_THREADS=1``), so N processes use N cores against one.

    python benchmarks/bench_distributed.py [--preset tiny-gemma-2/res/layer_1/width_512]
        [--tokens 102400] [--ladder 4] [--nproc 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny-gemma-2/res/layer_1/width_512")
    parser.add_argument("--tokens", type=int, default=102_400)
    parser.add_argument("--ladder", type=int, default=4, help="SAEs (λs) trained together")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    ladder = ",".join(f"{3e-4 * 100 ** (i / max(args.ladder - 1, 1)):.3g}" for i in range(args.ladder))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TQDM_DISABLE": "1"}  # fmt: skip
    cli = [sys.executable, "-m", "saelens_gemmascope.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
                "-m", "saelens_gemmascope.cli"]  # fmt: skip
    train = ["train", args.preset, "--l0-coefficients", ladder, "--set", f"training_tokens={args.tokens}",
             "--checkpoints", "0", "--device", args.device]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        commands = {
            "single": [*cli, *train],
            "data": [*torchrun, *train, "--distributed", "data"],
            "sae": [*torchrun, *train, "--distributed", "sae"],
        }
        results = {}
        for name, command in commands.items():
            wall = run([*command, "--output", str(root / name)], env)
            # The training pass as the run itself timed it (rank 0; collectives' waits included).
            summary = json.loads((root / name / "summary.json").read_text())
            results[name] = (wall, sum(summary["pass_seconds"].values()))
    sae_tokens = args.tokens * args.ladder
    print(f"preset {args.preset}, {args.ladder} SAEs x {args.tokens:,} tokens, {args.nproc} processes for "
          f"data/sae, device {args.device}; training = the pass's own time (summary.json), wall = the "
          "whole command")  # fmt: skip
    base = None
    for name, (wall, training) in results.items():
        rate = sae_tokens / training
        base = base or rate
        print(f"  {name:6s} wall {wall:6.1f} s  training {training:6.1f} s  {rate:10,.0f} SAE tokens/s  "
              f"x{rate / base:.2f} vs single")  # fmt: skip


if __name__ == "__main__":
    main()
