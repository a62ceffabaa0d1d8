"""How one pass of a suite trains: live (one shared forward pass) or from cached activations.

Both build SAELens configs with :mod:`saelens_gemmascope.training.preset_config` and run this
package's SAELens runner subclasses; checkpoints go to ``<root>/checkpoints/<pass>/`` and a
``resume`` run continues each pass from its latest checkpoint (SAELens restores SAE weights,
optimiser, schedules, the input scale and the activation store's position).
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens import LoggingConfig
from sae_lens.cache_activations_runner import CacheActivationsRunner, _mk_activations_store
from sae_lens.config import CacheActivationsRunnerConfig
from sae_lens.saes.sae import SAE

from saelens_gemmascope.training.preset_config import PresetSAE, multi_config_for, training_config
from saelens_gemmascope.training.runners import GemmaScopeMultiSAETrainingRunner, GemmaScopeTrainingRunner
from saelens_gemmascope.training.suite import PassTrainer, SuiteGroup

_CHECKPOINT_NAME = re.compile(r"^(?:final_)?(\d+)$")


@dataclass
class TrainingContext:
    """What every pass of a suite shares: the model, the data and the run's settings."""

    model: Any  # a HookedRootModule (HookedSAETransformer)
    dataset: Any  # a datasets.Dataset / IterableDataset, given to SAELens as override_dataset
    output_root: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)
    n_checkpoints: int = 0
    resume: bool = False

    def pass_dir(self, pass_id: str) -> Path:
        return self.output_root / "saes" / pass_id

    def checkpoint_dir(self, pass_id: str) -> Path:
        return self.output_root / "checkpoints" / pass_id


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the most training tokens under ``folder`` (any run id below it)."""
    found = [
        (int(m.group(1)), path)
        for path in folder.glob("*/*")
        if path.is_dir() and (m := _CHECKPOINT_NAME.match(path.name))
    ]
    return max(found)[1] if found else None


def _run_settings(ctx: TrainingContext, pass_id: str | None, output: Path | None) -> dict[str, Any]:
    """Output, checkpoint and logging settings of one run (a probe run, ``pass_id=None``, saves nothing)."""
    run_id = (pass_id or "probe").replace("/", "__")
    settings: dict[str, Any] = {"logger": LoggingConfig(log_to_wandb=False, wandb_id=run_id)}
    settings.update(ctx.overrides)
    if pass_id is None:
        return {**settings, "output_path": None, "checkpoint_path": None, "n_checkpoints": 0}
    # SAELens appends the logger's wandb_id (or a random id) to checkpoint_path.
    settings.update(output_path=str(output), checkpoint_path=str(ctx.checkpoint_dir(pass_id)))
    settings.setdefault("n_checkpoints", ctx.n_checkpoints)
    return settings


def _finished(output: Path, names: Sequence[str]) -> dict[str, Any] | None:
    """The saved SAEs of a pass that already finished (a resumed suite does not retrain them)."""
    if not all((output / name / "cfg.json").is_file() for name in names):
        return None
    return {name: SAE.load_from_disk(str(output / name)) for name in names}


def _resume_from(ctx: TrainingContext, pass_id: str) -> str | None:
    checkpoint = latest_checkpoint(ctx.checkpoint_dir(pass_id))
    if checkpoint is None:
        return None
    if not ctx.resume:
        raise FileExistsError(
            f"{pass_id} has checkpoints under {ctx.checkpoint_dir(pass_id)}: pass --resume to continue "
            "from the latest, or use a new output folder"
        )
    return str(checkpoint)


def live_pass_trainer(group: SuiteGroup, ctx: TrainingContext) -> PassTrainer:
    """Trains a pass with one multi-SAE runner: one model forward pass per batch feeds every SAE."""

    def train(saes: Sequence[PresetSAE], tokens: int, pass_id: str | None) -> Mapping[str, Any]:
        names = [s.name for s in saes]
        output = ctx.pass_dir(pass_id) if pass_id is not None else None
        settings = {"training_tokens": tokens, **_run_settings(ctx, pass_id, output)}
        if output is not None and pass_id is not None:
            if ctx.resume and (done := _finished(output, names)) is not None:
                return done
            settings["resume_from_checkpoint"] = _resume_from(ctx, pass_id)
        cfg = multi_config_for(saes, **settings)
        return GemmaScopeMultiSAETrainingRunner(
            cfg, override_dataset=ctx.dataset, override_model=ctx.model
        ).run()

    return train


class CacheActivationsRunnerWithModel(CacheActivationsRunner):
    """SAELens's ``CacheActivationsRunner`` on a model already in memory.

    SAELens's ``__init__`` loads the model by name (``load_model``) and takes no model argument,
    which the tiny model, or any model built in memory, cannot go through. This set-up is the
    same in effect; caching, sharding and shuffling (``run()``) stay SAELens's.
    """

    def __init__(self, cfg: CacheActivationsRunnerConfig, model: Any, override_dataset: Any = None) -> None:
        from datasets import Array2D, Features, Sequence, Value

        self.cfg = cfg
        self.model = model
        self.activations_store = _mk_activations_store(model, cfg, override_dataset=override_dataset)
        self.context_size = self._get_sliced_context_size(cfg.context_size, cfg.seqpos_slice)
        self.features = Features(
            {
                cfg.hook_name: Array2D(shape=(self.context_size, cfg.d_in), dtype=cfg.dtype),
                "token_ids": Sequence(Value(dtype="int32"), length=self.context_size),
            }
        )


def cache_activations(
    ctx: TrainingContext, saes: Sequence[PresetSAE], tokens: int, settings: Mapping[str, Any]
) -> dict[str, Path]:
    """Cache each hook of ``saes`` once (reused when the folder already holds a cache)."""
    paths: dict[str, Path] = {}
    context = int(settings["context_size"])
    prompts = int(settings["store_batch_size_prompts"])
    for sae in saes:
        hook = sae.preset.hook_name
        path = ctx.output_root / "activations" / hook
        paths[hook] = path
        if (path / "state.json").is_file():
            continue  # a finished cache (save_to_disk writes state.json last)
        if path.exists():
            shutil.rmtree(path)  # an interrupted cache of this run; SAELens refuses non-empty folders
        bytes_per_token = sae.preset.d_in * 4
        batch_tokens = prompts * context
        # One shard holding the whole cache (SAELens sizes shards in GB, up to 2).
        n_tokens = math.ceil(tokens / batch_tokens) * batch_tokens
        buffer_gb = min(2.0, (n_tokens * bytes_per_token + bytes_per_token // 2) / 1e9)
        cfg = CacheActivationsRunnerConfig(
            dataset_path="in-memory", model_name=sae.preset.model_name, model_batch_size=prompts,
            hook_name=hook, d_in=sae.preset.d_in, training_tokens=n_tokens, context_size=context,
            new_cached_activations_path=str(path), buffer_size_gb=buffer_gb,
            device=str(settings.get("device", "cpu")), dtype="float32",
        )  # fmt: skip
        CacheActivationsRunnerWithModel(cfg, ctx.model, override_dataset=ctx.dataset).run()
    return paths


def cached_pass_trainer(group: SuiteGroup, ctx: TrainingContext) -> PassTrainer:
    """Caches each hook's activations once, then trains every SAE from disk on its own."""

    def train(saes: Sequence[PresetSAE], tokens: int, pass_id: str | None) -> Mapping[str, Any]:
        settings = {**group.runner_settings, **ctx.overrides}
        paths = cache_activations(ctx, saes, tokens, _with_recipe_defaults(settings))
        results: dict[str, Any] = {}
        for sae in saes:
            output = ctx.pass_dir(pass_id) / sae.name if pass_id is not None else None
            run = {
                "training_tokens": tokens,
                **_run_settings(ctx, pass_id and f"{pass_id}/{sae.name}", output),
            }
            if output is not None and ctx.resume and (done := _finished(output.parent, [sae.name])):
                results.update(done)
                continue
            if output is not None and pass_id is not None:
                run["resume_from_checkpoint"] = _resume_from(ctx, f"{pass_id}/{sae.name}")
            cfg = training_config(
                sae.preset, sae.l0_coefficient, use_cached_activations=True,
                cached_activations_path=str(paths[sae.preset.hook_name]), **run,
            )  # fmt: skip
            runner = GemmaScopeTrainingRunner(cfg, override_dataset=ctx.dataset, override_model=ctx.model)
            results[sae.name] = runner.run()
        return results

    return train


def _with_recipe_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    from saelens_gemmascope.training.config import RECIPE_RUNNER_DEFAULTS

    return {"store_batch_size_prompts": 32, **RECIPE_RUNNER_DEFAULTS, **settings}


def group_trainers(
    output_root: str | Path,
    *,
    data: str = "stdlib",
    model: Any = None,
    dataset: Any = None,
    cached: bool = False,
    resume: bool = False,
    n_checkpoints: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> Callable[[SuiteGroup], PassTrainer]:
    """The ``trainer_for_group`` of :func:`~saelens_gemmascope.training.suite.run_suite`.

    ``model`` and ``dataset`` replace loading the group's model by name and ``data`` (``stdlib``,
    a dataset folder, or a hub dataset name); a loaded model is reused by every group of it.
    """
    from saelens_gemmascope.models.loading import load_language_model
    from saelens_gemmascope.training.data import load_training_data

    loaded: dict[str, Any] = {}
    overrides = dict(overrides or {})

    def for_group(group: SuiteGroup) -> PassTrainer:
        lm = model
        if lm is None:
            if group.model_name not in loaded:
                loaded[group.model_name] = load_language_model(
                    group.model_name, device=overrides.get("device")
                )
            lm = loaded[group.model_name]
        settings = _with_recipe_defaults(group.runner_settings)
        data_set = (
            dataset
            if dataset is not None
            else load_training_data(data, lm.tokenizer, settings["context_size"])
        )
        ctx = TrainingContext(lm, data_set, Path(output_root), overrides, n_checkpoints, resume)
        return (cached_pass_trainer if cached else live_pass_trainer)(group, ctx)

    return for_group
