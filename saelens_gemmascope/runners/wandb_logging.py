"""Open and close the wandb run of a training runner, offline when wandb cannot be reached.

SAELens's runners call ``wandb.init`` online, which without an API key prompts for one (or fails
in a batch job) and without network hangs on retries. A long run should log either way, so the
run goes offline when there is no key or ``api.wandb.ai`` does not answer, and the end of the run
prints the ``wandb sync`` command that uploads it later. ``WANDB_MODE`` set by the user wins.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
import sys
from pathlib import Path
from typing import Any

WANDB_HOST = "api.wandb.ai"

logger = logging.getLogger(__name__)


def has_wandb_api_key() -> bool:
    """True when wandb would find an API key (``WANDB_API_KEY`` or a netrc entry: ``$NETRC`` or ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = 2.0) -> bool:
    """Whether wandb's API host accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((WANDB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def choose_wandb_mode() -> tuple[str, str | None]:
    """(mode, reason): the user's ``WANDB_MODE``, else online, else offline and why."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], None
    if not has_wandb_api_key():
        return "offline", "no wandb API key (WANDB_API_KEY or `wandb login`)"
    if not wandb_reachable():
        return "offline", f"{WANDB_HOST} cannot be reached"
    return "online", None


def start_wandb(cfg: Any) -> Any:
    """Open the run SAELens's runners open at the start of ``run()``, if the config logs to wandb."""
    if not cfg.logger.log_to_wandb:
        return None
    import wandb

    mode, reason = choose_wandb_mode()
    if reason is not None:
        logger.warning("wandb logs offline: %s", reason)
    return wandb.init(
        project=cfg.logger.wandb_project,
        entity=cfg.logger.wandb_entity,
        config=cfg.to_dict(),
        name=cfg.logger.run_name,
        id=cfg.logger.wandb_id,
        mode=mode,  # type: ignore[arg-type]
        # A resumed training run continues its wandb run (same id) instead of failing on it.
        resume="allow" if cfg.logger.wandb_id else None,
    )


def offline_sync_hint(run: Any) -> str | None:
    """The ``wandb sync`` command for an offline run, or None for an online one."""
    if run is None or not getattr(run.settings, "_offline", False):
        return None
    run_dir = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>/files -> the run folder
    return f"wandb logged offline to {run_dir}; upload it with: wandb sync {run_dir}"


def finish_wandb(cfg: Any, run: Any) -> None:
    """Close the run; for an offline run, log and print how to upload it."""
    if not cfg.logger.log_to_wandb:
        return
    import wandb

    hint = offline_sync_hint(run)
    wandb.finish()
    if hint is not None:
        logger.info(hint)
        print(hint, file=sys.stderr)  # after wandb's own output, so it is the last line seen
