"""Fixtures for the evaluation tests: the tiny Gemma 2 and real-text tokens with BOS/EOS/padding in them."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import CONTEXT, N_SEQUENCES

from saelens_gemmascope.data import stdlib_token_dataset
from saelens_gemmascope.demo.tiny_model import TinyGemma2, build_tiny_gemma2
from saelens_gemmascope.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID


@pytest.fixture(scope="session")
def tiny() -> TinyGemma2:
    return build_tiny_gemma2(seed=0)


@pytest.fixture(scope="session")
def tokens(tiny: TinyGemma2) -> torch.Tensor:
    """Real text with every special case: a packed second document (EOS then BOS mid-row) and
    right padding of different lengths."""
    rows = torch.tensor(stdlib_token_dataset(tiny.tokenizer, CONTEXT, N_SEQUENCES, holdout=True)["input_ids"])
    rows[0, 12] = EOS_ID
    rows[0, 13] = BOS_ID
    rows[1, 20:] = PAD_ID
    rows[2, 9] = EOS_ID
    rows[2, 10:] = PAD_ID
    return rows
