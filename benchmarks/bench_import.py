"""Import cost of saelens_gemmascope over plain ``import sae_lens`` (the baseline), in fresh processes.

Runs the two imports alternately so machine noise hits both alike, and prints medians and the
difference. Usage: python benchmarks/bench_import.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SNIPPETS = {
    "import sae_lens (baseline)": "import sae_lens",
    "import saelens_gemmascope": "import saelens_gemmascope",
}


def time_import(code: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    time_import("import saelens_gemmascope")  # warm the file-system cache once
    times: dict[str, list[float]] = {label: [] for label in SNIPPETS}
    for _ in range(args.repeats):
        for label, code in SNIPPETS.items():
            times[label].append(time_import(code))
    baseline = statistics.median(times["import sae_lens (baseline)"])
    for label, values in times.items():
        median = statistics.median(values)
        print(
            f"{label:30s} median {median:6.2f} s  (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
            f"  ratio {median / baseline:.2f}  extra {median - baseline:+.2f} s"
        )


if __name__ == "__main__":
    main()
