"""This process's place in a torchrun job: the job's layout (data parallel or SAE-sharded), its
rank and its size, read from torchrun's environment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DistributedMode = Literal["data", "sae"]

#: The layouts ``--distributed`` accepts: data parallel, or SAEs sharded over the ranks.
DISTRIBUTED_MODES: tuple[str, ...] = ("data", "sae")


@dataclass(frozen=True)
class DistributedSpec:
    """This process's place in a torchrun job and the layout the job trains in.

    ``data``: every rank holds every SAE of a pass, steps on its share of each global batch and
    averages gradients (equal to one process on the global batch). ``sae``: ranks gather their
    shares into the global batch and each trains its own subset of the SAEs.
    """

    mode: DistributedMode
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.mode not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed mode must be one of {DISTRIBUTED_MODES}, got {self.mode!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside a job of {self.world_size} process(es)")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether this rank trains the ``index``-th SAE (sorted by name) of a pass in ``sae`` mode."""
        return self.mode == "data" or index % self.world_size == self.rank

    def local_batch(self, global_batch: int) -> int:
        """Activations this rank reads per step: its share of the global batch."""
        if global_batch % self.world_size:
            raise ValueError(
                f"the batch of {global_batch:,} activations (train_batch_size_tokens) does not split "
                f"evenly over {self.world_size} ranks; choose a multiple of {self.world_size}"
            )
        return global_batch // self.world_size


def distributed_spec_from_env(mode: str) -> DistributedSpec:
    """This process's place in a torchrun job, from torchrun's environment (no process group is
    joined: a dry run plans without one)."""
    import os

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError(
            f"--distributed {mode} runs under torchrun, e.g. `torchrun --nproc-per-node 8 -m "
            f"saelens_gemmascope.cli train PRESET --distributed {mode}`"
        )
    return DistributedSpec(mode=mode, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))  # type: ignore[arg-type]
