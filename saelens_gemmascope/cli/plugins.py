"""``gemmascope plugins``: what is loaded and what each plugin registered."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list loaded plugins and what they registered",
        description="Lists the plugins (the built-in ones and those installed under the "
        "saelens_gemmascope entry-point group): version, source, the hooks each implements and how many "
        "architectures, models, releases and presets each registered.",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(handler=run)


def plugin_rows() -> list[dict[str, Any]]:
    """One row per loaded plugin: identity, implemented hooks, and counts of what it registered."""
    # The package's load_plugins: it imports SAELens (and so registers with it) before the host loads.
    from saelens_gemmascope import load_plugins

    found = load_plugins()
    rows = []
    for name, info in found.plugins.items():
        rows.append(
            {
                "name": name,
                "source": info.source,
                "distribution": info.distribution,
                "version": info.version,
                "entry_point": info.entry_point,
                "hooks": sorted(set(found.hooks.get(name, []))),
                **found.counts(name),
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = plugin_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("plugin", "version", "source", "arch", "models", "releases", "presets", "hooks")
    table = [header] + [
        (
            row["name"],
            row["version"] or "-",
            row["distribution"] or row["source"],
            str(row["architectures"]),
            str(row["models"]),
            str(row["releases"]),
            str(row["presets"]),
            ", ".join(h.removeprefix("register_") for h in row["hooks"]) or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0
