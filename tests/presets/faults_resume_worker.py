"""One ``gemmascope train`` process of the interrupt tests (run as a script by ``test_faults_resume.py``).

``python faults_resume_worker.py ROOT MODE`` runs the CLI's ``train`` on a two-SAE ladder of the
random ``tiny-gemma-2`` (fixed λ, no calibration; :data:`TRAIN_ARGS`) into ``ROOT``. MODE is

* ``full``: train to the end;
* ``SIGINT`` / ``SIGTERM``: the process sends itself that signal in the middle of a step, after
  one SAE of the ladder has stepped on a batch and before the other has (per-SAE step call
  :data:`SIGNAL_AFTER_SAE_STEP`, after the first periodic checkpoint);
* ``resume``: ``--resume`` to the end.

It exits with the CLI's exit status.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

PRESET = "tiny-gemma-2/res/layer_1/width_256"
LADDER = "3e-2,3e-3"
STEPS = 48
SIGNAL_AFTER_SAE_STEP = 45  # odd: the first SAE's step on the 23rd batch (of 48)
TRAIN_ARGS = [
    "train", PRESET, "--l0-coefficients", LADDER, "--set", f"training_tokens={STEPS * 256}",
    "--checkpoints", "2",
]  # fmt: skip


def signal_after_sae_step(signum: int, at_call: int = SIGNAL_AFTER_SAE_STEP) -> None:
    """Make this process send itself ``signum`` right after the ``at_call``-th step of one SAE
    (1-based, counted over every SAE's trainer): Python runs the handler there, mid-step."""
    from saelens_gemmascope.recipe.trainer import GemmaScopeSAETrainer

    original = GemmaScopeSAETrainer.step
    calls = [0]

    def stepping(self: GemmaScopeSAETrainer, batch: torch.Tensor) -> Any:
        output = original(self, batch)
        calls[0] += 1
        if calls[0] == at_call:
            os.kill(os.getpid(), signum)
        return output

    GemmaScopeSAETrainer.step = stepping  # type: ignore[method-assign]


def main() -> int:
    root, mode = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    from saelens_gemmascope.cli import main as cli_main

    if mode in ("SIGINT", "SIGTERM"):
        signal_after_sae_step(signal.Signals[mode])
    return cli_main([*TRAIN_ARGS, "--output", str(root), *(["--resume"] if mode == "resume" else [])])


if __name__ == "__main__":
    sys.exit(main())
