"""The collectives that make multi-process training a mode of the one training path.

``gemmascope train --distributed {data,sae}`` under ``torchrun`` runs the same suite, runners,
activation stream, trainer, checkpoints, fold and export as a single process
(:mod:`saelens_gemmascope.suite.plan`); this module holds only what differs, as methods of
:class:`Collectives`, which is a no-op object in a single process:

* **data parallel**: every rank holds every SAE of a pass and steps on its share of each global
  batch. After ``backward`` the trainer calls :meth:`Collectives.average_gradients`, which sums
  every gradient over the ranks in parameter order and divides by the world size, so the recipe's
  decoder-gradient projection sees the averaged gradient and, with equal shares, each step equals
  one process stepping on the concatenated global batch. (Not during ``backward``, as DDP does:
  the fast path's sparse and dense steps build different graphs, so gradients would be ready in a
  different order on ranks that chose different paths, and the collectives would not pair up.)
  The input scale C is estimated over all ranks' activations (:meth:`Collectives.sum_meters`).
* **SAE-sharded**: the ranks' shares are all-gathered into the global batch every step
  (:class:`GatheredBatches`); the ``i``-th SAE of a pass (sorted by name) is trained and saved by
  rank ``i % world_size``; the others are dropped right after SAELens creates them.

Collectives run only on the main thread (a prefetch thread only reads the local stream). Every
collective has the timeout given to :func:`init_distributed`, so a dead rank ends the others with
an error instead of a hang.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from saelens_gemmascope.distributed.spec import DistributedSpec
from saelens_gemmascope.recipe.input_scale import MeanSquaredNormMeter

#: Seconds a collective may wait for the other ranks (``GEMMASCOPE_DIST_TIMEOUT`` overrides).
DEFAULT_TIMEOUT_S = 600.0


def init_distributed(spec: DistributedSpec, device: str, timeout_s: float | None = None) -> None:
    """Join the process group of ``spec`` (read from torchrun's environment by
    :func:`~saelens_gemmascope.runners.run_spec.distributed_spec_from_env`); NCCL on CUDA, Gloo
    otherwise.

    ``device`` is the run's device: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` (set as the current
    device, so every ``"cuda"`` tensor of the run lands on this rank's GPU).
    """
    timeout = timeout_s or float(os.environ.get("GEMMASCOPE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK") or 0))
    if spec.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Collectives:
    """What the training path asks of the other ranks; in a single process (``spec=None``, or a
    world of one) every method is the identity."""

    def __init__(self, spec: DistributedSpec | None = None) -> None:
        self.spec = spec
        self.active = spec is not None and spec.world_size > 1 and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.spec is None or self.spec.is_main

    @property
    def world_size(self) -> int:
        return 1 if self.spec is None else self.spec.world_size

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Replace every gradient of ``module`` by its mean over the ranks (one flat all-reduce)."""
        if not self.active:
            return
        grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # Gloo has no AVG
        flat.div_(self.world_size)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def sum_meters(self, meters: Mapping[str, MeanSquaredNormMeter]) -> None:
        """Sum each hook's E‖x‖² meter over the ranks (in place, float64), in sorted hook order."""
        if not self.active or not meters:
            return
        hooks = sorted(meters)
        totals = torch.tensor(
            [v for h in hooks for v in (meters[h].total, float(meters[h].count))], dtype=torch.float64
        )
        totals = self._all_reduce_cpu(totals)
        for i, hook in enumerate(hooks):
            meters[hook].total, meters[hook].count = float(totals[2 * i]), int(totals[2 * i + 1])

    def gather_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Every rank's share concatenated in rank order: the global batch."""
        if not self.active:
            return batch
        parts = [torch.empty_like(batch) for _ in range(self.world_size)]
        dist.all_gather(parts, batch.contiguous())
        return torch.cat(parts)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def all_true(self, flag: bool) -> bool:
        return all(self.gather_objects(bool(flag)))

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_parameters(self, module: torch.nn.Module, src: int = 0) -> None:
        """Make every rank's parameters and buffers equal to rank ``src``'s."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=src)

    def _all_reduce_cpu(self, values: torch.Tensor) -> torch.Tensor:
        # NCCL reduces CUDA tensors only; Gloo CPU ones.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        moved = values.to(device) if device is not None else values
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.cpu()


class GatheredBatches(Iterator[dict[str, torch.Tensor]]):
    """SAE-sharded mode's data provider: each local multi-hook batch gathered into the global one
    (every hook, in sorted order, on every rank, even one that trains no SAE of that hook)."""

    def __init__(self, local: Iterator[dict[str, torch.Tensor]], collectives: Collectives) -> None:
        self.local = local
        self.collectives = collectives

    def __iter__(self) -> GatheredBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.local)
        return {hook: self.collectives.gather_batch(batch[hook]) for hook in sorted(batch)}


def owned_names(names: list[str], spec: DistributedSpec | None) -> list[str]:
    """The SAEs of a pass this rank trains: all of them, or in ``sae`` mode every
    ``world_size``-th of the sorted names starting at its rank."""
    if spec is None:
        return list(names)
    return [name for i, name in enumerate(sorted(names)) if spec.owns(i)]
