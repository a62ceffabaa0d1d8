"""Fixtures of the transcoder tests: the tiny Gemma 2 and a pre-tokenised corpus of real text."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import datasets
import pytest
import torch
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from saelens_gemmascope.builtin import architectures
from saelens_gemmascope.contributions import Architecture
from saelens_gemmascope.demo.tiny_model import TinyGemma2, build_tiny_gemma2
from saelens_gemmascope.demo.tokenizer import BOS_ID

CONTEXT = 128


@pytest.fixture(scope="session", autouse=True)
def transcoder_architectures_registered() -> None:
    """The architectures through their own hookimpl, in case the host has not registered them."""
    found: list[Architecture] = []
    architectures.register_sae_architectures(found.append)
    for arch in found:
        if arch.name not in SAE_CLASS_REGISTRY:
            register_sae_class(arch.name, arch.sae_class, arch.config_class)
        if arch.training_class is not None and arch.name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(arch.name, arch.training_class, arch.training_config_class)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny() -> TinyGemma2:
    return build_tiny_gemma2(seed=0)


@pytest.fixture(scope="session")
def token_rows(tiny: TinyGemma2) -> torch.Tensor:
    """Rows of ``CONTEXT`` tokens (BOS first) of Python's own standard library."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-m]*.py"))[:40]
    text = "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)
    ids = list(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])
    body = CONTEXT - 1
    rows = [[BOS_ID, *ids[i * body : (i + 1) * body]] for i in range(len(ids) // body)]
    return torch.tensor(rows)


@pytest.fixture(scope="session")
def train_dataset(token_rows: torch.Tensor) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": token_rows[:-16].tolist()})


@pytest.fixture(scope="session")
def heldout_tokens(token_rows: torch.Tensor) -> torch.Tensor:
    return token_rows[-16:]
