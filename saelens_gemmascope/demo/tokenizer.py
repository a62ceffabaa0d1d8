"""A byte-level tokenizer with Gemma's special-token ids, built in memory (no hub access).

Each UTF-8 byte is one token, so any text round-trips. Ids 0-3 are Gemma's ``<pad>``, ``<eos>``,
``<bos>`` and ``<unk>``; byte ``b`` is id ``4 + b``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>")
FIRST_BYTE_ID = len(SPECIAL_TOKENS)
BYTE_VOCAB_SIZE = FIRST_BYTE_ID + 256

#: What ``init_kwargs["name_or_path"]`` says. TransformerLens re-creates a tokenizer from this name
#: when the one it is given does not add BOS; ours always does, so the name is never looked up.
TOKENIZER_NAME = "saelens-gemmascope/byte-tokenizer"


def _byte_to_char() -> dict[int, str]:
    """A printable character for every byte, the mapping the ``tokenizers`` ByteLevel stage uses.

    Printable Latin-1 bytes stand for themselves; the rest are shifted above 255 so no byte maps
    to whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` that prepends ``<bos>`` and maps each UTF-8 byte to one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({char: FIRST_BYTE_ID + b for b, char in _byte_to_char().items()})
    # A BPE model without merges is a plain character lookup over the byte alphabet.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return gemma_style_tokenizer(backend, TOKENIZER_NAME)


def gemma_style_tokenizer(backend: Tokenizer, name: str) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers`` backend as Gemma's tokenizers behave: special tokens
    ``<pad> <eos> <bos> <unk>``, BOS prepended, right padding; marked local (:func:`mark_local`)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        padding_side="right",
    )
    mark_local(tokenizer, name)
    return tokenizer


def mark_local(tokenizer: PreTrainedTokenizerFast, name: str) -> None:
    """TransformerLens re-loads a tokenizer by ``name_or_path`` (a hub lookup) unless it is set and
    ``add_bos_token`` is recorded; set both so it uses this in-memory tokenizer as it is."""
    tokenizer.init_kwargs["name_or_path"] = name
    tokenizer.init_kwargs["add_bos_token"] = True
    tokenizer.name_or_path = name
