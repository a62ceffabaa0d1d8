"""Set-up shared by the training and transcoder tests' conftests (plain functions; the fixtures that
call them live in each conftest)."""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from saelens_gemmascope.builtin import architectures
from saelens_gemmascope.contributions import Architecture


def register_builtin_architectures() -> None:
    """The built-in architectures through their own hookimpl, in case the host has not registered them."""
    found: list[Architecture] = []
    architectures.register_sae_architectures(found.append)
    for arch in found:
        if arch.name not in SAE_CLASS_REGISTRY:
            register_sae_class(arch.name, arch.sae_class, arch.config_class)
        if arch.training_class is not None and arch.name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(arch.name, arch.training_class, arch.training_config_class)  # type: ignore[arg-type]


def stdlib_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of real text (40 of Python's own standard-library modules), so activations have structure."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-m]*.py"))[:40]
    text = "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
