"""Fixtures of the transcoder tests: the tiny Gemma 2 and a pre-tokenised corpus of real text."""

from __future__ import annotations

import datasets
import pytest
import torch
from tiny_training_fixtures import register_builtin_architectures, stdlib_token_ids

from saelens_gemmascope.demo.tiny_model import TinyGemma2, build_tiny_gemma2
from saelens_gemmascope.demo.tokenizer import BOS_ID

CONTEXT = 128


@pytest.fixture(scope="session", autouse=True)
def transcoder_architectures_registered() -> None:
    """The architectures through their own hookimpl, in case the host has not registered them."""
    register_builtin_architectures()


@pytest.fixture(scope="session")
def tiny() -> TinyGemma2:
    return build_tiny_gemma2(seed=0)


@pytest.fixture(scope="session")
def token_rows(tiny: TinyGemma2) -> torch.Tensor:
    """Rows of ``CONTEXT`` tokens (BOS first) of Python's own standard library."""
    ids = stdlib_token_ids(tiny.tokenizer)
    body = CONTEXT - 1
    rows = [[BOS_ID, *ids[i * body : (i + 1) * body]] for i in range(len(ids) // body)]
    return torch.tensor(rows)


@pytest.fixture(scope="session")
def train_dataset(token_rows: torch.Tensor) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": token_rows[:-16].tolist()})


@pytest.fixture(scope="session")
def heldout_tokens(token_rows: torch.Tensor) -> torch.Tensor:
    return token_rows[-16:]
