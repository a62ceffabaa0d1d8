"""The ``gemmascope`` command: thin sub-commands, each calling one public function.

Every failure a user can cause is reported the same way: ``gemmascope <command>: error: <message>``
and a hint line on stderr, exit status 2, before anything is written (``GEMMASCOPE_TRACEBACK=1``
shows the traceback instead). Plugins are loaded inside that handling, so a broken third-party
plugin is one line naming its distribution and entry point, not a traceback. An interrupt exits
with 128 + the signal number (130 for SIGINT, 143 for SIGTERM) and one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

#: Modules under saelens_gemmascope.cli that each define ``add_commands(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "plugins",
    "directory",
    "releases",
    "evaluate",
    "train",
    "finetune",
    "demo",
)


class UsageError(Exception):
    """A command line argparse refuses (unknown option, a value of the wrong type)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description or epilog on its own, and keeps the lines of an indented
    paragraph (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        filled = []
        for paragraph in text.split("\n\n"):
            if paragraph.startswith(" "):
                filled.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                filled.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(filled)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors reach :func:`main` (one line, exit 2) instead of exiting;
    its sub-commands' parsers are of this class too, with :class:`HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def examples(*lines: str) -> str:
    """An epilog listing example command lines (kept as written by :class:`HelpFormatter`)."""
    return "examples:\n\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``gemmascope`` parser. Building it imports no heavy module (torch, SAELens): each
    sub-command module imports what it runs inside its handler, so ``--help`` is answered as soon as
    the package itself is imported."""
    from saelens_gemmascope._version import __version__

    parser = CommandParser(
        prog="gemmascope",
        description="Gemma Scope SAEs in SAELens: load, train, evaluate. "
        "`gemmascope COMMAND --help` describes each command.",
        epilog=examples(
            "gemmascope demo --quick                      # end to end on CPU, no downloads",
            "gemmascope ls --model gemma-2-2b --site res --layer 12",
            "gemmascope info gemma-scope-2b-pt-res-canonical layer_12/width_16k/canonical",
            "gemmascope presets 'tiny-gemma-2/*'",
            "gemmascope ls gemmascope-demo/suite/release/tiny-gemma-2-stdlib-res   # a local export folder",
        ),
    )
    parser.add_argument("--version", action="version", version=f"saelens-gemmascope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"saelens_gemmascope.cli.{name}").add_commands(subparsers)
    return parser


#: Set to 1 to see the traceback of an error the command reports in one line.
TRACEBACK_VARIABLE = "GEMMASCOPE_TRACEBACK"
TRACEBACK_HINT = f"(set {TRACEBACK_VARIABLE}=1 to see the traceback)"

#: Errors that describe bad input (names, widths, sizes, files, plugins): one line, no traceback.
#: Every message of this package's errors says what was wrong and what to change.
USER_ERRORS: tuple[type[BaseException], ...] = (KeyError, ValueError, OSError, NotImplementedError)


def user_errors() -> tuple[type[BaseException], ...]:
    from saelens_gemmascope.host import PluginError
    from saelens_gemmascope.models.loading import ModelUnavailableError

    return (*USER_ERRORS, PluginError, ModelUnavailableError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a KeyError's message without the quotes repr adds)."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(line.strip() for line in message.splitlines() if line.strip()) or type(error).__name__


def close_matches(word: str, candidates: Iterable[str]) -> str:
    """`` Did you mean: a, b?`` for the candidates close to ``word`` (empty when none is)."""
    import difflib

    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def check_output_folder(out: str) -> None:
    """The output folder can be made (checked before a run, not when it writes its first file)."""
    path = Path(out)
    blocking = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"{out}: cannot be an output folder, {blocking} is a file")


def report_error(command: str | None, error: BaseException) -> int:
    """Print the two lines of a user error and return the exit status 2."""
    prefix = f"gemmascope {command}" if command else "gemmascope"
    print(f"{prefix}: error: {one_line(error)}", file=sys.stderr)
    print(TRACEBACK_HINT, file=sys.stderr)
    return 2


Handler = Callable[[argparse.Namespace], int]


def reporting_errors(command: str, handler: Handler) -> Handler:
    """``handler`` with user errors reported as :func:`report_error` does (for handlers that are
    also called directly, without :func:`main`)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except user_errors() as error:
            if os.environ.get(TRACEBACK_VARIABLE) == "1":
                raise
            return report_error(command, error)

    return run


def _interrupted(error: KeyboardInterrupt) -> int:
    """128 + the signal's number (a ``TrainingInterrupted`` carries ``signum``; Ctrl-C is SIGINT)."""
    signum = int(getattr(error, "signum", signal.SIGINT))
    print(str(error) or "interrupted", file=sys.stderr)
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(f"{error.prog}: error: {error.message}", file=sys.stderr)
        print(f"(see `{error.prog} --help`)", file=sys.stderr)
        return 2
    try:
        import warnings

        from saelens_gemmascope import PluginLoadWarning, load_plugins

        # Here, not at import: `--help` and `--version` (answered above) need neither the plugins nor
        # SAELens, and a broken plugin is the one-line error below, never a traceback (nor the
        # warning SAELens's import gives for it outside the command line: the error says it all).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginLoadWarning)
            load_plugins()
        return int(args.handler(args) or 0)
    except KeyboardInterrupt as error:
        return _interrupted(error)
    except user_errors() as error:
        if os.environ.get(TRACEBACK_VARIABLE) == "1":
            raise
        return report_error(args.command, error)
