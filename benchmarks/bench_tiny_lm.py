"""How long the embedded default model takes to build on first use (target: about 90 s on 2 CPU cores)
and to load from the cache (target: under 1 s), and how well it predicts held-out text.

    python benchmarks/bench_tiny_lm.py [--seed N] [--repeats N]

Builds into a fresh temporary cache directory, so the user cache is neither used nor changed.
Import time (torch, transformers, TransformerLens, SAELens) is reported separately: it is paid once
per process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="cached loads to time")
    args = parser.parse_args()

    start = time.perf_counter()
    import sae_lens  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from saelens_gemmascope.demo.embedded_model import DEFAULT_SETTINGS, load_embedded_model

    print(f"imports (once per process)    {time.perf_counter() - start:8.2f} s")
    print(f"torch threads available       {torch.get_num_threads():8d}  (os.cpu_count() = {os.cpu_count()})")
    print(f"load average (1, 5, 15 min)   {os.getloadavg()}")

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        model = load_embedded_model(args.seed, cache_dir=cache, progress=True)
        first = time.perf_counter() - start
        print(f"first build (train + save + load)  {first:8.2f} s")
        print(f"  of which tokenizer + training    {model.metrics['build_seconds']:8.2f} s")

        loads = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            load_embedded_model(args.seed, cache_dir=cache)
            loads.append(time.perf_counter() - start)
        print(
            f"cached load (HF + TL + tokenizer)  {1e3 * statistics.median(loads):8.1f} ms median"
            f"  ({1e3 * min(loads):.1f} ms best of {args.repeats})"
        )

    metrics = model.metrics
    print(f"settings          {DEFAULT_SETTINGS}")
    print(f"parameters        {metrics['n_parameters']:,}")
    print(
        f"train tokens      {metrics['n_train_tokens']:,}   held-out targets {metrics['n_heldout_targets']:,}"
    )
    print(f"held-out CE       {metrics['heldout_ce_nats']:.3f} nats/token")
    print(f"unigram CE        {metrics['unigram_ce_nats']:.3f} nats/token  (training-set frequencies)")
    print(f"gap               {metrics['unigram_ce_nats'] - metrics['heldout_ce_nats']:.3f} nats/token")
    prompt = "The for statement is used to"
    tokens = model.tl_model.to_tokens(prompt)
    generated = model.tl_model.generate(tokens, max_new_tokens=24, do_sample=False, verbose=False)
    print(f"greedy sample     {model.tl_model.to_string(generated[0, 1:])!r}")


if __name__ == "__main__":
    main()
