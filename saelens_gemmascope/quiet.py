"""SAELens's warnings, each shown once, and the ones that say nothing to our users not at all.

Why: a 40-second ``gemmascope train`` printed SAELens's "To copy construct from a tensor" warning
88 times. Python shows a warning once per code location only until anything changes the warning
filters (``warnings.catch_warnings`` does, and the training step uses it), which forgets which
warnings were already shown; SAELens's log warnings (``logging``) repeat every time. Within
:func:`quiet_saelens`, each distinct warning (category and text) and each distinct SAELens log
warning is shown at most once, and those in :data:`HIDDEN_WARNINGS` / :data:`HIDDEN_LOG_MESSAGES`
(or passed as ``hide``) not at all. Everything is restored on exit.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: Warnings raised inside SAELens (or torch on its behalf) about its own internals: nothing a user
#: of this package can act on.
HIDDEN_WARNINGS = (
    # SAELens's activation store copies a tensor with torch.tensor(tensor) on every batch.
    r"To copy construct from a tensor",
)

#: SAELens log warnings about what our runners do on purpose: they pass the language model and the
#: dataset in memory (loaded and checked by this package), which SAELens calls not reproducible.
HIDDEN_LOG_MESSAGES = (
    r"override_model overrides",
    r"override_dataset overrides",
    r"You just passed in a (model|dataset) which will override",
)

SAELENS_LOGGER = "sae_lens"


class _OnceFilter(logging.Filter):
    """Drops hidden messages, and any message already let through once."""

    def __init__(self, hidden: Sequence[str]) -> None:
        super().__init__()
        self.hidden = [re.compile(pattern) for pattern in hidden]
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(pattern.search(message) for pattern in self.hidden):
            return False
        key = (record.levelno, message)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextmanager
def quiet_saelens(hide: Sequence[str] = ()) -> Iterator[None]:
    """Each distinct warning shown once; :data:`HIDDEN_WARNINGS`, :data:`HIDDEN_LOG_MESSAGES` and
    ``hide`` (regular expressions searched in a warning's text, e.g. warnings a caller expects)
    not at all. Process-wide while active (Python's warning state is), restored on exit."""
    hidden = [re.compile(pattern) for pattern in (*HIDDEN_WARNINGS, *hide)]
    log_filter = _OnceFilter([*HIDDEN_LOG_MESSAGES, *hide])
    logger = logging.getLogger(SAELENS_LOGGER)
    logger.addFilter(log_filter)
    try:
        # Decided where warnings are shown, not by filters: code that resets the filters (or sets
        # them to "always") inside the block cannot bring the hidden or repeated ones back.
        with warnings.catch_warnings():
            warnings.showwarning = _shown_once(warnings.showwarning, hidden)
            yield
    finally:
        logger.removeFilter(log_filter)


def _shown_once(show: Any, hidden: Sequence[re.Pattern[str]]) -> Any:
    """``warnings.showwarning`` that passes each (category, text) on to ``show`` only the first
    time, and none whose text matches a ``hidden`` pattern."""
    seen: set[tuple[type[Warning], str]] = set()

    def show_once(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        key = (category, str(message))
        if key not in seen and not any(pattern.search(key[1]) for pattern in hidden):
            seen.add(key)
            show(message, category, *args, **kwargs)

    return show_once
