"""``gemmascope releases``: the local releases recorded by earlier runs, and ``--remove NAME``."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "releases",
        help="list the local releases that load by name in any process (and forget one)",
        description="Local releases (from `gemmascope train`, the demo or register_local_release) are "
        "recorded in the cache directory and registered again by every `import saelens_gemmascope`. "
        "A folder that was moved or deleted is listed as such; --remove forgets a name (the folder is "
        "left as it is).",
    )
    parser.add_argument(
        "--remove", metavar="NAME", help="forget this release name (default: list the releases, forget none)"
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from saelens_gemmascope.directory.local import recorded_releases, remove_local_release
    from saelens_gemmascope.directory.local_registry import registry_path

    if args.remove is not None:
        folder = remove_local_release(args.remove)
        print(f"removed {args.remove} (its folder {folder} is left as it is)")
        return 0
    releases = recorded_releases()
    if args.json:
        rows = [
            {"name": r.name, "folder": str(r.folder), "saes": r.n_saes, "problem": r.problem}
            for r in releases
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not releases:
        print(f"no local releases recorded in {registry_path()}")
        return 0
    width = max(len(r.name) for r in releases)
    for r in releases:
        status = f"{r.n_saes} SAEs" if r.problem is None else f"NOT LOADABLE: {r.problem}"
        print(f"{r.name:{width}}  {r.folder}  {status}")
    broken = sum(r.problem is not None for r in releases)
    print(
        f"{len(releases)} local release(s) in {registry_path()}"
        + (f"; {broken} not loadable (forget with: gemmascope releases --remove NAME)" if broken else "")
    )
    return 0
