"""A small byte-level BPE tokenizer with Gemma's special-token ids, trained in memory on given text.

Ids 0-3 are Gemma's ``<pad>``, ``<eos>``, ``<bos>`` and ``<unk>``; the next 256 are the bytes
(so any text round-trips and ``<unk>`` is never produced), then the learned merges. Training uses
the ``tokenizers`` library's ``BpeTrainer``, which is deterministic for a given text and vocabulary
size (ties between equally frequent pairs are broken by the pair itself, not by hash order).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from saelens_gemmascope.demo.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    gemma_style_tokenizer,
    mark_local,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "load_bpe_tokenizer", "train_bpe_tokenizer"]

#: What ``init_kwargs["name_or_path"]`` says. TransformerLens re-creates a tokenizer from this name
#: only when the one it is given does not add BOS; ours always does, so the name is never looked up.
BPE_TOKENIZER_NAME = "saelens-gemmascope/stdlib-bpe-tokenizer"

#: The 256 byte symbols plus the special tokens: the smallest vocabulary with any merges at all.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256 + 1


def _train_backend(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    # GPT-2 style word splitting keeps merges inside words, so the vocabulary is words and pieces.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),  # listed first, so they get ids 0-3 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def _check_special_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id)
    if ids != (PAD_ID, EOS_ID, BOS_ID, UNK_ID):
        raise ValueError(f"special-token ids {ids} are not Gemma's {(PAD_ID, EOS_ID, BOS_ID, UNK_ID)}")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens and bytes included) on ``texts``.

    The vocabulary can come out smaller when the text has too few pairs seen twice.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (specials + 256 bytes + 1 merge)")
    tokenizer = gemma_style_tokenizer(_train_backend(texts, vocab_size), BPE_TOKENIZER_NAME)
    _check_special_ids(tokenizer)
    return tokenizer


def load_bpe_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained``, from disk only."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    # The saved name is the cache directory; restore the fixed one so nothing depends on the path.
    mark_local(tokenizer, BPE_TOKENIZER_NAME)
    _check_special_ids(tokenizer)
    return tokenizer
