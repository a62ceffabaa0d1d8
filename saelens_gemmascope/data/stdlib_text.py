"""Token sequences from the Python documentation's help topics (``pydoc_data.topics``).

Chosen because it is real English prose (about 460 kB) present in every CPython install, so the
embedded default needs no download and gives the same text on every machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets


def stdlib_text() -> str:
    """All help topics, in a fixed (sorted) order."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[key] for key in sorted(topics))


def stdlib_split(holdout_fraction: float = 0.1) -> tuple[str, str]:
    """(training text, held-out text): the last ``holdout_fraction`` of the text is held out."""
    text = stdlib_text()
    cut = int(len(text) * (1 - holdout_fraction))
    return text[:cut], text[cut:]


def stdlib_token_dataset(
    tokenizer: Any,
    context_size: int,
    n_sequences: int | None = None,
    holdout: bool = False,
    holdout_fraction: float = 0.1,
) -> datasets.Dataset:
    """Pre-tokenised ``input_ids`` rows of ``context_size`` tokens, each starting with BOS.

    The text is split once into a training part and a held-out tail (``holdout=True`` returns the
    tail), so evaluation never sees training text. Without ``n_sequences``, every full row the text
    holds, each distinct (what the evaluation default uses); with it, rows repeat cyclically when it
    asks for more than the text holds (a training stream may cycle).
    """
    import datasets

    train_text, heldout_text = stdlib_split(holdout_fraction)
    part = heldout_text if holdout else train_text
    ids = tokenizer(part, add_special_tokens=False)["input_ids"]
    body = context_size - 1  # one position for BOS
    rows = [[tokenizer.bos_token_id, *ids[i : i + body]] for i in range(0, len(ids) - body + 1, body)]
    if not rows:
        raise ValueError(f"context_size {context_size} is longer than the available text")
    if n_sequences is not None:
        rows = [rows[i % len(rows)] for i in range(n_sequences)]
    return datasets.Dataset.from_dict({"input_ids": rows})
