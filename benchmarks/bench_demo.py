"""Wall and CPU time of ``gemmascope demo``, each run in a fresh process: a first run (builds the
embedded model into an empty cache) and a second (model cached), against budgets of 5 and 3 minutes.

With ``--busy``, the same two runs again while N busy-loop processes compete for the cores (the
"busy laptop"), and the ratios busy/quiet and cold/cached. The busy loops stop by themselves after
``--max-seconds`` and are killed when the benchmark ends, however it ends.

Usage: python benchmarks/bench_demo.py [--quick] [--model NAME] [--busy [N]] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUDGET_SECONDS = {"first run (empty cache)": 300.0, "second run (model cached)": 180.0}
#: One busy-loop process: spins until its deadline (so that none outlives a crashed benchmark).
BUSY_LOOP = (
    "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
)


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # user + system time of the demo process and its children


def run_demo(out: Path, cache: Path, args: argparse.Namespace) -> Timing:
    """One demo in a fresh process with ``cache`` as the package's cache (see cache_dir.py)."""
    env = {**os.environ, "SAELENS_GEMMASCOPE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    if args.threads is not None:
        env["GEMMASCOPE_THREADS"] = str(args.threads)
    command = [sys.executable, "-m", "saelens_gemmascope.cli", "demo", "--out", str(out), "--no-progress"]
    command += ["--quick"] if args.quick else []
    command += ["--model", args.model] if args.model else []
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            raise
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"the demo failed (exit {process.returncode}):\n{tail}")
    return Timing(wall, usage.ru_utime + usage.ru_stime)


@contextmanager
def busy_cores(count: int, max_seconds: float) -> Iterator[None]:
    """``count`` processes spinning on the CPU for the block (at most ``max_seconds``)."""
    loops = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(max_seconds)], stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        time.sleep(1.0)  # let them get going (and the load average start to rise)
        yield
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()


def cold_then_cached(root: Path, tag: str, args: argparse.Namespace) -> tuple[Timing, Timing]:
    """A run with an empty cache, then one with the cache it filled."""
    cache = root / f"cache-{tag}"
    cold = run_demo(root / f"out-{tag}-cold", cache, args)
    cached = run_demo(root / f"out-{tag}-cached", cache, args)
    return cold, cached


def line(label: str, timing: Timing, extra: str = "") -> str:
    return f"{label:34s} {timing.wall:8.1f} s wall {timing.cpu:8.1f} s CPU{extra}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="time the shortened demo (demo --quick)")
    parser.add_argument("--model", help="the demo's --model (default: the demo's own)")
    parser.add_argument(
        "--busy",
        type=int,
        nargs="?",
        const=os.cpu_count() or 1,
        default=None,
        metavar="N",
        help="also time both runs under N busy-loop processes (default N: one per core)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="the demo's torch thread count (GEMMASCOPE_THREADS; default: its own choice)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=3 * 3600, help="the busy loops' lifetime at most (default: 3 h)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # SIGTERM (a timeout, a scheduler) unwinds like Ctrl-C, so the busy loops and the demo are killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = args.threads if args.threads is not None else "the demo's choice"
    print(f"machine: {os.cpu_count()} CPU cores, load average {load:.2f} at start; torch threads: {threads}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        quiet = cold_then_cached(root, "quiet", args)
        for (label, budget), timing in zip(BUDGET_SECONDS.items(), quiet, strict=True):
            print(line(label, timing, f"   budget {budget:5.0f} s   ratio {timing.wall / budget:.2f}"))
        if args.busy is None:
            return
        with busy_cores(args.busy, args.max_seconds):
            busy = cold_then_cached(root, "busy", args)
        print(f"under {args.busy} busy-loop process(es):")
        for label, timing, calm in zip(BUDGET_SECONDS, busy, quiet, strict=True):
            ratios = f"   busy/quiet: wall {timing.wall / calm.wall:.2f}x, CPU {timing.cpu / calm.cpu:.2f}x"
            print(line(label, timing, ratios))
        for tag, (cold, cached) in (("quiet", quiet), ("busy", busy)):
            print(f"{tag}: cold/cached wall {cold.wall / cached.wall:.2f}x")


if __name__ == "__main__":
    main()
