"""The ``gemmascope`` command: thin sub-commands, each calling one public function."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: Modules under saelens_gemmascope.cli that each define ``add_commands(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = ("plugins", "directory", "evaluate", "train", "demo")


def build_parser() -> argparse.ArgumentParser:
    from saelens_gemmascope import __version__

    parser = argparse.ArgumentParser(
        prog="gemmascope", description="Gemma Scope SAEs in SAELens: load, train, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"saelens-gemmascope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"saelens_gemmascope.cli.{name}").add_commands(subparsers)
    return parser


#: Set to 1 to see the traceback of an error the command reports in one line.
TRACEBACK_VARIABLE = "GEMMASCOPE_TRACEBACK"

#: Errors that describe bad input (names, widths, sizes, files, plugins): one line, no traceback.
#: Every message of this package's errors says what was wrong and what to change.
USER_ERRORS: tuple[type[BaseException], ...] = (KeyError, ValueError, OSError, NotImplementedError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from saelens_gemmascope.host import PluginError
    from saelens_gemmascope.models.loading import ModelUnavailableError

    return (*USER_ERRORS, PluginError, ModelUnavailableError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as error:
        if os.environ.get(TRACEBACK_VARIABLE) == "1":
            raise
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        print(f"gemmascope {args.command}: error: {message}", file=sys.stderr)
        print(f"(set {TRACEBACK_VARIABLE}=1 to see the traceback)", file=sys.stderr)
        return 2
