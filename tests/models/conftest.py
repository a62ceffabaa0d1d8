"""Shared fixtures: the tiny Gemma 2 and the tiny Gemma 3, each in its three forms (HF,
HookedSAETransformer, bridge), built once."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saelens_gemmascope.demo.tiny_gemma3 import (
    TINY_GEMMA3_NAME,
    TinyGemma3,
    build_tiny_gemma3,
    build_tiny_gemma3_hf,
)
from saelens_gemmascope.demo.tiny_model import (
    TINY_GEMMA2_NAME,
    TINY_SLIDING_WINDOW,
    TinyGemma2,
    build_tiny_gemma2,
    build_tiny_hf,
)
from saelens_gemmascope.demo.tokenizer import BOS_ID, FIRST_BYTE_ID

#: Longer than the sliding window, so local and global layers differ.
SEQ_LEN = 3 * TINY_SLIDING_WINDOW


@pytest.fixture(scope="session")
def tiny() -> TinyGemma2:
    return build_tiny_gemma2(seed=0)


@pytest.fixture(scope="session")
def tiny_bridge(tiny: TinyGemma2) -> Any:
    from saelens_gemmascope.models.bridge import transformer_bridge_from_hf

    # The bridge rewires the HF module tree it wraps, so it gets its own copy of the same weights.
    return transformer_bridge_from_hf(build_tiny_hf(seed=0), tiny.tokenizer, model_name=TINY_GEMMA2_NAME)


@pytest.fixture(scope="session")
def tiny3() -> TinyGemma3:
    return build_tiny_gemma3(seed=0)


@pytest.fixture(scope="session")
def tiny3_bridge(tiny3: TinyGemma3) -> Any:
    from saelens_gemmascope.models.bridge import transformer_bridge_from_hf

    # Its own copy of the same weights, as for the tiny Gemma 2.
    return transformer_bridge_from_hf(
        build_tiny_gemma3_hf(seed=0), tiny3.tokenizer, model_name=TINY_GEMMA3_NAME
    )


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    batch = torch.randint(FIRST_BYTE_ID, FIRST_BYTE_ID + 256, (3, SEQ_LEN), generator=generator)
    batch[:, 0] = BOS_ID
    return batch
