"""SIGINT and SIGTERM stop training at a step boundary, so that the interrupt checkpoint is exact.

Why: SAELens's runners install handlers that raise wherever the signal lands, then save a
checkpoint named by the samples counted so far. Mid-step, the stream has already moved past a
batch that not every SAE trained on (or none did), so that checkpoint, marked complete, resumes to
other weights than an uninterrupted run's. Here the handler only records the signal
(:class:`InterruptWatch`); the trainer asks :meth:`InterruptWatch.stop_at_step_boundary` before each
step, which raises :class:`StopAtStepBoundary` once a signal came; the runner then saves a checkpoint
of the steps done (with the stream position of the last batch they trained on) and raises
:class:`TrainingInterrupted`, which the CLI turns into one line and exit status 128 + the signal
number (130 for SIGINT, 143 for SIGTERM). A second signal stops at once, without a checkpoint: the
last complete one is kept.

Under torchrun the ranks agree every :data:`AGREE_EVERY` steps (one small gather), so that they all
stop after the same step, even when only one of them got the signal; a gather every step would add
a host-device synchronisation to every GPU step for an event that happens once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)

#: The signals a run stops on at a step boundary.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

#: Steps between two agreements of the ranks on whether a signal came (torchrun only).
AGREE_EVERY = 25

#: The gather of a collective: every rank's value, in rank order.
Gather = Callable[[Any], list[Any]]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal; ``str()`` is one line saying what was kept and what to do.

    A ``KeyboardInterrupt``, so that whatever catches Ctrl-C catches it too; ``signum`` gives the
    exit status (128 + ``signum``).
    """

    def __init__(self, signum: int, detail: str) -> None:
        super().__init__(f"interrupted by {signal_name(signum)} {detail}")
        self.signum = signum


class StopAtStepBoundary(Exception):
    """Raised by the trainer's step-boundary check once a stop signal came (the runner catches it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


class InterruptWatch:
    """While entered (on the main thread), SIGINT and SIGTERM are recorded instead of raising.

    ``gather`` (under torchrun) makes every check a collective, so that every rank sees a signal
    any rank got. Elsewhere than on the main thread, Python cannot install handlers: the watch
    then changes nothing (the signals keep their handlers).
    """

    def __init__(self, gather: Gather | None = None, agree_every: int = AGREE_EVERY) -> None:
        self.gather = gather
        self.agree_every = agree_every
        self._checks = 0
        self.signum: int | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> InterruptWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(
                signum, "again: stopped at once, without a checkpoint; the last complete one is kept"
            )
        self.signum = signum
        logger.warning(
            f"{signal_name(signum)}: stopping after the current step (send it again to stop at once)"
        )

    def agreed_signal(self) -> int | None:
        """The signal this rank (or, under torchrun, any rank) got; None if none came."""
        if self.gather is None:
            return self.signum
        self._checks += 1  # the ranks step in lockstep, so they gather at the same checks
        if self._checks % self.agree_every:
            return None
        return next((s for s in self.gather(self.signum) if s is not None), None)

    def stop_at_step_boundary(self) -> None:
        """Raise :class:`StopAtStepBoundary` if a stop signal came; called between two steps."""
        signum = self.agreed_signal()
        if signum is not None:
            self.signum = signum
            raise StopAtStepBoundary(signum)
