"""Where the package keeps what it builds on first use: converted SAEs, the embedded default model.

``$SAELENS_GEMMASCOPE_CACHE`` if set, else ``$XDG_CACHE_HOME/saelens_gemmascope``, else
``~/.cache/saelens_gemmascope``. Read at each call, so tests can point it at a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_HOME_ENV = "SAELENS_GEMMASCOPE_CACHE"
CACHE_SUBDIR = "saelens_gemmascope"


def user_cache_dir() -> Path:
    """The package's cache directory (not created here)."""
    explicit = os.environ.get(CACHE_HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / CACHE_SUBDIR
