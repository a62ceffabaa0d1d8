"""``gemmascope presets`` (list training presets) and ``gemmascope train`` (retrain them as a suite)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    presets = subparsers.add_parser("presets", help="list training presets (glob patterns)")
    presets.add_argument("patterns", nargs="*", default=["*"], metavar="PATTERN")
    presets.add_argument("--json", action="store_true", help="print machine-readable JSON")
    presets.set_defaults(handler=run_presets)

    train = subparsers.add_parser("train", help="train presets: calibrate λ, share forward passes, export")
    train.add_argument("patterns", nargs="+", metavar="PRESET-OR-PATTERN")
    train.add_argument("--output", default="gemmascope-suite", help="output root (default: %(default)s)")
    train.add_argument("--data", default="stdlib", help="stdlib, a dataset folder, or a hub dataset name")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                       help="override any runner or SAE config field (repeatable; Python/JSON literals)")  # fmt: skip
    train.add_argument(
        "--memory-budget", help="bytes for SAEs and buffers, e.g. 40GiB (default: free CUDA memory)"
    )
    train.add_argument("--device", help="device for the SAEs and the model (sets device=...)")
    train.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    train.add_argument("--cached-activations", action="store_true", help="cache activations to disk first")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoints")
    checkpoints = train.add_mutually_exclusive_group()
    checkpoints.add_argument(
        "--checkpoints", type=int, default=4, help="checkpoints per pass (default: %(default)s)"
    )
    checkpoints.add_argument(
        "--checkpoint-every", metavar="TOKENS", help="a checkpoint every TOKENS training tokens, e.g. 500M"
    )
    train.add_argument(
        "--wandb", nargs="?", const="gemmascope", metavar="PROJECT",
        help="log training passes to wandb (project default: %(const)s); offline without a key or "
        "network, with the `wandb sync` command printed at the end",
    )  # fmt: skip
    train.add_argument("--calibration-grid", help="comma-separated λs for the first calibration round")
    train.add_argument("--refine-rounds", type=int, default=1, help="calibration refinement rounds")
    train.add_argument(
        "--distributed",
        choices=["data", "sae"],
        help="run under torchrun: 'data' splits each batch over the ranks (gradients averaged), 'sae' "
        "spreads the λ ladder's SAEs over the ranks on the gathered batch; the λs are those of "
        "--calibration-grid (no calibration)",
    )
    train.set_defaults(handler=run_train)


def preset_rows(patterns: list[str]) -> list[dict[str, Any]]:
    from saelens_gemmascope.training.preset_config import match_presets

    return [
        {
            "name": p.name,
            "release": p.release,
            "hook": p.hook_name,
            "d_in": p.d_in,
            "d_sae": p.d_sae,
            "training_tokens": p.training_tokens,
            "l0_targets": list(p.l0_targets),
            "trainable": p.trainable,
        }
        for p in match_presets(patterns)
    ]


def _tokens(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return str(n)


def run_presets(args: argparse.Namespace) -> int:
    rows = preset_rows(args.patterns)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("preset", "hook", "d_sae", "tokens", "ladder (target L0)")]
    for row in rows:
        ladder = ", ".join(f"{t:g}" for t in row["l0_targets"]) + (
            "" if row["trainable"] else "  [not trainable]"
        )
        table.append((row["name"], row["hook"], str(row["d_sae"]), _tokens(row["training_tokens"]), ladder))
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line[:4], widths, strict=True)) + "  " + line[4])
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["release"] or row["name"].split("/")[0]] = (
            counts.get(row["release"] or row["name"].split("/")[0], 0) + 1
        )
    print(f"{len(rows)} presets: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def parse_count(text: str | None) -> int | None:
    """``500M``, ``2B``, ``250k`` or ``1000000`` as an int (None stays None)."""
    if text is None:
        return None
    units = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
    text = text.strip().replace("_", "").replace(",", "")
    scale = units.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = round(float(number) * scale)
    except ValueError:
        raise ValueError(f"expected a token count such as 500M, 2B or 250000, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"the token count must be positive, got {text!r}")
    return value


def run_train(args: argparse.Namespace) -> int:
    if args.distributed:
        return run_train_distributed(args)
    from saelens_gemmascope.training.memory import parse_bytes
    from saelens_gemmascope.training.preset_config import match_presets, parse_assignments
    from saelens_gemmascope.training.suite import plan_suite, run_suite
    from saelens_gemmascope.training.suite_training import group_trainers

    overrides = parse_assignments(args.assignments)
    if args.device:
        overrides["device"] = args.device
    budget = parse_bytes(args.memory_budget) if args.memory_budget else None
    plan = plan_suite(
        match_presets(args.patterns),
        memory_budget=budget,
        device=overrides.get("device", "cpu"),
        overrides=overrides,
    )
    print(plan.describe())
    if args.dry_run:
        return 0
    trainers = group_trainers(
        args.output, data=args.data, cached=args.cached_activations, resume=args.resume,
        n_checkpoints=args.checkpoints, checkpoint_every_tokens=parse_count(args.checkpoint_every),
        overrides=overrides, wandb_project=args.wandb,
    )  # fmt: skip
    grid = [float(x) for x in args.calibration_grid.split(",")] if args.calibration_grid else None
    result = run_suite(plan, args.output, trainers, calibration_grid=grid, refine_rounds=args.refine_rounds)
    print(result.summary())
    return 0


def run_train_distributed(args: argparse.Namespace) -> int:
    from saelens_gemmascope.training.distributed_presets import train_presets_distributed
    from saelens_gemmascope.training.preset_config import match_presets, parse_assignments

    if args.checkpoint_every or args.wandb:
        raise ValueError(
            "--distributed takes --checkpoints (per rank and pass); --checkpoint-every and --wandb are not built for it"
        )
    if not args.calibration_grid:
        raise SystemExit("--distributed trains the λs of --calibration-grid; give them, e.g. 3e-4,1e-3")
    overrides = parse_assignments(args.assignments)
    if args.device:
        overrides["device"] = args.device
    saved = train_presets_distributed(
        match_presets(args.patterns), args.distributed, [float(x) for x in args.calibration_grid.split(",")],
        args.output, data=args.data, overrides=overrides, n_checkpoints=args.checkpoints, resume=args.resume,
    )  # fmt: skip
    for path in saved:
        print(f"saved {path}")
    return 0
