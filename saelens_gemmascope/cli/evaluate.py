"""``gemmascope eval``: evaluate SAEs like the Gemma Scope paper and write metrics.json, report.md, plots."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    from saelens_gemmascope.cli import examples

    ev = subparsers.add_parser(
        "eval",
        help="L0, delta LM loss, FVU, KL, dead/dense latents, by position and domain; several SAEs at once",
        description=(
            "RELEASE-OR-PATH is a release name (name SAEs by ID, --filter or --all), a local export folder "
            "(release.json, as `gemmascope train` and the demo write; all its SAEs unless IDs are given), "
            "a SAELens save folder or a folder of them. --with adds more groups, evaluated on the same "
            "tokens (e.g. a trained SAE next to the release). Writes metrics.json, report.md and plots "
            "to --out."
        ),
        epilog=examples(
            "gemmascope eval gemmascope-demo/suite/release/tiny-gemma-2-stdlib-res --model tiny-gemma-2-stdlib",
            "gemmascope eval gemma-scope-2b-pt-res --filter 'layer_12/width_16k/*' --device cuda",
            "gemmascope eval gemma-scope-2b-pt-res layer_12/width_16k/average_l0_82 --with runs/l12/saes",
        ),
    )
    ev.add_argument(
        "source",
        metavar="RELEASE-OR-PATH",
        help="a release, a local export folder, a SAELens save folder or a folder of them",
    )
    ev.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="SAE ids of RELEASE-OR-PATH (default: all of an export folder; a release needs ids, "
        "--filter or --all)",
    )
    ev.add_argument(
        "--with",
        dest="more",
        nargs="+",
        action="append",
        default=[],
        metavar="ITEM",
        help="another RELEASE-OR-PATH [ID ...] group (repeatable; default: none)",
    )
    ev.add_argument("--all", action="store_true", help="every SAE of a release")
    ev.add_argument(
        "--filter", metavar="GLOB", help="SAE ids matching GLOB, e.g. 'layer_12/width_16k/*' (default: none)"
    )
    ev.add_argument("--model", help="e.g. gemma-2-2b, tiny-gemma-2 (default: the SAEs' model_name)")
    ev.add_argument("--dataset", help="hub dataset name or save_to_disk folder (default: embedded text)")
    ev.add_argument(
        "--domain-column", metavar="COLUMN", help="e.g. meta.pile_set_name (default: auto-detected)"
    )
    ev.add_argument(
        "--n-sequences",
        type=int,
        metavar="N",
        default=2048,
        help="sequences to evaluate on (default: %(default)s)",
    )
    ev.add_argument(
        "--context-size",
        type=int,
        metavar="TOKENS",
        default=1024,
        help="tokens per sequence (default: %(default)s)",
    )
    ev.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        default=8,
        help="sequences per forward pass (default: %(default)s)",
    )
    ev.add_argument("--device", help="e.g. cuda, cpu (default: cuda when available, else cpu)")
    ev.add_argument("--dtype", help=f"model dtype: {', '.join(EVAL_DTYPES)} (default: float32)")
    ev.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for sampling the evaluation sequences (default: %(default)s)",
    )
    ev.add_argument(
        "--out", metavar="DIR", default="gemmascope-eval", help="output folder (default: %(default)s)"
    )
    ev.set_defaults(handler=run_eval)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: Model dtypes ``--dtype`` accepts.
EVAL_DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")


def checked_device(device: str | None) -> str:
    """``device`` (default: cuda when available) if torch knows it and this machine has it."""
    import torch

    from saelens_gemmascope.runners.run_spec import check_device_available

    if device is None:
        return _default_device()
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"--device {device!r}: not a torch device; expected e.g. cpu, cuda, cuda:1 or mps"
        ) from None
    check_device_available(device)
    return device


def check_model_name(name: str | None) -> None:
    """``--model`` is a registered model (built-in, the demo's tiny models, a plugin's; by name or
    alias) or a name TransformerLens knows (its own error lists all its models on one line)."""
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    from saelens_gemmascope.cli import close_matches
    from saelens_gemmascope.registry import registered_models

    if name is None:
        return
    specs = registered_models()
    registered = [*specs, *(alias for spec in specs.values() for alias in spec.aliases)]
    in_memory = sorted(n for n, spec in specs.items() if spec.load is not None)
    if name in registered or name.lower() in make_model_alias_map():
        return
    candidates = [*registered, *make_model_alias_map()]
    raise ValueError(
        f"--model {name!r}: not a model this package or TransformerLens can load.{close_matches(name, candidates)} "
        f"Built in memory: {', '.join(in_memory)}; registered, e.g. gemma-2-2b, gemma-3-1b-pt "
        "(`gemmascope plugins` lists who registers what)"
    )


def _check_numbers(args: argparse.Namespace) -> None:
    """Sizes that cannot work, refused before any SAE, model or dataset is loaded."""
    for option, value, least in (
        ("--n-sequences", args.n_sequences, 1),
        ("--context-size", args.context_size, 2),  # a loss needs a next token
        ("--batch-size", args.batch_size, 1),
        ("--seed", args.seed, 0),
    ):
        if value < least:
            raise ValueError(f"{option} must be at least {least}, got {value}")
    if args.dtype is not None and args.dtype not in EVAL_DTYPES:
        raise ValueError(f"--dtype {args.dtype!r}: expected one of {', '.join(EVAL_DTYPES)}")


def run_eval(args: argparse.Namespace) -> int:
    from saelens_gemmascope.cli import reporting_errors

    return reporting_errors("eval", _evaluate)(args)


def _evaluate(args: argparse.Namespace) -> int:
    from saelens_gemmascope.cli import check_output_folder
    from saelens_gemmascope.evaluation import evaluate_saes, expand_source
    from saelens_gemmascope.evaluation.report import format_number

    _check_numbers(args)
    check_model_name(args.model)
    check_output_folder(args.out)
    device = checked_device(args.device)
    groups = [[args.source, *args.ids], *args.more]
    specs = [
        spec
        for source, *ids in groups
        for spec in expand_source(source, ids, pattern=args.filter, all_ids=args.all)
    ]
    result = evaluate_saes(
        specs,
        model=args.model,
        dataset=args.dataset,
        n_sequences=args.n_sequences,
        context_size=args.context_size,
        batch_size=args.batch_size,
        device=device,
        dtype=args.dtype,
        seed=args.seed,
        domain_column=args.domain_column,
        out_dir=args.out,
        progress=sys.stderr.isatty(),
    )
    for sae in result.saes:
        m = sae.metrics
        print(
            f"{sae.label}: L0 {format_number(m['l0'])}  delta loss {format_number(m['delta_loss'])}  "
            f"FVU {format_number(m['fvu'])}"
        )
    print(f"wrote {result.files['report']} and {len(result.files) - 1} more file(s)")
    return 0
