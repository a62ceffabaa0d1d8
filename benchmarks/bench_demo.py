"""Wall time of ``gemmascope demo``: first run (builds the embedded model into an empty cache) and a
second run (model cached), each in a fresh process, against the budgets of 5 and 3 minutes.

Usage: python benchmarks/bench_demo.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = {"first run (empty cache)": 300.0, "second run (model cached)": 180.0}


def run_demo(out: Path, cache: Path, quick: bool) -> float:
    env = {**os.environ, "SAELENS_GEMMASCOPE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "saelens_gemmascope.cli", "demo", "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    subprocess.run([*command, *(["--quick"] if quick else [])], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="time the shortened demo instead")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores; torch threads as configured by the demo's defaults")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, (label, budget) in enumerate(BUDGET_SECONDS.items()):
            seconds = run_demo(root / f"out{i}", root / "cache", args.quick)
            print(f"{label:28s} {seconds:7.1f} s   budget {budget:5.0f} s   ratio {seconds / budget:.2f}")


if __name__ == "__main__":
    main()
