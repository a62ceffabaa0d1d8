"""``gemmascope train`` as one torchrun rank (the production CLI and driver), with two test aids
set through the environment:

* ``GEMMASCOPE_TEST_RECORD=<folder>``: every activation batch this rank's stream yields is saved
  to ``<folder>/batches_rank<r>.pt`` when the command ends (the equivalence tests replay them in
  one process as the global batches);
* ``GEMMASCOPE_TEST_FREEZE_RANK=<r>``: rank ``r`` stops (sleeps until killed) at the first batch it
  draws after its first complete checkpoint, and writes its pid to ``<output>/frozen`` first.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch


def main() -> int:
    torch.set_num_threads(1)
    from saelens_gemmascope.cli import main as cli_main
    from saelens_gemmascope.runners.activation_stream import ResumableActivationStream
    from saelens_gemmascope.suite.passes import complete_checkpoints

    rank = int(os.environ["RANK"])
    argv = sys.argv[1:]
    output = Path(argv[argv.index("--output") + 1])
    record = os.environ.get("GEMMASCOPE_TEST_RECORD")
    freeze = os.environ.get("GEMMASCOPE_TEST_FREEZE_RANK")
    recorded: list[dict[str, torch.Tensor]] = []
    original = ResumableActivationStream.__next__

    def observed(self: ResumableActivationStream) -> Any:
        if freeze is not None and int(freeze) == rank:
            folders = (output / "checkpoints").glob(f"*/rank{rank}")
            if any(complete_checkpoints(folder) for folder in folders):
                (output / "frozen").write_text(f"{os.getpid()}\n")
                while True:  # until SIGKILL
                    time.sleep(1)
        position, batch = original(self)
        if record is not None:
            recorded.append({hook: t.clone() for hook, t in batch.items()})
        return position, batch

    ResumableActivationStream.__next__ = observed  # type: ignore[method-assign]
    code = cli_main(argv)
    if record is not None:
        torch.save(recorded, Path(record) / f"batches_rank{rank}.pt")
    return code


if __name__ == "__main__":
    sys.exit(main())
