"""The evaluation tokens: N sequences of C tokens, right-padded, with an optional domain per sequence.

Rows are either pre-tokenised (an ``input_ids`` or ``tokens`` column) or text (a ``text`` column,
tokenised one document per sequence with the tokenizer's BOS, as the paper evaluates per Pile
subset). Documents are truncated to C tokens and shorter ones padded with the pad id; padding is
masked by the rules in :mod:`saelens_gemmascope.evaluation.masking`, so it never counts.

The domain of a row is read from a ``domain`` column or from the Pile's ``meta.pile_set_name``
(``domain_column`` names another, dotted for nested fields).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

TOKEN_COLUMNS = ("input_ids", "tokens")
TEXT_COLUMN = "text"
DOMAIN_COLUMNS = ("domain", "meta.pile_set_name")
#: Streaming datasets are shuffled through a buffer of this many rows.
_SHUFFLE_BUFFER = 10_000


@dataclass
class EvalTokens:
    tokens: torch.Tensor  # (n_sequences, context_size) int64
    domains: list[str] | None  # one per sequence, or None when the dataset has no domain column
    description: str


def _field(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _row_ids(row: Mapping[str, Any], tokenizer: Any) -> list[int]:
    for column in TOKEN_COLUMNS:
        if column in row:
            ids = row[column]
            return ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if TEXT_COLUMN in row:
        return list(tokenizer(row[TEXT_COLUMN])["input_ids"])
    raise ValueError(f"a dataset row needs one of {(*TOKEN_COLUMNS, TEXT_COLUMN)}; got {sorted(row)}")


def _domain_column(first_row: Mapping[str, Any], requested: str | None) -> str | None:
    if requested is not None:
        if _field(first_row, requested) is None:
            raise ValueError(f"the dataset has no domain column {requested!r}")
        return requested
    return next((c for c in DOMAIN_COLUMNS if _field(first_row, c) is not None), None)


def _shuffled(dataset: Any, seed: int, n_sequences: int) -> Iterable[Mapping[str, Any]]:
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        return dataset.shuffle(seed=seed, buffer_size=_SHUFFLE_BUFFER)
    if isinstance(dataset, datasets.Dataset) and len(dataset) > n_sequences:
        # A random subset, not the first rows: many corpora are sorted by source.
        return dataset.shuffle(seed=seed).select(range(n_sequences))  # type: ignore[no-any-return]
    return dataset  # type: ignore[no-any-return]


def eval_tokens(
    dataset: Any,
    tokenizer: Any,
    n_sequences: int,
    context_size: int,
    seed: int = 0,
    domain_column: str | None = None,
    description: str = "",
) -> EvalTokens:
    """The first ``n_sequences`` rows of ``dataset`` (shuffled with ``seed``) as a token tensor."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token; padding could not be masked")
    rows = list(islice(_shuffled(dataset, seed, n_sequences), n_sequences))
    if len(rows) < n_sequences:
        raise ValueError(f"the dataset has {len(rows)} rows; {n_sequences} sequences were asked for")
    column = _domain_column(rows[0], domain_column)
    tokens = torch.full((n_sequences, context_size), pad_id, dtype=torch.int64)
    for i, row in enumerate(rows):
        ids = _row_ids(row, tokenizer)[:context_size]
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    domains = None if column is None else [str(_field(row, column)) for row in rows]
    return EvalTokens(tokens=tokens, domains=domains, description=description)


def default_dataset(tokenizer: Any, n_sequences: int, context_size: int) -> Any:
    """The embedded default: held-out Python documentation prose, no download."""
    from saelens_gemmascope.data import stdlib_token_dataset

    return stdlib_token_dataset(tokenizer, context_size, n_sequences=n_sequences, holdout=True)


def load_named_dataset(name: str, split: str = "train") -> Any:
    """A dataset by hub name (streamed) or a local folder saved with ``Dataset.save_to_disk``."""
    from pathlib import Path

    import datasets

    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(name, split=split, streaming=True)
