"""The one door to SAELens's internals: every private SAELens name this package touches, every SAELens
method it re-states and every SAELens table it writes goes through this module.

Written against sae-lens 6.54.12 (``.venv/lib/python3.11/site-packages/sae_lens``). Each entry says
which SAELens file it reaches into and the public seam that would replace it; when SAELens grows
that seam, the entry here is the only place to change. Three tables list the entries, and
``tests/layout/test_compat.py`` checks each against the installed SAELens (adding an access means
adding a row):

* :data:`PRIVATE_NAMES`: private functions, methods and module attributes, with the parameters
  this module was written against (``None``: not a callable, only its existence is checked);
* :data:`PRIVATE_ATTRIBUTES`: private instance attributes, which the class must still set;
* :data:`RESTATED`: SAELens methods re-stated here (or, for ``SAETrainer._train_step``, in part
  here and in part by the recipe's trainer), with a hash of the source they re-state, so that a
  new SAELens version which changes one fails the test until its re-statement is compared again.

The same test checks that no other module of the package touches a private SAELens name.

Base layer: this module imports SAELens, torch and TransformerLens, never a module of this package
above it; where a re-stated method needs this package's classes, they come in as arguments. It
imports SAELens (several seconds) when first imported, so the light paths (``--help``) must import
it lazily, inside the functions that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
from sae_lens import logger
from sae_lens.analysis.hooked_sae_transformer import _SAEWrapper
from sae_lens.cache_activations_runner import CacheActivationsRunner, _mk_activations_store
from sae_lens.config import CacheActivationsRunnerConfig
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner
from sae_lens.saes.sae import SAE, TrainingSAE, TrainStepInput, TrainStepOutput, _disable_hooks
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from sae_lens.training.sae_trainer import SAETrainer

SAELENS_VERSION = "6.54.12"  # what every entry below was written against

#: ``"module:qualname"``: the parameter names (``inspect.signature``) this module calls or
#: overrides it with; ``None`` for a module attribute that is not a callable.
PRIVATE_NAMES: dict[str, tuple[str, ...] | None] = {
    # SAELens's converter tables and directory (see "the converter tables" below).
    "sae_lens.loading.pretrained_sae_loaders:NAMED_PRETRAINED_SAE_LOADERS": None,
    "sae_lens.loading.pretrained_sae_loaders:NAMED_PRETRAINED_SAE_CONFIG_GETTERS": None,
    "sae_lens.loading.pretrained_saes_directory:get_pretrained_saes_directory": (),
    # The trainers' private hooks, overridden by the seams below.
    "sae_lens.training.sae_trainer:SAETrainer._train_step": ("self", "sae", "sae_in"),
    "sae_lens.training.sae_trainer:SAETrainer._checkpoint_if_needed": ("self",),
    "sae_lens.training.sae_trainer:SAETrainer._update_pbar": (
        "self",
        "step_output",
        "pbar",
        "update_interval",
    ),
    "sae_lens.training.sae_trainer:SAETrainer._is_logging_step": ("self",),
    "sae_lens.training.multi_sae_trainer:MultiSAETrainer._checkpoint_if_needed": ("self",),
    "sae_lens.training.multi_sae_trainer:MultiSAETrainer._update_pbar": (
        "self",
        "step_outputs",
        "pbar",
        "update_interval",
    ),
    "sae_lens.training.multi_sae_trainer:MultiSAETrainer._maybe_log_sparsity": ("self", "final"),
    # The progress bars ``fit`` builds, by module name.
    "sae_lens.training.sae_trainer:tqdm": None,
    "sae_lens.training.multi_sae_trainer:tqdm": None,
    # The runners' private steps, called by the re-stated ``run()``s.
    "sae_lens.llm_sae_training_runner:LanguageModelSAETrainingRunner._set_sae_metadata": ("self",),
    "sae_lens.llm_sae_training_runner:LanguageModelSAETrainingRunner._compile_sae_if_needed": ("self",),
    "sae_lens.multi_sae_training_runner:MultiSAETrainingRunner._set_sae_metadata": ("self",),
    "sae_lens.multi_sae_training_runner:MultiSAETrainingRunner._save_runner_checkpoint_files": (
        "self",
        "checkpoint_path",
    ),
    "sae_lens.multi_sae_training_runner:MultiSAETrainingRunner._save_final_outputs": (
        "self",
        "saes",
        "trainer",
    ),
    # The activation cache runner's set-up, called by the re-stated ``__init__``.
    "sae_lens.cache_activations_runner:_mk_activations_store": ("model", "cfg", "override_dataset"),
    "sae_lens.cache_activations_runner:CacheActivationsRunner._get_sliced_context_size": (
        "context_size",
        "seqpos_slice",
    ),
    # The splice wrapper ``add_sae`` installs.
    "sae_lens.analysis.hooked_sae_transformer:_SAEWrapper": (
        "sae",
        "use_error_term",
        "exclude_special_tokens",
    ),
    "sae_lens.saes.sae:_disable_hooks": ("sae",),
    # The hooks a multi-hook store captures (class-level defaults; see capture_hooks below).
    "sae_lens.training.activations_store:ActivationsStore._hook_names": None,
    "sae_lens.training.activations_store:ActivationsStore._hook_d_ins": None,
}

#: ``"module:Class.attribute"``: private instance attributes read or written here (the class's
#: source must still assign ``self.<attribute>``).
PRIVATE_ATTRIBUTES: tuple[str, ...] = (
    "sae_lens.analysis.hooked_sae_transformer:_SAEWrapper._captured_input",
    "sae_lens.analysis.hooked_sae_transformer:_SAEWrapper._token_mask",
    "sae_lens.analysis.hooked_sae_transformer:HookedSAETransformer._acts_to_saes",
    "sae_lens.analysis.sae_transformer_bridge:SAETransformerBridge._acts_to_saes",
    # Written by capture_hooks (a transcoder's two hooks).
    "sae_lens.training.activations_store:ActivationsStore._hook_head_indices",
)

#: ``"module:qualname"``: the first 16 hex digits of the sha256 of ``inspect.getsource`` of a
#: SAELens method this package re-states, as of :data:`SAELENS_VERSION`.
RESTATED: dict[str, str] = {
    "sae_lens.llm_sae_training_runner:LanguageModelSAETrainingRunner.run": "8d21360c373ea4d8",
    "sae_lens.multi_sae_training_runner:MultiSAETrainingRunner.run": "06c110c4dc2c131a",
    "sae_lens.training.activations_store:ActivationsStore._get_filtered_multi_hook_llm_batch": "07c264d3a57d0336",
    "sae_lens.cache_activations_runner:CacheActivationsRunner.__init__": "db21d38dc9cb1bee",
    "sae_lens.analysis.hooked_sae_transformer:_SAEWrapper.forward": "7ec39c1507eb2e4c",
    "sae_lens.training.sae_trainer:SAETrainer._train_step": "f609adeefc260444",
}


# -- the converter tables ------------------------------------------------------------------------
# sae_lens/loading/pretrained_sae_loaders.py: NAMED_PRETRAINED_SAE_LOADERS and
# NAMED_PRETRAINED_SAE_CONFIG_GETTERS are module-level dicts with no registration function.
# Public seam that would replace it: a ``register_pretrained_sae_converter(name, loader, getter)``
# (``SAE.from_pretrained(converter=...)`` serves one call, not a release that names its converter).


def registered_converter(name: str) -> Any | None:
    """SAELens's loader registered under ``name``, or None."""
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS

    return NAMED_PRETRAINED_SAE_LOADERS.get(name)


def register_converter(name: str, loader: Callable[..., Any], config_getter: Callable[..., Any]) -> None:
    """Put a named converter (loader and config getter) into SAELens's two tables."""
    from sae_lens.loading.pretrained_sae_loaders import (
        NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        NAMED_PRETRAINED_SAE_LOADERS,
    )

    NAMED_PRETRAINED_SAE_LOADERS[name] = loader  # type: ignore[assignment]
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS[name] = config_getter  # type: ignore[assignment]


# -- the pretrained-SAE directory ----------------------------------------------------------------
# sae_lens/loading/pretrained_saes_directory.py: get_pretrained_saes_directory() is public, but it
# returns an lru_cache'd dict parsed from SAELens's pretrained_saes.yaml, and SAELens has no way to
# add a release to it; writing into the cached dict is what adds one (SAE.from_pretrained reads it).
# Public seam that would replace it: a ``register_pretrained_release(lookup)``.


def pretrained_directory() -> dict[str, Any]:
    """SAELens's directory of releases (the cached dict itself: what ``SAE.from_pretrained`` reads)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def add_release(name: str, lookup: Any) -> None:
    """Add (or replace) one release in SAELens's directory."""
    pretrained_directory()[name] = lookup


def remove_release(name: str) -> None:
    """Remove one release from SAELens's directory (no error if absent)."""
    pretrained_directory().pop(name, None)


# -- the trainers' hooks -------------------------------------------------------------------------
# sae_lens/training/sae_trainer.py and multi_sae_trainer.py: ``fit`` and ``step`` call private
# methods (``_train_step``, ``_checkpoint_if_needed``, ``_update_pbar``, ``_maybe_log_sparsity``)
# and offer no argument or public method in their place. The seams below override each private
# hook once, to call a public method of the same name without the underscore, whose default is
# SAELens's own; this package's trainers override the public names. ``step()`` (public) stays
# SAELens's: it still moves, counts and scales the batch before the train step.
# Public seams that would replace them: public ``train_step`` / ``checkpoint_if_needed`` /
# ``update_pbar`` / ``maybe_log_sparsity`` methods, or a ``progress_bar`` factory argument.


class SAETrainerSeams(SAETrainer[Any, Any]):
    """SAELens's ``SAETrainer`` with its private hooks under public names."""

    def _train_step(self, sae: Any, sae_in: torch.Tensor) -> TrainStepOutput:
        return self.train_step(sae, sae_in)

    def train_step(self, sae: Any, sae_in: torch.Tensor) -> TrainStepOutput:
        """One optimiser step on a scaled batch (SAELens's, by default)."""
        return super()._train_step(sae, sae_in)

    def _checkpoint_if_needed(self) -> None:
        self.checkpoint_if_needed()

    def checkpoint_if_needed(self) -> None:
        """After each step: the periodic checkpoint, when one is due (SAELens's, by default)."""
        super()._checkpoint_if_needed()

    def _update_pbar(self, step_output: TrainStepOutput, pbar: Any, update_interval: int = 100) -> None:
        self.update_pbar(step_output, pbar, update_interval)

    def update_pbar(self, step_output: TrainStepOutput, pbar: Any, update_interval: int = 100) -> None:
        """After each step: the progress bar ``fit`` built (SAELens's tqdm update, by default)."""
        super()._update_pbar(step_output, pbar, update_interval)

    def is_logging_step(self) -> bool:
        """Whether this step's output is logged to wandb (what the SAE's forward pass is told)."""
        return self._is_logging_step()


class MultiSAETrainerSeams(MultiSAETrainer):
    """SAELens's ``MultiSAETrainer`` with its private hooks under public names."""

    def _checkpoint_if_needed(self) -> None:
        self.checkpoint_if_needed()

    def checkpoint_if_needed(self) -> None:
        """After each step: the periodic checkpoint, when one is due (SAELens's, by default)."""
        super()._checkpoint_if_needed()

    def _update_pbar(
        self, step_outputs: dict[str, TrainStepOutput], pbar: Any, update_interval: int = 100
    ) -> None:
        self.update_pbar(step_outputs, pbar, update_interval)

    def update_pbar(
        self, step_outputs: dict[str, TrainStepOutput], pbar: Any, update_interval: int = 100
    ) -> None:
        """After each step: the progress bar ``fit`` built (SAELens's tqdm update, by default)."""
        super()._update_pbar(step_outputs, pbar, update_interval)

    def _maybe_log_sparsity(self, final: bool = False) -> None:
        self.maybe_log_sparsity(final)

    def maybe_log_sparsity(self, final: bool = False) -> None:
        """First thing of each step (before its batch is drawn), and once more (``final``) after the
        last: the per-SAE sparsity windows (SAELens's, by default)."""
        super()._maybe_log_sparsity(final)


def train_step_input(trainer: SAETrainerSeams, sae_in: torch.Tensor) -> TrainStepInput:
    """What SAELens's ``_train_step`` passes to the SAE's ``training_forward_pass``."""
    return TrainStepInput(
        sae_in=sae_in,
        dead_neuron_mask=trainer.dead_neurons,
        coefficients=trainer.get_coefficients(),
        n_training_steps=trainer.n_training_steps,
        is_logging_step=trainer.is_logging_step(),
    )


@torch.no_grad()
def record_firing(trainer: SAETrainer[Any, Any], feature_acts: torch.Tensor) -> None:
    """The dead-latent and firing-frequency bookkeeping of SAELens's ``_train_step``, re-stated.

    One difference: the rows counted are the rows this step saw (SAELens counts the configured
    batch size, which a data-parallel rank, seeing its share of the batch, does not).
    """
    fired = feature_acts.reshape(-1, feature_acts.shape[-1]).bool().float()
    counts = fired.sum(0)  # one reduction serves both (SAELens sums twice)
    if counts.is_sparse:
        counts = counts.to_dense()
    trainer.n_forward_passes_since_fired += 1
    trainer.n_forward_passes_since_fired[counts.bool()] = 0
    trainer.act_freq_scores += counts
    trainer.n_frac_active_samples += fired.shape[0]


def step_schedulers(trainer: SAETrainer[Any, Any]) -> None:
    """The end of SAELens's ``_train_step``: the learning-rate and coefficient schedulers step."""
    trainer.lr_scheduler.step()
    for scheduler in trainer.coefficient_schedulers.values():
        scheduler.step()


@contextmanager
def trainer_progress_bars(make_bar: Callable[..., Any]) -> Iterator[None]:
    """While inside, the ``tqdm(...)`` that SAELens's trainers' ``fit`` builds is ``make_bar(...)``.

    sae_lens/training/sae_trainer.py and multi_sae_trainer.py build their bar inline, by the module
    name ``tqdm``; that name is replaced in the two modules and restored on exit (two fits at once
    in one process, in threads, would share the replacement). Public seam that would replace it: a
    ``progress_bar`` factory argument of ``fit`` or of the trainers.
    """
    import sae_lens.training.multi_sae_trainer as multi_sae_trainer
    import sae_lens.training.sae_trainer as sae_trainer

    modules = (sae_trainer, multi_sae_trainer)
    saved = [module.tqdm for module in modules]  # type: ignore[attr-defined]
    for module in modules:
        module.tqdm = make_bar  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.tqdm = original  # type: ignore[attr-defined]


# -- the runners' run() ----------------------------------------------------------------------------
# sae_lens/llm_sae_training_runner.py and multi_sae_training_runner.py: ``run()`` builds the trainer
# inline (no factory argument or method), reads SAELens's own data provider and handles signals by
# raising mid-step. This package's runners need their own trainer class, data provider and fit (an
# exact-resume stream, a stop at a step boundary), so ``run()`` is re-stated here with those three
# passed in; the rest of the sequence (metadata, resume, compile, final save) is SAELens's, through
# its private steps. Public seam that would replace it: ``trainer_factory`` / ``data_provider``
# arguments of ``run()`` (or protected ``make_trainer`` / ``make_data_provider`` methods).

TrainerT = TypeVar("TrainerT")


def run_language_model_runner(
    runner: LanguageModelSAETrainingRunner,
    *,
    trainer_class: Callable[..., TrainerT],
    data_provider: Any,
    fit: Callable[[TrainerT], TrainingSAE[Any]],
    start_logging: Callable[[Any], Any],
    finish_logging: Callable[[Any, Any], None],
    state_loads: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> TrainingSAE[Any]:
    """``LanguageModelSAETrainingRunner.run()`` with our trainer class, data provider and fit.

    ``start_logging(cfg)`` / ``finish_logging(cfg, run)`` replace the ``wandb.init`` /
    ``wandb.finish`` calls; ``state_loads()`` wraps the read of the trainer state. The caller set
    up ``data_provider`` at its resume position and closes it (a prefetch thread) afterwards.
    """
    cfg = runner.cfg
    runner._set_sae_metadata()
    logging_run = start_logging(cfg)
    trainer: Any = trainer_class(
        cfg=cfg.to_sae_trainer_config(),
        sae=runner.sae,
        data_provider=data_provider,
        evaluator=runner.evaluator,
        save_checkpoint_fn=runner.save_checkpoint,
    )
    if cfg.resume_from_checkpoint is not None:
        logger.info(f"Resuming from checkpoint: {cfg.resume_from_checkpoint}")
        with state_loads():
            trainer.load_trainer_state(cfg.resume_from_checkpoint)
        runner.sae.load_weights_from_checkpoint(cfg.resume_from_checkpoint)
    runner._compile_sae_if_needed()
    sae = fit(trainer)
    if cfg.output_path is not None:
        runner.save_final_sae(
            sae=sae, output_path=cfg.output_path, log_feature_sparsity=trainer.log_feature_sparsity
        )
    finish_logging(cfg, logging_run)
    return sae


def run_multi_sae_runner(
    runner: MultiSAETrainingRunner,
    *,
    trainer_class: Callable[..., TrainerT],
    data_provider: Any,
    fit: Callable[[TrainerT], dict[str, TrainingSAE[Any]]],
    start_logging: Callable[[Any], Any],
    finish_logging: Callable[[Any, Any], None],
    save_checkpoint_fn: Callable[[Path | None], None],
    state_loads: Callable[[], AbstractContextManager[Any]] = nullcontext,
    save_final: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, TrainingSAE[Any]]:
    """``MultiSAETrainingRunner.run()`` with our trainer class, data provider and fit.

    The trainer trains ``runner.saes`` (a rank's own under SAE sharding), with the extra
    ``trainer_kwargs``; ``save_checkpoint_fn`` writes the runner's files into each checkpoint
    (:func:`save_multi_runner_checkpoint_files`, then the caller's); ``save_final=False`` skips
    the final save (a data-parallel rank other than the main one). As
    :func:`run_language_model_runner` otherwise.
    """
    cfg = runner.cfg
    runner._set_sae_metadata()
    logging_run = start_logging(cfg)
    trainer: Any = trainer_class(
        cfg=cfg.to_sae_trainer_config(),
        saes=runner.saes,
        hook_names={name: cfg.hook_names_per_sae[name] for name in runner.saes},
        data_provider=data_provider,
        evaluator=runner.evaluator,
        save_checkpoint_fn=save_checkpoint_fn,
        **(trainer_kwargs or {}),
    )
    if cfg.resume_from_checkpoint is not None:
        logger.info(f"Resuming from checkpoint: {cfg.resume_from_checkpoint}")
        with state_loads():
            trainer.load_checkpoint(cfg.resume_from_checkpoint)
    saes = fit(trainer)
    if cfg.output_path is not None and save_final:
        runner._save_final_outputs(saes, trainer)
    finish_logging(cfg, logging_run)
    return saes


def save_multi_runner_checkpoint_files(runner: MultiSAETrainingRunner, checkpoint_path: Path | None) -> None:
    """SAELens's runner-level checkpoint files (the store's position, ``runner_cfg.json``).

    sae_lens/multi_sae_training_runner.py: ``_save_runner_checkpoint_files``, the hook its ``run()``
    hands the trainer. Public seam that would replace it: a public ``save_checkpoint`` as the
    single-SAE runner has.
    """
    MultiSAETrainingRunner._save_runner_checkpoint_files(runner, checkpoint_path)


# -- the activation store's LLM batches ----------------------------------------------------------
# sae_lens/training/activations_store.py: SAELens draws one unmixed multi-hook LLM batch only in
# the private ``_get_filtered_multi_hook_llm_batch``. It is re-stated here from the store's public
# ``get_batch_tokens`` and ``get_multi_hook_activations`` (the same calls, in the same order, so the
# token stream moves exactly as SAELens's would). Public seam that would replace it: a public
# ``get_filtered_multi_hook_llm_batch``, as the single-hook ``get_filtered_llm_batch`` is.


def filtered_multi_hook_llm_batch(
    store: ActivationsStore, raise_on_epoch_end: bool = False
) -> dict[str, torch.Tensor]:
    """One model forward pass's activations at every hook of a multi-hook store, flattened to
    ``(tokens, d_in)`` on the store's device, special tokens dropped (one mask for every hook)."""
    batch_tokens = store.get_batch_tokens(raise_at_epoch_end=raise_on_epoch_end)
    activations = store.get_multi_hook_activations(batch_tokens)
    token_ids = batch_tokens[:, slice(*store.seqpos_slice)].reshape(-1).to(store.device)
    flat = {hook: t.to(store.device).reshape(-1, t.shape[-1]) for hook, t in activations.items()}
    if store.exclude_special_tokens is None:
        return flat
    keep = ~torch.isin(token_ids, store.exclude_special_tokens)
    return {hook: t[keep] for hook, t in flat.items()}


def capture_hooks(store: ActivationsStore, hook_widths: dict[str, int]) -> None:
    """Make ``store``'s multi-hook forward pass capture exactly ``hook_widths`` (hook -> width), no
    head index, whatever hook names it was built with.

    A transcoder trains on a paired key (its input and output hooks, ``recipe.transcoder.paired_hook``)
    that SAELens's runners pass to the store as one hook name; the store must capture the two real
    hooks instead (the caller then pairs their rows). sae_lens/training/activations_store.py:
    ``from_config_multi_hook`` sets the private ``_hook_names`` / ``_hook_d_ins`` /
    ``_hook_head_indices`` that ``get_multi_hook_activations`` reads; this sets them again. A
    single-hook store becomes a multi-hook one. Public seam that would replace it: a
    ``hook_names`` argument of ``get_multi_hook_activations`` (or a public setter).
    """
    store._hook_names = list(hook_widths)
    store._hook_d_ins = dict(hook_widths)
    store._hook_head_indices = dict.fromkeys(hook_widths)


# -- the activation cache runner ----------------------------------------------------------------
# sae_lens/cache_activations_runner.py: ``CacheActivationsRunner.__init__`` loads the model by name
# (``load_model``) and takes no model argument, which a model built in memory cannot go through. It
# is re-stated here with the model passed in (the rest as SAELens's: the store of the private
# ``_mk_activations_store``, the sliced context size, the dataset features). Public seam that would
# replace it: an ``override_model`` argument, as the training runners have.


def init_cache_activations_runner(
    runner: CacheActivationsRunner,
    cfg: CacheActivationsRunnerConfig,
    model: Any,
    override_dataset: Any = None,
) -> None:
    """Set ``runner`` up as SAELens's ``__init__`` does, on ``model`` instead of one loaded by name."""
    from datasets import Array2D, Features, Sequence, Value

    runner.cfg = cfg
    runner.model = torch.compile(model, mode=cfg.llm_compilation_mode) if cfg.compile_llm else model  # type: ignore[assignment]
    runner.activations_store = _mk_activations_store(runner.model, cfg, override_dataset=override_dataset)
    runner.context_size = CacheActivationsRunner._get_sliced_context_size(cfg.context_size, cfg.seqpos_slice)
    runner.features = Features(
        {
            cfg.hook_name: Array2D(shape=(runner.context_size, cfg.d_in), dtype=cfg.dtype),
            "token_ids": Sequence(Value(dtype="int32"), length=runner.context_size),
        }
    )


# -- the splice wrapper ------------------------------------------------------------------------
# sae_lens/analysis/hooked_sae_transformer.py: ``_SAEWrapper`` is what ``add_sae`` installs (on a
# ``HookedSAETransformer`` and an ``SAETransformerBridge`` alike), kept in the private
# ``_acts_to_saes``. Its ``forward`` computes ``decode(encode(x))``, so a reconstruction with more
# (a skip transcoder's affine skip) needs ``forward`` re-stated around an overridable
# :meth:`ReconstructionWrapper.reconstruct`, with the private ``_captured_input``, ``_token_mask``
# and ``_disable_hooks`` it uses. Public seams that would replace it: a public wrapper class whose
# reconstruction is the SAE's ``forward`` (or a hook method), and a public ``installed_wrappers``.


#: The class of SAELens's splice wrappers (the private ``_SAEWrapper``), for annotations.
SAEWrapper = _SAEWrapper


def sae_wrapper(sae: SAE[Any], use_error_term: bool) -> SAEWrapper:
    """SAELens's own splice wrapper for ``sae``."""
    return _SAEWrapper(sae, use_error_term=use_error_term)


def wrapper_has_input(wrapper: SAEWrapper) -> bool:
    """Whether a transcoder's wrapper has captured its input (at the input hook) for the next call."""
    return wrapper._captured_input is not None


def installed_sae_wrapper(model: Any, input_hook: str) -> SAEWrapper:
    """The wrapper ``add_sae`` installed on ``model`` for the SAE reading ``input_hook``."""
    wrapper = model._acts_to_saes[input_hook]
    if not isinstance(wrapper, _SAEWrapper):
        raise TypeError(f"unexpected SAE wrapper {type(wrapper).__name__} at {input_hook!r}")
    return wrapper


class ReconstructionWrapper(_SAEWrapper):
    """``_SAEWrapper`` whose reconstruction is :meth:`reconstruct`, with SAELens's error-term and
    token-mask semantics (its ``forward``, re-stated)."""

    def reconstruct(self, sae_input: torch.Tensor) -> torch.Tensor:
        """The SAE's reconstruction of ``sae_input`` (SAELens's ``decode(encode(x))``, by default)."""
        return self.sae.decode(self.sae.encode(sae_input))

    def forward(self, original_output: torch.Tensor) -> torch.Tensor:
        sae_input = self._captured_input if self._captured_input is not None else original_output
        mask = self._token_mask
        if mask is not None:
            for _ in range(original_output.dim() - mask.dim()):
                mask = mask.unsqueeze(-1)
        try:
            sae_out = self.reconstruct(sae_input)
            if self.use_error_term:
                # As SAELens: the error comes from a hook-free pass, so edits made through the
                # SAE's hooks still show in the output.
                with torch.no_grad(), _disable_hooks(self.sae):
                    sae_error = original_output - self.reconstruct(sae_input)
                    if mask is not None:
                        sae_error = torch.where(mask, torch.zeros_like(sae_error), sae_error)
                    sae_error = self.hook_sae_error(sae_error)
                sae_out = sae_out + sae_error
            if mask is not None:
                sae_out = torch.where(mask, original_output, sae_out)
            return self.hook_sae_output(sae_out)  # type: ignore[no-any-return]
        finally:
            self._captured_input = None
