"""``gemmascope demo``: train, save, reload and evaluate a small suite on the embedded default."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    from saelens_gemmascope.cli import examples

    parser = subparsers.add_parser(
        "demo",
        help="end to end on the embedded tiny Gemma 2 (CPU, no downloads)",
        description="Builds (or loads from the cache) a tiny Gemma 2 trained on Python's help text, trains a "
        "Gemma Scope-style suite with the exact recipe (res, mlp and att on two layers, two widths, a ladder "
        "of three sparsity targets, and one transcoder ladder on the first layer, all in one shared forward pass), "
        "saves it in SAELens format and the Gemma Scope layout, reloads it with SAE.from_pretrained and "
        "evaluates it like the paper, the transcoders next to the MLP-output SAEs of their layer.",
        epilog=examples(
            "gemmascope demo --quick     # one layer, one width",
            "gemmascope demo --out my-demo",
            "gemmascope demo --suite gemma-scope-2   # Gemma Scope 2's recipe on the tiny Gemma 3",
        ),
    )
    parser.add_argument("--out", default="gemmascope-demo", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="one layer, one width, few steps")
    parser.add_argument(
        "--suite",
        choices=["gemma-scope", "gemma-scope-2"],
        default="gemma-scope",
        help="gemma-scope-2: Gemma Scope 2's recipe (quadratic L0 penalty around each target, no "
        "calibration, plain and skip transcoders, its export layout) on the tiny Gemma 3, random weights, "
        "fed the same embedded text (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        help="train on another registered model, e.g. tiny-gemma-2 (random weights) "
        "(default: tiny-gemma-2-stdlib, the embedded pretrained one)",
    )
    parser.add_argument(
        "--no-transcoders", action="store_true", help="leave out the transcoder ladder (SAEs only)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    parser.set_defaults(handler=run)


def check_demo_model(settings: Any) -> None:
    """The demo's model must be registered and have a preset for every SAE the demo trains; checked
    before the output folder is made."""
    from saelens_gemmascope.cli import close_matches
    from saelens_gemmascope.demo.embedded_model import EMBEDDED_MODEL_NAME
    from saelens_gemmascope.demo.run import demo_presets
    from saelens_gemmascope.host import load_plugins

    models = set(load_plugins().models) | {EMBEDDED_MODEL_NAME}
    if settings.model not in models:
        raise ValueError(
            f"--model {settings.model!r}: not a registered model.{close_matches(settings.model, models)} "
            f"Known: {', '.join(sorted(models))}"
        )
    try:
        demo_presets(settings)
    except KeyError as err:
        raise ValueError(
            f"--model {settings.model!r} has no training preset {err.args[0]!r}, which the demo trains "
            "(list the model's presets with: gemmascope presets)"
        ) from None


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from saelens_gemmascope.demo.run import demo_presets, run_demo, suite_settings
    from saelens_gemmascope.suite.plan import plan_suite
    from saelens_gemmascope.suite.threads import cpu_threads_for_plan

    settings = suite_settings(args.suite, args.quick)
    if args.model:
        settings = dataclasses.replace(settings, model=args.model)
    if args.no_transcoders:
        settings = dataclasses.replace(settings, transcoders=False)
    check_demo_model(settings)
    # One thread for the demo's small matrices (two made it about 20x slower on a busy 2-core box).
    with cpu_threads_for_plan(plan_suite(demo_presets(settings))):
        result = run_demo(args.out, settings, progress=not args.no_progress)
    print(result.summary.read_text())
    print(f"Everything is in {result.out_dir.resolve()} (report: {result.report})")
    return 0
