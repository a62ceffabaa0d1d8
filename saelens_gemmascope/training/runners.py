"""SAELens's two training runners, driving the recipe's trainers.

Both SAELens runners build their trainer inline in ``run()`` (no factory argument or method), so
these subclasses override ``run()`` with the same sequence (metadata, wandb (offline when unreachable: training.wandb_logging), data provider,
resume, train with interruption handling, final save) and only the trainer class changed. Model
and activation-store set-up, evaluators, checkpoint files and final saving are SAELens's.
The trainer of the last ``run()`` stays reachable as ``runner.trainer``.
"""

from __future__ import annotations

from typing import Any

from sae_lens import logger
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.prefetch import PrefetchingIterator
from sae_lens.training.types import DataProvider, MultiHookDataProvider

from saelens_gemmascope.training.trainer import GemmaScopeMultiSAETrainer, GemmaScopeSAETrainer
from saelens_gemmascope.training.wandb_logging import finish_wandb, start_wandb


def _prefetch_size(setting: bool | int) -> int:
    # bool is an int subclass, so True must be read as "queue of one", not 1 by accident of type.
    return 1 if isinstance(setting, bool) else setting


class GemmaScopeTrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` that trains with :class:`GemmaScopeSAETrainer`.

    Takes the same arguments (``cfg``, ``override_dataset``, ``override_model``, ``override_sae``);
    build ``cfg`` with :func:`saelens_gemmascope.training.gemmascope_runner_config`.
    """

    trainer: GemmaScopeSAETrainer | None = None

    def run(self) -> TrainingSAE[Any]:
        self._set_sae_metadata()
        wandb_run = start_wandb(self.cfg)
        data_provider: DataProvider = self.activations_store
        if self.cfg.prefetch_llm_batches:
            data_provider = PrefetchingIterator(
                iter(self.activations_store), prefetch=_prefetch_size(self.cfg.prefetch_llm_batches)
            )
        try:
            trainer = GemmaScopeSAETrainer(
                cfg=self.cfg.to_sae_trainer_config(),
                sae=self.sae,
                data_provider=data_provider,
                evaluator=self.evaluator,
                save_checkpoint_fn=self.save_checkpoint,
            )
            self.trainer = trainer
            if self.cfg.resume_from_checkpoint is not None:
                logger.info(f"Resuming from checkpoint: {self.cfg.resume_from_checkpoint}")
                trainer.load_trainer_state(self.cfg.resume_from_checkpoint)
                self.sae.load_weights_from_checkpoint(self.cfg.resume_from_checkpoint)
                self.activations_store.load_from_checkpoint(self.cfg.resume_from_checkpoint)
            self._compile_sae_if_needed()
            sae = self.run_trainer_with_interruption_handling(trainer)
            if self.cfg.output_path is not None:
                self.save_final_sae(
                    sae=sae,
                    output_path=self.cfg.output_path,
                    log_feature_sparsity=trainer.log_feature_sparsity,
                )
            finish_wandb(self.cfg, wandb_run)
            return sae
        finally:
            if isinstance(data_provider, PrefetchingIterator):
                data_provider.close()


class GemmaScopeMultiSAETrainingRunner(MultiSAETrainingRunner):
    """``MultiSAETrainingRunner`` that trains with :class:`GemmaScopeMultiSAETrainer`: one model
    forward pass feeds every SAE (several hooks, several λ). Build ``cfg`` with
    :func:`saelens_gemmascope.training.gemmascope_multi_runner_config`."""

    trainer: GemmaScopeMultiSAETrainer | None = None

    def run(self) -> dict[str, TrainingSAE[Any]]:
        self._set_sae_metadata()
        wandb_run = start_wandb(self.cfg)
        data_provider: MultiHookDataProvider = self.activations_store.get_multi_hook_data_loader()
        if self.cfg.prefetch_llm_batches:
            data_provider = PrefetchingIterator(
                data_provider, prefetch=_prefetch_size(self.cfg.prefetch_llm_batches)
            )
        try:
            trainer = GemmaScopeMultiSAETrainer(
                cfg=self.cfg.to_sae_trainer_config(),
                saes=self.saes,
                hook_names=self.cfg.hook_names_per_sae,
                data_provider=data_provider,
                evaluator=self.evaluator,
                save_checkpoint_fn=self._save_runner_checkpoint_files,
            )
            self.trainer = trainer
            if self.cfg.resume_from_checkpoint is not None:
                logger.info(f"Resuming from checkpoint: {self.cfg.resume_from_checkpoint}")
                trainer.load_checkpoint(self.cfg.resume_from_checkpoint)
                self.activations_store.load_from_checkpoint(self.cfg.resume_from_checkpoint)
            saes = self._run_with_interruption_handling(trainer)
            if self.cfg.output_path is not None:
                self._save_final_outputs(saes, trainer)
            finish_wandb(self.cfg, wandb_run)
            return saes
        finally:
            if isinstance(data_provider, PrefetchingIterator):
                data_provider.close()
