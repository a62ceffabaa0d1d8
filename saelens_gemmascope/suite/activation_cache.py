"""Activation caches on disk for suite runs: written with SAELens's ``CacheActivationsRunner``.

One cache per hook under ``<output>/activations/<hook>/``, sized for the group's training budget
(calibration probes read its beginning), reused while it holds enough tokens.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sae_lens.cache_activations_runner import CacheActivationsRunner
from sae_lens.config import CacheActivationsRunnerConfig

from saelens_gemmascope.compat import init_cache_activations_runner
from saelens_gemmascope.suite.checks import cache_bytes
from saelens_gemmascope.suite.configs import PresetSAE
from saelens_gemmascope.suite.preset import TrainingPreset


class CacheActivationsRunnerWithModel(CacheActivationsRunner):
    """SAELens's ``CacheActivationsRunner`` on a model already in memory.

    SAELens's ``__init__`` loads the model by name (``load_model``) and takes no model argument,
    which the tiny model, or any model built in memory, cannot go through; it is re-stated with the
    model passed in (:func:`saelens_gemmascope.compat.init_cache_activations_runner`). Caching,
    sharding and shuffling (``run()``) stay SAELens's.
    """

    def __init__(self, cfg: CacheActivationsRunnerConfig, model: Any, override_dataset: Any = None) -> None:
        init_cache_activations_runner(self, cfg, model, override_dataset)


def refuse_cached_transcoders(presets: Sequence[TrainingPreset]) -> None:
    """Cached activations hold one hook per cache; a transcoder reads two (its input and its target)."""
    transcoders = sorted(p.name for p in presets if p.output_hook_name is not None)
    if transcoders:
        raise ValueError(
            f"--cached-activations is not supported for transcoders ({', '.join(transcoders)}): a cache "
            "holds one hook and a transcoder reads two; train them without --cached-activations"
        )


def cached_tokens(path: Path, context_size: int) -> int:
    """Tokens held by the finished activation cache at ``path`` (0 when there is none)."""
    if not (path / "state.json").is_file():  # save_to_disk writes state.json last
        return 0
    import datasets

    return int(datasets.load_from_disk(str(path)).num_rows) * context_size


def cache_tokens(tokens: int, settings: Mapping[str, Any]) -> int:
    """``tokens`` rounded up to whole model batches, as SAELens's cache runner writes them."""
    batch_tokens = int(settings["store_batch_size_prompts"]) * int(settings["context_size"])
    return math.ceil(tokens / batch_tokens) * batch_tokens


def caches_to_write(
    output_root: Path, hooks: Mapping[str, int], tokens: int, settings: Mapping[str, Any]
) -> dict[str, int]:
    """Bytes each hook's cache still needs (hooks whose finished cache is big enough need none)."""
    needed = cache_tokens(tokens, settings)
    context = int(settings["context_size"])
    return {
        hook: cache_bytes(needed, d_in)
        for hook, d_in in hooks.items()
        if cached_tokens(output_root / "activations" / hook, context) < needed
    }


def cache_activations(
    model: Any,
    dataset: Any,
    output_root: Path,
    saes: Sequence[PresetSAE],
    tokens: int,
    settings: Mapping[str, Any],
) -> dict[str, Path]:
    """Cache each hook of ``saes`` under ``<output_root>/activations/<hook>/``; a finished cache is
    reused when it holds ``tokens``."""
    paths: dict[str, Path] = {}
    context = int(settings["context_size"])
    prompts = int(settings["store_batch_size_prompts"])
    n_tokens = cache_tokens(tokens, settings)
    for sae in saes:
        hook = sae.preset.hook_name
        path = output_root / "activations" / hook
        paths[hook] = path
        if cached_tokens(path, context) >= n_tokens:
            continue
        if path.exists():
            # An interrupted or too short cache of this run; SAELens refuses non-empty folders.
            shutil.rmtree(path)
        bytes_per_token = sae.preset.d_in * 4
        # One shard holding the whole cache (SAELens sizes shards in GB, up to 2).
        buffer_gb = min(2.0, (n_tokens * bytes_per_token + bytes_per_token // 2) / 1e9)
        cfg = CacheActivationsRunnerConfig(
            dataset_path="in-memory", model_name=sae.preset.model_name, model_batch_size=prompts,
            hook_name=hook, d_in=sae.preset.d_in, training_tokens=n_tokens, context_size=context,
            new_cached_activations_path=str(path), buffer_size_gb=buffer_gb,
            device=str(settings.get("device", "cpu")), dtype="float32",
        )  # fmt: skip
        CacheActivationsRunnerWithModel(cfg, model, override_dataset=dataset).run()
    return paths
