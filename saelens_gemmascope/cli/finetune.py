"""``gemmascope finetune-kl``: end-to-end KL finetuning of a trained SAE (Gemma Scope 2's recipe).

Loads the SAE (a SAELens save folder, an export folder and id, or a release and id) and the model
(through the registry: the tiny models build in memory), finetunes on token rows of ``--data``,
measures KL, MSE, FVU and L0 on held-out rows before and after, and saves the finetuned SAE as a
SAELens ``jumprelu`` folder at ``--out`` (with ``finetune_log.json``). An interrupt or a non-finite
loss saves the steps finished so far first.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: What ``finetune_log.json`` is called in the output folder (next to cfg.json and the weights).
LOG_FILE = "finetune_log.json"


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    from saelens_gemmascope.cli import examples

    parser = subparsers.add_parser(
        "finetune-kl",
        help="finetune a trained SAE end to end on (MSE + alpha*beta*KL)/(1+beta), spliced into the model",
        description=(
            "Gemma Scope 2's end-to-end finetuning: the SAE is spliced into the model's forward pass and "
            "trained on (MSE + alpha*beta*KL)/(1 + beta), KL(clean || spliced) of the next-token "
            "distributions, alpha = MSE/(KL + 1e-8) of the starting SAE held constant. Prints KL, MSE, FVU "
            "and L0 on held-out token rows before and after, and saves the finetuned SAE (a SAELens "
            "jumprelu folder) to --out. SAE is a SAELens save folder, an export folder or release with "
            "an ID, or RELEASE/ID. Transcoders are not supported."
        ),
        epilog=examples(
            "gemmascope finetune-kl runs/l3/sae --model tiny-gemma-3 --out runs/l3/kl --context-size 64",
            "gemmascope finetune-kl gemma-scope-2-1b-pt-res layer_13_width_16k_l0_small \\",
            "    --model gemma-3-1b-pt --device cuda --dtype bfloat16 --out kl/l13 --beta 1 --steps 2000",
        ),
    )
    parser.add_argument("sae", metavar="SAE", help="a SAELens save folder, an export folder or a release")
    parser.add_argument(
        "sae_id",
        nargs="?",
        metavar="ID",
        help="the SAE's id within an export folder or release (default: none; SAE may be RELEASE/ID)",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="the model the SAE reads, e.g. gemma-3-1b-pt, tiny-gemma-3 (required, no default)",
    )
    parser.add_argument(
        "--out", metavar="DIR", required=True, help="where the finetuned SAE is saved (required, no default)"
    )
    parser.add_argument(
        "--beta", type=float, default=1.0, help="weight of the KL term (default: %(default)s)"
    )
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps (default: %(default)s)")
    parser.add_argument(
        "--lr", type=float, default=7e-5, help="Adam's learning rate (default: %(default)s, the recipe's)"
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="N", default=8, help="token rows per step (default: %(default)s)"
    )
    parser.add_argument(
        "--context-size",
        type=int,
        metavar="TOKENS",
        default=1024,
        help="tokens per row (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-sequences",
        type=int,
        metavar="N",
        default=64,
        help="held-out rows KL, MSE, FVU and L0 are measured on, before and after (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        metavar="SOURCE",
        default="stdlib",
        help="stdlib (embedded; its held-out tail is measured on), a save_to_disk folder or a hub dataset "
        "(the rows after the training rows are measured on) (default: %(default)s)",
    )
    parser.add_argument("--device", help="e.g. cuda, cpu (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32", help="the model's dtype (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from saelens_gemmascope.cli import reporting_errors

    return reporting_errors("finetune-kl", _finetune)(args)


def _check_numbers(args: argparse.Namespace) -> None:
    for option, value, least in (
        ("--steps", args.steps, 1),
        ("--batch-size", args.batch_size, 1),
        ("--context-size", args.context_size, 2),
        ("--eval-sequences", args.eval_sequences, 1),
    ):
        if value < least:
            raise ValueError(f"{option} must be at least {least}, got {value}")
    if not (args.beta >= 0 and args.lr > 0):  # also refuses nan
        raise ValueError(f"--beta must be >= 0 and --lr > 0, got {args.beta} and {args.lr}")


def load_sae_arg(source: str, sae_id: str | None, device: str) -> Any:
    """The one SAE ``SAE [ID]`` names (``RELEASE/ID`` when ``SAE`` is no folder and ID is absent)."""
    from saelens_gemmascope.evaluation.sources import expand_source, resolve_spec

    if sae_id is None and not Path(source).exists() and "/" in source:
        source, sae_id = _release_and_id(source)
    specs = expand_source(source, [sae_id] if sae_id else None)
    if len(specs) != 1:
        raise ValueError(f"{source}: holds {len(specs)} SAEs; name one with an ID")
    return resolve_spec(specs[0], device).sae


def _release_and_id(source: str) -> tuple[str, str]:
    """``RELEASE/ID`` split where a known release ends (local releases' names hold slashes); a name
    with no known release in front is taken for a mistyped folder."""
    from saelens_gemmascope.compat import pretrained_directory
    from saelens_gemmascope.recipe.warm_start import split_release_id
    from saelens_gemmascope.registry import registrations

    registrations()  # the plugins' and the recorded local releases
    release, sae_id = split_release_id(source)
    if release not in pretrained_directory():
        raise ValueError(f"{source}: no such folder (nor RELEASE/ID of a known release)")
    return release, sae_id


def _qualifying_rows(source: str, tokenizer: Any, context_size: int) -> Iterator[list[int]]:
    """The rows of ``source`` holding at least ``context_size`` tokens, cut to ``context_size``."""
    from saelens_gemmascope.runners.data_sources import load_training_data

    for row in load_training_data(source, tokenizer, context_size):
        ids = row.get("input_ids", row.get("tokens"))
        if ids is None:
            if "text" not in row:
                raise ValueError(f"--data {source}: no input_ids, tokens or text column")
            ids = tokenizer(row["text"])["input_ids"]
        if len(ids) >= context_size:
            yield list(ids[:context_size])


def _take(rows: Iterator[list[int]], n_rows: int, source: str, context_size: int, what: str) -> Any:
    """The next up to ``n_rows`` of ``rows`` as a tensor (at least one)."""
    import torch

    taken = list(itertools.islice(rows, n_rows))
    if not taken:
        raise ValueError(f"--data {source}: no row of at least --context-size {context_size} tokens {what}")
    return torch.tensor(taken, dtype=torch.long)


def _data(args: argparse.Namespace, tokenizer: Any) -> tuple[Any, Any]:
    """(training rows, held-out rows): from one pass over the qualifying rows, so the held-out rows are
    the ones after the training rows and never among them."""
    import torch

    from saelens_gemmascope.data import stdlib_token_dataset
    from saelens_gemmascope.runners.data_sources import STDLIB_SOURCE

    n_train = args.steps * args.batch_size
    rows = _qualifying_rows(args.data, tokenizer, args.context_size)
    train = _take(rows, n_train, args.data, args.context_size, "to train on")
    if args.data == STDLIB_SOURCE:  # the training rows cycle when the text is short; its tail is held out
        held = stdlib_token_dataset(tokenizer, args.context_size, holdout=True)["input_ids"]
        return train, torch.tensor(held[: args.eval_sequences], dtype=torch.long)
    held = _take(
        rows, args.eval_sequences, args.data, args.context_size, "left to hold out after the training rows"
    )
    return train, held


def _line(label: str, metrics: Any) -> str:
    return (
        f"{label}: KL {metrics.kl:.4g}  MSE {metrics.mse:.4g}  FVU {metrics.fvu:.4g}  L0 {metrics.l0:.4g}"
        f"  ({metrics.n_tokens:,} tokens)"
    )


def _finetune(args: argparse.Namespace) -> int:
    from saelens_gemmascope.cli import check_output_folder
    from saelens_gemmascope.cli.evaluate import check_model_name, checked_device
    from saelens_gemmascope.models.loading import load_language_model
    from saelens_gemmascope.runners.interrupts import TrainingInterrupted
    from saelens_gemmascope.runners.kl_finetune import (
        KLFinetuneNonFiniteError,
        check_finetunable,
        kl_finetune,
        splice_metrics,
    )

    _check_numbers(args)
    check_model_name(args.model)
    check_output_folder(args.out)
    device = checked_device(args.device)
    sae = load_sae_arg(args.sae, args.sae_id, device)
    check_finetunable(sae)
    model = load_language_model(args.model, device=device, dtype=args.dtype)
    if args.context_size > model.cfg.n_ctx:
        raise ValueError(
            f"--context-size {args.context_size} exceeds {args.model}'s {model.cfg.n_ctx} positions"
        )
    train, held = _data(args, model.tokenizer)
    before = splice_metrics(sae, model, held, args.batch_size)
    print(_line("before", before))
    out = Path(args.out)
    try:
        result = kl_finetune(
            sae, model, train, beta=args.beta, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
            progress=not args.no_progress,
        )  # fmt: skip
    except KLFinetuneNonFiniteError as error:
        _save(error.partial, out, before, None)
        raise ValueError(f"{error} Saved the {error.partial.steps_done} finished step(s) to {out}") from None
    if result.interrupted_by is not None:  # saved at once, not measured: the user wants out
        _save(result, out, before, None)
        raise TrainingInterrupted(
            result.interrupted_by, f"after step {result.steps_done}: its weights are saved to {out}"
        )
    after = splice_metrics(result.sae, model, held, args.batch_size)
    _save(result, out, before, after)
    print(_line("after ", after))
    print(f"alpha {result.alpha:.4g} (held constant), beta {result.beta:g}, {result.steps_done} steps")
    print(f"wrote {out} (a SAELens jumprelu SAE, and {LOG_FILE})")
    return 0


def _save(result: Any, out: Path, before: Any, after: Any) -> None:
    from dataclasses import asdict

    result.sae.save_model(out)
    log = {
        "alpha": result.alpha,
        "beta": result.beta,
        "input_scale": result.input_scale,
        "steps_done": result.steps_done,
        "interrupted_by": result.interrupted_by,
        "before": asdict(before),
        "after": asdict(after) if after is not None else None,
        "history": [asdict(record) for record in result.history],
    }
    (out / LOG_FILE).write_text(json.dumps(log, indent=1))
