from __future__ import annotations

import pytest

from saelens_gemmascope.demo.tokenizer import (
    BOS_ID,
    BYTE_VOCAB_SIZE,
    EOS_ID,
    FIRST_BYTE_ID,
    PAD_ID,
    UNK_ID,
    build_byte_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def test_special_ids_are_gemmas(tokenizer) -> None:
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (
        PAD_ID,
        EOS_ID,
        BOS_ID,
    )
    assert (PAD_ID, EOS_ID, BOS_ID) == (0, 1, 2)
    assert tokenizer.unk_token_id == UNK_ID
    assert len(tokenizer) == BYTE_VOCAB_SIZE == 260


def test_each_byte_is_one_token_after_bos(tokenizer) -> None:
    text = "hi é\n  ✓"
    ids = tokenizer(text).input_ids
    assert ids[0] == BOS_ID
    assert ids[1:] == [FIRST_BYTE_ID + b for b in text.encode("utf-8")]


@pytest.mark.parametrize(
    "text", ["", "plain ascii", "  leading and trailing  ", "tabs\tnew\nlines", "émoji 🙂 ∑"]
)
def test_round_trip(tokenizer, text: str) -> None:
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_each_byte_value_has_its_own_token(tokenizer) -> None:
    ids = list(range(FIRST_BYTE_ID, FIRST_BYTE_ID + 256))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert len(set(tokens)) == 256
    assert tokenizer.convert_tokens_to_ids(tokens) == ids


def test_padding_uses_pad_id(tokenizer) -> None:
    batch = tokenizer(["a", "abc"], padding=True)
    assert batch.input_ids[0] == [BOS_ID, FIRST_BYTE_ID + ord("a"), PAD_ID, PAD_ID]
    assert batch.attention_mask[0] == [1, 1, 0, 0]


def test_transformer_lens_needs_nothing_from_the_hub(tokenizer) -> None:
    # TransformerLens re-loads a tokenizer by name unless it adds BOS and records its name.
    assert tokenizer.add_bos_token
    assert tokenizer.init_kwargs["name_or_path"]
