"""How long the tiny Gemma 2 takes to build (target: well under a second) and to run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_tiny_model.py [--repeats N]

Import time (torch, transformers, TransformerLens, SAELens) is reported separately: it is paid
once per process and dominates a cold start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    import sae_lens  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from saelens_gemmascope.demo.tiny_model import build_tiny_gemma2, build_tiny_hf
    from saelens_gemmascope.demo.tokenizer import build_byte_tokenizer
    from saelens_gemmascope.models.bridge import transformer_bridge_from_hf

    print(f"imports (once per process)          {time.perf_counter() - start:8.3f} s")

    build_tiny_gemma2()  # warm-up: first-call caches in torch and transformers
    rows = {
        "tokenizer": lambda: build_byte_tokenizer(),
        "HF model (Gemma2ForCausalLM)": lambda: build_tiny_hf(),
        "build_tiny_gemma2 (HF + TL + tok)": lambda: build_tiny_gemma2(),
        "SAETransformerBridge around HF": lambda: transformer_bridge_from_hf(
            build_tiny_hf(), build_byte_tokenizer()
        ),
    }
    for label, fn in rows.items():
        median, best = _timed(fn, args.repeats)
        print(f"{label:36s} {1e3 * median:8.1f} ms median  ({1e3 * best:.1f} ms best of {args.repeats})")

    tiny = build_tiny_gemma2()
    tokens = torch.randint(4, 260, (8, 128))
    with torch.no_grad():
        for label, fn in {
            "HF forward, 8 x 128 tokens": lambda: tiny.hf_model(tokens),
            "TL forward, 8 x 128 tokens": lambda: tiny.tl_model(tokens),
        }.items():
            median, best = _timed(fn, args.repeats)
            print(f"{label:36s} {1e3 * median:8.1f} ms median  ({1e3 * best:.1f} ms best of {args.repeats})")


if __name__ == "__main__":
    main()
