"""Where a suite's tokens come from: the embedded default, a local dataset folder, or the hub.

Every source is handed to SAELens as ``override_dataset`` (a string ``dataset_path`` to a
pre-tokenised set would make SAELens look its tokenizer up on the hub). Rows may be text
(``text``) or token ids (``input_ids``/``tokens``); SAELens tokenises text itself. Special tokens
are excluded later, by the runner's ``exclude_special_tokens`` (a recipe default).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

#: The embedded default: Python's own documentation text, tokenised offline.
STDLIB_SOURCE = "stdlib"


def load_training_data(
    source: str, tokenizer: Any, context_size: int
) -> datasets.Dataset | datasets.IterableDataset:
    """The dataset named by ``source``: ``stdlib``, a ``save_to_disk`` folder, or a hub name."""
    import datasets

    if source == STDLIB_SOURCE:
        from saelens_gemmascope.data import stdlib_token_dataset

        return stdlib_token_dataset(tokenizer, context_size)
    if Path(source).exists():
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"{source}: a DatasetDict without a 'train' split ({list(loaded)})")
            return loaded["train"]
        return loaded
    return datasets.load_dataset(source, split="train", streaming=True)
