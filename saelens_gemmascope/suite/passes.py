"""How one pass of a suite trains: live (one shared forward pass) or from cached activations.

Both build SAELens configs with :mod:`saelens_gemmascope.suite.configs` and run this
package's SAELens runner subclasses; checkpoints go to ``<root>/checkpoints/<pass>/`` and a
``resume`` run continues each pass from its latest complete checkpoint (SAELens restores SAE
weights, optimiser, schedules and the input scale; :mod:`~saelens_gemmascope.runners.activation_stream`
the exact data position, so the result equals an uninterrupted run's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens import LoggingConfig
from sae_lens.saes.sae import SAE

from saelens_gemmascope.distributed.collectives import Collectives
from saelens_gemmascope.recipe.warm_start import init_source_for, is_rung_folder
from saelens_gemmascope.runners.checkpoints import InvalidCheckpointError, scan_checkpoints
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.runners.training_runners import (
    GemmaScopeMultiSAETrainingRunner,
    GemmaScopeTrainingRunner,
)
from saelens_gemmascope.suite.activation_cache import (
    cache_activations,
    caches_to_write,
    refuse_cached_transcoders,
)
from saelens_gemmascope.suite.catalog import model_hooks
from saelens_gemmascope.suite.checks import CacheEstimate, check_disk_space, check_hook_widths
from saelens_gemmascope.suite.configs import PresetSAE, multi_config_for, single_config_for
from saelens_gemmascope.suite.plan import SuiteGroup, SuitePlan
from saelens_gemmascope.suite.results import TrainPass

logger = logging.getLogger(__name__)


@dataclass
class TrainingContext:
    """What every pass of a suite shares: the model, the data and the run's specification."""

    model: Any  # a HookedRootModule (HookedSAETransformer)
    dataset: Any  # a datasets.Dataset / IterableDataset, given to SAELens as override_dataset
    spec: RunSpec
    n_checkpoints: int = 0
    resume: bool = False

    @property
    def output_root(self) -> Path:
        assert self.spec.output is not None
        return self.spec.output

    @property
    def collectives(self) -> Collectives:
        return Collectives(self.spec.distributed)

    def pass_dir(self, pass_id: str) -> Path:
        return self.output_root / "saes" / pass_id

    def checkpoint_dir(self, pass_id: str) -> Path:
        """Where a pass's checkpoints go; under torchrun one folder per rank (each rank saves its
        own trainer and stream position, and resumes from them)."""
        folder = self.output_root / "checkpoints" / pass_id
        distributed = self.spec.distributed
        return folder / f"rank{distributed.rank}" if distributed is not None else folder


def complete_checkpoints(folder: Path) -> dict[int, Path]:
    """The complete, intact checkpoints under ``folder`` (any run id below it), by training tokens.

    Our runners write a manifest of the checkpoint's files last, so a folder holding it is
    complete; a kill during a checkpoint write leaves a newer folder without it, which is skipped.
    A complete checkpoint with a file missing, truncated or unreadable is left out too (see
    :func:`~saelens_gemmascope.runners.checkpoints.scan_checkpoints`, which says why). Checkpoints
    written by SAELens's own runners have no manifest: those that have their ``runner_cfg.json`` count.
    """
    return scan_checkpoints(folder).complete


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under ``folder`` (see :func:`complete_checkpoints`)."""
    complete = complete_checkpoints(folder)
    return complete[max(complete)] if complete else None


def _run_settings(ctx: TrainingContext, pass_id: str | None, output: Path | None) -> dict[str, Any]:
    """Output, checkpoint and logging settings of one run (a probe run, ``pass_id=None``, saves nothing)."""
    run_id = (pass_id or "probe").replace("/", "__")
    # Training passes log to wandb when asked (the main rank only); calibration probes never do.
    log = ctx.spec.wandb_project is not None and pass_id is not None and ctx.collectives.is_main
    logger = LoggingConfig(
        log_to_wandb=log,
        wandb_id=run_id,
        run_name=run_id,
        wandb_project=ctx.spec.wandb_project or "gemmascope",
    )
    if pass_id is None:
        return {"logger": logger, "output_path": None, "checkpoint_path": None, "n_checkpoints": 0}
    # SAELens appends the logger's wandb_id (or a random id) to checkpoint_path.
    return {
        "logger": logger,
        "output_path": str(output),
        "checkpoint_path": str(ctx.checkpoint_dir(pass_id)),
        "n_checkpoints": ctx.n_checkpoints,
    }


def _finished(ctx: TrainingContext, output: Path, names: Sequence[str]) -> dict[str, Any] | None:
    """The saved SAEs of a pass that already finished (a resumed suite does not retrain them);
    under torchrun every rank must see them all, or every rank trains the pass again."""
    done = all((output / name / "cfg.json").is_file() for name in names)
    if not ctx.collectives.all_true(done):
        return None
    return {name: SAE.load_from_disk(str(output / name)) for name in names}


def _resume_from(ctx: TrainingContext, pass_id: str) -> str | None:
    """The checkpoint a pass continues from: the newest one complete and intact on every rank.

    A damaged newer checkpoint is skipped with a warning naming the bad file; when every complete
    checkpoint of a rank is damaged, every rank stops with an error (rather than start over).
    """
    folder = ctx.checkpoint_dir(pass_id)
    scan = scan_checkpoints(folder)
    parts = ctx.collectives.gather_objects((sorted(scan.complete), bool(scan.rejected)))
    if not scan.complete and not scan.rejected:
        return None
    if not ctx.resume:
        raise FileExistsError(
            f"{pass_id} has checkpoints under {folder}: pass --resume to continue "
            "from the latest, or use a new output folder"
        )
    if any(damaged and not complete for complete, damaged in parts):
        mine = not scan.complete
        problems = "; ".join(scan.rejected.values()) if mine else "another rank's are all damaged"
        raise InvalidCheckpointError(
            f"no checkpoint of {pass_id} under {folder} can be resumed from ({problems}); "
            "remove the damaged checkpoints to start the pass over, or use a new output folder"
        )
    everywhere = set.intersection(*(set(complete) for complete, _ in parts))
    chosen = scan.complete[max(everywhere)] if everywhere else None
    then = f"resuming from {chosen}" if chosen else "no checkpoint is intact on every rank: starting over"
    for path, problem in scan.rejected.items():
        logger.warning(f"skipping checkpoint {path}: {problem}; {then}")
    return str(chosen) if chosen is not None else None


def _main_rank_results(
    ctx: TrainingContext, output: Path, trained: Mapping[str, Any], names: Sequence[str]
) -> Mapping[str, Any]:
    """A pass's SAEs on the main rank (which exports them); nothing on the others. SAE-sharded: the
    main rank reads the other ranks' SAEs from where their owners saved them."""
    collectives = ctx.collectives
    if ctx.spec.distributed is None or ctx.spec.distributed.mode == "data":
        return trained if collectives.is_main else {}
    collectives.barrier()
    if not collectives.is_main:
        return {}
    return {
        name: trained[name] if name in trained else SAE.load_from_disk(str(output / name)) for name in names
    }


def live_pass_training(group: SuiteGroup, ctx: TrainingContext) -> TrainPass:
    """Trains a pass with one multi-SAE runner: one model forward pass per batch feeds every SAE."""

    def train(saes: Sequence[PresetSAE], tokens: int, pass_id: str | None) -> Mapping[str, Any]:
        names = [s.name for s in saes]
        output = ctx.pass_dir(pass_id) if pass_id is not None else None
        settings = {"training_tokens": tokens, **_run_settings(ctx, pass_id, output)}
        if output is not None and pass_id is not None:
            if ctx.resume and (done := _finished(ctx, output, names)) is not None:
                return done if ctx.collectives.is_main else {}
            settings["resume_from_checkpoint"] = _resume_from(ctx, pass_id)
        cfg = multi_config_for(saes, ctx.spec, **settings)
        trained = GemmaScopeMultiSAETrainingRunner(
            cfg, override_dataset=ctx.dataset, override_model=ctx.model,
            distributed=ctx.spec.distributed, init_from=_init_from(ctx, pass_id),
        ).run()  # fmt: skip
        if output is None:  # a probe: every rank returns what it trained (run_suite merges the L0s)
            return trained
        return _main_rank_results(ctx, output, trained, names)

    return train


def cached_pass_training(group: SuiteGroup, ctx: TrainingContext) -> TrainPass:
    """Caches each hook's activations once, then trains every SAE from disk on its own."""

    def train(saes: Sequence[PresetSAE], tokens: int, pass_id: str | None) -> Mapping[str, Any]:
        settings = {**group.runner_settings, **ctx.spec.runner}
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
            if output is not None and ctx.resume and (done := _finished(ctx, output.parent, [sae.name])):
                results.update(done)
                continue
            if output is not None and pass_id is not None:
                run["resume_from_checkpoint"] = _resume_from(ctx, f"{pass_id}/{sae.name}")
            cfg = single_config_for(
                sae, ctx.spec, use_cached_activations=True,
                cached_activations_path=str(paths[sae.preset.hook_name]), **run,
            )  # fmt: skip
            source = _init_from(ctx, pass_id)
            runner = GemmaScopeTrainingRunner(
                cfg, override_dataset=ctx.dataset, override_model=ctx.model,
                init_from=init_source_for(source, sae.name) if source is not None else None,
            )  # fmt: skip
            results[sae.name] = runner.run()
        return results

    return train


def _init_from(ctx: TrainingContext, pass_id: str | None) -> str | None:
    """The run's warm-start source for a pass; a calibration probe (no ``pass_id``, named by its λ)
    has no rung in a folder of per-rung SAEs, so it starts from the recipe's own init there."""
    source = ctx.spec.init_from
    if source is not None and pass_id is None and is_rung_folder(source):
        return None
    return source


def _with_recipe_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    from saelens_gemmascope.recipe.config import RECIPE_RUNNER_DEFAULTS

    return {"store_batch_size_prompts": 32, **RECIPE_RUNNER_DEFAULTS, **settings}


@dataclass
class PassTraining:
    """The ``training_for_group`` of :func:`~saelens_gemmascope.suite.run.run_suite`.

    ``spec`` says where everything goes and runs (output, data, device, dtype, checkpoints, wandb,
    torchrun). ``model`` and ``dataset`` replace loading the group's model by name and the spec's
    data; a loaded model is reused by every group of it.
    """

    spec: RunSpec
    model: Any = None
    dataset: Any = None
    cached: bool = False
    resume: bool = False
    progress: Callable[[str], None] = print
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.spec.output is None:
            raise ValueError("a suite needs an output folder (RunSpec(output=...))")
        if self.cached and self.spec.distributed is not None:
            raise ValueError(
                "--cached-activations is not built for --distributed (each rank would cache its own "
                "shard); train on the fly under torchrun, or cache and train in one process"
            )

    def checkpoints_for(self, group: SuiteGroup) -> int:
        """Checkpoints per pass of ``group``."""
        return self.spec.checkpoints_per_pass(group.training_tokens)

    def preflight(self, plan: SuitePlan) -> None:
        """Checks before anything runs: disk space for the activation caches (cached mode)."""
        if not self.cached:
            return
        refuse_cached_transcoders([p for group in plan.groups for p in group.presets])
        assert self.spec.output is not None
        needed: dict[str, int] = {}
        for group in plan.groups:
            settings = _with_recipe_defaults({**group.runner_settings, **self.spec.runner})
            hooks = {p.hook_name: p.d_in for p in group.presets}
            needed.update(caches_to_write(self.spec.output, hooks, group.training_tokens, settings))
        check_disk_space(CacheEstimate(self.spec.output / "activations", needed))

    def language_model(self, model_name: str) -> Any:
        if self.model is not None:
            return self.model
        if model_name not in self._loaded:
            from saelens_gemmascope.models.loading import load_language_model

            self._loaded[model_name] = load_language_model(
                model_name, device=self.spec.device, dtype=self.spec.dtype
            )
        return self._loaded[model_name]

    def __call__(self, group: SuiteGroup) -> TrainPass:
        from saelens_gemmascope.runners.data_sources import load_training_data

        lm = self.language_model(group.model_name)
        check_hook_widths(lm, {h: d for p in group.presets for h, d in model_hooks(p).items()})
        settings = _with_recipe_defaults(group.runner_settings)
        data_set = (
            self.dataset
            if self.dataset is not None
            else load_training_data(self.spec.data, lm.tokenizer, settings["context_size"])
        )
        n_checkpoints = self.checkpoints_for(group)
        if n_checkpoints:
            every = group.training_tokens // (n_checkpoints + 1)
            self.progress(
                f"group {group.index}: a checkpoint every {every:,} tokens ({n_checkpoints} per pass) "
                f"under {self.spec.output / 'checkpoints' if self.spec.output else None}"
            )
        ctx = TrainingContext(lm, data_set, self.spec, n_checkpoints, self.resume)
        return (cached_pass_training if self.cached else live_pass_training)(group, ctx)


def pass_training(
    spec: RunSpec | str | Path,
    *,
    model: Any = None,
    dataset: Any = None,
    cached: bool = False,
    resume: bool = False,
    progress: Callable[[str], None] = print,
) -> PassTraining:
    """The ``training_for_group`` of :func:`~saelens_gemmascope.suite.run.run_suite` (see
    :class:`PassTraining`); a path stands for ``RunSpec(output=path)``."""
    if not isinstance(spec, RunSpec):
        spec = RunSpec(output=Path(spec))
    return PassTraining(spec, model=model, dataset=dataset, cached=cached, resume=resume, progress=progress)
