"""Help texts, local export folders in ``ls`` / ``info``, and loads that fail fast without the hub (issue 19).

The offline tests never reach the network: the hub endpoint is a closed local port (refused at once),
a socket that accepts and hangs up, or a socket that never answers; huggingface_hub's own offline
mode is the other state. Each asserts the elapsed time and that the message matches the state.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig

from saelens_gemmascope.cli import build_parser, main
from saelens_gemmascope.cli.train import DEFAULT_GRID_TEXT
from saelens_gemmascope.directory import load_sae
from saelens_gemmascope.directory.errors import MIRROR_ENV_VAR, SaeFileUnavailableError
from saelens_gemmascope.directory.layout import export_gemmascope_sae
from saelens_gemmascope.directory.local import local_release_name
from saelens_gemmascope.directory.sources import hub_unreachable_reason
from saelens_gemmascope.suite.calibration import DEFAULT_GRID

RELEASE, SAE_ID = "gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"
#: Well under the 30 s that five retries with back-off took.
FAST_S = 5.0


# -- help texts ------------------------------------------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _takes_a_value(action: argparse.Action) -> bool:
    if action.option_strings:
        return action.nargs != 0  # not a flag (store_true, version, help)
    return action.nargs in ("?", "*")  # a positional that may be left out


def _expanded_help(action: argparse.Action) -> str:
    """The help as printed (``%(default)s`` and the like filled in)."""
    params = {**vars(action), "prog": "gemmascope"}
    return (action.help or "") % params


def test_every_option_of_every_command_has_help_and_says_its_default() -> None:
    commands = _commands()
    assert {
        "ls",
        "info",
        "fetch",
        "eval",
        "train",
        "finetune-kl",
        "presets",
        "demo",
        "plugins",
        "releases",
    } <= set(commands)
    missing_help, missing_default = [], []
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {action.option_strings or action.metavar or action.dest}"
            text = _expanded_help(action).strip()
            if not text or text == argparse.SUPPRESS:
                missing_help.append(label)
            elif _takes_a_value(action) and "default" not in text:
                missing_default.append(label)
    assert missing_help == [] and missing_default == []


def test_every_command_has_a_description() -> None:
    for name, parser in _commands().items():
        assert parser.description, name


def test_train_help_describes_the_command_points_at_presets_and_gives_examples() -> None:
    text = _commands()["train"].format_help()
    flat = " ".join(text.split())
    assert "Retrain presets (list them with `gemmascope presets`) with the Gemma Scope recipe" in flat
    assert "PRESET-OR-PATTERN" in text and "(list them with: gemmascope presets)" in flat
    for default in (
        "(default: stdlib)",
        "(default: cpu)",
        "(default: float32)",
        "(default: gemmascope-suite)",
    ):
        assert default in flat, default
    assert "examples:" in text
    # examples keep their lines (not re-wrapped), one command per line
    assert "\n  gemmascope train 'tiny-gemma-2/res/layer_1/*' --dry-run   # the plan only\n" in text


def test_the_calibration_grid_default_in_the_help_is_the_real_one() -> None:
    assert tuple(float(x) for x in DEFAULT_GRID_TEXT.split(",")) == DEFAULT_GRID


def test_eval_help_says_release_or_path() -> None:
    text = _commands()["eval"].format_help()
    assert "RELEASE-OR-PATH" in text.split("\n")[0] + text  # usage and arguments
    assert "SOURCE" not in text
    assert "examples:" in text


def test_ls_and_info_take_a_release_or_path_and_the_mirror_help_names_its_variable() -> None:
    commands = _commands()
    for name in ("ls", "info"):
        assert "RELEASE-OR-PATH" in commands[name].format_usage()
    for name in ("fetch", "info"):
        assert f"${MIRROR_ENV_VAR}" in " ".join(commands[name].format_help().split())


def test_building_the_parser_imports_no_heavy_module() -> None:
    """`--help` costs no torch or SAELens: the package's import is lazy, and the sub-command modules
    import what they run inside their handlers."""
    script = textwrap.dedent(
        """
        import sys
        from saelens_gemmascope.cli import build_parser
        build_parser().format_help()
        print(sorted(m for m in ("torch", "sae_lens", "transformer_lens", "datasets") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# -- ls / info on a local export folder ------------------------------------------------------------


@pytest.fixture
def export_folder(tmp_path: Path) -> Path:
    root = tmp_path / "my-export"
    for d_sae, l0 in ((96, 10.0), (96, 20.4), (128, 12.0)):
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=d_sae))
        sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = "blocks.1.hook_resid_post", "tiny-gemma-2"
        export_gemmascope_sae(sae, root, average_l0=l0)
    return root


def test_ls_lists_a_local_export_folder_and_filters_it(
    export_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ls", str(export_folder)]) == 0
    out = capsys.readouterr().out
    for sae_id, l0 in (
        ("layer_1/width_96/average_l0_10", "10.0"),
        ("layer_1/width_96/average_l0_20", "20.4"),
        ("layer_1/width_128/average_l0_12", "12.0"),
    ):
        assert any(line.startswith(sae_id) and line.endswith(f"L0: {l0}") for line in out.splitlines()), (
            sae_id
        )
    name = local_release_name(export_folder)
    assert f"3 SAEs of local release {name} ({export_folder.resolve()})" in out

    assert main(["ls", name, "--width", "128"]) == 0  # by its name too, filtered
    out = capsys.readouterr().out
    assert "average_l0_12" in out and "width_96" not in out

    assert main(["ls", str(export_folder), "--width", "12"]) == 2
    assert f"--width 12: no SAE of {name} has it. Did you mean: 128?" in capsys.readouterr().err


def test_info_describes_an_sae_of_a_local_export_folder(
    export_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sae_id = "layer_1/width_96/average_l0_20"
    assert main(["info", str(export_folder), sae_id]) == 0
    rows = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert rows["release"].strip() == f"{local_release_name(export_folder)} (local)"
    assert rows["hook"].strip() == "blocks.1.hook_resid_post"
    assert rows["d_sae"].strip() == "96" and rows["average L0"].strip().startswith("20.4")
    assert rows["loads from"].strip() == str(export_folder.resolve() / sae_id / "params.npz")

    assert main(["info", str(export_folder), "layer_1/width_96/average_l0_2"]) == 2
    assert "Did you mean: layer_1/width_96/average_l0_20" in capsys.readouterr().err


def test_ls_refuses_a_folder_that_is_not_an_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ls", str(tmp_path)]) == 2
    assert "neither a SAELens save folder nor a Gemma Scope export folder" in capsys.readouterr().err
    assert main(["ls", "./no-such-export"]) == 2
    assert "./no-such-export: no such folder" in capsys.readouterr().err


# -- failing fast without the hub ------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Hugging Face cache and conversion cache, and no mirror."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("SAELENS_GEMMASCOPE_CACHE", str(tmp_path / "conversions"))
    monkeypatch.delenv(MIRROR_ENV_VAR, raising=False)


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch, no_local_copy: None) -> str:
    """Online mode, HF_HUB_OFFLINE not set, the hub endpoint a closed local port."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    return endpoint


@pytest.fixture
def offline_mode(monkeypatch: pytest.MonkeyPatch, no_local_copy: None) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def _fetch_cli() -> str:
    """``gemmascope fetch`` in this process: its stderr (exit status 2 asserted)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["fetch", RELEASE, SAE_ID]) == 2
    return err.getvalue()


def _load_sae() -> str:
    with pytest.raises(SaeFileUnavailableError) as err:
        load_sae(RELEASE, SAE_ID)
    return str(err.value)


def _from_pretrained() -> str:
    with pytest.raises(SaeFileUnavailableError) as err:
        SAE.from_pretrained(RELEASE, SAE_ID)
    return str(err.value)


ENTRY_POINTS: dict[str, Callable[[], str]] = {
    "gemmascope fetch": _fetch_cli,
    "load_sae": _load_sae,
    "SAE.from_pretrained": _from_pretrained,
}


def _timed(call: Callable[[], str]) -> tuple[str, float]:
    start = time.perf_counter()
    message = call()
    return message, time.perf_counter() - start


def _names_every_way_out(message: str) -> None:
    flat = " ".join(message.split())
    assert "--mirror" in flat and MIRROR_ENV_VAR in flat
    assert "Hugging Face cache" in flat and str(hf_constants.HF_HUB_CACHE) in flat
    assert f"{RELEASE.replace('gemma-scope', 'google/gemma-scope')}/{SAE_ID}/params.npz" in flat


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_an_unreachable_hub_fails_at_once_and_says_so(unreachable_hub: str, entry: str) -> None:
    message, elapsed = _timed(ENTRY_POINTS[entry])
    assert elapsed < FAST_S
    assert f"the Hugging Face hub at {unreachable_hub} is unreachable" in message
    assert "HF_HUB_OFFLINE is not set" in message
    assert "unset HF_HUB_OFFLINE" not in message  # nothing to unset
    _names_every_way_out(message)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_offline_mode_fails_at_once_and_says_how_to_leave_it(offline_mode: None, entry: str) -> None:
    message, elapsed = _timed(ENTRY_POINTS[entry])
    assert elapsed < FAST_S
    assert "HF_HUB_OFFLINE=1 is set (huggingface_hub's offline mode)" in message
    assert "unset HF_HUB_OFFLINE" in message
    assert "unreachable" not in message
    _names_every_way_out(message)


@pytest.fixture
def hanging_up_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A hub endpoint that accepts connections and closes them at once; yields the accept count."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # the tests' conftest turns it on
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield accepted
    server.close()


def test_the_probe_is_one_request_without_retries(hanging_up_hub: list[int]) -> None:
    reason = hub_unreachable_reason()
    assert reason is not None and "is unreachable" in reason
    time.sleep(0.2)  # a retry, if any, would connect again meanwhile
    assert len(hanging_up_hub) == 1


def test_a_hub_that_never_answers_is_given_up_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # listens (the kernel accepts) but never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        reason = hub_unreachable_reason(timeout_s=0.5)
        elapsed = time.perf_counter() - start
    assert reason is not None and ("did not answer within 0.5 s" in reason or "Timeout" in reason)
    assert elapsed < 2.0


@pytest.mark.slow  # a fresh process imports the package (~8 s); the fetch itself is timed
def test_gemmascope_fetch_with_hf_endpoint_unreachable_fails_fast_end_to_end(tmp_path: Path) -> None:
    """The real command in a fresh process: HF_ENDPOINT a closed port, HF_HUB_OFFLINE not set. The
    time is measured in the child, after the imports (the package is lazy: SAELens, the plugins and the
    directory API load on first use), which are not what this is about."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", MIRROR_ENV_VAR)
    }
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
        HF_HUB_CACHE=str(tmp_path / "hf-hub"),
        SAELENS_GEMMASCOPE_CACHE=str(tmp_path / "conversions"),
    )
    script = textwrap.dedent(
        f"""
        import sys, time
        import saelens_gemmascope.directory
        from saelens_gemmascope import load_plugins
        from saelens_gemmascope.cli import main
        load_plugins()
        start = time.perf_counter()
        status = main(["fetch", {RELEASE!r}, {SAE_ID!r}])
        print(f"status={{status}} elapsed={{time.perf_counter() - start:.2f}}")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    status, elapsed = (field.split("=")[1] for field in done.stdout.split())
    assert status == "2" and float(elapsed) < FAST_S
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("gemmascope fetch: error: Cannot get") and "is unreachable" in lines[0]
    assert "unset HF_HUB_OFFLINE" not in lines[0] and "--mirror" in lines[0]
