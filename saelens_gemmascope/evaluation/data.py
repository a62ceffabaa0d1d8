"""The evaluation tokens: N sequences of C tokens, right-padded, with an optional domain per sequence.

Rows are either pre-tokenised (an ``input_ids`` or ``tokens`` column) or text (a ``text`` column,
tokenised one document per sequence with the tokenizer's BOS, as the paper evaluates per Pile
subset). Documents are truncated to C tokens and shorter ones padded with the pad id; padding is
masked by the rules in :mod:`saelens_gemmascope.models.token_masks`, so it never counts.

The domain of a row is read from a ``domain`` column or from the Pile's ``meta.pile_set_name``
(``domain_column`` names another, dotted for nested fields).

The embedded default never repeats a sequence: it holds as many distinct rows as the held-out text
fills (126 of 128 tokens with the embedded model's tokenizer; 45 of 1,024 with tiny-gemma-2's byte
tokenizer), and a request for more is cut to those with an :class:`EvalDataWarning`;
``metrics.json`` records ``n_distinct_sequences`` for any data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from numbers import Integral
from pathlib import Path
from typing import Any

import torch

TOKEN_COLUMNS = ("input_ids", "tokens")
TEXT_COLUMN = "text"
DOMAIN_COLUMNS = ("domain", "meta.pile_set_name")
DEFAULT_DESCRIPTION = "embedded default (held-out Python documentation)"
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


class EvalDataError(ValueError):
    """Evaluation tokens that cannot be used: sizes, missing columns, ids the model does not have."""


class EvalDataWarning(UserWarning):
    """Evaluation tokens that are usable but not what was asked for: fewer or repeated sequences."""


def warn_one_line(message: str) -> None:
    """An :class:`EvalDataWarning` printed as one line (no source line under it)."""
    warnings.warn_explicit(message, EvalDataWarning, filename="saelens_gemmascope", lineno=0)


def distinct_sequences(tokens: torch.Tensor, description: str = "") -> int:
    """How many rows of ``tokens`` differ from each other; warns when some repeat (a repeated
    sequence counts twice in every metric, and the sequence count overstates the data)."""
    distinct = int(torch.unique(tokens, dim=0).shape[0]) if tokens.numel() else 0
    if distinct < tokens.shape[0]:
        source = f" of {description}" if description else ""
        warn_one_line(
            f"the {tokens.shape[0]} evaluation sequences{source} hold only {distinct} distinct ones; "
            "repeated sequences count once per repeat"
        )
    return distinct


def _row_ids(row: Mapping[str, Any], tokenizer: Any) -> list[int]:
    for column in TOKEN_COLUMNS:
        if column in row:
            ids = row[column]
            return ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if TEXT_COLUMN in row:
        return list(tokenizer(row[TEXT_COLUMN])["input_ids"])
    raise EvalDataError(f"a dataset row needs one of {(*TOKEN_COLUMNS, TEXT_COLUMN)}; got {sorted(row)}")


def check_sizes(n_sequences: int, context_size: int) -> None:
    """At least one sequence, and two tokens per sequence (a loss needs a next token)."""
    if isinstance(n_sequences, bool) or not isinstance(n_sequences, Integral) or n_sequences < 1:
        raise EvalDataError(f"n_sequences must be a positive integer, got {n_sequences!r}")
    if isinstance(context_size, bool) or not isinstance(context_size, Integral) or context_size < 2:
        raise EvalDataError(f"context_size must be an integer of at least 2, got {context_size!r}")


def check_tokens_fit(tokens: torch.Tensor, d_vocab: int, n_ctx: int | None, description: str = "") -> None:
    """Every id is one of the model's ``d_vocab`` tokens and no sequence is longer than ``n_ctx``:
    either would fail deep inside the forward pass (an index error) or give meaningless logits."""
    source = f" of {description}" if description else ""
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise EvalDataError(
            f"the evaluation tokens{source} must be (sequences, positions), got {tuple(tokens.shape)}"
        )
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise EvalDataError(
            f"context size {tokens.shape[1]} is longer than the model's context of {n_ctx} tokens; "
            f"use a context size of at most {n_ctx}"
        )
    bad = (tokens < 0) | (tokens >= d_vocab)
    if bool(bad.any()):
        row, position = (int(i) for i in bad.nonzero()[0])
        raise EvalDataError(
            f"token id {int(tokens[row, position])} (sequence {row}, position {position}) of the evaluation "
            f"data{source} is outside the model's vocabulary (ids 0..{d_vocab - 1}); was it tokenised for "
            "another model?"
        )


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
    check_sizes(n_sequences, context_size)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise EvalDataError("the tokenizer has no pad token; padding could not be masked")
    rows = list(islice(_shuffled(dataset, seed, n_sequences), n_sequences))
    if len(rows) < n_sequences:
        source = f"{description}: " if description else ""
        raise EvalDataError(
            f"{source}the dataset has {len(rows)} rows; {n_sequences} sequences were asked for"
        )
    column = _domain_column(rows[0], domain_column)
    tokens = torch.full((n_sequences, context_size), pad_id, dtype=torch.int64)
    for i, row in enumerate(rows):
        ids = _row_ids(row, tokenizer)[:context_size]
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    domains = None if column is None else [str(_field(row, column)) for row in rows]
    return EvalTokens(tokens=tokens, domains=domains, description=description)


def default_dataset(tokenizer: Any, n_sequences: int, context_size: int) -> Any:
    """The embedded default: held-out Python documentation prose, no download; at most
    ``n_sequences`` rows, every one distinct (fewer when the held-out text holds fewer)."""
    from saelens_gemmascope.data import stdlib_token_dataset

    rows = stdlib_token_dataset(tokenizer, context_size, holdout=True)
    return rows.select(range(min(n_sequences, len(rows))))


def default_eval_tokens(tokenizer: Any, n_sequences: int, context_size: int, seed: int = 0) -> EvalTokens:
    """The embedded default as evaluation tokens: ``n_sequences`` distinct rows, or all the held-out
    text holds when that is fewer (with an :class:`EvalDataWarning` naming both counts)."""
    check_sizes(n_sequences, context_size)
    dataset = default_dataset(tokenizer, n_sequences, context_size)
    if len(dataset) < n_sequences:
        warn_one_line(
            f"the embedded evaluation text holds {len(dataset)} distinct sequences of {context_size} tokens; "
            f"evaluating on those {len(dataset)}, not the {n_sequences} asked for (a shorter context "
            "size gives more, or pass a dataset)"
        )
    return eval_tokens(dataset, tokenizer, len(dataset), context_size, seed, description=DEFAULT_DESCRIPTION)


def _looks_like_a_path(name: str) -> bool:
    """A name a hub dataset cannot have (``org/name`` can): absolute, ``./``, ``../`` or ``~``."""
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(name).is_absolute()


def load_named_dataset(name: str, split: str = "train") -> Any:
    """A dataset by hub name (streamed) or a local folder saved with ``Dataset.save_to_disk``."""
    import datasets

    path = Path(name).expanduser()
    if path.exists() or _looks_like_a_path(name):
        if not path.is_dir():
            problem = "is not a folder" if path.exists() else "no such dataset folder"
            raise EvalDataError(f"{name}: {problem} (expected a folder saved with save_to_disk)")
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, IndexError) as err:  # datasets raises IndexError for zero shards
            raise EvalDataError(
                f"{path}: not a dataset saved with save_to_disk, or one with no rows ({err})"
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise EvalDataError(f"{path}: a DatasetDict without a {split!r} split ({', '.join(loaded)})")
            loaded = loaded[split]
        if len(loaded) == 0:
            raise EvalDataError(f"{path}: the dataset has no rows")
        return loaded
    return datasets.load_dataset(name, split=split, streaming=True)
