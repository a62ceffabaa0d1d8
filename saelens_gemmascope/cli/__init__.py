"""The ``gemmascope`` command: thin sub-commands, each calling one public function."""

from __future__ import annotations

import argparse
import importlib
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
