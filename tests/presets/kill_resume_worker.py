"""One training process of the kill-and-resume test (run as a script by ``test_kill_resume.py``).

``python kill_resume_worker.py ROOT MODE [--prefetch]`` trains a one-preset suite of the random
``tiny-gemma-2`` on the embedded text under ``ROOT``, with a stored calibration record (no probe
runs) and :data:`N_CHECKPOINTS` checkpoints, through the same ``pass_training``/``run_suite`` the
``gemmascope train`` command runs. MODE is

* ``full``: train to the end;
* ``freeze``: train until a checkpoint is complete, then, at the model's next forward pass, write
  ``ROOT/frozen`` and block there until the test SIGKILLs the process (so some steps after the
  checkpoint are always lost, at the same point each time);
* ``resume``: continue from the latest checkpoint (``--resume``) to the end.

It writes ``ROOT/lm_tokens-MODE.json``: the tokens the language model ran on in this process and
its training-sized forward passes (LLM batches).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

PRESET = "tiny-gemma-2/res/layer_1/width_256"
TARGETS = (12.0, 40.0)
LAMBDAS = {12.0: 3e-2, 40.0: 3e-3}
TRAINING_STEPS = 48
BATCH_TOKENS = 256  # the tiny presets' train_batch_size_tokens
N_CHECKPOINTS = 2
LLM_BATCH_SHAPE = (8, 128)  # the tiny presets' store_batch_size_prompts, context_size


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders whose last file is written (the runner's resume state goes last)."""
    from saelens_gemmascope.runners.activation_stream import STREAM_STATE_FILENAME

    return sorted(p.parent for p in (root / "checkpoints").glob(f"**/{STREAM_STATE_FILENAME}"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("mode", choices=["full", "freeze", "resume"])
    parser.add_argument("--prefetch", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from saelens_gemmascope.host import load_plugins
    from saelens_gemmascope.models.loading import load_language_model
    from saelens_gemmascope.runners.run_spec import RunSpec
    from saelens_gemmascope.suite.calibration import CalibrationRecord, write_record
    from saelens_gemmascope.suite.configs import match_presets
    from saelens_gemmascope.suite.passes import pass_training
    from saelens_gemmascope.suite.plan import plan_suite
    from saelens_gemmascope.suite.run import run_suite

    load_plugins()
    (preset,) = match_presets([PRESET])
    preset = dataclasses.replace(preset, l0_targets=TARGETS, training_tokens=TRAINING_STEPS * BATCH_TOKENS)
    write_record(args.root, CalibrationRecord(preset.name, 0, [], dict(LAMBDAS)))
    model = load_language_model(preset.model_name)
    counts = {"tokens": 0, "llm_batches": 0}

    def count(module: Any, inputs: tuple[Any, ...]) -> None:
        if args.mode == "freeze" and complete_checkpoints(args.root):
            (args.root / "frozen").write_text("frozen\n")
            while True:  # until SIGKILL
                time.sleep(1)
        counts["tokens"] += inputs[0].numel()
        counts["llm_batches"] += tuple(inputs[0].shape) == LLM_BATCH_SHAPE

    model.register_forward_pre_hook(count)
    runner = {"prefetch_llm_batches": True} if args.prefetch else {}
    spec = RunSpec(output=args.root, n_checkpoints=N_CHECKPOINTS, runner=runner)
    trainers = pass_training(spec, model=model, resume=args.mode == "resume")
    # SAELens draws the SAEs' initial weights from the global generator, which torch seeds at random
    # in each process: the uninterrupted and the killed run must start from the same weights.
    torch.manual_seed(0)
    run_suite(plan_suite([preset], spec), args.root, trainers, progress=lambda _: None)
    (args.root / f"lm_tokens-{args.mode}.json").write_text(json.dumps(counts) + "\n")


if __name__ == "__main__":
    main()
