"""``gemmascope ls / fetch / info``: browse the Gemma Scope directory and make SAEs available offline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from itertools import groupby
from typing import Any

#: The sites ``ls --site`` filters on: the site names of the manifest, the model specs and ``info``.
LS_SITES: tuple[str, ...] = ("res", "mlp", "att", "transcoder", "embedding")

_RELEASE_OR_PATH_HELP = (
    "a Gemma Scope release (e.g. gemma-scope-2b-pt-res), a local release name (see `gemmascope releases`) "
    "or a local export folder (one with release.json, as `gemmascope train` and the demo write)"
)


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    from saelens_gemmascope.cli import examples

    _add_ls(subparsers, examples)
    _add_fetch(subparsers, examples)
    _add_info(subparsers, examples)


def _add_ls(subparsers: argparse._SubParsersAction[Any], examples: Callable[..., str]) -> None:
    ls = subparsers.add_parser(
        "ls",
        help="list released Gemma Scope SAEs (canonical L0 marked with *), or a local release's SAEs",
        description="Lists SAEs one line per (release, layer, width) with the average L0 of each "
        "sparsity variant; * marks the canonical one (L0 closest to 100). Filters combine. Given a "
        "RELEASE-OR-PATH, lists that release only: a released suite, a local release name or a local "
        "export folder (release.json).",
        epilog=examples(
            "gemmascope ls --model gemma-2-2b --site res --layer 12",
            "gemmascope ls --model gemma-3-1b-pt --site transcoder --layer 13",
            "gemmascope ls gemma-scope-2b-pt-att --width 16k",
            "gemmascope ls gemmascope-demo/suite/release/tiny-gemma-2-stdlib-res",
        ),
    )
    ls.add_argument(
        "source",
        nargs="?",
        metavar="RELEASE-OR-PATH",
        help=f"{_RELEASE_OR_PATH_HELP} (default: all releases)",
    )
    ls.add_argument(
        "--model",
        help="only this model, e.g. gemma-2-2b, gemma-2-9b-it, gemma-3-1b-pt (google/ may be left out; "
        "default: every model)",
    )
    ls.add_argument("--site", choices=LS_SITES, help="only this site (default: every site)")
    ls.add_argument("--layer", type=int, help="only this layer (default: every layer)")
    ls.add_argument("--width", help="only this width, e.g. 16k, 131k, 1m (default: every width)")
    ls.add_argument(
        "--release", help="only this release, e.g. gemma-scope-2b-pt-res, like RELEASE-OR-PATH (default: all)"
    )
    ls.set_defaults(handler=_guarded(run_ls))


def _add_fetch(subparsers: argparse._SubParsersAction[Any], examples: Callable[..., str]) -> None:
    fetch = subparsers.add_parser(
        "fetch",
        help="download (or copy from a mirror) and convert one SAE, so that it loads offline",
        description="Gets one SAE's params.npz from the mirror, the Hugging Face cache or the hub (in that "
        "order), checks it against the manifest and keeps its conversion for offline loads. When the hub "
        "is needed but offline (HF_HUB_OFFLINE) or unreachable, fails at once, saying which.",
        epilog=examples(
            "gemmascope fetch gemma-scope-2b-pt-res layer_12/width_16k/average_l0_82",
            "gemmascope fetch gemma-scope-2b-pt-res layer_12/width_16k/average_l0_82 --mirror /data/gemma-scope",
        ),
    )
    fetch.add_argument("release", metavar="RELEASE", help="a Gemma Scope release, e.g. gemma-scope-2b-pt-res")
    fetch.add_argument("sae_id", metavar="SAE-ID", help="an SAE of it, e.g. layer_12/width_16k/average_l0_82")
    fetch.add_argument("--mirror", metavar="ROOT", help=_MIRROR_HELP)
    fetch.add_argument(
        "--force-download",
        action="store_true",
        help="download from the hub again, ignoring the mirror, the HF cache and the conversion cache",
    )
    fetch.set_defaults(handler=_guarded(run_fetch))


def _add_info(subparsers: argparse._SubParsersAction[Any], examples: Callable[..., str]) -> None:
    info = subparsers.add_parser(
        "info",
        help="hook, sizes, L0, Neuronpedia id and load source of one SAE (released or local)",
        description="Describes one SAE without loading or downloading it: hook, d_in, d_sae, hub path, "
        "L0, whether it is canonical, training tokens, Neuronpedia id and where a load would read from. "
        "RELEASE-OR-PATH may be a local export folder (release.json) or a local release name.",
        epilog=examples(
            "gemmascope info gemma-scope-2b-pt-res-canonical layer_12/width_16k/canonical",
            "gemmascope info gemma-scope-2-1b-pt-res layer_13_width_16k_l0_small",
            "gemmascope info gemmascope-demo/suite/release/tiny-gemma-2-stdlib-res "
            "layer_1/width_512/average_l0_24",
        ),
    )
    info.add_argument("release", metavar="RELEASE-OR-PATH", help=_RELEASE_OR_PATH_HELP)
    info.add_argument(
        "sae_id", metavar="SAE-ID", help="an SAE of it (list them with: gemmascope ls RELEASE-OR-PATH)"
    )
    info.add_argument("--mirror", metavar="ROOT", help=_MIRROR_HELP)
    info.set_defaults(handler=_guarded(run_info))


# The variable is directory.errors.MIRROR_ENV_VAR, spelled out: importing that package imports torch,
# and building the parser imports nothing heavy (tests/test_cli_help_offline.py checks they agree).
_MIRROR_HELP = (
    "local mirror root, laid out like the hub: ROOT/<repo_id>/<folder>/params.npz "
    "(default: $SAELENS_GEMMASCOPE_MIRROR, else none)"
)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """User mistakes (unknown names, missing files) print one error line and a hint, not a traceback."""
    from saelens_gemmascope.cli import reporting_errors

    return reporting_errors(command.__name__.removeprefix("run_"), command)


def _check_ls_filters(args: argparse.Namespace, known: dict[str, set[Any]], where: str) -> None:
    """A filter value no SAE ``where`` has is a mistake (exit 2), not an empty listing."""
    from saelens_gemmascope.cli import close_matches

    if where == "released SAE":
        _check_model_filter(args.model, known["--model"])
    checked = [("--width", args.width), ("--layer", args.layer)]
    if where != "released SAE":
        checked.insert(0, ("--model", args.model))
    for option, value in checked:
        values = known[option] - {None}
        if value is not None and value not in values:
            shown = sorted(values, key=lambda k: (len(str(k)), str(k)))
            raise ValueError(
                f"{option} {value}: no {where} has it.{close_matches(str(value), map(str, values))} "
                f"Known: {', '.join(map(str, shown))}"
            )


def local_release(source: str | None) -> str | None:
    """The local release ``source`` names, or None when it names something else (a Gemma Scope
    release). An export folder (release.json) is registered the way ``gemmascope eval`` does it."""
    from pathlib import Path

    from saelens_gemmascope.directory.api import local_release_saes
    from saelens_gemmascope.evaluation.sources import expand_source

    if source is None:
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        specs = expand_source(path, all_ids=True)  # one error per kind of wrong folder, as in eval
        if not all(isinstance(spec, tuple) for spec in specs):
            raise ValueError(
                f"{source}: SAELens save folder(s), not an export folder (no release.json); "
                "evaluate them with: gemmascope eval PATH"
            )
        return str(specs[0][0])
    if source.startswith(("/", "./", "../", "~")):
        raise ValueError(f"{source}: no such folder (expected an export folder with release.json)")
    return source if local_release_saes(source) is not None else None


def _release_argument(args: argparse.Namespace) -> str | None:
    if args.source is not None and args.release is not None and args.source != args.release:
        raise ValueError(f"RELEASE-OR-PATH {args.source!r} and --release {args.release!r}: give one of them")
    return args.source if args.source is not None else args.release


def run_ls(args: argparse.Namespace) -> int:
    from saelens_gemmascope.directory.api import all_released_saes, list_saes

    source = _release_argument(args)
    local = local_release(source)
    if local is not None:
        return _ls_local(args, local)
    variants = all_released_saes()
    known = {
        "--model": {v.model for v in variants},
        "--width": {v.width for v in variants},
        "--layer": {v.layer for v in variants},
    }
    _check_ls_filters(args, known, "released SAE")
    variants = list_saes(model=args.model, site=args.site, layer=args.layer, width=args.width, release=source)
    if not variants:
        print("no SAE matches these filters", file=sys.stderr)
        return 1
    for (release, layer, width), group in groupby(variants, key=lambda v: (v.release, v.layer, v.width)):
        l0s = " ".join(_ls_token(v) for v in group)
        where = "embedding" if layer is None else f"layer_{layer}"
        print(f"{release:36} {where:10} width_{width:5} L0: {l0s}")
    print(f"{len(variants)} SAEs{_ls_legend(variants)}")
    return 0


def _ls_token(variant: Any) -> str:
    """One SAE in an ``ls`` line: Gemma Scope's average L0 (* canonical), Gemma Scope 2's L0 label,
    its variant (affine, second seed) and target L0."""
    from saelens_gemmascope.directory.scope2_manifest import Scope2Sae

    if isinstance(variant, Scope2Sae):
        return f"{variant.variant}={variant.l0}"
    return f"*{variant.l0}" if variant.canonical else str(variant.l0)


def _ls_legend(variants: list[Any]) -> str:
    """What the L0 columns mean for the suites shown, and the Gemma Scope 2 kinds not served."""
    from saelens_gemmascope.directory.scope2_manifest import Scope2Sae, load_scope2_manifest

    scope2 = any(isinstance(v, Scope2Sae) for v in variants)
    legend = []
    if not all(isinstance(v, Scope2Sae) for v in variants):
        legend.append("* = canonical, L0 closest to 100")
    if scope2:
        legend.append("Gemma Scope 2: label[+affine|+seed1]=target L0")
    text = f" ({'; '.join(legend)})"
    if scope2:
        for kind, reason in load_scope2_manifest().not_served.items():
            text += f"\nnot served: Gemma Scope 2 {kind}s. {reason}"
    return text


def _check_model_filter(model: str | None, known: set[str]) -> None:
    """``--model`` may omit ``google/`` or be a registered alias; a name no SAE has is exit 2."""
    from saelens_gemmascope.cli import close_matches
    from saelens_gemmascope.directory.api import model_names

    if model is None or model_names(model) & known:
        return
    shown = sorted(known | {name.removeprefix("google/") for name in known})
    raise ValueError(
        f"--model {model}: no released SAE has it.{close_matches(model, shown)} Known: {', '.join(shown)}"
    )


def _ls_local(args: argparse.Namespace, release: str) -> int:
    """One line per SAE of a local release: its id (what ``info`` and ``SAE.from_pretrained`` take),
    site, width and the L0 measured at export."""
    from saelens_gemmascope.directory.api import local_release_saes

    saes = local_release_saes(release) or []
    known = {
        "--model": {s.model for s in saes},
        "--width": {s.width for s in saes},
        "--layer": {s.layer for s in saes},
    }
    _check_ls_filters(args, known, f"SAE of {release}")
    shown = [
        s
        for s in saes
        if all(
            wanted is None or wanted == value
            for wanted, value in (
                (args.model, s.model),
                (args.site, s.site),
                (args.layer, s.layer),
                (args.width, s.width),
            )
        )
    ]
    if not shown:
        print("no SAE matches these filters", file=sys.stderr)
        return 1
    width = max(len(s.sae_id) for s in shown)
    for s in shown:
        print(f"{s.sae_id:{width}}  {s.site or '-':10} d_sae {s.d_sae:<7} L0: {s.average_l0:.1f}")
    print(f"{len(shown)} SAEs of local release {release} ({saes[0].root})")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from saelens_gemmascope.directory import fetch_sae

    result = fetch_sae(args.release, args.sae_id, mirror=args.mirror, force_download=args.force_download)
    print(f"source:    {result.source} {result.npz_path}")
    print(f"converted: {result.converted_path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from saelens_gemmascope.directory import sae_info

    local = local_release(args.release)
    if local is not None:
        return _info_local(local, args.sae_id)
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
        *_suite_rows(v),
        ("neuronpedia", info.neuronpedia_id or "-"),
        ("loads from", info.load_source),
    ]
    _print_rows(rows)
    return 0


def _suite_rows(variant: Any) -> list[tuple[str, str]]:
    """The rows that differ between the suites: Gemma Scope's measured L0, canonical choice and
    training tokens; Gemma Scope 2's L0 label and target, affine skip connection and HF hook points."""
    from saelens_gemmascope.directory.scope2_manifest import Scope2Sae

    if isinstance(variant, Scope2Sae):
        rows = [
            ("target L0", f"{variant.l0} ({variant.l0_label})"),
            ("architecture", _scope2_architecture(variant)),
            ("hf hook", variant.hf_hook_in + (f" -> {variant.hf_hook_out}" if variant.hf_hook_out else "")),
        ]
        if variant.seed is not None:
            rows.append(("seed", str(variant.seed)))
        return rows
    return [
        ("average L0", str(variant.l0)),
        ("canonical", "yes" if variant.canonical else "no"),
        ("training tokens", f"{variant.training_tokens / 1e9:g}B"),
    ]


def _scope2_architecture(variant: Any) -> str:
    if variant.site != "transcoder":
        return "jumprelu"
    return "jumprelu_skip_transcoder (affine skip)" if variant.affine else "jumprelu_transcoder"


def _info_local(release: str, sae_id: str) -> int:
    from saelens_gemmascope.cli import close_matches
    from saelens_gemmascope.directory.api import local_release_saes

    saes = {s.sae_id: s for s in local_release_saes(release) or []}
    if sae_id not in saes:
        raise ValueError(
            f"SAE id {sae_id!r} is not in local release {release!r}.{close_matches(sae_id, saes)} "
            f"List it with: gemmascope ls {release}"
        )
    s = saes[sae_id]
    params = s.folder / "params.npz"
    rows = [
        ("release", f"{release} (local)"),
        ("sae id", sae_id),
        ("folder", str(s.root)),
        ("path", str(s.folder.relative_to(s.root))),
        ("model", s.model or "-"),
        ("site", s.site or "-"),
        ("hook", s.hook_name or "-"),
        ("d_in", str(s.d_in)),
        ("d_sae", str(s.d_sae)),
        ("average L0", f"{s.average_l0:.1f} (measured at export)"),
        ("loads from", str(params) if params.is_file() else f"missing: {params}"),
        ("load with", f"SAE.from_pretrained({release!r}, {sae_id!r})"),
    ]
    _print_rows(rows)
    return 0


def _print_rows(rows: list[tuple[str, str]]) -> None:
    for label, value in rows:
        print(f"{label + ':':17}{value}")
