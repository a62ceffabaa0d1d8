"""``gemmascope ls / fetch / info``: browse the Gemma Scope directory and make SAEs available offline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from itertools import groupby
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    ls = subparsers.add_parser("ls", help="list released Gemma Scope SAEs (canonical L0 marked with *)")
    ls.add_argument("--model", help="e.g. gemma-2-2b, gemma-2-9b-it")
    ls.add_argument("--site", choices=["res", "mlp", "att", "transcoder", "embedding"])
    ls.add_argument("--layer", type=int)
    ls.add_argument("--width", help="e.g. 16k, 131k, 1m")
    ls.add_argument("--release", help="one release, e.g. gemma-scope-2b-pt-res")
    ls.set_defaults(handler=_guarded(run_ls))

    fetch = subparsers.add_parser("fetch", help="download (or copy from a mirror) and convert one SAE")
    fetch.add_argument("release")
    fetch.add_argument("sae_id")
    fetch.add_argument("--mirror", help="local mirror root: <root>/<repo_id>/<folder>/params.npz")
    fetch.add_argument("--force-download", action="store_true")
    fetch.set_defaults(handler=_guarded(run_fetch))

    info = subparsers.add_parser("info", help="hook, sizes, L0, Neuronpedia id and load source of one SAE")
    info.add_argument("release")
    info.add_argument("sae_id")
    info.add_argument("--mirror", help="local mirror root to consider")
    info.set_defaults(handler=_guarded(run_info))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """User mistakes (unknown names, missing files) print one error line and a hint, not a traceback."""
    from saelens_gemmascope.cli import reporting_errors

    return reporting_errors(command.__name__.removeprefix("run_"), command)


def _check_ls_filters(args: argparse.Namespace) -> None:
    """A filter value no released SAE has is a mistake (exit 2), not an empty listing."""
    from saelens_gemmascope.cli import close_matches
    from saelens_gemmascope.directory import load_manifest

    variants = list(load_manifest().variants())
    for option, value, known in (
        ("--model", args.model, {v.model for v in variants}),
        ("--width", args.width, {v.width for v in variants}),
        ("--layer", args.layer, {v.layer for v in variants} - {None}),
    ):
        if value is not None and value not in known:
            shown = sorted(known, key=lambda k: (len(str(k)), str(k)))
            raise ValueError(
                f"{option} {value}: no released SAE has it.{close_matches(str(value), map(str, known))} "
                f"Known: {', '.join(map(str, shown))}"
            )


def run_ls(args: argparse.Namespace) -> int:
    from saelens_gemmascope.directory import list_saes

    _check_ls_filters(args)
    variants = list_saes(
        model=args.model, site=args.site, layer=args.layer, width=args.width, release=args.release
    )
    if not variants:
        print("no SAE matches these filters", file=sys.stderr)
        return 1
    for (release, layer, width), group in groupby(variants, key=lambda v: (v.release, v.layer, v.width)):
        l0s = " ".join(f"*{v.l0}" if v.canonical else str(v.l0) for v in group)
        where = "embedding" if layer is None else f"layer_{layer}"
        print(f"{release:32} {where:10} width_{width:5} L0: {l0s}")
    print(f"{len(variants)} SAEs (* = canonical, L0 closest to 100)")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from saelens_gemmascope.directory import fetch_sae

    result = fetch_sae(args.release, args.sae_id, mirror=args.mirror, force_download=args.force_download)
    print(f"source:    {result.source} {result.npz_path}")
    print(f"converted: {result.converted_path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from saelens_gemmascope.directory import sae_info

    info = sae_info(args.release, args.sae_id, mirror=args.mirror)
    v = info.variant
    rows = [
        ("release", info.release),
        ("sae id", info.sae_id),
        ("repo", v.repo_id),
        ("path", v.folder),
        ("model", v.model),
        ("site", v.site),
        (
            "hook",
            info.hook_name if info.hook_name_out is None else f"{info.hook_name} -> {info.hook_name_out}",
        ),
        ("d_in", str(info.d_in)),
        ("d_sae", str(info.d_sae)),
        ("average L0", str(v.l0)),
        ("canonical", "yes" if v.canonical else "no"),
        ("training tokens", f"{v.training_tokens / 1e9:g}B"),
        ("neuronpedia", info.neuronpedia_id or "-"),
        ("loads from", info.load_source),
    ]
    for label, value in rows:
        print(f"{label + ':':17}{value}")
    return 0
