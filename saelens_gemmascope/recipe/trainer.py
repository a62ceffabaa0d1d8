"""SAELens's trainers with the recipe's optimiser, schedule, clipping, step hooks and input scale.

SAELens's ``SAETrainer`` hard-codes three things the recipe does differently: it clips every
gradient to norm 1, its warm-up is linear from η/W, and it gives the SAE no hook around the
optimiser step. It has no public seam for any of them, so :class:`GemmaScopeSAETrainer` subclasses it
(through :class:`saelens_gemmascope.compat.SAETrainerSeams`, which gives SAELens's private train
step the public name ``train_step``) and overrides ``train_step`` (the one place they happen) plus
the optimiser and scheduler it builds.
Everything else (coefficient schedulers, sparsity tracking, logging, checkpoints, resume) is
SAELens's. SAEs of other architectures get SAELens's behaviour unchanged, except for the guard
against non-finite values (:mod:`~saelens_gemmascope.recipe.finite_guard`), which every SAE gets:
a NaN in the activations or a diverging SAE stops the run before anything non-finite is saved.

The input scale C rides on SAELens's own ``ActivationScaler`` (scaling factor 1/C): SAELens
saves and restores it with every checkpoint and, after training, hands it to the SAE's
``fold_activation_norm_scaling_factor``, which does the Gemma Scope fold. A transcoder
(:mod:`~saelens_gemmascope.recipe.transcoder`) gets C_in and C_out from one pass over its paired rows:
the scaler holds 1/C_in, the transcoder the ratio C_out/C_in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.training.multi_sae_trainer import MultiSAEEvaluatorProtocol
from sae_lens.training.optim import get_lr_scheduler
from sae_lens.training.sae_trainer import Evaluator, SaveCheckpointFn
from sae_lens.training.types import DataProvider, MultiHookDataProvider
from torch.optim import Adam
from torch.optim.lr_scheduler import LRScheduler

from saelens_gemmascope.compat import (
    MultiSAETrainerSeams,
    SAETrainerSeams,
    record_firing,
    step_schedulers,
    train_step_input,
)
from saelens_gemmascope.progress import ProgressTask, loss_note, step_losses, training_progress
from saelens_gemmascope.recipe.device_audit import audit_devices, audit_training_start, named_training_tensors
from saelens_gemmascope.recipe.finite_guard import (
    CHECK_EVERY,
    Fault,
    FiniteGuard,
    NonFiniteTrainingError,
    nonfinite_tensors,
    optimizer_tensors,
    pending_input_faults,
    training_stopped_message,
)
from saelens_gemmascope.recipe.input_scale import (
    TARGET_SUFFIX,
    MeanSquaredNormMeter,
    estimate_input_scale,
    estimate_input_scales,
    estimate_paired_scales,
)
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig
from saelens_gemmascope.recipe.schedules import cosine_warm_up_scheduler
from saelens_gemmascope.recipe.transcoder import GemmaScopeTrainingTranscoder
from saelens_gemmascope.recipe.warm_start import WarmStart


class Collectives(Protocol):
    """What the trainer needs of a data-parallel job (met by
    :class:`saelens_gemmascope.distributed.collectives.Collectives`; a protocol, so the recipe does not
    import the layer above it)."""

    @property
    def is_main(self) -> bool: ...

    @property
    def world_size(self) -> int: ...

    def average_gradients(self, module: torch.nn.Module) -> None: ...

    def sum_meters(self, meters: Mapping[str, MeanSquaredNormMeter]) -> None: ...


def recipe_of(sae: TrainingSAE[Any]) -> GemmaScopeTrainingSAEConfig | None:
    """The SAE's recipe config, or None for an SAE of another architecture."""
    return sae.cfg if isinstance(sae, GemmaScopeTrainingSAE) else None


def build_recipe_optimizer(
    sae: TrainingSAE[Any], cfg: SAETrainerConfig, recipe: GemmaScopeTrainingSAEConfig
) -> Adam:
    """Adam with the runner's η and betas and the recipe's epsilon.

    PyTorch's fused implementation where the parameters' device and dtype have one: the same
    update, up to rounding, in one kernel per parameter instead of about ten passes over memory
    (measured: 2 x 37.7M fp32 parameters on a 2-core CPU, 371 ms per step for the default
    implementation, 45 ms fused; ``benchmarks/bench_step.py``). Elsewhere the default one.
    """
    params = list(sae.parameters())
    settings: dict[str, Any] = {
        "lr": cfg.lr, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": recipe.adam_eps,
    }  # fmt: skip
    try:
        return Adam(params, fused=True, **settings)
    except RuntimeError:  # a device or dtype without a fused kernel
        return Adam(params, **settings)


def build_recipe_lr_scheduler(
    optimizer: Adam, cfg: SAETrainerConfig, recipe: GemmaScopeTrainingSAEConfig
) -> LRScheduler:
    """The cosine warm-up then constant η; ``lr_warm_up_shape="linear"`` keeps SAELens's schedulers."""
    if recipe.lr_warm_up_shape == "linear":
        assert cfg.lr_end is not None  # set by the runner configs' __post_init__
        return get_lr_scheduler(
            cfg.lr_scheduler_name,
            optimizer=optimizer,
            training_steps=cfg.total_training_steps,
            lr=cfg.lr,
            warm_up_steps=cfg.lr_warm_up_steps,
            decay_steps=cfg.lr_decay_steps,
            lr_end=cfg.lr_end,
            num_cycles=cfg.n_restart_cycles,
        )
    if cfg.lr_scheduler_name.lower() != "constant" or cfg.lr_decay_steps > 0:
        raise ValueError(
            "the recipe's cosine warm-up is followed by a constant learning rate; got "
            f"lr_scheduler_name={cfg.lr_scheduler_name!r}, lr_decay_steps={cfg.lr_decay_steps}. "
            "Set the SAE's lr_warm_up_shape='linear' to use SAELens's schedulers instead."
        )
    return cosine_warm_up_scheduler(optimizer, cfg.lr_warm_up_steps, recipe.lr_warm_up_start_fraction)


def pending_thresholds(thresholds: list[int], n_training_samples: int) -> list[int]:
    """The checkpoint thresholds a run resumed at ``n_training_samples`` has still to reach
    (SAELens keeps them all, so a resumed run would re-save the checkpoint it started from)."""
    return [t for t in thresholds if t >= n_training_samples]


def pending_activations(data_provider: Any) -> dict[str, torch.Tensor]:
    """The activations the stream has drawn but not yet served, by hook (what a checkpoint saves
    with the stream position); none for a provider without a position."""
    position = getattr(data_provider, "position", None)
    return dict(position.pool) if position is not None else {}


def loaded_state_faults(
    sae: TrainingSAE[Any], optimizer: torch.optim.Optimizer, label: str, hook: str
) -> Fault | None:
    """The SAE's weights and optimiser state, when any of them is not finite (a corrupt checkpoint)."""
    bad = nonfinite_tensors([*sae.named_parameters(), *optimizer_tensors(optimizer)])
    return Fault(label, hook, bad_tensors=tuple(bad)) if bad else None


def corrupt_checkpoint_message(checkpoint: Path | str, faults: list[Fault]) -> str:
    listed = "; ".join(f"SAE {f.sae}: {', '.join(f.bad_tensors)}" for f in faults)
    return (
        f"checkpoint {checkpoint} holds non-finite values ({listed}): it is corrupt; resume from an "
        "earlier checkpoint (move this one away) or start again"
    )


@contextmanager
def _naming_hooks(hooks: list[str]) -> Iterator[None]:
    """Adds the hooks to an input-scale estimate's error (non-finite or all-zero activations)."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"estimating the input scale of hook(s) {', '.join(hooks)}: {error}") from error


class GemmaScopeSAETrainer(SAETrainerSeams):
    """``SAETrainer`` that trains ``jumprelu_gemmascope`` SAEs with the exact recipe.

    ``collectives`` (set by a data-parallel runner) averages the gradients over the ranks after
    ``backward``. The first step checks that every tensor it touches is on ``cfg.device``
    (:mod:`~saelens_gemmascope.recipe.device_audit`), the run's one device.
    """

    collectives: Collectives | None = None
    _audited: bool = False
    #: The checkpoint this trainer resumed from or last wrote (named when a run stops).
    last_checkpoint: str | None = None
    #: Where the SAE starts from (set by the runner; :mod:`~saelens_gemmascope.recipe.warm_start`).
    warm_start: WarmStart | None = None

    def __init__(
        self,
        cfg: SAETrainerConfig,
        sae: TrainingSAE[Any],
        data_provider: DataProvider,
        evaluator: Evaluator[Any] | None = None,
        save_checkpoint_fn: SaveCheckpointFn | None = None,
    ) -> None:
        super().__init__(
            cfg=cfg,
            sae=sae,
            data_provider=data_provider,
            evaluator=evaluator,
            save_checkpoint_fn=save_checkpoint_fn,
        )
        self.recipe = recipe_of(sae)
        if self.recipe is not None:
            # Replaces the optimiser/scheduler SAELens just built (no state yet, so nothing is lost).
            self.optimizer = build_recipe_optimizer(sae, cfg, self.recipe)
            self.lr_scheduler = build_recipe_lr_scheduler(self.optimizer, cfg, self.recipe)
            sae.recipe_trainer_attached = True
        self.finite_guard = FiniteGuard()
        # The name errors use; a multi-SAE coordinator gives each of its trainers the SAE's name.
        self.sae_label = cfg.logger.run_name or "SAE"

    @property
    def hook_name(self) -> str:
        return str(self.sae.cfg.metadata.hook_name)

    def fault(self, *, weights: bool) -> Fault | None:
        """What the guard saw (one host sync), and with ``weights`` any non-finite parameter."""
        bad_input, bad_loss = self.finite_guard.first_bad_steps()
        bad = tuple(nonfinite_tensors(self.sae.named_parameters())) if weights else ()
        fault = Fault(self.sae_label, self.hook_name, bad_input, bad_loss, bad)
        return fault if fault.found else None

    def raise_if_nonfinite(self, *, weights: bool, pending: bool = False) -> None:
        faults = [f for f in [self.fault(weights=weights)] if f is not None]
        if pending:
            faults += pending_input_faults(
                pending_activations(self.data_provider), {self.hook_name: [self.sae_label]}
            )
        if faults:
            raise NonFiniteTrainingError(
                training_stopped_message(faults, self.n_training_steps, self.last_checkpoint)
            )

    def ensure_input_scale(self) -> None:
        """Estimate C once, before the first step; a resumed run keeps its checkpoint's C."""
        if self.recipe is None or self.activation_scaler.scaling_factor is not None:
            return
        scale = 1.0
        if self.recipe.input_scaling == "unit_mean_squared_norm":
            n_batches = self.cfg.n_batches_for_norm_estimate
            with _naming_hooks([self.hook_name]):
                if isinstance(self.sae, GemmaScopeTrainingTranscoder):
                    scale, output_scale = estimate_paired_scales(
                        self.data_provider, n_batches, self.sae.cfg.d_in
                    )
                    self.sae.set_scales(scale, output_scale)
                else:
                    scale = estimate_input_scale(self.data_provider, n_batches)
        # Set even when C = 1, so that SAELens's fit() always calls the fold (pre-encoder bias).
        self.activation_scaler.scaling_factor = 1.0 / scale

    def fit(self) -> TrainingSAE[Any]:
        if self.last_checkpoint is not None:  # resumed: the runner has loaded the weights by now
            fault = loaded_state_faults(self.sae, self.optimizer, self.sae_label, self.hook_name)
            if fault is not None:
                raise NonFiniteTrainingError(corrupt_checkpoint_message(self.last_checkpoint, [fault]))
        resumed = self.last_checkpoint is not None
        self.ensure_input_scale()
        self.apply_warm_start(resumed=resumed)
        # Our progress display instead of SAELens's bar, for this fit only (see training.progress).
        with training_progress(
            f"training SAE {self.sae_label}", self.cfg.total_training_samples, self.n_training_samples,
            show=self.collectives is None or self.collectives.is_main,
        ):  # fmt: skip
            sae = super().fit()
        # Before the runner saves the SAE (SAELens's fit has folded the input scale into it).
        self.raise_if_nonfinite(weights=True)
        return sae

    def apply_warm_start(self, *, resumed: bool) -> None:
        """Start the SAE from its warm-start source, once C is known and before step 0; a resumed run
        continues from its checkpoint's weights and only records the source."""
        if self.warm_start is None:
            return
        factor = self.activation_scaler.scaling_factor
        scale = 1.0 / factor if factor is not None else None
        self.warm_start.apply(self.sae, scale, resumed=resumed or self.n_training_steps > 0)
        self.warm_start = None  # the source's weights are in the SAE now: let them go

    def checkpoint_if_needed(self) -> None:
        if self.n_training_steps % CHECK_EVERY == 0:
            self.raise_if_nonfinite(weights=False)
        super().checkpoint_if_needed()

    def save_checkpoint(
        self,
        checkpoint_name: str,
        base_path: Path | str | None = None,
        wandb_aliases: list[str] | None = None,
    ) -> None:
        # No checkpoint of non-finite weights, or of a stream about to feed non-finite activations:
        # the previous checkpoint stays the latest complete one. (A multi-SAE coordinator checks
        # every SAE and its stream before writing any of them.)
        self.raise_if_nonfinite(weights=True, pending=True)
        super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        if base is not None:
            self.last_checkpoint = str(Path(base) / checkpoint_name)

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        batch = batch.to(self.sae.device)  # SAELens's step moves it too; then that is a no-op
        output = super().step(batch)
        self.finite_guard.record(self.n_training_steps, batch, output.loss)
        if self.collectives is not None:
            # Data parallel: this step consumed every rank's share of the global batch, so the
            # sample count (which drives the step count, schedules and checkpoints) is global.
            self.n_training_samples += batch.shape[0] * (self.collectives.world_size - 1)
        return output

    def train_step(self, sae: TrainingSAE[Any], sae_in: torch.Tensor) -> TrainStepOutput:
        """SAELens's train step with the recipe's order: backward, (data parallel: average the
        gradients), the SAE's pre-step hook, the recipe's clipping, Adam, the post-step hook."""
        if self.recipe is None:
            return super().train_step(sae, sae_in)
        assert isinstance(sae, GemmaScopeTrainingSAE)
        if not self._audited:  # before any arithmetic, so the error names the tensor
            audit_training_start(self, sae_in, self.cfg.device)
        sae.train()
        with self.autocast_if_enabled:
            output = sae.training_forward_pass(step_input=train_step_input(self, sae_in))
            record_firing(self, output.feature_acts)
        output.loss.backward()
        if self.collectives is not None:
            self.collectives.average_gradients(sae)
        sae.before_optimizer_step()
        if self.recipe.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), self.recipe.max_grad_norm)
        self.optimizer.step()
        if not self._audited:  # Adam's state exists from the first step on
            audit_devices(self.cfg.device, named_training_tensors(self))
            self._audited = True
        self.optimizer.zero_grad()
        sae.after_optimizer_step()
        step_schedulers(self)
        return output

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        super().load_trainer_state(checkpoint_path)
        self.last_checkpoint = str(checkpoint_path)
        # SAELens saves the step counter before counting the step just taken (its periodic
        # checkpoints), which would leave a resumed run one step behind for good; every step takes
        # one full batch, so the samples give the completed steps.
        self.n_training_steps = self.n_training_samples // self.cfg.train_batch_size_samples
        self.checkpoint_thresholds = pending_thresholds(self.checkpoint_thresholds, self.n_training_samples)

    @torch.no_grad()
    def update_pbar(
        self, step_output: TrainStepOutput, pbar: ProgressTask, update_interval: int = 100
    ) -> None:
        # Every step reports; the display redraws by time, and reads the loss only then (a host sync).
        step = self.n_training_steps
        pbar.update(self.n_training_samples, note=lambda: loss_note(step, step_losses(step_output)))


class GemmaScopeMultiSAETrainer(MultiSAETrainerSeams):
    """``MultiSAETrainer`` whose per-SAE trainers are :class:`GemmaScopeSAETrainer`.

    ``collectives`` makes it one rank of a data-parallel job: gradients averaged after every
    ``backward``, input scales estimated over every rank's activations.
    """

    def __init__(
        self,
        cfg: SAETrainerConfig,
        saes: dict[str, TrainingSAE[Any]],
        hook_names: dict[str, str],
        data_provider: MultiHookDataProvider,
        evaluator: MultiSAEEvaluatorProtocol | None = None,
        save_checkpoint_fn: SaveCheckpointFn | None = None,
        collectives: Collectives | None = None,
    ) -> None:
        self.collectives = collectives
        super().__init__(
            cfg=cfg,
            saes=saes,
            hook_names=hook_names,
            data_provider=data_provider,
            evaluator=evaluator,
            save_checkpoint_fn=save_checkpoint_fn,
        )
        # MultiSAETrainer builds plain SAETrainers inline (no factory); rebuild them as ours with the
        # same per-SAE config it used (checkpointing is the coordinator's job).
        per_sae_cfg = replace(cfg, n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False)
        self.trainers = {
            name: GemmaScopeSAETrainer(cfg=per_sae_cfg, sae=sae, data_provider=iter(()))
            for name, sae in self.saes.items()
        }
        for name, trainer in self.trainers.items():
            trainer.collectives = collectives
            trainer.sae_label = name
        self.last_checkpoint: str | None = None

    def ensure_input_scales(self) -> None:
        """Estimate every recipe SAE's C from one shared pass over the multi-hook stream."""
        pending = {
            name: trainer
            for name, trainer in self.trainers.items()
            if isinstance(trainer, GemmaScopeSAETrainer)
            and trainer.recipe is not None
            and trainer.activation_scaler.scaling_factor is None
        }
        scaled_hooks = {
            self.hook_names[name]
            for name, trainer in pending.items()
            if trainer.recipe is not None and trainer.recipe.input_scaling == "unit_mean_squared_norm"
        }
        # A transcoder's paired hook: C_in from its input columns, C_out from its target columns.
        paired = {
            self.hook_names[name]: trainer.sae.cfg.d_in
            for name, trainer in pending.items()
            if isinstance(trainer.sae, GemmaScopeTrainingTranscoder) and self.hook_names[name] in scaled_hooks
        }
        scales: dict[str, float] = {}
        if scaled_hooks:
            with _naming_hooks(sorted(scaled_hooks)):
                scales = estimate_input_scales(
                    self.data_provider, scaled_hooks, self.cfg.n_batches_for_norm_estimate,
                    combine=self.collectives.sum_meters if self.collectives is not None else None,
                    paired_input_widths=paired,
                )  # fmt: skip
        for name, trainer in pending.items():
            assert trainer.recipe is not None
            hook = self.hook_names[name]
            scaled = trainer.recipe.input_scaling == "unit_mean_squared_norm"
            trainer.activation_scaler.scaling_factor = 1.0 / scales[hook] if scaled else 1.0
            if scaled and isinstance(trainer.sae, GemmaScopeTrainingTranscoder):
                trainer.sae.set_scales(scales[hook], scales[hook + TARGET_SUFFIX])

    def load_checkpoint(self, path: str | Path) -> None:
        super().load_checkpoint(path)
        self.checkpoint_thresholds = pending_thresholds(self.checkpoint_thresholds, self.n_training_samples)
        faults = [
            fault
            for name, trainer in self.trainers.items()
            if (fault := loaded_state_faults(trainer.sae, trainer.optimizer, name, self.hook_names[name]))
        ]
        if faults:
            raise NonFiniteTrainingError(corrupt_checkpoint_message(path, faults))
        self.last_checkpoint = str(path)

    def fit(self) -> dict[str, TrainingSAE[Any]]:
        resumed = self.last_checkpoint is not None
        self.ensure_input_scales()
        for trainer in self.trainers.values():  # each SAE's warm start, if the runner set one
            if isinstance(trainer, GemmaScopeSAETrainer):
                trainer.apply_warm_start(resumed=resumed or self.n_training_steps > 0)
        # Our progress display instead of SAELens's bar, for this fit only (see training.progress);
        # one per job under torchrun (the main rank's).
        label = f"training {len(self.trainers)} SAEs"
        with training_progress(
            label, self.cfg.total_training_samples, self.n_training_samples,
            show=self.collectives is None or self.collectives.is_main,
        ):  # fmt: skip
            saes = super().fit()
        # Before the runner saves the SAEs (SAELens's fit has folded the input scales into them).
        self.raise_if_nonfinite(weights=True)
        return saes

    def faults(self, *, weights: bool, pending: bool) -> list[Fault]:
        """Every SAE's non-finite inputs, losses and (``weights``) parameters, and (``pending``) the
        non-finite activations the stream has drawn for later steps."""
        faults = [
            fault
            for trainer in self.trainers.values()
            if isinstance(trainer, GemmaScopeSAETrainer) and (fault := trainer.fault(weights=weights))
        ]
        if pending:
            by_hook: dict[str, list[str]] = {}
            for name, hook in self.hook_names.items():
                by_hook.setdefault(hook, []).append(name)
            faults += pending_input_faults(pending_activations(self.data_provider), by_hook)
        return faults

    def raise_if_nonfinite(self, *, weights: bool, pending: bool = False) -> None:
        faults = self.faults(weights=weights, pending=pending)
        if faults:
            raise NonFiniteTrainingError(
                training_stopped_message(faults, self.n_training_steps, self.last_checkpoint)
            )

    def checkpoint_if_needed(self) -> None:
        if self.n_training_steps % CHECK_EVERY == 0:
            self.raise_if_nonfinite(weights=False)
        super().checkpoint_if_needed()

    def save_checkpoint(self, checkpoint_name: str, wandb_aliases: list[str] | None = None) -> None:
        # Every SAE and the stream's drawn activations are checked before any file is written, so
        # the checkpoint before a fault stays the latest complete one (see training.finite_guard).
        self.raise_if_nonfinite(weights=True, pending=True)
        super().save_checkpoint(checkpoint_name, wandb_aliases)
        if self.cfg.checkpoint_path is not None:
            self.last_checkpoint = str(Path(self.cfg.checkpoint_path) / checkpoint_name)

    @torch.no_grad()
    def update_pbar(
        self, step_outputs: dict[str, TrainStepOutput], pbar: ProgressTask, update_interval: int = 100
    ) -> None:
        # One short line for a whole ladder; every step reports, the display redraws by time and
        # reads the losses only then (a host sync).
        step = self.n_training_steps

        def note() -> str:
            losses = {name: float(out.loss.item()) for name, out in step_outputs.items()}
            return loss_note(step, losses, n_saes=len(step_outputs))

        pbar.update(self.n_training_samples, note=note)
