"""Torch's CPU thread count chosen for the work's size and the machine's load, for one run.

Why: torch starts one intra-op thread per core and splits every operation over them. For the
small matrices of the demo (256 tokens x 128 x 1,024 per SAE step) the split saves little on a
quiet machine, and on a busy one each split waits for threads that other processes keep off the
cores: a demo that took 117 s quiet took 34 minutes under load, with 4.5x the CPU time. Measured
on a shared 2-core machine under a load average of about 4, forward+backward of a (256 x 128) @
(128 x 1,024) matmul: 2.5 ms with 1 thread, 15.6 ms with 2; (4,096 x 256) @ (256 x 2,048): 263 ms
with 1 thread, 310 ms with 2.

:func:`threads_for_work` gives 1 thread below :data:`ONE_THREAD_BELOW` multiply-adds per
operation, 2 below :data:`TWO_THREADS_BELOW`, torch's default above; never more than the cores
the load average leaves idle. A user's ``OMP_NUM_THREADS`` or ``GEMMASCOPE_THREADS`` wins.
:func:`cpu_threads_for` applies it for a block and restores the previous count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: Below this many multiply-adds per operation, one thread (about 1 ms of one core or less).
ONE_THREAD_BELOW = 2**27
#: Below this many, two threads; above, torch's default (one per core).
TWO_THREADS_BELOW = 2**30
#: Forces the thread count of our runs (an int), like ``OMP_NUM_THREADS`` does for torch's default.
THREADS_ENV = "GEMMASCOPE_THREADS"


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores the 1-minute load average leaves idle (at least 1); all of them where it is unknown."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            return cores
    return max(1, cores - math.floor(load))


def threads_for_work(macs_per_op: int, *, default: int | None = None, idle: int | None = None) -> int:
    """The intra-op thread count for operations of ``macs_per_op`` multiply-adds.

    ``default``: torch's current count; ``idle``: the cores left idle (:func:`idle_cores`).
    """
    default = default or torch.get_num_threads()
    idle = idle if idle is not None else idle_cores()
    if macs_per_op < ONE_THREAD_BELOW:
        by_size = 1
    elif macs_per_op < TWO_THREADS_BELOW:
        by_size = 2
    else:
        by_size = default
    return max(1, min(by_size, default, idle))


def _user_threads() -> int | None:
    """The count the user asked for (``GEMMASCOPE_THREADS``, else ``OMP_NUM_THREADS``), if any."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise ValueError(f"{name}={value!r}: expected a whole number of threads") from None
    return None


@contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """``torch.set_num_threads(count)`` for the block; the previous count restored on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


@contextmanager
def cpu_threads_for(macs_per_op: int, device: str | torch.device = "cpu") -> Iterator[int]:
    """Torch's thread count for work of ``macs_per_op`` on ``device``, for the block (yields it).

    Off the CPU, or where the user set a count, torch's count is left as it is.
    """
    user = _user_threads()
    if torch.device(device).type != "cpu":
        yield torch.get_num_threads()
    elif user is not None:
        with torch_threads(user) as count:
            yield count
    else:
        with torch_threads(threads_for_work(macs_per_op)) as count:
            yield count


def sae_step_macs(batch_tokens: int, widths: Iterable[tuple[int, int]]) -> int:
    """Multiply-adds of the largest matmul of a training step: batch x d_in x d_sae."""
    return max((batch_tokens * d_in * d_sae for d_in, d_sae in widths), default=0)


def plan_step_macs(plan: Any) -> int:
    """:func:`sae_step_macs` over every group of a ``SuitePlan``, each with its own batch size and
    the SAEs' widths as trained (a ``d_sae`` override included)."""
    from saelens_gemmascope.recipe.config import RECIPE_RUNNER_DEFAULTS
    from saelens_gemmascope.suite.configs import effective_d_sae

    largest = 0
    for group in plan.groups:
        batch = group.runner_settings.get("train_batch_size_tokens")
        batch = int(batch if batch is not None else RECIPE_RUNNER_DEFAULTS["train_batch_size_tokens"])
        widths = [(p.d_in, effective_d_sae(p, plan.spec)) for p in group.presets]
        largest = max(largest, sae_step_macs(batch, widths))
    return largest


@contextmanager
def cpu_threads_for_plan(plan: Any) -> Iterator[int]:
    """:func:`cpu_threads_for` a suite plan's training on its device (``plan.spec.device``)."""
    with cpu_threads_for(plan_step_macs(plan), plan.spec.device) as count:
        yield count
