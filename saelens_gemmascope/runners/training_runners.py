"""SAELens's two training runners, driving the recipe's trainers, with exact resume.

Both SAELens runners build their trainer inline in ``run()`` (no factory argument or method), so
these subclasses override ``run()`` with SAELens's sequence, re-stated in :mod:`saelens_gemmascope.compat`
(metadata, wandb (offline when unreachable: runners.wandb_logging), resume, train, final save), and
change three things: the trainer class, the fit (interruption handling), and the data provider, which is
:class:`~saelens_gemmascope.runners.activation_stream.ResumableActivationStream` instead of
SAELens's mixing-buffer iterator, so that each checkpoint also saves the stream's exact position
and ``resume_from_checkpoint`` continues with the very batches an uninterrupted run would have
trained on. A checkpoint without that position (SAELens's own runners write none) still resumes,
with SAELens's approximate data position and a warning. Model and activation-store set-up,
evaluators, checkpoint files and final saving are SAELens's.
The trainer of the last ``run()`` stays reachable as ``runner.trainer``.

Three more differences, for faults: SIGINT and SIGTERM stop training at a step boundary and save an
exact checkpoint there (:mod:`~saelens_gemmascope.runners.interrupts`; SAELens's handlers raise
mid-step), then raise :class:`~saelens_gemmascope.runners.interrupts.TrainingInterrupted`; every
checkpoint ends with a manifest of its files, and a resume first checks its checkpoint (intact,
trained with the same settings) and reads the trainer state with ``weights_only=True``
(:mod:`~saelens_gemmascope.runners.checkpoints`).

Python defaults equal the CLI's: without ``override_model`` the runners load ``cfg.model_name``
through this package's model registry (the embedded tiny models in memory; Gemma 2 without
TransformerLens's weight processing, as Gemma Scope reads it), on ``cfg.llm_device`` in
``cfg.dtype``; without ``override_dataset`` they read ``cfg.dataset_path`` through
:func:`~saelens_gemmascope.runners.data_sources.load_training_data` (``""``: the embedded default).

Under torchrun the multi-SAE runner takes ``distributed=`` (a
:class:`~saelens_gemmascope.distributed.spec.DistributedSpec`): each rank reads its own shard of
the data through the same resumable stream, at its share of the batch, and steps the same trainer
(data parallel: gradients averaged; SAE-sharded: the batch gathered, each rank training its own
SAEs). See :mod:`saelens_gemmascope.distributed.collectives`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from sae_lens import logger
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.activations_store import ActivationsStore

from saelens_gemmascope.compat import (
    run_language_model_runner,
    run_multi_sae_runner,
    save_multi_runner_checkpoint_files,
)
from saelens_gemmascope.distributed.collectives import Collectives, GatheredBatches, owned_names
from saelens_gemmascope.distributed.spec import DistributedSpec
from saelens_gemmascope.recipe.trainer import GemmaScopeMultiSAETrainer, GemmaScopeSAETrainer
from saelens_gemmascope.recipe.transcoder import split_paired_hook
from saelens_gemmascope.recipe.warm_start import WarmStart, WarmStartError, init_source_for, plan_warm_start
from saelens_gemmascope.runners.activation_stream import (
    STREAM_STATE_FILENAME,
    PositionTracker,
    PrefetchingPositionTracker,
    ResumableActivationStream,
    capture_for_keys,
    restore_stream,
    tracked_batches,
)
from saelens_gemmascope.runners.checkpoints import (
    MANIFEST_FILENAME,
    checkpoint_problem,
    refuse_changed_settings,
    validate_checkpoint,
    weights_only_loads,
    write_manifest,
)
from saelens_gemmascope.runners.interrupts import InterruptWatch, StopAtStepBoundary, TrainingInterrupted
from saelens_gemmascope.runners.wandb_logging import finish_wandb, start_wandb

Batches = PositionTracker | PrefetchingPositionTracker
T = TypeVar("T")


def default_model(cfg: Any, override_model: Any) -> Any:
    """``override_model``, or ``cfg.model_name`` loaded through this package's model registry."""
    if override_model is not None:
        return override_model
    from saelens_gemmascope.models.loading import load_language_model

    return load_language_model(cfg.model_name, device=cfg.llm_device, dtype=cfg.dtype)


def default_dataset(cfg: Any, override_dataset: Any, model: Any, distributed: DistributedSpec | None) -> Any:
    """``override_dataset``, or ``cfg.dataset_path`` (``""``: the embedded default) loaded as this
    package loads data; under torchrun, this rank's shard of it."""
    dataset = override_dataset
    if dataset is None:
        from saelens_gemmascope.runners.data_sources import STDLIB_SOURCE, load_training_data

        dataset = load_training_data(cfg.dataset_path or STDLIB_SOURCE, model.tokenizer, cfg.context_size)
    if distributed is not None and distributed.world_size > 1:
        from datasets.distributed import split_dataset_by_node

        dataset = split_dataset_by_node(dataset, rank=distributed.rank, world_size=distributed.world_size)
    return dataset


def paired_stream_keys(store: ActivationsStore, sae_cfgs_by_key: Mapping[str, Any]) -> list[str] | None:
    """The keys a stream serves when one of them is a transcoder's paired key (input and output hooks,
    read from one forward pass and served side by side), after making ``store`` capture the real
    hooks; ``None`` (the store's own hooks) when no key is paired. ``sae_cfgs_by_key``: one SAE config
    per key, which gives the hooks' widths (a transcoder's ``d_in`` and ``d_out``)."""
    keys = list(sae_cfgs_by_key)
    if not any(split_paired_hook(key) for key in keys):
        return None
    widths: dict[str, int] = {}
    for key, sae_cfg in sae_cfgs_by_key.items():
        pair = split_paired_hook(key)
        if pair is None:
            widths[key] = sae_cfg.d_in
        else:
            widths[pair[0]], widths[pair[1]] = sae_cfg.d_in, sae_cfg.d_out
    capture_for_keys(store, keys, widths)
    return keys


def _refuse_cached_transcoder(cfg: Any, key: str) -> None:
    if split_paired_hook(key) is not None and getattr(cfg, "cached_activations_path", None):
        raise ValueError(
            f"cached activations hold one hook per cache, and a transcoder ({key}) reads two: train "
            "transcoders on live activations (no --cached-activations)"
        )


def _open_stream(
    store: ActivationsStore,
    cfg: Any,
    single_hook: str | None = None,
    distributed: DistributedSpec | None = None,
    paired_keys: list[str] | None = None,
) -> tuple[ResumableActivationStream, bool]:
    """The stream, at the resume checkpoint's position if there is one; and whether that position
    is exact (False: the store was fast-forwarded by SAELens's own, approximate, resume).

    Under torchrun each rank's stream serves its share of the batch, shuffled with its own seed.
    """
    stream = ResumableActivationStream.for_store(
        store,
        seed=cfg.seed + (distributed.rank if distributed is not None else 0),
        single_hook=single_hook,
        batch_tokens=distributed.local_batch(cfg.train_batch_size_tokens)
        if distributed is not None
        else None,
        paired_keys=paired_keys,
    )
    checkpoint = cfg.resume_from_checkpoint
    if checkpoint is None or restore_stream(stream, checkpoint):
        return stream, True
    logger.warning(
        f"{checkpoint} has no {STREAM_STATE_FILENAME}: resuming from SAELens's approximate data "
        "position (the activations buffered at the checkpoint are skipped, the shuffles differ), so "
        "the result will not match an uninterrupted run"
    )
    # Before any prefetch thread starts drawing from the store.
    store.load_from_checkpoint(checkpoint)
    return stream, False


def _finish_checkpoint(batches: Batches | None, exact: bool, checkpoint_path: Path | None) -> None:
    """After SAELens's files: the stream position, then the manifest that marks the checkpoint complete.

    A run resumed without an exact position writes no position: a later resume then warns again
    instead of replaying a stream that did not start where this one did.
    """
    if checkpoint_path is None:
        return
    if batches is not None and exact:
        batches.position.save(Path(checkpoint_path) / STREAM_STATE_FILENAME)
    write_manifest(Path(checkpoint_path))


def _check_resume(cfg: Any) -> None:
    """Before anything is loaded or runs: the resume checkpoint is intact and was trained with
    ``cfg``'s settings."""
    if cfg.resume_from_checkpoint is not None:
        checkpoint = Path(cfg.resume_from_checkpoint)
        validate_checkpoint(checkpoint)
        refuse_changed_settings(checkpoint, cfg.to_dict())


class InterruptibleSAETrainer(GemmaScopeSAETrainer):
    """:class:`GemmaScopeSAETrainer` that stops before a step once its ``watch`` saw a signal.

    ``maybe_reset_sparsity`` is the first thing SAELens's ``fit`` loop does for each step, when the
    last step is complete (counted, checkpointed) and the next one has drawn nothing yet.
    """

    watch: InterruptWatch | None = None

    def maybe_reset_sparsity(self) -> dict[str, Any]:
        if self.watch is not None:
            self.watch.stop_at_step_boundary()
        return super().maybe_reset_sparsity()


class InterruptibleMultiSAETrainer(GemmaScopeMultiSAETrainer):
    """:class:`GemmaScopeMultiSAETrainer` that stops before a step once its ``watch`` saw a signal
    (``maybe_log_sparsity`` opens each step of SAELens's loop; ``final=True`` comes after the last)."""

    watch: InterruptWatch | None = None

    def maybe_log_sparsity(self, final: bool = False) -> None:
        if not final and self.watch is not None:
            self.watch.stop_at_step_boundary()
        super().maybe_log_sparsity(final)


def _save_interrupt_checkpoint(trainer: Any, checkpoint_path: str | None) -> str:
    """Save the steps done (the trainer stands between two steps); what was kept, for the message."""
    samples = trainer.n_training_samples
    if checkpoint_path is None:
        return "this run keeps no checkpoints: its steps are lost"
    if samples == 0:
        return "before the first step: nothing to keep"
    folder = Path(checkpoint_path) / str(samples)
    # Resumed and stopped before a step, or stopped right after a periodic checkpoint: it is there.
    if not (folder / MANIFEST_FILENAME).is_file() or checkpoint_problem(folder) is not None:
        trainer.save_checkpoint(checkpoint_name=str(samples))
    return f"the checkpoint at {samples:,} tokens is complete: rerun with --resume to continue"


def _fit_or_stop(trainer: Any, fit: Callable[[], T], checkpoint_path: str | None) -> T:
    """``fit()``; on a stop signal, the checkpoint of the steps done and :class:`TrainingInterrupted`."""
    try:
        return fit()
    except StopAtStepBoundary as stop:
        kept = _save_interrupt_checkpoint(trainer, checkpoint_path)
        raise TrainingInterrupted(stop.signum, f"at step {trainer.n_training_steps}; {kept}") from None


def _stop_if_signalled(watch: InterruptWatch, output_path: str | None) -> None:
    # A signal during the last step or the final save: the run finished (and saved), then stops.
    if (signum := watch.agreed_signal()) is not None:
        saved = "the trained SAEs are saved" if output_path is not None else "this run is complete"
        raise TrainingInterrupted(signum, f"after the last step; {saved}: rerun with --resume to continue")


@contextmanager
def seeded_sae_creation(seed: int) -> Iterator[None]:
    """Seed what runs inside (SAELens's runner set-up, which creates the SAEs) with ``seed``.

    SAELens creates the SAEs with torch's global generator and never seeds it, so two runs of one
    config would start from different weights. The caller's global RNG state is left as it was.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def init_sources(init_from: str | Mapping[str, str] | None, names: list[str]) -> dict[str, str]:
    """The warm-start source of each SAE (by name) that has one: a string is the run's one source
    (see :func:`~saelens_gemmascope.recipe.warm_start.init_source_for`), a mapping names them per SAE
    (SAEs it leaves out start cold)."""
    if init_from is None:
        return {}
    if isinstance(init_from, str):
        return {name: init_source_for(init_from, name) for name in names}
    unknown = sorted(set(init_from) - set(names))
    if unknown:
        raise WarmStartError(
            f"init_from names SAE(s) {', '.join(map(repr, unknown))} that this run does not train "
            f"(its SAEs: {', '.join(map(repr, names))})"
        )
    return {name: str(init_from[name]) for name in names if name in init_from}


def _sae_checkpoint(cfg: Any, sae_name: str | None = None) -> Path | None:
    """The folder of the checkpoint a run resumes from that holds the SAE's ``cfg.json`` (a
    multi-SAE checkpoint has one per SAE, named as the SAE), or None for a new run."""
    if cfg.resume_from_checkpoint is None:
        return None
    checkpoint = Path(cfg.resume_from_checkpoint)
    return checkpoint if sae_name is None else checkpoint / sae_name


def _close(batches: Batches | None) -> None:
    if isinstance(batches, PrefetchingPositionTracker):
        batches.close()


class GemmaScopeTrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` that trains with :class:`GemmaScopeSAETrainer`.

    Takes the same arguments (``cfg``, ``override_dataset``, ``override_model``, ``override_sae``);
    build ``cfg`` with :func:`saelens_gemmascope.recipe.gemmascope_runner_config`. ``init_from``
    (an SAE folder or ``release/sae_id``) starts the SAE from a saved SAE of the same site, as
    Gemma Scope 2 started its IT SAEs from the PT ones (:mod:`~saelens_gemmascope.recipe.warm_start`);
    it is checked here and applied once C is known. A resumed run continues from its checkpoint and
    keeps the source the checkpoint records (``init_from`` may be left out; another one is refused).
    """

    trainer: GemmaScopeSAETrainer | None = None
    _batches: Batches | None = None
    _exact_position: bool = True

    def __init__(
        self,
        cfg: Any,
        override_dataset: Any = None,
        override_model: Any = None,
        override_sae: TrainingSAE[Any] | None = None,
        *,
        init_from: str | None = None,
    ) -> None:
        _check_resume(cfg)
        # Before the model loads: a bad source fails fast.
        sae_cfg = override_sae.cfg if override_sae is not None else cfg.sae
        self._warm_start: WarmStart | None = plan_warm_start(
            init_from, sae_cfg, cfg.hook_name, resume_from=_sae_checkpoint(cfg)
        )
        model = default_model(cfg, override_model)
        dataset = default_dataset(cfg, override_dataset, model, None)
        with seeded_sae_creation(cfg.seed):
            super().__init__(cfg, dataset, model, override_sae)

    def run(self) -> TrainingSAE[Any]:
        with InterruptWatch() as watch:
            sae = self._train(watch)
            _stop_if_signalled(watch, self.cfg.output_path)
        return sae

    def _train(self, watch: InterruptWatch) -> TrainingSAE[Any]:
        hook = self.cfg.hook_name
        _refuse_cached_transcoder(self.cfg, hook)
        # A transcoder's paired key: the store captures both hooks of one forward pass.
        paired = paired_stream_keys(self.activations_store, {hook: self.cfg.sae})
        stream, self._exact_position = _open_stream(
            self.activations_store, self.cfg, single_hook=hook if paired is None else None, paired_keys=paired
        )
        self._batches = tracked_batches(stream, self.cfg.prefetch_llm_batches, select=hook)

        def fit(trainer: InterruptibleSAETrainer) -> TrainingSAE[Any]:
            trainer.watch = watch
            trainer.warm_start = self._warm_start
            self.trainer = trainer
            return _fit_or_stop(trainer, trainer.fit, self.cfg.checkpoint_path)

        try:
            return run_language_model_runner(
                self, trainer_class=InterruptibleSAETrainer, data_provider=self._batches, fit=fit,
                start_logging=start_wandb, finish_logging=finish_wandb, state_loads=weights_only_loads,
            )  # fmt: skip
        finally:
            _close(self._batches)

    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        super().save_checkpoint(checkpoint_path)
        _finish_checkpoint(self._batches, self._exact_position, checkpoint_path)


class GemmaScopeMultiSAETrainingRunner(MultiSAETrainingRunner):
    """``MultiSAETrainingRunner`` that trains with :class:`GemmaScopeMultiSAETrainer`: one model
    forward pass feeds every SAE (several hooks, several λ). Build ``cfg`` with
    :func:`saelens_gemmascope.recipe.gemmascope_multi_runner_config`.

    ``init_from`` warm-starts SAEs from saved ones (see :class:`GemmaScopeTrainingRunner`): one
    source for every SAE, a folder of one SAE folder per rung (named as the SAE, or as its last part,
    e.g. ``target_l0_20``), or ``{sae_name: source}`` (the SAEs it leaves out start cold)."""

    trainer: GemmaScopeMultiSAETrainer | None = None
    _batches: Batches | None = None
    _exact_position: bool = True

    def __init__(
        self,
        cfg: Any,
        override_dataset: Any = None,
        override_model: Any = None,
        override_saes: dict[str, TrainingSAE[Any]] | None = None,
        *,
        distributed: DistributedSpec | None = None,
        init_from: str | Mapping[str, str] | None = None,
    ) -> None:
        _check_resume(cfg)
        sources = init_sources(init_from, list(cfg.saes))  # paths only: cheap, before the model loads
        self.distributed = distributed
        self.collectives = Collectives(distributed)
        model = default_model(cfg, override_model)
        dataset = default_dataset(cfg, override_dataset, model, distributed)
        # Every rank creates the same SAEs from the same seed (data parallel: identical replicas).
        with seeded_sae_creation(cfg.seed):
            super().__init__(cfg, dataset, model, override_saes)
        if distributed is not None and distributed.mode == "sae":
            self._keep_owned_saes(distributed)
        # This rank's SAEs only (SAE sharding), loaded and checked before any training; a resumed
        # SAE keeps the source its checkpoint records, given again or not.
        planned = {
            name: plan_warm_start(
                sources.get(name),
                sae.cfg,
                cfg.hook_names_per_sae[name],
                resume_from=_sae_checkpoint(cfg, name),
                label=f"SAE {name!r}",
            )
            for name, sae in self.saes.items()
        }
        self._warm_starts = {name: start for name, start in planned.items() if start is not None}

    def _keep_owned_saes(self, distributed: DistributedSpec) -> None:
        # SAELens creates every SAE of the config (the store needs every hook of the pass); this
        # rank keeps its own and frees the others before anything is allocated for training.
        names = list(self.saes)
        if len(names) < distributed.world_size:
            raise ValueError(
                f"--distributed sae spreads a pass's SAEs over the ranks, but this pass has {len(names)} "
                f"SAE(s) for {distributed.world_size} ranks; use --distributed data, or train more SAEs per pass"
            )
        owned = set(owned_names(names, distributed))
        self.saes = {name: sae for name, sae in self.saes.items() if name in owned}

    def run(self) -> dict[str, TrainingSAE[Any]]:
        # Under torchrun the ranks agree on every stop check, so that they all stop after one step.
        gather = self.collectives.gather_objects if self.collectives.active else None
        with InterruptWatch(gather) as watch:
            saes = self._train(watch)
            _stop_if_signalled(watch, self.cfg.output_path)
        return saes

    def _train(self, watch: InterruptWatch) -> dict[str, TrainingSAE[Any]]:
        distributed = self.distributed
        by_key = {hook: self.cfg.saes[name] for name, hook in self.cfg.hook_names_per_sae.items()}
        paired = paired_stream_keys(self.activations_store, by_key)
        stream, self._exact_position = _open_stream(
            self.activations_store, self.cfg, distributed=distributed, paired_keys=paired
        )
        self._batches = tracked_batches(stream, self.cfg.prefetch_llm_batches)
        sharded = distributed is not None and distributed.mode == "sae"
        data_parallel = distributed is not None and distributed.mode == "data"
        if data_parallel:
            for sae in self.saes.values():  # the same seed made them equal; this makes sure
                self.collectives.broadcast_parameters(sae)

        def fit(trainer: InterruptibleMultiSAETrainer) -> dict[str, TrainingSAE[Any]]:
            trainer.watch = watch
            for name, start in self._warm_starts.items():
                trainer.trainers[name].warm_start = start
            self.trainer = trainer
            return _fit_or_stop(trainer, trainer.fit, self.cfg.checkpoint_path)

        try:
            return run_multi_sae_runner(
                self,
                trainer_class=InterruptibleMultiSAETrainer,
                data_provider=GatheredBatches(self._batches, self.collectives) if sharded else self._batches,
                fit=fit,
                start_logging=start_wandb,
                finish_logging=finish_wandb,
                save_checkpoint_fn=self.save_checkpoint_files,
                state_loads=weights_only_loads,
                # Data parallel: the replicas are equal, the main rank saves them. SAE-sharded: each
                # rank saves the SAEs it trained.
                save_final=not data_parallel or self.collectives.is_main,
                trainer_kwargs={"collectives": self.collectives if data_parallel else None},
            )
        finally:
            _close(self._batches)

    def save_checkpoint_files(self, checkpoint_path: Path | None) -> None:
        """The runner's files in a checkpoint: SAELens's, then the stream position and the manifest."""
        save_multi_runner_checkpoint_files(self, checkpoint_path)
        _finish_checkpoint(self._batches, self._exact_position, checkpoint_path)
