"""What a long run shows: its losses, and wandb offline when it must (the progress display itself:
tests/test_progress_and_quiet.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from saelens_gemmascope.progress import step_losses
from saelens_gemmascope.runners import wandb_logging
from saelens_gemmascope.runners.wandb_logging import choose_wandb_mode, offline_sync_hint


def test_step_losses_reads_tensors_and_callables() -> None:
    output = SimpleNamespace(
        loss=torch.tensor(1.5), losses={"mse_loss": torch.tensor(1.0), "l0_loss": lambda: 0.5}
    )
    assert step_losses(output) == {"mse_loss": 1.0, "l0_loss": 0.5, "loss": 1.5}


@pytest.fixture
def no_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "missing-netrc"))
    return monkeypatch


def test_wandb_goes_offline_without_an_api_key(no_wandb_env: pytest.MonkeyPatch) -> None:
    no_wandb_env.setattr(
        wandb_logging, "wandb_reachable", lambda timeout=2.0: pytest.fail("no key: no probe")
    )
    mode, reason = choose_wandb_mode()
    assert mode == "offline" and reason is not None and "API key" in reason


def test_wandb_goes_offline_when_unreachable_and_online_when_reachable(
    no_wandb_env: pytest.MonkeyPatch,
) -> None:
    no_wandb_env.setenv("WANDB_API_KEY", "0" * 40)
    no_wandb_env.setattr(wandb_logging, "wandb_reachable", lambda timeout=2.0: False)
    assert choose_wandb_mode() == ("offline", "api.wandb.ai cannot be reached")
    no_wandb_env.setattr(wandb_logging, "wandb_reachable", lambda timeout=2.0: True)
    assert choose_wandb_mode() == ("online", None)


def test_the_users_wandb_mode_wins(no_wandb_env: pytest.MonkeyPatch) -> None:
    no_wandb_env.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() == ("disabled", None)


def test_a_netrc_entry_counts_as_an_api_key(no_wandb_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc_file.chmod(0o600)
    no_wandb_env.setenv("NETRC", str(netrc_file))
    assert wandb_logging.has_wandb_api_key()


def test_offline_runs_get_the_sync_command(tmp_path: Path) -> None:
    run_dir = tmp_path / "wandb" / "offline-run-20261121_120000-group0_pass0"
    offline = SimpleNamespace(settings=SimpleNamespace(_offline=True), dir=str(run_dir / "files"))
    assert (
        offline_sync_hint(offline)
        == f"wandb logged offline to {run_dir}; upload it with: wandb sync {run_dir}"
    )
    online = SimpleNamespace(settings=SimpleNamespace(_offline=False), dir=str(run_dir / "files"))
    assert offline_sync_hint(online) is None and offline_sync_hint(None) is None
