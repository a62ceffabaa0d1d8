"""Retrain presets as a suite: group, plan memory, calibrate λs, train, save, export, register.

* **Groups**: presets reading one model with the same runner settings (token budget, batch,
  context, ...) form a group; every SAE of a group (all λ variants, widths, layers and sites) is
  fed by one forward pass of the language model per batch (``GemmaScopeMultiSAETrainingRunner``,
  whose activation store captures all the group's hooks from one ``run_with_cache`` call).
* **Passes**: when a group's SAEs do not fit the memory budget together, it is split into passes
  (:mod:`saelens_gemmascope.suite.memory`); each pass is one multi-SAE run.
* **Calibration**: λ per target L0 (:mod:`saelens_gemmascope.suite.calibration`), recorded in
  ``<output>/calibration/`` and reused. Gemma Scope 2 presets are never calibrated: their quadratic
  penalty aims at each target L0 itself, with the preset's fixed λ.
* **Cached activations**: optionally, each hook's activations are first written with SAELens's
  ``CacheActivationsRunner`` and every SAE then trains from disk (``use_cached_activations``).

Output layout under one root::

    plan.json, summary.json
    calibration/<preset>.json              λ per target L0 and the probe measurements
    checkpoints/<pass>/<n_tokens>/...      SAELens checkpoints (``--resume`` continues the latest)
    saes/<pass>/<sae name>/                SAELens format (cfg.json, sae_weights.safetensors)
    release/<model>-<site>/                Gemma Scope layout + release.json, one local release each
    release/<model>/                       Gemma Scope 2 presets: its layout (resid_post/..., one per model)
    activations/<hook>/                    cached activations (cached mode only)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from saelens_gemmascope.suite.configs import PresetSAE
from saelens_gemmascope.suite.plan import Rung, SuiteGroup, SuitePlan
from saelens_gemmascope.suite.preset import TrainingPreset
from saelens_gemmascope.suite.results import SuiteResult, TrainedSAE, TrainPass


def run_suite(plan: SuitePlan, output_root: str | Path, training_for_group: Callable[[SuiteGroup], TrainPass],
              *, calibration_grid: Sequence[float] | None = None, refine_rounds: int = 1,
              progress: Callable[[str], None] = print) -> SuiteResult:  # fmt: skip
    """Calibrate, train, save and export every pass of ``plan`` under ``output_root``.

    ``training_for_group`` builds the function that trains one pass of a group (live or from
    cached activations: :mod:`saelens_gemmascope.suite.passes`); a probe run is a pass
    without an id (nothing saved). If it has a ``preflight(plan)`` method (``PassTraining`` has),
    that runs first, so that a run which cannot finish (no disk space) fails before it starts.
    Rungs with an explicit λ skip calibration.

    Under torchrun (``plan.spec.distributed``) every rank runs this same function: probes and
    passes train in the job's mode, the probes' L0s are gathered from the ranks that trained them
    (so every rank computes the same λs), and only the main rank writes the plan, calibration
    records, exports, releases and summary.
    """
    from saelens_gemmascope.distributed.collectives import Collectives
    from saelens_gemmascope.suite.calibration import DEFAULT_GRID, calibrate
    from saelens_gemmascope.suite.export import ExportLedger, export_pass, register_releases

    collectives = Collectives(plan.spec.distributed)
    main = collectives.is_main
    root = Path(output_root)
    preflight = getattr(training_for_group, "preflight", None)
    if callable(preflight):
        preflight(plan)
    root.mkdir(parents=True, exist_ok=True)
    if main:
        (root / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    trained: list[TrainedSAE] = []
    pass_seconds: dict[str, float] = {}
    # Export folders are shared by every pass of the run (and earlier runs' exports in this output).
    ledger = ExportLedger(root, frozenset(r.name for p in plan.passes for r in p.rungs))
    for group in plan.groups:
        train_pass = training_for_group(group)

        def run_probes(
            saes: Sequence[PresetSAE], tokens: int, train: TrainPass = train_pass
        ) -> dict[str, float]:
            local = {name: float(sae.cfg.metadata.l0) for name, sae in train(saes, tokens, None).items()}
            merged: dict[str, float] = {}
            for part in collectives.gather_objects(local):  # rank order: the main rank's first
                for name, l0 in part.items():
                    merged.setdefault(name, l0)
            return merged

        to_calibrate = [p for p in group.presets if any(r.calibrated for r in _rungs_of(group, p))]
        records = {}
        if to_calibrate:
            # A probe is never longer than the training it calibrates (a training_tokens override).
            probe_tokens = {
                p.name: min(p.calibration_tokens or group.training_tokens, group.training_tokens)
                for p in to_calibrate
            }
            progress(f"calibrating λ for {len(to_calibrate)} preset(s) of group {group.index}")
            records = calibrate(
                to_calibrate, run_probes, output_root=root, probe_tokens=probe_tokens,
                grid=calibration_grid or DEFAULT_GRID, refine_rounds=refine_rounds, write=main,
            )  # fmt: skip
        for name, record in records.items():
            if record.out_of_range:
                progress(
                    f"warning: {name}: target L0 {record.out_of_range} outside every probed L0; "
                    "λ extrapolated (bounded), check the trained L0"
                )
        for suite_pass in group.passes:
            saes = [
                r.sae(math.nan)  # its own λ: explicit, or a Gemma Scope 2 preset's fixed one
                if not r.calibrated
                else r.sae(records[r.preset.name].l0_coefficients[r.target_l0])
                for r in suite_pass.rungs
            ]
            progress(f"{suite_pass.id}: training {len(saes)} SAEs on {len(suite_pass.hooks)} hook(s)")
            started = time.perf_counter()
            results = train_pass(saes, group.training_tokens, suite_pass.id)
            pass_seconds[suite_pass.id] = round(time.perf_counter() - started, 3)
            if main:
                trained.extend(export_pass(root, suite_pass.id, saes, results, progress, ledger))
    if main:
        ledger.drop_stale(progress)
    releases = register_releases(root) if main else []
    result = SuiteResult(root, tuple(trained), tuple(releases))
    if main:
        (root / "summary.json").write_text(
            json.dumps(
                {
                    "saes": [vars(s) for s in result.saes],
                    "releases": list(releases),
                    "pass_seconds": pass_seconds,
                },
                indent=2,
            )
            + "\n"
        )
    return result


def _rungs_of(group: SuiteGroup, preset: TrainingPreset) -> list[Rung]:
    return [r for p in group.passes for r in p.rungs if r.preset.name == preset.name]
