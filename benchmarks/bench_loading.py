"""Benchmark (not a test): loading a Gemma 2 2B-sized 16k SAE (2304 x 16384, fp32, ~300 MB npz).

Compares (1) our first load from a mirror's params.npz (read, validate, write the conversion cache),
(2) a later load from the conversion cache (safetensors), and (3) SAELens's own ``gemma_2`` converter
on a fake Hugging Face cache holding the same file. Everything lives in a temporary folder; nothing is
downloaded.

Run:  HF_HUB_OFFLINE=1 python benchmarks/bench_loading.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from huggingface_hub import constants as hf_constants

REPO, FOLDER = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"
D_IN, D_SAE = 2304, 16384


def write_params(path: Path) -> None:
    gen = np.random.default_rng(0)
    arrays = {
        "W_enc": gen.standard_normal((D_IN, D_SAE), dtype=np.float32),
        "W_dec": gen.standard_normal((D_SAE, D_IN), dtype=np.float32),
        "b_enc": gen.standard_normal(D_SAE, dtype=np.float32),
        "b_dec": gen.standard_normal(D_IN, dtype=np.float32),
        "threshold": gen.random(D_SAE, dtype=np.float32),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gemmascope-bench-") as tmp:
        root = Path(tmp)
        mirror = root / "mirror"
        write_params(mirror / REPO / FOLDER / "params.npz")
        # The same bytes where huggingface_hub's cache keeps them, for SAELens's converter.
        rev = "0" * 40
        repo_dir = root / "hf" / f"models--{REPO.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / "main").write_text(rev)
        (repo_dir / "snapshots" / rev / FOLDER).mkdir(parents=True)
        os.link(mirror / REPO / FOLDER / "params.npz", repo_dir / "snapshots" / rev / FOLDER / "params.npz")
        hf_constants.HF_HUB_CACHE = str(root / "hf")
        os.environ["SAELENS_GEMMASCOPE_CACHE"] = str(root / "converted")

        from sae_lens.loading.pretrained_sae_loaders import gemma_2_sae_huggingface_loader

        from saelens_gemmascope.directory.converter import GemmaScopeConverter

        def ours_first() -> None:
            # A fresh cache folder each time, so every run converts from the npz.
            fresh = GemmaScopeConverter(cache_dir=root / f"converted-{time.perf_counter_ns()}")
            fresh.load(REPO, FOLDER, mirror=mirror)

        warm = GemmaScopeConverter(cache_dir=root / "converted-warm")
        warm.load(REPO, FOLDER, mirror=mirror)

        results = {
            "ours, first load (npz -> validate -> cache)": [timed(ours_first) for _ in range(args.repeats)],
            "ours, later load (conversion cache)": [
                timed(lambda: warm.load(REPO, FOLDER, mirror=mirror)) for _ in range(args.repeats)
            ],
            # The cache is memory-mapped: also time touching every byte, for a like-for-like figure.
            "ours, later load + read every tensor": [
                timed(lambda: [t.sum() for t in warm.load(REPO, FOLDER, mirror=mirror)[1].values()])
                for _ in range(args.repeats)
            ],
            "SAELens gemma_2 converter (HF cache npz)": [
                timed(lambda: gemma_2_sae_huggingface_loader(REPO, FOLDER, "cpu"))
                for _ in range(args.repeats)
            ],
        }
    baseline = statistics.median(results["SAELens gemma_2 converter (HF cache npz)"])
    print(f"2304 x 16384 fp32 SAE, median of {args.repeats} runs")
    for label, times in results.items():
        median = statistics.median(times)
        print(f"  {label:46} {median:7.3f} s   x{baseline / median:5.2f} vs SAELens")


if __name__ == "__main__":
    main()
