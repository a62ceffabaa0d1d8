"""Shared test set-up: never reach the Hugging Face hub or wandb's servers; skip GPU tests without CUDA."""

from __future__ import annotations

import os
import tempfile

# Set before anything imports huggingface_hub, which reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
# The package's cache (conversions, the registry of local releases) in a throwaway folder: tests never
# read or write the user's, and releases registered by one test session are not seen by the next.
os.environ["SAELENS_GEMMASCOPE_CACHE"] = tempfile.mkdtemp(prefix="gemmascope-test-cache-")

import pytest
import torch

# The tests' tensors are tiny: one thread per process avoids oversubscribing a shared 2-core machine,
# which made small training runs tens of times slower.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
