"""What starting costs: the ``gemmascope`` command's help, the package's import, and SAELens with us.

Each case runs in a fresh process (``HF_HUB_OFFLINE=1``), N times, the cases taking turns so that
machine noise hits them alike; the table gives the median wall time of each, then the ratios that
matter: ``gemmascope --help`` against an empty Python and against ``import sae_lens``, and what
``SAE.from_pretrained`` pays with this package (SAELens, our registrations, the directory parse) over
SAELens's own import and directory parse.

Usage: python benchmarks/bench_import.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

DIRECTORY = (
    "from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory\n"
    "get_pretrained_saes_directory()"
)

#: label -> the arguments after ``python``
CASES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "gemmascope --help": ["-m", "saelens_gemmascope.cli", "--help"],
    "gemmascope --version": ["-m", "saelens_gemmascope.cli", "--version"],
    "import saelens_gemmascope": ["-c", "import saelens_gemmascope"],
    "import sae_lens": ["-c", "import sae_lens"],
    "import sae_lens + directory": ["-c", f"import sae_lens\n{DIRECTORY}"],
    "import saelens_gemmascope, sae_lens + directory": [
        "-c",
        f"import saelens_gemmascope\nimport sae_lens\n{DIRECTORY}",
    ],
}


def time_once(arguments: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, *arguments], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, list[float]]:
    for arguments in CASES.values():  # warm the file-system cache once
        time_once(arguments)
    times: dict[str, list[float]] = {label: [] for label in CASES}
    for _ in range(repeats):
        for label, arguments in CASES.items():
            times[label].append(time_once(arguments))
    return times


def report(times: dict[str, list[float]]) -> None:
    medians = {label: statistics.median(values) for label, values in times.items()}
    width = max(map(len, CASES))
    print(f"{'case':{width}s}  median s    min s    max s   n")
    for label, values in times.items():
        print(
            f"{label:{width}s}  {medians[label]:8.3f}  {min(values):7.3f}  {max(values):7.3f}  {len(values):2d}"
        )
    help_s, bare_s, sae_lens_s = (
        medians["gemmascope --help"],
        medians["python -c pass"],
        medians["import sae_lens"],
    )
    ours = medians["import saelens_gemmascope, sae_lens + directory"]
    theirs = medians["import sae_lens + directory"]
    print()
    print(f"gemmascope --help / python -c pass:   {help_s / bare_s:6.2f}x  ({help_s - bare_s:+.3f} s)")
    print(f"gemmascope --help / import sae_lens:  {help_s / sae_lens_s:6.3f}x")
    print(f"with us over SAELens's own (import + directory): {ours - theirs:+.3f} s, {ours / theirs:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="processes per case (default: 5)")
    args = parser.parse_args()
    report(measure(args.repeats))


if __name__ == "__main__":
    main()
