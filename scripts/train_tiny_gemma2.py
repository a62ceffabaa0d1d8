"""Build (or rebuild) the embedded default model into the cache and print its metrics.

    python scripts/train_tiny_gemma2.py [--seed N] [--cache-dir DIR] [--rebuild] [--steps N]

A thin wrapper over :func:`saelens_gemmascope.demo.embedded_model.load_embedded_model`;
the same seed and settings give the same weights bit-for-bit on the same machine and torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from saelens_gemmascope.demo.embedded_model import DEFAULT_SETTINGS, load_embedded_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="default: the user cache directory")
    parser.add_argument("--rebuild", action="store_true", help="retrain even if cached")
    parser.add_argument("--steps", type=int, default=DEFAULT_SETTINGS.steps, help="training steps")
    args = parser.parse_args()

    settings = dataclasses.replace(DEFAULT_SETTINGS, steps=args.steps)
    model = load_embedded_model(args.seed, settings=settings, cache_dir=args.cache_dir, rebuild=args.rebuild)
    print(f"cached in {model.directory}")
    print(json.dumps(model.metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
