"""Multi-process training of recipe SAEs with ``torch.distributed`` under ``torchrun``.

Two layouts, both built on the recipe's own :class:`GemmaScopeSAETrainer` (its public ``step``):

* **data parallel** (:func:`train_data_parallel`): every rank holds the same SAE, computes
  activations on its own shard of the token stream and steps on its local batch. Gradients are
  averaged across ranks as each one is accumulated during ``backward`` (a post-accumulate-grad hook,
  as DDP does), so the recipe's ``before_optimizer_step`` already sees the averaged gradient. With
  equal local batch sizes the average of local mean losses is the global mean loss, so the step
  equals one process stepping on the concatenated global batch, and parameters stay identical on
  every rank.
* **SAE-sharded** (:func:`train_sae_sharded`): local activation batches are ``all_gather``-ed into
  the global batch; SAE ``i`` (in sorted-name order) is trained only by rank ``i % world_size``.
  :func:`broadcast_sae_weights` hands every trained SAE from its owner to all ranks.

The input scale C is estimated over all ranks' data (:func:`estimate_input_scale_distributed`), so
every rank and every layout uses the C a single process would on the global stream.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE

from saelens_gemmascope.training.input_scale import MeanSquaredNormMeter
from saelens_gemmascope.training.trainer import GemmaScopeSAETrainer

logger = logging.getLogger(__name__)

#: The layouts ``--distributed`` accepts: data parallel, or SAEs sharded over ranks.
DISTRIBUTED_MODES = ("data", "sae")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None or value == "" else int(value)


def _device_for(local_rank: int) -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cpu"), "gloo"


def init_distributed(timeout_s: float = 300) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); NCCL on CUDA, Gloo otherwise.

    ``timeout_s`` bounds every collective: if a rank dies, the others get an error instead of
    waiting forever. Without RANK/WORLD_SIZE in the environment this is a one-process context and
    no group is created.
    """
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device, backend = _device_for(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=timedelta(seconds=timeout_s),
            # Binding the device lets NCCL create its communicator eagerly.
            device_id=device if backend == "nccl" else None,
        )
    return DistContext(rank, world_size, local_rank, device, backend)


def log_main(ctx: DistContext, message: str, *args: Any) -> None:
    """Log once per job (rank 0), not once per process."""
    if ctx.is_main:
        logger.info(message, *args)


def is_distributed(ctx: DistContext) -> bool:
    return ctx.world_size > 1 and dist.is_initialized()


# -- data --------------------------------------------------------------------------------------------


def shard_rows(n_rows: int, ctx: DistContext) -> list[int]:
    """This rank's rows of a dataset: ``rank::world_size``."""
    return list(range(ctx.rank, n_rows, ctx.world_size))


def stop_layer_of(hook_name: str) -> int | None:
    """The first block the forward pass may skip to still compute ``hook_name``."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) + 1 if match else None


def _position_batches(
    model: Any, tokens: torch.Tensor, hook_name: str, special_ids: torch.Tensor
) -> torch.Tensor:
    # Activations of one prompt batch, structural special tokens (BOS/EOS/pad) dropped.
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=[hook_name], stop_at_layer=stop_layer_of(hook_name)
        )
    acts = cache[hook_name]
    keep = ~torch.isin(tokens.reshape(-1), special_ids.to(tokens.device))
    return acts.reshape(-1, acts.shape[-1])[keep].detach()


def shard_activations(
    model: Any,
    dataset: Any,
    hook_name: str,
    ctx: DistContext,
    batch_size: int,
    special_ids: Sequence[int],
    prompts_per_forward: int = 8,
) -> Iterator[torch.Tensor]:
    """Endless ``batch_size``-row activation batches at ``hook_name`` from this rank's shard of
    ``dataset`` (a sequence of ``{"input_ids": [...]}`` rows), read in order and cycled.

    Every rank yields batches of the same size, which the gradient average and ``all_gather`` need.
    """
    rows = shard_rows(len(dataset), ctx)
    if not rows:
        raise ValueError(f"rank {ctx.rank} has no rows: {len(dataset)} rows for {ctx.world_size} ranks")
    specials = torch.tensor(list(special_ids))
    pending: list[torch.Tensor] = []
    n_pending = 0
    while True:
        for start in range(0, len(rows), prompts_per_forward):
            ids = [dataset[i]["input_ids"] for i in rows[start : start + prompts_per_forward]]
            acts = _position_batches(model, torch.tensor(ids, device=ctx.device), hook_name, specials)
            pending.append(acts)
            n_pending += acts.shape[0]
            while n_pending >= batch_size:
                flat = torch.cat(pending)
                yield flat[:batch_size]
                pending, n_pending = [flat[batch_size:]], flat.shape[0] - batch_size


# -- collectives -----------------------------------------------------------------------------------


def average_gradients_during_backward(module: torch.nn.Module, ctx: DistContext) -> list[Any]:
    """Average each parameter's gradient over ranks as soon as ``backward`` has accumulated it.

    Autograd visits parameters in the same order on every rank (same graph), so the all-reduces pair
    up. Gloo has no AVG reduction, hence SUM then divide. Returns the hook handles.
    """
    if not is_distributed(ctx):
        return []

    def average(param: torch.Tensor) -> None:
        assert param.grad is not None
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(ctx.world_size)

    return [p.register_post_accumulate_grad_hook(average) for p in module.parameters() if p.requires_grad]


def all_gather_batch(batch: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The global batch: every rank's local batch, concatenated in rank order."""
    if not is_distributed(ctx):
        return batch
    parts = [torch.empty_like(batch) for _ in range(ctx.world_size)]
    dist.all_gather(parts, batch.contiguous())
    return torch.cat(parts)


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s."""
    if not is_distributed(ctx):
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


def estimate_input_scale_distributed(
    batches: Iterator[torch.Tensor], n_batches: int, ctx: DistContext
) -> float:
    """The recipe's C = sqrt(E‖x‖²) over ``n_batches`` batches from every rank (float64 sums)."""
    meter = MeanSquaredNormMeter()
    for _ in range(n_batches):
        meter.update(next(batches))
    if is_distributed(ctx):
        totals = torch.tensor([meter.total, float(meter.count)], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        meter.total, meter.count = float(totals[0]), int(totals[1])
    return meter.input_scale()


# -- training ----------------------------------------------------------------------------------------


def make_trainer(sae: TrainingSAE[Any], cfg: SAETrainerConfig, input_scale: float) -> GemmaScopeSAETrainer:
    """A recipe trainer stepped by hand (no data provider), with the given input scale C."""
    trainer = GemmaScopeSAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    trainer.activation_scaler.scaling_factor = 1.0 / input_scale
    return trainer


def _train_steps(
    trainers: Mapping[str, GemmaScopeSAETrainer],
    batches: Iterator[torch.Tensor],
    steps: range,
    ctx: DistContext,
    *,
    gather: bool,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """The one step loop of both modes: a batch per step (all-gathered in SAE-sharded mode) feeds
    every trainer; ``after_step(n)`` runs after the n-th step (checkpoints)."""
    for step in steps:
        batch = next(batches)
        if gather:
            batch = all_gather_batch(batch, ctx)
        for trainer in trainers.values():
            trainer.step(batch)
            trainer.n_training_steps += 1
        if after_step is not None:
            after_step(step + 1)


def train_data_parallel(
    sae: TrainingSAE[Any],
    batches: Iterator[torch.Tensor],
    steps: int,
    ctx: DistContext,
    cfg: SAETrainerConfig,
    input_scale: float,
    trainer: GemmaScopeSAETrainer | None = None,
) -> GemmaScopeSAETrainer:
    """Train ``sae`` for ``steps`` recipe steps on this rank's ``batches``, gradients averaged.

    ``cfg.train_batch_size_samples`` is the *local* batch size. Rank 0's initial weights are
    broadcast first, so ranks need not share a seed. Pass ``trainer`` (e.g. restored by
    :func:`load_rank_checkpoint`) to continue a run; the SAE is not folded (see
    :func:`finish_trainer`).
    """
    if trainer is None:
        broadcast_parameters(sae, ctx)
        trainer = make_trainer(sae, cfg, input_scale)
    handles = average_gradients_during_backward(trainer.sae, ctx)
    try:
        _train_steps({"sae": trainer}, batches, range(steps), ctx, gather=False)
    finally:
        for handle in handles:
            handle.remove()
    return trainer


def owner_of(index: int, ctx: DistContext) -> int:
    return index % ctx.world_size


def owned_names(names: Sequence[str], ctx: DistContext) -> list[str]:
    """The SAEs this rank trains: the ``i``-th of the sorted names goes to rank ``i % world_size``."""
    return [name for i, name in enumerate(sorted(names)) if owner_of(i, ctx) == ctx.rank]


def train_sae_sharded(
    saes: Mapping[str, TrainingSAE[Any]],
    batches: Iterator[torch.Tensor],
    steps: int,
    ctx: DistContext,
    cfg: SAETrainerConfig,
    input_scale: float,
    trainers: Mapping[str, GemmaScopeSAETrainer] | None = None,
) -> dict[str, GemmaScopeSAETrainer]:
    """Train each owned SAE on the gathered global batch for ``steps`` steps.

    ``cfg.train_batch_size_samples`` is the *global* batch size. Every rank gathers every step (even
    one that owns no SAE), since ``all_gather`` needs all ranks. Returns this rank's trainers.
    """
    if trainers is None:
        trainers = {name: make_trainer(saes[name], cfg, input_scale) for name in owned_names(list(saes), ctx)}
    _train_steps(trainers, batches, range(steps), ctx, gather=True)
    return dict(trainers)


def broadcast_sae_weights(saes: Mapping[str, TrainingSAE[Any]], ctx: DistContext) -> None:
    """Copy every SAE's weights from its owner rank to all ranks (tensors, so NCCL works too)."""
    for i, name in enumerate(sorted(saes)):
        broadcast_parameters(saes[name], ctx, src=owner_of(i, ctx))


def finish_trainer(trainer: GemmaScopeSAETrainer) -> TrainingSAE[Any]:
    """Fold C into the weights and record end-of-training stats, as SAELens's ``fit`` does last."""
    scaler = trainer.activation_scaler
    if scaler.scaling_factor is not None:
        trainer.sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
        scaler.scaling_factor = None
    trainer.set_final_sae_metadata()
    return trainer.sae


# -- per-rank checkpoints ----------------------------------------------------------------------------


def rank_checkpoint_path(directory: str | Path, ctx: DistContext) -> Path:
    return Path(directory) / f"rank{ctx.rank}.pt"


def _trainer_state(trainer: GemmaScopeSAETrainer) -> dict[str, Any]:
    return {
        "sae": trainer.sae.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "coefficients": {k: vars(s).copy() for k, s in trainer.coefficient_schedulers.items()},
        "scaling_factor": trainer.activation_scaler.scaling_factor,
        "n_training_steps": trainer.n_training_steps,
        "n_training_samples": trainer.n_training_samples,
        "act_freq_scores": trainer.act_freq_scores,
        "n_forward_passes_since_fired": trainer.n_forward_passes_since_fired,
        "n_frac_active_samples": trainer.n_frac_active_samples,
    }


def _restore_trainer(trainer: GemmaScopeSAETrainer, state: Mapping[str, Any]) -> None:
    trainer.sae.load_state_dict(state["sae"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    for name, values in state["coefficients"].items():
        vars(trainer.coefficient_schedulers[name]).update(values)
    trainer.activation_scaler.scaling_factor = state["scaling_factor"]
    trainer.n_training_steps = state["n_training_steps"]
    trainer.n_training_samples = state["n_training_samples"]
    trainer.act_freq_scores.copy_(state["act_freq_scores"])
    trainer.n_forward_passes_since_fired.copy_(state["n_forward_passes_since_fired"])
    trainer.n_frac_active_samples = state["n_frac_active_samples"]


def save_rank_checkpoint(
    directory: str | Path, ctx: DistContext, trainers: Mapping[str, GemmaScopeSAETrainer], step: int
) -> Path:
    """Write this rank's trainers (SAE, Adam, schedules, C, firing stats) to ``rank{r}.pt``.

    Written to a temporary name and renamed, so a crash mid-write leaves the previous checkpoint.
    Data-parallel ranks hold identical SAEs but each saves its own, so every rank resumes alone.
    """
    path = rank_checkpoint_path(directory, ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": step,
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "trainers": {name: _trainer_state(t) for name, t in trainers.items()},
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_rank_checkpoint(
    directory: str | Path, ctx: DistContext, trainers: Mapping[str, GemmaScopeSAETrainer]
) -> int:
    """Restore this rank's trainers from ``rank{r}.pt``; returns the saved step."""
    payload = torch.load(rank_checkpoint_path(directory, ctx), map_location=ctx.device, weights_only=True)
    if payload["world_size"] != ctx.world_size:
        raise ValueError(
            f"checkpoint was written by {payload['world_size']} ranks; this job has {ctx.world_size} "
            "(the data shards and SAE owners would differ)"
        )
    saved = payload["trainers"]
    if set(saved) != set(trainers):
        raise ValueError(f"checkpoint holds SAEs {sorted(saved)}, expected {sorted(trainers)}")
    for name, trainer in trainers.items():
        _restore_trainer(trainer, saved[name])
    return int(payload["step"])


def local_trainer_config(cfg: SAETrainerConfig, batch_size: int, steps: int) -> SAETrainerConfig:
    """``cfg`` with the batch size one trainer steps on, and the step count it runs."""
    return replace(cfg, train_batch_size_samples=batch_size, total_training_samples=batch_size * steps)


def train_distributed(
    mode: str,
    model: Any,
    dataset: Any,
    hook_name: str,
    sae_cfgs: Mapping[str, Any],
    cfg: SAETrainerConfig,
    steps: int,
    local_batch: int,
    special_ids: Sequence[int],
    ctx: DistContext,
    output_dir: str | Path | None = None,
    *,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> dict[str, TrainingSAE[Any]]:
    """One hook's SAEs, end to end: activations on this rank's shard, C over all ranks, ``steps``
    recipe steps in ``mode`` ("data": every SAE on every rank, gradients averaged; "sae": SAEs over
    ranks, on the all-gathered batch), fold, and save each SAE once (by rank 0, or by its owner)
    under ``output_dir/<name>``.

    Every ``checkpoint_every`` steps each rank writes ``output_dir/checkpoints/rank{r}.pt``; with
    ``resume`` a run continues from it. The activation stream is deterministic (a rank's rows in
    order), so resuming skips the batches already consumed and the run ends as an uninterrupted one.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"mode must be one of {DISTRIBUTED_MODES}, got {mode!r}")
    from saelens_gemmascope.training.sae import GemmaScopeTrainingSAE

    stream = shard_activations(model, dataset, hook_name, ctx, local_batch, special_ids)
    scale = estimate_input_scale_distributed(stream, cfg.n_batches_for_norm_estimate, ctx)
    saes = {name: GemmaScopeTrainingSAE(cfg_).to(ctx.device) for name, cfg_ in sae_cfgs.items()}
    if mode == "data":
        step_cfg = local_trainer_config(cfg, local_batch, steps)
        for sae in saes.values():
            broadcast_parameters(sae, ctx)
        trainers = {name: make_trainer(sae, step_cfg, scale) for name, sae in saes.items()}
        savers = {name: ctx.is_main for name in saes}
    else:
        step_cfg = local_trainer_config(cfg, local_batch * ctx.world_size, steps)
        trainers = {name: make_trainer(saes[name], step_cfg, scale) for name in owned_names(list(saes), ctx)}
        savers = {name: name in trainers for name in saes}

    checkpoints = Path(output_dir) / "checkpoints" if output_dir is not None else None
    first = 0
    if resume and checkpoints is not None and rank_checkpoint_path(checkpoints, ctx).is_file():
        first = load_rank_checkpoint(checkpoints, ctx, trainers)
        for _ in range(first):
            next(stream)
        log_main(ctx, "resumed from step %d of %d", first, steps)

    def after_step(done: int) -> None:
        if checkpoints is not None and checkpoint_every and done % checkpoint_every == 0 and done < steps:
            save_rank_checkpoint(checkpoints, ctx, trainers, done)

    handles = (
        [h for t in trainers.values() for h in average_gradients_during_backward(t.sae, ctx)]
        if mode == "data"
        else []
    )
    try:
        _train_steps(trainers, stream, range(first, steps), ctx, gather=mode == "sae", after_step=after_step)
    finally:
        for handle in handles:
            handle.remove()
    for name, trainer in trainers.items():
        finish_trainer(trainer)
        if output_dir is not None and savers[name]:
            trainer.sae.save_inference_model(Path(output_dir) / name)
    return {name: trainers[name].sae for name in trainers}
