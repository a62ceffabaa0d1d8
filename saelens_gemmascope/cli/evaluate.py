"""``gemmascope eval``: evaluate SAEs like the Gemma Scope paper and write metrics.json, report.md, plots."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    ev = subparsers.add_parser(
        "eval",
        help="L0, delta LM loss, FVU, KL, dead/dense latents, by position and domain; several SAEs at once",
        description=(
            "SOURCE is a release name (name SAEs by ID, --filter or --all), a Gemma Scope export folder "
            "(release.json; all its SAEs unless IDs are given), a SAELens save folder or a folder of them. "
            "--with adds more groups, evaluated on the same tokens (e.g. a trained SAE next to the release)."
        ),
    )
    ev.add_argument("source", metavar="RELEASE-OR-PATH")
    ev.add_argument("ids", nargs="*", metavar="ID")
    ev.add_argument(
        "--with",
        dest="more",
        nargs="+",
        action="append",
        default=[],
        metavar="ITEM",
        help="another RELEASE-OR-PATH [ID ...] group (repeatable)",
    )
    ev.add_argument("--all", action="store_true", help="every SAE of a release")
    ev.add_argument("--filter", metavar="GLOB", help="SAE ids matching GLOB, e.g. 'layer_12/width_16k/*'")
    ev.add_argument("--model", help="default: the SAEs' model_name (e.g. gemma-2-2b; tiny-gemma-2)")
    ev.add_argument("--dataset", help="hub dataset name or saved folder (default: embedded text)")
    ev.add_argument("--domain-column", help="e.g. meta.pile_set_name (default: auto-detected)")
    ev.add_argument("--n-sequences", type=int, default=2048)
    ev.add_argument("--context-size", type=int, default=1024)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--device", help="e.g. cuda, cpu (default: cuda when available)")
    ev.add_argument("--dtype", help="model dtype, e.g. bfloat16 (default: float32)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="gemmascope-eval", help="output folder (default: %(default)s)")
    ev.set_defaults(handler=run_eval)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: Model dtypes ``--dtype`` accepts.
EVAL_DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")


def checked_device(device: str | None) -> str:
    """``device`` (default: cuda when available) if torch knows it and this machine has it."""
    import torch

    from saelens_gemmascope.training.run_spec import check_device_available

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
    """``--model`` is one of the embedded tiny models or a name TransformerLens knows (its own error
    lists all 249 models on one line)."""
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    from saelens_gemmascope.cli import close_matches
    from saelens_gemmascope.models.pretrained_tiny import PRETRAINED_TINY_NAME
    from saelens_gemmascope.models.tiny import TINY_GEMMA2_NAME

    embedded = (TINY_GEMMA2_NAME, PRETRAINED_TINY_NAME)
    if name is None or name in embedded or name.lower() in make_model_alias_map():
        return
    candidates = [*embedded, *make_model_alias_map()]
    raise ValueError(
        f"--model {name!r}: not a model this package or TransformerLens can load.{close_matches(name, candidates)} "
        f"Embedded: {', '.join(embedded)}; Gemma 2, e.g. gemma-2-2b, gemma-2-9b-it"
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
