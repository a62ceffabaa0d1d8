"""Retrain presets as a suite: group, plan memory, calibrate λs, train, save, export, register.

* **Groups**: presets reading one model with the same runner settings (token budget, batch,
  context, ...) form a group; every SAE of a group (all λ variants, widths, layers and sites) is
  fed by one forward pass of the language model per batch (``GemmaScopeMultiSAETrainingRunner``,
  whose activation store captures all the group's hooks from one ``run_with_cache`` call).
* **Passes**: when a group's SAEs do not fit the memory budget together, it is split into passes
  (:mod:`saelens_gemmascope.training.memory`); each pass is one multi-SAE run.
* **Calibration**: λ per target L0 (:mod:`saelens_gemmascope.training.calibration`), recorded in
  ``<output>/calibration/`` and reused.
* **Cached activations**: optionally, each hook's activations are first written with SAELens's
  ``CacheActivationsRunner`` and every SAE then trains from disk (``use_cached_activations``).

Output layout under one root::

    plan.json, summary.json
    calibration/<preset>.json              λ per target L0 and the probe measurements
    checkpoints/<pass>/<n_tokens>/...      SAELens checkpoints (``--resume`` continues the latest)
    saes/<pass>/<sae name>/                SAELens format (cfg.json, sae_weights.safetensors)
    release/<model>-<site>/                Gemma Scope layout + release.json, one local release each
    activations/<hook>/                    cached activations (cached mode only)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelens_gemmascope.training.checks import check_buffer, check_input_width
from saelens_gemmascope.training.config import RECIPE_RUNNER_DEFAULTS
from saelens_gemmascope.training.memory import (
    MemoryItem,
    device_free_memory,
    estimate_sae_memory,
    format_bytes,
    plan_passes,
)
from saelens_gemmascope.training.preset import PresetNotTrainableError, TrainingPreset
from saelens_gemmascope.training.preset_config import PresetSAE, runner_overrides_of

#: SAELens's default mixing-buffer depth (``n_batches_in_buffer``) where nothing overrides it.
_SAELENS_BUFFER_BATCHES = 20


@dataclass(frozen=True)
class Rung:
    """One SAE to train: a preset and the target L0 of one of its sparsity variants."""

    preset: TrainingPreset
    target_l0: float

    @property
    def name(self) -> str:
        return PresetSAE(self.preset, math.nan, self.target_l0).name


@dataclass(frozen=True)
class SuitePass:
    """One multi-SAE run: the rungs trained together and their estimated memory."""

    id: str
    rungs: tuple[Rung, ...]
    sae_bytes: int
    stream_bytes: int

    @property
    def hooks(self) -> list[str]:
        return sorted({r.preset.hook_name for r in self.rungs})


@dataclass(frozen=True)
class SuiteGroup:
    """Presets sharing one model and one set of runner settings, and the passes they train in."""

    index: int
    model_name: str
    training_tokens: int
    presets: tuple[TrainingPreset, ...]
    runner_settings: Mapping[str, Any]
    passes: tuple[SuitePass, ...]


@dataclass(frozen=True)
class SuitePlan:
    groups: tuple[SuiteGroup, ...]
    memory_budget: int | None
    budget_source: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passes(self) -> list[SuitePass]:
        return [p for g in self.groups for p in g.passes]

    def describe(self) -> str:
        """The plan as text: groups, passes, memory and tokens (what ``--dry-run`` prints)."""
        n_saes = sum(len(p.rungs) for p in self.passes)
        budget = "unlimited" if self.memory_budget is None else format_bytes(self.memory_budget)
        lines = [
            f"{n_saes} SAEs from {sum(len(g.presets) for g in self.groups)} presets in "
            f"{len(self.groups)} group(s), {len(self.passes)} pass(es); memory budget {budget} "
            f"({self.budget_source})"
        ]
        for group in self.groups:
            lines.append(
                f"group {group.index}: {group.model_name}, {group.training_tokens:,} tokens per SAE, "
                f"{len(group.presets)} presets, one forward pass per batch feeds each pass"
            )
            for p in group.passes:
                lines.append(
                    f"  {p.id}: {len(p.rungs)} SAEs on {len(p.hooks)} hook(s), about "
                    f"{format_bytes(p.sae_bytes + p.stream_bytes)} (SAEs {format_bytes(p.sae_bytes)}, "
                    f"activation buffers {format_bytes(p.stream_bytes)}), LM tokens {group.training_tokens:,}"
                )
                for preset_name, targets in _targets_by_preset(p.rungs).items():
                    lines.append(f"    {preset_name}: target L0 {', '.join(f'{t:g}' for t in targets)}")
            if len(group.passes) > 1:
                lines.append(
                    f"  (the SAEs do not fit at once: {len(group.passes)} passes, each reading the "
                    f"{group.training_tokens:,} tokens again)"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory_budget": self.memory_budget,
            "budget_source": self.budget_source,
            "overrides": {k: repr(v) for k, v in self.overrides.items()},
            "groups": [
                {
                    "model": g.model_name,
                    "training_tokens": g.training_tokens,
                    "passes": [
                        {"id": p.id, "saes": [r.name for r in p.rungs], "bytes": p.sae_bytes + p.stream_bytes}
                        for p in g.passes
                    ],
                }
                for g in self.groups
            ],
        }


def _targets_by_preset(rungs: Sequence[Rung]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for rung in rungs:
        found.setdefault(rung.preset.name, []).append(rung.target_l0)
    return found


def _setting(settings: Mapping[str, Any], name: str) -> Any:
    return settings.get(name, RECIPE_RUNNER_DEFAULTS.get(name))


def sae_item(preset: TrainingPreset, item: Any, settings: Mapping[str, Any]) -> MemoryItem[Any]:
    batch = int(_setting(settings, "train_batch_size_tokens"))
    memory = estimate_sae_memory(preset.d_in, preset.d_sae, batch)
    return MemoryItem(item=item, hook_name=preset.hook_name, d_in=preset.d_in, bytes=memory.total)


def buffer_tokens(settings: Mapping[str, Any]) -> int:
    depth = settings.get("n_batches_in_buffer", _SAELENS_BUFFER_BATCHES)
    return int(depth) * int(_setting(settings, "context_size"))


def resolve_budget(memory_budget: int | None, device: str) -> tuple[int | None, str]:
    """The budget and where it came from: given, free CUDA memory, or none (CPU without one)."""
    if memory_budget is not None:
        return memory_budget, "given"
    free = device_free_memory(device)
    if free is not None:
        return free, f"free memory on {device} (before loading the model)"
    return None, "no budget given; one pass per group"


def plan_suite(
    presets: Sequence[TrainingPreset],
    *,
    memory_budget: int | None = None,
    device: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> SuitePlan:
    """Group ``presets`` by model and runner settings and split each group into passes."""
    overrides = dict(overrides or {})
    blocked = [p for p in presets if not p.trainable]
    if blocked:
        reasons = sorted({p.not_trainable_reason or "" for p in blocked})
        raise PresetNotTrainableError(
            f"{len(blocked)} preset(s) cannot be trained ({', '.join(p.name for p in blocked[:3])}"
            f"{', ...' if len(blocked) > 3 else ''}): {'; '.join(reasons)}"
        )
    empty = [p.name for p in presets if not p.l0_targets]
    if empty:
        raise ValueError(f"presets without L0 targets: {empty}")
    for preset in presets:
        check_input_width(preset, {**preset.overrides, **overrides}.get("d_in"))
    budget, source = resolve_budget(memory_budget, device)
    by_key: dict[str, list[TrainingPreset]] = {}
    settings_of: dict[str, dict[str, Any]] = {}
    for preset in presets:
        settings = {"training_tokens": preset.training_tokens, **runner_overrides_of(preset, overrides)}
        key = json.dumps([preset.model_name, sorted((k, repr(v)) for k, v in settings.items())])
        by_key.setdefault(key, []).append(preset)
        settings_of[key] = settings
    groups = []
    for index, (key, members) in enumerate(by_key.items()):
        settings = settings_of[key]
        check_buffer(
            int(_setting(settings, "context_size")),
            int(settings.get("n_batches_in_buffer", _SAELENS_BUFFER_BATCHES)),
            int(_setting(settings, "train_batch_size_tokens")),
        )
        # Ordered by hook so that SAEs of one hook share a pass (and its buffer) where they can.
        rungs = [Rung(p, t) for p in sorted(members, key=lambda p: p.hook_name) for t in p.l0_targets]
        items = [sae_item(r.preset, r, settings) for r in rungs]
        planned = plan_passes(items, budget, buffer_tokens(settings))
        passes = tuple(
            SuitePass(f"group{index}_pass{i}", tuple(p.items), p.sae_bytes, p.stream_bytes)
            for i, p in enumerate(planned)
        )
        groups.append(
            SuiteGroup(
                index=index,
                model_name=members[0].model_name,
                training_tokens=int(settings["training_tokens"]),
                presets=tuple(members),
                runner_settings=settings,
                passes=passes,
            )
        )
    return SuitePlan(tuple(groups), budget, source, overrides)


@dataclass(frozen=True)
class TrainedSAE:
    """One SAE of a finished suite: what it aimed at and what it reached."""

    name: str
    preset: str
    target_l0: float
    l0_coefficient: float
    l0: float
    saelens_path: str
    export_id: str | None
    release: str | None


@dataclass(frozen=True)
class SuiteResult:
    output_root: Path
    saes: tuple[TrainedSAE, ...]
    releases: tuple[str, ...]

    def summary(self) -> str:
        """One line per SAE: measured L0 against its target, and where it was exported."""
        lines = [f"{len(self.saes)} SAEs trained under {self.output_root}"]
        for sae in self.saes:
            ratio = sae.l0 / sae.target_l0
            where = f"{sae.release} {sae.export_id}" if sae.export_id else "not exported (see log)"
            lines.append(
                f"  {sae.name}: L0 {sae.l0:.1f} (target {sae.target_l0:g}, x{ratio:.2f}) "
                f"λ={sae.l0_coefficient:.3g} -> {where}"
            )
        if self.releases:
            lines.append(f"registered local releases: {', '.join(self.releases)}")
        return "\n".join(lines)


#: Runs one pass (SAEs, tokens, pass id or None for a probe run) and returns trained SAEs by name.
PassTrainer = Callable[[Sequence[PresetSAE], int, str | None], Mapping[str, Any]]


def run_suite(plan: SuitePlan, output_root: str | Path, trainer_for_group: Callable[[SuiteGroup], PassTrainer],
              *, calibration_grid: Sequence[float] | None = None, refine_rounds: int = 1,
              progress: Callable[[str], None] = print) -> SuiteResult:  # fmt: skip
    """Calibrate, train, save and export every pass of ``plan`` under ``output_root``.

    ``trainer_for_group`` builds the function that trains one pass of a group (live or from
    cached activations: :mod:`saelens_gemmascope.training.suite_training`); a probe run is a pass
    without an id (nothing saved). If it has a ``preflight(plan)`` method (``SuiteTrainers`` has),
    that runs first, so that a run which cannot finish (no disk space) fails before it starts.
    """
    from saelens_gemmascope.training.calibration import DEFAULT_GRID, calibrate
    from saelens_gemmascope.training.suite_export import export_pass, register_releases

    root = Path(output_root)
    preflight = getattr(trainer_for_group, "preflight", None)
    if callable(preflight):
        preflight(plan)
    root.mkdir(parents=True, exist_ok=True)
    (root / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    trained: list[TrainedSAE] = []
    for group in plan.groups:
        train_pass = trainer_for_group(group)

        def run_probes(
            saes: Sequence[PresetSAE], tokens: int, train: PassTrainer = train_pass
        ) -> dict[str, float]:
            return {name: float(sae.cfg.metadata.l0) for name, sae in train(saes, tokens, None).items()}

        probe_tokens = {p.name: p.calibration_tokens or p.training_tokens for p in group.presets}
        progress(f"calibrating λ for {len(group.presets)} preset(s) of group {group.index}")
        records = calibrate(
            group.presets, run_probes, output_root=root, probe_tokens=probe_tokens,
            grid=calibration_grid or DEFAULT_GRID, refine_rounds=refine_rounds,
        )  # fmt: skip
        for name, record in records.items():
            if record.out_of_range:
                progress(
                    f"warning: {name}: target L0 {record.out_of_range} outside every probed L0; "
                    "λ extrapolated (bounded), check the trained L0"
                )
        for suite_pass in group.passes:
            saes = [
                PresetSAE(r.preset, records[r.preset.name].l0_coefficients[r.target_l0], r.target_l0)
                for r in suite_pass.rungs
            ]
            progress(f"{suite_pass.id}: training {len(saes)} SAEs on {len(suite_pass.hooks)} hook(s)")
            results = train_pass(saes, group.training_tokens, suite_pass.id)
            trained.extend(export_pass(root, suite_pass.id, saes, results, progress))
    releases = register_releases(root)
    result = SuiteResult(root, tuple(trained), tuple(releases))
    (root / "summary.json").write_text(
        json.dumps({"saes": [vars(s) for s in result.saes], "releases": list(releases)}, indent=2) + "\n"
    )
    return result
