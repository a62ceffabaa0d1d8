"""How one pass of a suite trains: live (one shared forward pass) or from cached activations.

Both build SAELens configs with :mod:`saelens_gemmascope.training.preset_config` and run this
package's SAELens runner subclasses; checkpoints go to ``<root>/checkpoints/<pass>/`` and a
``resume`` run continues each pass from its latest complete checkpoint (SAELens restores SAE
weights, optimiser, schedules and the input scale; :mod:`~saelens_gemmascope.training.resumable_stream`
the exact data position, so the result equals an uninterrupted run's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens import LoggingConfig
from sae_lens.saes.sae import SAE

from saelens_gemmascope.training.activation_cache import cache_activations, caches_to_write
from saelens_gemmascope.training.checks import CacheEstimate, check_disk_space, check_hook_widths
from saelens_gemmascope.training.preset_config import PresetSAE, multi_config_for, training_config
from saelens_gemmascope.training.resumable_stream import STREAM_STATE_FILENAME
from saelens_gemmascope.training.runners import GemmaScopeMultiSAETrainingRunner, GemmaScopeTrainingRunner
from saelens_gemmascope.training.suite import PassTrainer, SuiteGroup, SuitePlan

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
    wandb_project: str | None = None

    def pass_dir(self, pass_id: str) -> Path:
        return self.output_root / "saes" / pass_id

    def checkpoint_dir(self, pass_id: str) -> Path:
        return self.output_root / "checkpoints" / pass_id


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under ``folder`` (any run id below it).

    Our runners write the stream position last, so a folder holding it is complete; a kill during
    a checkpoint write leaves a newer folder without it, which is skipped. Checkpoints written by
    SAELens's own runners have no position: the newest of those that has its ``runner_cfg.json``.
    """
    found = sorted(
        (
            (int(m.group(1)), path)
            for path in folder.glob("*/*")
            if path.is_dir() and (m := _CHECKPOINT_NAME.match(path.name))
        ),
        reverse=True,
    )
    for marker in (STREAM_STATE_FILENAME, "runner_cfg.json"):
        complete = [path for _, path in found if (path / marker).is_file()]
        if complete:
            return complete[0]
    return None


def _run_settings(ctx: TrainingContext, pass_id: str | None, output: Path | None) -> dict[str, Any]:
    """Output, checkpoint and logging settings of one run (a probe run, ``pass_id=None``, saves nothing)."""
    run_id = (pass_id or "probe").replace("/", "__")
    # Training passes log to wandb when asked; the many short calibration probes never do.
    log = ctx.wandb_project is not None and pass_id is not None
    logger = LoggingConfig(
        log_to_wandb=log, wandb_id=run_id, run_name=run_id, wandb_project=ctx.wandb_project or "gemmascope"
    )
    settings: dict[str, Any] = {"logger": logger}
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


def cached_pass_trainer(group: SuiteGroup, ctx: TrainingContext) -> PassTrainer:
    """Caches each hook's activations once, then trains every SAE from disk on its own."""

    def train(saes: Sequence[PresetSAE], tokens: int, pass_id: str | None) -> Mapping[str, Any]:
        settings = {**group.runner_settings, **ctx.overrides}
        # Cached once for the training runs, so that the calibration probes' cache serves them too.
        cached = max(tokens, group.training_tokens)
        paths = cache_activations(
            ctx.model, ctx.dataset, ctx.output_root, saes, cached, _with_recipe_defaults(settings)
        )
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


@dataclass
class SuiteTrainers:
    """The ``trainer_for_group`` of :func:`~saelens_gemmascope.training.suite.run_suite`.

    ``model`` and ``dataset`` replace loading the group's model by name and ``data`` (``stdlib``,
    a dataset folder, or a hub dataset name); a loaded model is reused by every group of it.
    Checkpoints: ``checkpoint_every_tokens`` (an interval) or ``n_checkpoints`` per pass.
    ``wandb_project`` turns on wandb logging of the training passes (offline without an API key
    or network; calibration probes are not logged).
    """

    output_root: Path
    data: str = "stdlib"
    model: Any = None
    dataset: Any = None
    cached: bool = False
    resume: bool = False
    n_checkpoints: int = 0
    checkpoint_every_tokens: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    wandb_project: str | None = None
    progress: Callable[[str], None] = print
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def checkpoints_for(self, group: SuiteGroup) -> int:
        """Checkpoints per pass of ``group``: one every ``checkpoint_every_tokens`` if set."""
        if self.checkpoint_every_tokens is None:
            return self.n_checkpoints
        return max(0, math.ceil(group.training_tokens / self.checkpoint_every_tokens) - 1)

    def preflight(self, plan: SuitePlan) -> None:
        """Checks before anything runs: disk space for the activation caches (cached mode)."""
        if not self.cached:
            return
        needed: dict[str, int] = {}
        for group in plan.groups:
            settings = _with_recipe_defaults({**group.runner_settings, **self.overrides})
            hooks = {p.hook_name: p.d_in for p in group.presets}
            needed.update(caches_to_write(self.output_root, hooks, group.training_tokens, settings))
        check_disk_space(CacheEstimate(self.output_root / "activations", needed))

    def language_model(self, model_name: str) -> Any:
        if self.model is not None:
            return self.model
        if model_name not in self._loaded:
            from saelens_gemmascope.models.loading import load_language_model

            self._loaded[model_name] = load_language_model(model_name, device=self.overrides.get("device"))
        return self._loaded[model_name]

    def __call__(self, group: SuiteGroup) -> PassTrainer:
        from saelens_gemmascope.training.data import load_training_data

        lm = self.language_model(group.model_name)
        check_hook_widths(lm, {p.hook_name: p.d_in for p in group.presets})
        settings = _with_recipe_defaults(group.runner_settings)
        data_set = (
            self.dataset
            if self.dataset is not None
            else load_training_data(self.data, lm.tokenizer, settings["context_size"])
        )
        n_checkpoints = self.checkpoints_for(group)
        if n_checkpoints:
            every = group.training_tokens // (n_checkpoints + 1)
            self.progress(
                f"group {group.index}: a checkpoint every {every:,} tokens ({n_checkpoints} per pass) "
                f"under {self.output_root / 'checkpoints'}"
            )
        ctx = TrainingContext(
            lm, data_set, self.output_root, self.overrides, n_checkpoints, self.resume, self.wandb_project
        )
        return (cached_pass_trainer if self.cached else live_pass_trainer)(group, ctx)


def group_trainers(
    output_root: str | Path,
    *,
    data: str = "stdlib",
    model: Any = None,
    dataset: Any = None,
    cached: bool = False,
    resume: bool = False,
    n_checkpoints: int = 0,
    checkpoint_every_tokens: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    wandb_project: str | None = None,
    progress: Callable[[str], None] = print,
) -> SuiteTrainers:
    """The ``trainer_for_group`` of :func:`~saelens_gemmascope.training.suite.run_suite` (see
    :class:`SuiteTrainers`)."""
    return SuiteTrainers(
        Path(output_root), data=data, model=model, dataset=dataset, cached=cached, resume=resume,
        n_checkpoints=n_checkpoints, checkpoint_every_tokens=checkpoint_every_tokens,
        overrides=dict(overrides or {}), wandb_project=wandb_project, progress=progress,
    )  # fmt: skip
