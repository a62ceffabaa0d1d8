"""``gemmascope presets`` (list training presets) and ``gemmascope train`` (retrain them as a suite)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

#: training.calibration.DEFAULT_GRID as --calibration-grid takes it, spelled out: importing that module
#: imports torch, and building the parser imports nothing heavy (the help test checks they agree).
DEFAULT_GRID_TEXT = "3e-4,3e-3,3e-2,3e-1"
_REFINE_ROUNDS_DEFAULT = 1


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    from saelens_gemmascope.cli import examples

    _add_presets(subparsers, examples)
    _add_train(subparsers, examples)


def _add_presets(subparsers: argparse._SubParsersAction[Any], examples: Callable[..., str]) -> None:
    presets = subparsers.add_parser(
        "presets",
        help="list training presets (glob patterns)",
        description="Lists the training presets: one per (model, site, layer, width), with its hook, "
        "d_sae, token budget, ladder of target L0s and recipe: 'calibrated' (Gemma Scope: one λ per target "
        "found by calibration) or 'λ X fixed' (Gemma Scope 2: the quadratic penalty around each target with "
        "one fixed λ). Their names are what `gemmascope train` takes.",
        epilog=examples(
            "gemmascope presets", "gemmascope presets 'tiny-gemma-2/*' 'gemma-2-2b/res/layer_12/*'"
        ),
    )
    presets.add_argument(
        "patterns",
        nargs="*",
        default=["*"],
        metavar="PATTERN",
        help="preset names or glob patterns, e.g. 'gemma-2-2b/res/*' (default: every preset)",
    )
    presets.add_argument("--json", action="store_true", help="print machine-readable JSON")
    presets.set_defaults(handler=run_presets)


def _add_train(subparsers: argparse._SubParsersAction[Any], examples: Callable[..., str]) -> None:
    train = subparsers.add_parser(
        "train",
        help="train presets: calibrate λ, share forward passes, export",
        description="Retrain presets (list them with `gemmascope presets`) with the Gemma Scope recipe: "
        "calibrate λ per target L0 (or train an explicit λ ladder), feed every SAE of a group from one "
        "forward pass, save in SAELens format and export in the Gemma Scope layout (a local release that "
        "`SAE.from_pretrained`, `gemmascope ls` and `gemmascope eval` take). The same path runs in one "
        "process and under torchrun (--distributed). Gemma Scope 2 presets (`gemmascope presets` shows "
        "'λ 0.03 fixed') are not calibrated: each target L0 trains with the quadratic penalty and the "
        "preset's fixed λ, so --calibration-grid and --refine-rounds do not apply to them, and they export "
        "in Gemma Scope 2's layout. --dry-run prints the plan (groups, memory, tokens) without training.",
        epilog=examples(
            "gemmascope presets 'tiny-gemma-2/*'                       # what can be trained",
            "gemmascope train 'tiny-gemma-2/res/layer_1/*' --dry-run   # the plan only",
            "gemmascope train tiny-gemma-2/res/layer_1/width_256 --set training_tokens=200k",
            "gemmascope train 'gemma-2-2b/res/layer_12/width_16k' --device cuda --memory-budget 60GiB",
            "gemmascope train ... --l0-coefficients 3e-4,1e-3,3e-3     # an explicit λ ladder",
            "gemmascope train ... --checkpoint-every 250M --wandb my-project",
            "gemmascope train ... --resume                             # continue from the last checkpoints",
            "gemmascope train ... --data chat-data --init-from pt-run/saes/PASS/PRESET  # PT -> IT finetuning",
        ),
    )
    train.add_argument("patterns", nargs="+", metavar="PRESET-OR-PATTERN",
                       help="preset names or glob patterns, e.g. 'tiny-gemma-2/res/layer_1/*' "
                       "(list them with: gemmascope presets)")  # fmt: skip
    train.add_argument(
        "--output", metavar="DIR", default="gemmascope-suite", help="output folder (default: %(default)s)"
    )
    train.add_argument("--data", metavar="SOURCE", default="stdlib",
                       help="stdlib (embedded), a save_to_disk folder, or a hub dataset name (default: %(default)s)")  # fmt: skip
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                       help="override a setting (repeatable; Python/JSON literals): sae.KEY for the SAE config, "
                       "runner.KEY for the runner config, or a bare KEY that names a field of one side only "
                       "(default: the preset's settings)")  # fmt: skip
    train.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="bytes for SAEs and buffers, e.g. 40GiB (default: free CUDA memory; none on CPU)",
    )
    train.add_argument("--device", default="cpu",
                       help="where the model, activations, SAEs and optimiser live, e.g. cuda "
                       "(default: %(default)s)")  # fmt: skip
    train.add_argument(
        "--dtype", default="float32", help="dtype of the model, activations and SAEs (default: %(default)s)"
    )
    train.add_argument(
        "--init-from", metavar="SOURCE", dest="init_from",
        help="start every SAE from a saved SAE of the same site and width instead of the recipe's init "
        "(Gemma Scope 2's PT -> IT finetuning): an SAE folder or RELEASE/SAE_ID for every rung, or a folder "
        "holding one SAE folder per rung named as the rung (e.g. target_l0_20: a PT run's "
        "saes/PASS/PRESET folder). Resumed passes continue from their checkpoints (default: none)",
    )  # fmt: skip
    train.add_argument("--dry-run", action="store_true", help="print the plan and stop (in every mode)")
    train.add_argument("--cached-activations", action="store_true", help="cache activations to disk first")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoints")
    checkpoints = train.add_mutually_exclusive_group()
    checkpoints.add_argument(
        "--checkpoints", type=int, metavar="N", default=4, help="checkpoints per pass (default: %(default)s)"
    )
    checkpoints.add_argument(
        "--checkpoint-every",
        metavar="TOKENS",
        help="a checkpoint every TOKENS training tokens, e.g. 500M (default: --checkpoints per pass)",
    )
    train.add_argument(
        "--wandb", nargs="?", const="gemmascope", metavar="PROJECT",
        help="log training passes to wandb project PROJECT (%(const)s when not named; default: no logging); "
        "offline without a key or network, with the `wandb sync` command printed at the end",
    )  # fmt: skip
    ladder = train.add_mutually_exclusive_group()
    ladder.add_argument(
        "--calibration-grid",
        metavar="λ,λ,...",
        help=f"comma-separated λs for the first calibration round (default: {DEFAULT_GRID_TEXT}; "
        "Gemma Scope 2 presets are not calibrated)",
    )
    ladder.add_argument("--l0-coefficients", metavar="λ,λ,...",
                        help="train this explicit λ ladder for every preset, no calibration "
                        "(default: calibrate one λ per target L0)")  # fmt: skip
    train.add_argument(
        "--refine-rounds",
        type=int,
        metavar="N",
        default=_REFINE_ROUNDS_DEFAULT,
        help="calibration refinement rounds (default: %(default)s; Gemma Scope 2 presets are not calibrated)",
    )
    train.add_argument(
        "--distributed",
        choices=["data", "sae"],
        help="run as one rank of a torchrun job: 'data' splits each batch over the ranks (gradients "
        "averaged), 'sae' gathers the batch and spreads each pass's SAEs over the ranks "
        "(default: one process)",
    )
    train.set_defaults(handler=run_train)


def preset_rows(patterns: list[str]) -> list[dict[str, Any]]:
    """One row per matching preset; ``recipe`` says how its λs are found: ``gemmascope`` (calibrated
    per target) or ``gemmascope2`` (``l0_coefficient``, one fixed λ; ``labels``: the release folders
    each target is exported to)."""
    from saelens_gemmascope.suite.configs import match_presets

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
            "recipe": p.recipe,
            "l0_coefficient": p.l0_coefficient,
            "labels": [
                {"target_l0": x.target_l0, "l0_label": x.l0_label, "all_layers": x.all_layers}
                for x in p.scope2_labels
            ],
        }
        for p in match_presets(patterns)
    ]


def recipe_cell(row: dict[str, Any]) -> str:
    """How a preset's λs are found, in a few characters: ``λ 0.03 fixed`` or ``calibrated``."""
    coefficient = row["l0_coefficient"]
    return "calibrated" if coefficient is None else f"λ {coefficient:g} fixed"


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
    table = [("preset", "hook", "d_sae", "tokens", "λ", "ladder (target L0)")]
    for row in rows:
        ladder = ", ".join(f"{t:g}" for t in row["l0_targets"]) + (
            "" if row["trainable"] else "  [not trainable]"
        )
        table.append(
            (row["name"], row["hook"], str(row["d_sae"]), _tokens(row["training_tokens"]), recipe_cell(row), ladder)
        )  # fmt: skip
    n_padded = len(table[0]) - 1
    widths = [max(len(line[i]) for line in table) for i in range(n_padded)]
    for line in table:
        cells = zip(line[:n_padded], widths, strict=True)
        print("  ".join(cell.ljust(w) for cell, w in cells) + "  " + line[n_padded])
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["release"] or row["name"].split("/")[0]] = (
            counts.get(row["release"] or row["name"].split("/")[0], 0) + 1
        )
    print(f"{len(rows)} presets: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


#: No run has more tokens than this (1e15, a thousand times Gemma Scope's largest budget): a bigger
#: count is a typo (or ``inf``), and refusing it keeps every later product an exact int.
MAX_TOKENS = 10**15


def parse_count(text: str | None) -> int | None:
    """``500M``, ``2B``, ``250k`` or ``1000000`` as an int (None stays None)."""
    if text is None:
        return None
    units = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
    text = text.strip().replace("_", "").replace(",", "")
    scale = units.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"expected a token count such as 500M, 2B or 250000, got {text!r}") from None
    if not math.isfinite(value) or value > MAX_TOKENS:
        raise ValueError(f"the token count must be a finite number up to {MAX_TOKENS:.0e}, got {text!r}")
    if round(value) <= 0:
        raise ValueError(f"the token count must be positive, got {text!r}")
    return round(value)


def parse_memory_budget(text: str | None) -> int | None:
    """``--memory-budget`` in bytes: a positive, finite size (``inf`` or ``1e999`` is refused)."""
    from saelens_gemmascope.suite.memory import parse_bytes

    if text is None:
        return None
    number = text.strip().rstrip("BbIiKkMmGgTt").strip()
    try:
        finite = math.isfinite(float(number))
    except ValueError:
        finite = True  # not a plain number: parse_bytes names the problem
    if not finite:
        raise ValueError(f"--memory-budget must be a finite size such as 40GiB, got {text!r}")
    budget = parse_bytes(text)
    if budget <= 0:
        raise ValueError(f"--memory-budget must be positive, got {text!r}")
    return budget


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if not values or bad:
        raise ValueError(f"{option} takes positive finite numbers, got {text!r}")
    return values


def _checked_args(args: argparse.Namespace) -> None:
    """Flags that cannot work together, refused before anything runs."""
    if args.checkpoints is not None and args.checkpoints < 0:
        raise ValueError(f"--checkpoints must be 0 or more, got {args.checkpoints}")
    if args.refine_rounds < 0:
        raise ValueError(f"--refine-rounds must be 0 or more, got {args.refine_rounds}")
    if args.wandb is not None and not args.wandb.strip():
        raise ValueError("--wandb takes a project name; got an empty one")
    if args.distributed and args.cached_activations:
        raise ValueError(
            "--cached-activations is not built for --distributed (each rank would cache its own shard); "
            "drop one of them"
        )


def run_spec_from_args(args: argparse.Namespace) -> Any:
    """The run specification of a ``train`` command line."""
    from pathlib import Path

    from saelens_gemmascope.distributed.spec import distributed_spec_from_env
    from saelens_gemmascope.runners.run_spec import RunSpec
    from saelens_gemmascope.suite.configs import parse_assignments

    return RunSpec.from_overrides(
        {"device": args.device, "dtype": args.dtype, **parse_assignments(args.assignments)},
        data=args.data,
        output=Path(args.output),
        n_checkpoints=args.checkpoints if args.checkpoints is not None else 0,
        checkpoint_every_tokens=parse_count(args.checkpoint_every),
        wandb_project=args.wandb,
        distributed=distributed_spec_from_env(args.distributed) if args.distributed else None,
        init_from=getattr(args, "init_from", None),
    )


def run_train(args: argparse.Namespace) -> int:
    from saelens_gemmascope.cli import check_output_folder
    from saelens_gemmascope.quiet import quiet_saelens
    from saelens_gemmascope.runners.run_spec import check_device_available
    from saelens_gemmascope.suite.configs import match_presets
    from saelens_gemmascope.suite.passes import pass_training
    from saelens_gemmascope.suite.run import run_suite
    from saelens_gemmascope.suite.threads import cpu_threads_for_plan

    _checked_args(args)
    check_output_folder(args.output)
    spec = run_spec_from_args(args)
    grid = _floats(args.calibration_grid, "--calibration-grid")
    presets = match_presets(args.patterns)
    plan = _plan(args, presets, spec)
    check_training_length(plan)
    main_rank = spec.distributed is None or spec.distributed.is_main
    if main_rank:
        print(plan.describe())
        unused = unused_calibration_options(args, presets)
        if unused:
            print(unused)
    check_device_available(spec.device)
    check_training_data(spec.data)
    check_init_source(spec.init_from)
    if args.dry_run:
        return 0
    if spec.distributed is not None:
        return _run_distributed(args, plan, grid)
    trainers = pass_training(spec, cached=args.cached_activations, resume=args.resume)
    _load_models_first(plan, trainers)
    # SAELens's repeated warnings once each; torch's thread count for the work's size on a CPU.
    with quiet_saelens(), cpu_threads_for_plan(plan):
        result = run_suite(
            plan, spec.output, trainers, calibration_grid=grid, refine_rounds=args.refine_rounds
        )
    print(result.summary())
    return 0


def unused_calibration_options(args: argparse.Namespace, presets: Any) -> str | None:
    """One line when calibration options are given but no preset of the run is calibrated (every
    one is a Gemma Scope 2 preset); None otherwise."""
    given = [
        option
        for option, value, default in (
            ("--calibration-grid", args.calibration_grid, None),
            ("--refine-rounds", args.refine_rounds, _REFINE_ROUNDS_DEFAULT),
        )
        if value != default
    ]
    if not given or not presets or not all(p.fixed_lambda for p in presets):
        return None
    return (
        f"note: {' and '.join(given)} unused: every preset of this run is a Gemma Scope 2 preset "
        "(one fixed λ, the quadratic penalty around each target, no calibration)"
    )


def _plan(args: argparse.Namespace, presets: Any, spec: Any) -> Any:
    from saelens_gemmascope.suite.plan import plan_suite

    try:
        return plan_suite(
            presets,
            spec,
            memory_budget=parse_memory_budget(args.memory_budget),
            l0_coefficients=_floats(args.l0_coefficients, "--l0-coefficients"),
        )
    except MemoryError as err:  # planning is arithmetic: this is a budget too small for one SAE
        raise ValueError(f"--memory-budget {args.memory_budget}: {err}") from None


def check_training_length(plan: Any) -> None:
    """Every group trains at least one batch: fewer tokens would export SAEs that never trained."""
    from saelens_gemmascope.recipe.config import RECIPE_RUNNER_DEFAULTS

    for group in plan.groups:
        key = "train_batch_size_tokens"
        batch = int(group.runner_settings.get(key, RECIPE_RUNNER_DEFAULTS[key]))
        if group.training_tokens < batch:
            raise ValueError(
                f"training_tokens={group.training_tokens:,} for {group.model_name} is less than one batch "
                f"({key}={batch:,}): the SAEs would be exported untrained; train for at least {batch:,} tokens"
            )


def check_training_data(source: str) -> None:
    """``--data`` names something that can give tokens: checked before the output folder is made
    (a missing or empty folder otherwise fails after plan.json is written)."""
    from pathlib import Path

    from saelens_gemmascope.runners.data_sources import STDLIB_SOURCE, load_training_data

    path = Path(source).expanduser()
    if source == STDLIB_SOURCE:
        return
    if not path.exists():
        if source.startswith(("/", "./", "../", "~")) or path.is_absolute():
            raise ValueError(f"--data {source}: no such folder (expected a folder saved with save_to_disk)")
        return  # a hub dataset name, streamed when the run starts
    if not path.is_dir():
        raise ValueError(f"--data {source}: not a folder (expected a folder saved with save_to_disk)")
    try:
        dataset = load_training_data(str(path), None, 0)
    except (FileNotFoundError, IndexError) as err:  # datasets raises IndexError for zero shards
        raise ValueError(
            f"--data {source}: not a dataset saved with save_to_disk, or one with no rows ({err})"
        ) from None
    columns = set(dataset.column_names or [])
    if not columns & {"input_ids", "tokens", "text"}:
        raise ValueError(f"--data {source}: no input_ids, tokens or text column (has {sorted(columns)})")
    if len(dataset) == 0:
        raise ValueError(f"--data {source}: the dataset has no rows")


def check_init_source(source: str | None) -> None:
    """``--init-from`` names a folder that exists, or ``RELEASE/SAE_ID``: checked before the output
    folder is made (each pass checks its SAEs' sources fully, shapes included, before training)."""
    from pathlib import Path

    if source is None:
        return
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"--init-from {source}: not a folder (expected an SAE folder or a folder of them)"
            )
        return
    problem = _not_a_release_id(source, path)
    if problem is not None:
        raise ValueError(
            f"--init-from {source}: no such folder, and not RELEASE/SAE_ID ({problem}); give a folder saved "
            "by SAELens (a run's output), a folder of one such folder per rung, or a release available offline"
        )


def _not_a_release_id(source: str, path: Any) -> str | None:
    """Why a missing path ``source`` cannot be RELEASE/SAE_ID, or None when it can: a missing
    relative path such as ``runs/pt/saes/...`` (a typo) is refused here rather than after the
    output folder is made."""
    from pathlib import Path

    from saelens_gemmascope.compat import pretrained_directory
    from saelens_gemmascope.recipe.warm_start import split_release_id

    if source.startswith(("/", "./", "../", "~")) or path.is_absolute():
        return "a path"
    first = source.strip("/").split("/", 1)[0]
    if Path(first).expanduser().is_dir():
        return f"{first}/ is a folder here, so this is a path inside it"
    release, sae_id = split_release_id(source)
    if not release or not sae_id:
        return "no SAE_ID after the release"
    if release not in pretrained_directory():
        return f"no release {release!r} is known (`gemmascope ls` lists them)"
    return None


def _load_models_first(plan: Any, trainers: Any) -> None:
    """Load every language model of the plan (and check its hook widths) before the run writes
    anything: an unavailable model is then one line with nothing left behind."""
    from saelens_gemmascope.suite.catalog import model_hooks
    from saelens_gemmascope.suite.checks import check_hook_widths

    language_model = getattr(trainers, "language_model", None)
    if language_model is None:  # trainers of another kind load their models themselves
        return
    for group in plan.groups:
        hooks = {h: d for p in group.presets for h, d in model_hooks(p).items()}  # a transcoder reads two
        check_hook_widths(language_model(group.model_name), hooks)


def _run_distributed(args: argparse.Namespace, plan: Any, grid: list[float] | None) -> int:
    """The same suite run as one rank of a torchrun job (the process group spans the run)."""
    from saelens_gemmascope.distributed.collectives import close_distributed, init_distributed
    from saelens_gemmascope.quiet import quiet_saelens
    from saelens_gemmascope.suite.passes import pass_training
    from saelens_gemmascope.suite.run import run_suite
    from saelens_gemmascope.suite.threads import cpu_threads_for_plan

    spec = plan.spec
    joined = spec.distributed
    init_distributed(joined, spec.device)
    progress = print if joined.is_main else (lambda _message: None)
    try:
        trainers = pass_training(spec, resume=args.resume, progress=progress)
        with quiet_saelens(), cpu_threads_for_plan(plan):
            result = run_suite(plan, spec.output, trainers, calibration_grid=grid,
                               refine_rounds=args.refine_rounds, progress=progress)  # fmt: skip
    finally:
        close_distributed()
    if joined.is_main:
        print(result.summary())
    return 0
