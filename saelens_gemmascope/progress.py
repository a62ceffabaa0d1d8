"""One progress display for long work: tokens done / total, tokens/s and ETA, refreshed by time.

Why not tqdm bars: SAELens's trainers update theirs every 100 steps, so on a busy machine a bar
sat at ``0/51200`` for 20 minutes and looked hung; the demo's outer bar counted stages of very
different lengths, so its ETA was meaningless. Here every unit of work (a training step, an
evaluation batch) reports its position, and the status line is redrawn when
``refresh_seconds`` have passed since the last draw: time-based, whatever a step costs. The rate is
measured over the last ``rate_window`` seconds, so the ETA follows a machine whose load changes.

One :class:`ProgressDisplay` is made active for a long run (:meth:`ProgressDisplay.activate`, as
the demo does); work that reports progress (:func:`progress_task`) draws on the active display, or
on one of its own when none is active (``gemmascope train``). SAELens's own bars are replaced for
the duration of our trainers' ``fit`` (:func:`saelens_bars_replaced`).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

import torch

Clock = Callable[[], float]
Note = str | Callable[[], str] | None

#: Redraw interval on a terminal; a log file (not a terminal) gets a line this much less often.
TERMINAL_REFRESH_SECONDS = 2.0
LOG_REFRESH_SECONDS = 30.0

_ACTIVE: ContextVar[ProgressDisplay | None] = ContextVar("gemmascope_progress_display", default=None)


def format_count(value: float) -> str:
    """``51200`` -> ``51.2k``; ``3.1e6`` -> ``3.10M``."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``; unknown -> ``?``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressTask:
    """One piece of work with a known total (tokens, by default) on a :class:`ProgressDisplay`.

    Also stands in for the tqdm bar SAELens's ``fit`` creates (it only calls ``close`` on it;
    our trainers' ``update_pbar`` call :meth:`update`).
    """

    def __init__(self, display: ProgressDisplay, label: str, total: int, done: int, unit: str) -> None:
        self.display = display
        self.label = label
        self.total = max(0, int(total))
        self.unit = unit
        self.done = min(int(done), self.total) if self.total else int(done)
        self.start_done = self.done
        self.note = ""
        self._latest_note: Note = None
        self.started = display.clock()
        self.finished = False
        # (time, done) at the start and at each draw: the rate over the recent window. A resumed
        # run starts at its position, so the rate never counts the tokens done before the resume.
        self._samples: deque[tuple[float, int]] = deque([(self.started, self.done)])

    def update(self, done: int, note: Note = None) -> None:
        """Move to ``done`` (absolute); redraw if due. A callable ``note`` is only called on a
        redraw (a loss read off an accelerator costs a host sync)."""
        self.done = min(int(done), self.total) if self.total else int(done)
        if note is not None:
            self._latest_note = note
        if self.display.due():
            self._read_note()
            self.display.draw()

    def _read_note(self) -> None:
        if self._latest_note is not None:
            note, self._latest_note = self._latest_note, None
            self.note = note() if callable(note) else note

    def advance(self, amount: int, note: Note = None) -> None:
        self.update(self.done + amount, note)

    def rate(self, now: float) -> float:
        """Units per second over the last ``rate_window`` seconds (nan before any time passed)."""
        samples = self._samples
        while len(samples) > 1 and now - samples[1][0] >= self.display.rate_window:
            samples.popleft()  # keep one sample at or beyond the window's start
        first_time, first_done = samples[0]
        elapsed = now - first_time
        return (self.done - first_done) / elapsed if elapsed > 0 else math.nan

    def status(self, now: float) -> str:
        """``label: 12.3k/51.2k tok (24%) | 1.02k tok/s | ETA 38s | note``."""
        rate = self.rate(now)
        left = self.total - self.done
        eta = left / rate if rate > 0 else (0.0 if left <= 0 else math.nan)
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [
            f"{self.label}: {format_count(self.done)}/{format_count(self.total)} {self.unit}{percent}",
            f"{format_count(rate) if math.isfinite(rate) else '?'} {self.unit}/s",
            f"ETA {format_duration(eta)}",
        ]
        return " | ".join(parts + ([self.note] if self.note else []))

    def summary(self, now: float) -> str:
        elapsed = now - self.started
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else math.nan
        speed = f"{format_count(rate)} {self.unit}/s" if math.isfinite(rate) else "? /s"
        note = f" | {self.note}" if self.note else ""
        # A task closed short of its total (stopped, or an error) says how far it got.
        done = format_count(self.done) + (f"/{format_count(self.total)}" if self.done < self.total else "")
        return f"{self.label}: {done} {self.unit} in {format_duration(elapsed)} ({speed}){note}"

    def close(self) -> None:
        """Done (or stopped): one final line with the tokens done, the time taken and the mean rate."""
        if not self.finished:
            self.finished = True
            if self.display.enabled:
                self._read_note()  # the last step's, for the final line
            self.display.finish(self)


class ProgressDisplay:
    """A status line (on a terminal, redrawn in place; in a log, a line now and then) and a log.

    ``stages`` names the stages of a long run (the demo's); :meth:`stage` announces the next one.
    ``clock`` and ``stream`` are injectable for tests; ``refresh_seconds`` defaults to 2 s on a
    terminal and 30 s otherwise.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        refresh_seconds: float | None = None,
        rate_window: float = 30.0,
        clock: Clock = time.monotonic,
        stages: Sequence[str] = (),
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        default_refresh = TERMINAL_REFRESH_SECONDS if self.terminal else LOG_REFRESH_SECONDS
        self.refresh_seconds = default_refresh if refresh_seconds is None else refresh_seconds
        self.rate_window = rate_window
        self.clock = clock
        self.stages = tuple(stages)
        self.started = clock()
        self.current_stage: str | None = None
        self.task_now: ProgressTask | None = None
        self._last_draw = -math.inf
        self._line_shown = False

    # --- work -------------------------------------------------------------------------------------

    def task(self, label: str, total: int, *, done: int = 0, unit: str = "tok") -> ProgressTask:
        """Start a piece of work (the previous one, if still open, is closed first)."""
        if self.task_now is not None:
            self.task_now.close()
        self.task_now = ProgressTask(self, label, total, done, unit)
        self._last_draw = -math.inf  # a new task shows at once
        return self.task_now

    def stage(self, name: str) -> None:
        """Announce the next stage of the run, with the time since the run started."""
        if self.task_now is not None:
            self.task_now.close()
        self.current_stage = name
        position = f"{self.stages.index(name) + 1}/{len(self.stages)} " if name in self.stages else ""
        self.write(f"[stage {position}{name}] after {format_duration(self.clock() - self.started)}")

    def write(self, message: str) -> None:
        """A log line above the status line (the status line is redrawn below it)."""
        if not self.enabled:
            return
        self._clear_line()
        self.stream.write(message + "\n")
        if self.task_now is not None and self.terminal:
            self._show(self.task_now.status(self.clock()))
        self.stream.flush()

    # --- drawing ----------------------------------------------------------------------------------

    def due(self) -> bool:
        return self.enabled and self.clock() - self._last_draw >= self.refresh_seconds

    def draw(self) -> None:
        if not self.enabled or self.task_now is None:
            return
        now = self.clock()
        line = self.task_now.status(now)
        self.task_now._samples.append((now, self.task_now.done))
        self._last_draw = now
        if self.terminal:
            self._clear_line()
            self._show(line)
        else:
            self.stream.write(self._prefixed(line) + "\n")
        self.stream.flush()

    def finish(self, task: ProgressTask) -> None:
        if task is self.task_now:
            self.task_now = None
        if self.enabled:
            self._clear_line()
            self.stream.write(self._prefixed(task.summary(self.clock())) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.task_now is not None:
            self.task_now.close()

    def _prefixed(self, line: str) -> str:
        return f"[{self.current_stage}] {line}" if self.current_stage else line

    def _show(self, line: str) -> None:
        # One terminal row (a wrapped line could not be redrawn in place).
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write(self._prefixed(line)[:width])
        self._line_shown = True

    def _clear_line(self) -> None:
        if self._line_shown:
            self.stream.write("\r\x1b[K")
            self._line_shown = False

    # --- the active display -----------------------------------------------------------------------

    @contextmanager
    def activate(self) -> Iterator[ProgressDisplay]:
        """Make this the display that :func:`progress_task` (and so training and evaluation) use."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)
            self.close()


def active_display() -> ProgressDisplay | None:
    return _ACTIVE.get()


@contextmanager
def progress_task(
    label: str, total: int, *, done: int = 0, unit: str = "tok", show: bool = True
) -> Iterator[ProgressTask]:
    """A task on the active display, or on a display of its own on stderr when none is active
    (``show=False``: a silent one). Closed (its summary line written) on exit."""
    display = active_display()
    if display is None or not show:
        display = ProgressDisplay(enabled=show)
    task = display.task(label, total, done=done, unit=unit)
    try:
        yield task
    finally:
        task.close()


@contextmanager
def saelens_bars_replaced(task: ProgressTask) -> Iterator[None]:
    """SAELens's trainers build a tqdm bar inside ``fit`` (no argument, attribute or method to
    replace it by), and update it only every 100 steps. For the duration of one of our trainers'
    ``fit``, their bar is ``task`` instead, through
    :func:`saelens_gemmascope.compat.trainer_progress_bars`; restored on exit. (Scoped to our own
    ``fit``, never at import; two fits at once in one process, in threads, would share it.)"""
    from saelens_gemmascope.compat import trainer_progress_bars

    def our_task(*_args: Any, **_kwargs: Any) -> ProgressTask:
        return task

    with trainer_progress_bars(our_task):
        yield


@contextmanager
def training_progress(label: str, total: int, done: int, *, show: bool = True) -> Iterator[ProgressTask]:
    """Our display instead of SAELens's bar for one ``fit``: a task from ``done`` to ``total`` tokens."""
    with progress_task(label, total, done=done, show=show) as task, saelens_bars_replaced(task):
        yield task


def loss_note(step: int, losses: Mapping[str, float], n_saes: int = 1) -> str:
    """``step 1,200 | loss 0.123``, or the mean over a ladder of SAEs (non-finite ones left out)."""
    finite = [v for v in losses.values() if math.isfinite(v)]
    mean = sum(finite) / len(finite) if finite else math.nan
    label = "loss" if n_saes == 1 else f"mean loss of {n_saes} SAEs"
    return f"step {step:,} | {label} {mean:.4g}"


def _scalar(value: Any) -> float:
    value = value() if callable(value) else value
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def step_losses(output: Any) -> dict[str, float]:
    """The losses of one SAELens ``TrainStepOutput`` as floats (total loss included)."""
    values = {name: _scalar(value) for name, value in output.losses.items()}
    values["loss"] = _scalar(output.loss)
    return values
