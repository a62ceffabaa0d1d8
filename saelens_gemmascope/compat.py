"""The one door to SAELens's internals: every private SAELens name this package touches, and every
SAELens table it writes, goes through this module (tested in ``tests/layout/test_compat.py``, which
checks that each name and signature still exists in the installed SAELens).

Each entry says which SAELens file it reaches into (as of sae-lens 6.54) and the public seam that
would replace it; when SAELens grows that seam, the entry here is the only place to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# -- the converter tables ------------------------------------------------------------------------
# sae_lens/loading/pretrained_sae_loaders.py: NAMED_PRETRAINED_SAE_LOADERS and
# NAMED_PRETRAINED_SAE_CONFIG_GETTERS are module-level dicts with no registration function.
# Public seam that would replace it: a ``register_pretrained_sae_converter(name, loader, getter)``.


def registered_converter(name: str) -> Any | None:
    """SAELens's loader registered under ``name``, or None."""
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS

    return NAMED_PRETRAINED_SAE_LOADERS.get(name)


def register_converter(name: str, loader: Callable[..., Any], config_getter: Callable[..., Any]) -> None:
    """Put a named converter (loader and config getter) into SAELens's two tables."""
    from sae_lens.loading.pretrained_sae_loaders import (
        NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        NAMED_PRETRAINED_SAE_LOADERS,
    )

    NAMED_PRETRAINED_SAE_LOADERS[name] = loader  # type: ignore[assignment]
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS[name] = config_getter  # type: ignore[assignment]


def unregister_converter(name: str) -> None:
    """Take a named converter out of SAELens's two tables (no error if absent)."""
    from sae_lens.loading.pretrained_sae_loaders import (
        NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        NAMED_PRETRAINED_SAE_LOADERS,
    )

    NAMED_PRETRAINED_SAE_LOADERS.pop(name, None)
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS.pop(name, None)


# -- the pretrained-SAE directory ----------------------------------------------------------------
# sae_lens/loading/pretrained_saes_directory.py: get_pretrained_saes_directory() is public, but it
# returns an lru_cache'd dict parsed from SAELens's pretrained_saes.yaml, and SAELens has no way to
# add a release to it; writing into the cached dict is what adds one (SAE.from_pretrained reads it).
# Public seam that would replace it: a ``register_pretrained_release(lookup)``.


def pretrained_directory() -> dict[str, Any]:
    """SAELens's directory of releases (the cached dict itself: what ``SAE.from_pretrained`` reads)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def add_release(name: str, lookup: Any) -> None:
    """Add (or replace) one release in SAELens's directory."""
    pretrained_directory()[name] = lookup


def remove_release(name: str) -> None:
    """Remove one release from SAELens's directory (no error if absent)."""
    pretrained_directory().pop(name, None)
