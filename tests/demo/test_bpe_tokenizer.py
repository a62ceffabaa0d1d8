from __future__ import annotations

from pathlib import Path

import pytest

from saelens_gemmascope.demo.bpe_tokenizer import (
    MIN_VOCAB_SIZE,
    load_bpe_tokenizer,
    train_bpe_tokenizer,
)
from saelens_gemmascope.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

TEXT = "the quick brown fox jumps over the lazy dog. " * 50 + "def function(argument): return value\n" * 50
VOCAB = 300


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([TEXT], VOCAB)


def test_special_ids_are_gemmas(tokenizer) -> None:
    assert tokenizer.pad_token_id == PAD_ID == 0
    assert tokenizer.eos_token_id == EOS_ID == 1
    assert tokenizer.bos_token_id == BOS_ID == 2
    assert tokenizer.unk_token_id == UNK_ID == 3


def test_learns_merges_up_to_the_vocabulary_size(tokenizer) -> None:
    assert MIN_VOCAB_SIZE <= len(tokenizer) <= VOCAB
    ids = tokenizer("the quick brown fox", add_special_tokens=False).input_ids
    assert len(ids) < len("the quick brown fox")  # merges, not one token per byte


def test_prepends_bos_once(tokenizer) -> None:
    ids = tokenizer("the fox").input_ids
    assert ids[0] == BOS_ID
    assert BOS_ID not in ids[1:]


@pytest.mark.parametrize("text", ["", "the lazy dog", "  spaces  ", "tabs\tnew\nlines", "unseen: émoji 🙂 ∑"])
def test_round_trip_including_unseen_characters(tokenizer, text: str) -> None:
    ids = tokenizer(text).input_ids
    assert UNK_ID not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_training_is_deterministic(tokenizer) -> None:
    again = train_bpe_tokenizer([TEXT], VOCAB)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_too_small_a_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer([TEXT], MIN_VOCAB_SIZE - 1)


def test_saved_tokenizer_loads_from_disk_and_keeps_what_transformer_lens_needs(
    tokenizer, tmp_path: Path
) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = load_bpe_tokenizer(tmp_path)
    assert loaded(TEXT[:200]).input_ids == tokenizer(TEXT[:200]).input_ids
    # TransformerLens re-loads a tokenizer by name unless it adds BOS: the name must not be a path.
    assert loaded.init_kwargs["add_bos_token"] is True
    assert loaded.init_kwargs["name_or_path"] == tokenizer.init_kwargs["name_or_path"]
    assert str(tmp_path) not in loaded.name_or_path
