"""Plan a suite: group presets by model and runner settings, split each group into passes that
fit the memory budget, and check every pass's configs before anything runs (see
:mod:`saelens_gemmascope.suite.run` for the whole flow)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saelens_gemmascope.recipe.config import RECIPE_RUNNER_DEFAULTS, check_buffer
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.catalog import stream_key, stream_width
from saelens_gemmascope.suite.checks import check_input_width
from saelens_gemmascope.suite.configs import (
    PresetSAE,
    check_scope2_penalty,
    effective_d_sae,
    multi_config_for,
    runner_settings_of,
    sae_name,
    sae_settings_of,
)
from saelens_gemmascope.suite.memory import (
    MemoryItem,
    device_free_memory,
    estimate_sae_memory,
    format_bytes,
    plan_passes,
)
from saelens_gemmascope.suite.preset import PresetNotTrainableError, TrainingPreset

#: SAELens's default mixing-buffer depth (``n_batches_in_buffer``) where nothing overrides it.
_SAELENS_BUFFER_BATCHES = 20


@dataclass(frozen=True)
class Rung:
    """One SAE to train: a preset and either the target L0 of one of its sparsity variants (λ
    found by calibration) or an explicit λ (``--l0-coefficients``), or both: a Gemma Scope 2
    preset's target with its fixed λ (the quadratic penalty aims at the target; no calibration)."""

    preset: TrainingPreset
    target_l0: float | None = None
    l0_coefficient: float | None = None

    @property
    def name(self) -> str:
        return sae_name(self.preset, self.target_l0, self.l0_coefficient)

    def sae(self, l0_coefficient: float) -> PresetSAE:
        """The rung as the SAE it trains, with ``l0_coefficient`` (its own when explicit)."""
        coefficient = l0_coefficient if self.l0_coefficient is None else self.l0_coefficient
        return PresetSAE(self.preset, coefficient, self.target_l0)

    @property
    def label(self) -> str:
        if self.target_l0 is not None and self.l0_coefficient is not None:
            return f"target L0 {self.target_l0:g} (λ {self.l0_coefficient:g})"
        return (
            f"λ {self.l0_coefficient:g}"
            if self.l0_coefficient is not None
            else f"target L0 {self.target_l0:g}"
        )

    @property
    def calibrated(self) -> bool:
        """Whether the rung's λ comes from calibration (a Gemma Scope target without a λ)."""
        return self.l0_coefficient is None


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
    spec: RunSpec = field(default_factory=RunSpec)

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
                for preset_name, labels in _labels_by_preset(p.rungs).items():
                    lines.append(f"    {preset_name}: {', '.join(labels)}")
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
            "device": self.spec.device,
            "dtype": self.spec.dtype,
            "distributed": None
            if self.spec.distributed is None
            else {"mode": self.spec.distributed.mode, "world_size": self.spec.distributed.world_size},
            "runner_overrides": {k: repr(v) for k, v in self.spec.runner.items()},
            "sae_overrides": {k: repr(v) for k, v in self.spec.sae.items()},
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


def _labels_by_preset(rungs: Sequence[Rung]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for rung in rungs:
        found.setdefault(rung.preset.name, []).append(rung.label)
    return found


def _setting(settings: Mapping[str, Any], name: str) -> Any:
    return settings.get(name, RECIPE_RUNNER_DEFAULTS.get(name))


def sae_item(
    preset: TrainingPreset, item: Any, settings: Mapping[str, Any], spec: RunSpec
) -> MemoryItem[Any]:
    batch = int(_setting(settings, "train_batch_size_tokens"))
    memory = estimate_sae_memory(preset.d_in, effective_d_sae(preset, spec), batch)
    # A transcoder's stream rows hold its input and its target side by side (one buffer, twice as wide).
    return MemoryItem(item=item, hook_name=stream_key(preset), d_in=stream_width(preset), bytes=memory.total)


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
    spec: RunSpec | None = None,
    *,
    memory_budget: int | None = None,
    l0_coefficients: Sequence[float] | None = None,
) -> SuitePlan:
    """Group ``presets`` by model and runner settings and split each group into passes.

    Each preset trains its released L0 targets (λ calibrated), or the explicit ladder
    ``l0_coefficients`` (an ``l0_coefficient`` override of the spec is a ladder of one).
    """
    spec = spec or RunSpec()
    l0_coefficients = ladder_from_spec(spec, l0_coefficients)
    blocked = [p for p in presets if not p.trainable]
    if blocked:
        reasons = sorted({p.not_trainable_reason or "" for p in blocked})
        raise PresetNotTrainableError(
            f"{len(blocked)} preset(s) cannot be trained ({', '.join(p.name for p in blocked[:3])}"
            f"{', ...' if len(blocked) > 3 else ''}): {'; '.join(reasons)}"
        )
    scope2 = [p for p in presets if p.fixed_lambda]
    if "target_l0" in spec.sae and scope2:
        raise ValueError(
            "target_l0: a Gemma Scope 2 preset trains its ladder's targets, one SAE each; it cannot be set"
        )
    for preset in scope2:  # before the ladder checks: a linear penalty is the mistake to name
        check_scope2_penalty(preset, sae_settings_of(preset, spec))
    empty = [p.name for p in presets if not p.l0_targets]
    if empty and (l0_coefficients is None or any(p.fixed_lambda for p in presets if p.name in empty)):
        raise ValueError(f"presets without L0 targets: {empty}; give a λ ladder (--l0-coefficients)")
    for preset in presets:
        check_input_width(preset, sae_settings_of(preset, spec).get("d_in"))
    budget, source = resolve_budget(memory_budget, spec.device)
    by_key: dict[str, list[TrainingPreset]] = {}
    settings_of: dict[str, dict[str, Any]] = {}
    for preset in presets:
        settings = runner_settings_of(preset, spec)
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
        if spec.distributed is not None:
            spec.distributed.local_batch(int(_setting(settings, "train_batch_size_tokens")))
        # Ordered by hook so that SAEs of one hook share a pass (and its buffer) where they can.
        ordered = sorted(members, key=lambda p: p.hook_name)
        rungs = [rung for p in ordered for rung in preset_rungs(p, l0_coefficients)]
        # Every setting is checked now, in --dry-run too, by building the configs SAELens will get
        # (λ is a placeholder until calibration).
        multi_config_for([r.sae(1.0) for r in rungs], spec)
        items = [sae_item(r.preset, r, settings, spec) for r in rungs]
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
    return SuitePlan(tuple(groups), budget, source, spec)


def preset_rungs(preset: TrainingPreset, l0_coefficients: Sequence[float] | None) -> list[Rung]:
    """The SAEs a preset trains. Gemma Scope: one per target L0 (λ calibrated later), or one per λ
    of an explicit ladder. Gemma Scope 2 (``preset.fixed_lambda``): one per target L0 with the
    preset's fixed λ, never calibrated; an explicit ladder of one λ replaces that λ."""
    if preset.fixed_lambda:
        if l0_coefficients is not None and len(l0_coefficients) != 1:
            raise ValueError(
                f"{preset.name} trains one SAE per target L0 with Gemma Scope 2's quadratic penalty and one "
                f"λ; give one λ (--set l0_coefficient=...), not a ladder of {len(l0_coefficients)}"
            )
        coefficient = l0_coefficients[0] if l0_coefficients is not None else preset.l0_coefficient
        return [Rung(preset, target_l0=t, l0_coefficient=coefficient) for t in preset.l0_targets]
    if l0_coefficients is None:
        return [Rung(preset, target_l0=t) for t in preset.l0_targets]
    return [Rung(preset, l0_coefficient=c) for c in l0_coefficients]


def ladder_from_spec(spec: RunSpec, l0_coefficients: Sequence[float] | None) -> list[float] | None:
    """The explicit λ ladder: ``l0_coefficients``, or a spec's ``l0_coefficient`` override (not both)."""
    override = spec.sae.get("l0_coefficient")
    if override is not None and l0_coefficients is not None:
        raise ValueError("give the λs either as --l0-coefficients or as --set l0_coefficient=..., not both")
    ladder = [float(override)] if override is not None else l0_coefficients
    if ladder is not None:
        if not ladder:
            raise ValueError("the λ ladder is empty")
        bad = [c for c in ladder if not (math.isfinite(c) and c > 0)]
        if bad:
            raise ValueError(f"every λ must be a positive finite number; got {bad}")
    return None if ladder is None else list(ladder)
