"""Turn presets into SAELens runner configs, with any field overridable.

:func:`training_config` is the one entry point: one preset and one λ give a
``LanguageModelSAERunnerConfig``; a ladder of λs, or several presets, give one
``MultiSAETrainingRunnerConfig`` whose SAEs all read one model forward pass. Overrides are routed
by name: fields of :class:`GemmaScopeTrainingSAEConfig` go to every SAE, anything else to the
runner. Precedence: recipe defaults < the preset's ``overrides`` < the caller's.
"""

from __future__ import annotations

import ast
import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, overload

from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

from saelens_gemmascope.training.checks import check_input_width
from saelens_gemmascope.training.config import (
    gemmascope_multi_runner_config,
    gemmascope_runner_config,
    gemmascope_sae_config,
)
from saelens_gemmascope.training.preset import TrainingPreset
from saelens_gemmascope.training.sae import GemmaScopeTrainingSAEConfig


@dataclass(frozen=True)
class PresetSAE:
    """One SAE of a preset's ladder: its λ and, when it came from calibration, its target L0."""

    preset: TrainingPreset
    l0_coefficient: float
    target_l0: float | None = None

    @property
    def name(self) -> str:
        """``<preset>/target_l0_<L0>`` (or ``<preset>/l0_coef_<λ>`` without a target): unique in a run."""
        if self.target_l0 is not None:
            return f"{self.preset.name}/target_l0_{self.target_l0:g}"
        return f"{self.preset.name}/l0_coef_{self.l0_coefficient:g}"


@cache
def sae_config_fields() -> frozenset[str]:
    return frozenset(f.name for f in fields(GemmaScopeTrainingSAEConfig))


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SAE-config overrides, runner-config overrides), by field name."""
    sae = {k: v for k, v in overrides.items() if k in sae_config_fields()}
    runner = {k: v for k, v in overrides.items() if k not in sae_config_fields()}
    return sae, runner


def runner_overrides_of(preset: TrainingPreset, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The runner-level settings a preset trains with (its own overrides, then the caller's)."""
    return split_overrides({**preset.overrides, **overrides})[1]


def sae_config_for(sae: PresetSAE, overrides: Mapping[str, Any]) -> GemmaScopeTrainingSAEConfig:
    sae.preset.require_trainable()
    sae_overrides = split_overrides({**sae.preset.overrides, **overrides})[0]
    check_input_width(sae.preset, sae_overrides.pop("d_in", None))
    return gemmascope_sae_config(sae.preset.d_in, sae.preset.d_sae, sae.l0_coefficient, **sae_overrides)


def multi_config_for(saes: Sequence[PresetSAE], **overrides: Any) -> MultiSAETrainingRunnerConfig:
    """One multi-SAE config for SAEs of presets of one model with the same runner settings."""
    if not saes:
        raise ValueError("no SAEs to configure")
    presets = list({sae.preset.name: sae.preset for sae in saes}.values())
    models = {p.model_name for p in presets}
    if len(models) > 1:
        raise ValueError(f"one forward pass reads one model; got {sorted(models)}")
    runner = _shared_runner_overrides(presets, overrides)
    names = [sae.name for sae in saes]
    if len(set(names)) != len(names):
        raise ValueError(f"two SAEs share a name: {sorted(n for n in names if names.count(n) > 1)}")
    return gemmascope_multi_runner_config(
        {sae.name: sae_config_for(sae, overrides) for sae in saes},
        {sae.name: sae.preset.hook_name for sae in saes},
        model_name=presets[0].model_name,
        **{"training_tokens": presets[0].training_tokens, **runner},
    )


def _shared_runner_overrides(
    presets: Sequence[TrainingPreset], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    first = {**runner_overrides_of(presets[0], overrides)}
    first.setdefault("training_tokens", presets[0].training_tokens)
    for preset in presets[1:]:
        other = {**runner_overrides_of(preset, overrides)}
        other.setdefault("training_tokens", preset.training_tokens)
        if other != first:
            differing = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(
                f"presets {presets[0].name!r} and {preset.name!r} need different runner settings "
                f"({', '.join(differing)}), so they cannot share one forward pass"
            )
    return first


PresetsArg = TrainingPreset | str | Sequence[TrainingPreset | str]
CoefficientsArg = float | Sequence[float] | Mapping[str, Sequence[float]]


@overload
def training_config(
    presets: TrainingPreset | str, l0_coefficients: float, **overrides: Any
) -> LanguageModelSAERunnerConfig[GemmaScopeTrainingSAEConfig]: ...
@overload
def training_config(
    presets: PresetsArg, l0_coefficients: Sequence[float] | Mapping[str, Sequence[float]], **overrides: Any
) -> MultiSAETrainingRunnerConfig: ...
def training_config(
    presets: PresetsArg, l0_coefficients: CoefficientsArg, **overrides: Any
) -> LanguageModelSAERunnerConfig[GemmaScopeTrainingSAEConfig] | MultiSAETrainingRunnerConfig:
    """SAELens config(s) for presets (objects or registered names).

    ``l0_coefficients``: one λ (one preset: a ``LanguageModelSAERunnerConfig``), a ladder of λs
    applied to every preset, or preset name -> ladder (both: a ``MultiSAETrainingRunnerConfig``).
    λs for the released L0 targets come from :mod:`saelens_gemmascope.training.calibration`.
    ``overrides`` may set any runner or SAE config field (``lr=1e-4``, ``l0_warm_up_steps=500``).
    """
    resolved = resolve_presets(presets)
    if isinstance(l0_coefficients, int | float):
        if len(resolved) != 1:
            raise ValueError("one λ gives one SAE: pass one preset, or a ladder of λs")
        sae = PresetSAE(resolved[0], float(l0_coefficients))
        preset = sae.preset
        runner = runner_overrides_of(preset, overrides)
        runner.setdefault("training_tokens", preset.training_tokens)
        return gemmascope_runner_config(
            sae_config_for(sae, overrides), model_name=preset.model_name, hook_name=preset.hook_name, **runner
        )
    ladders = _ladders(resolved, l0_coefficients)
    saes = [PresetSAE(p, float(c)) for p in resolved for c in ladders[p.name]]
    return multi_config_for(saes, **overrides)


def _ladders(
    presets: Sequence[TrainingPreset], coefficients: Sequence[float] | Mapping[str, Sequence[float]]
) -> dict[str, Sequence[float]]:
    if isinstance(coefficients, Mapping):
        missing = [p.name for p in presets if p.name not in coefficients]
        if missing:
            raise ValueError(f"no λ ladder given for {missing}")
        return {p.name: coefficients[p.name] for p in presets}
    return {p.name: coefficients for p in presets}


def resolve_presets(presets: PresetsArg) -> list[TrainingPreset]:
    """Preset objects for presets or registered preset names."""
    items: Iterable[TrainingPreset | str] = (
        [presets] if isinstance(presets, TrainingPreset | str) else presets
    )
    return [registered_preset(p) if isinstance(p, str) else p for p in items]


def registered_preset(name: str) -> TrainingPreset:
    from saelens_gemmascope.host import load_plugins
    from saelens_gemmascope.models.spec import UnknownNameError, unknown_name_message

    registered = load_plugins().presets
    if name not in registered:
        raise UnknownNameError(
            unknown_name_message("preset", name, registered, list_command=_list_hint(name, registered))
        )
    return registered[name]


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as a Python literal, else JSON, else the plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected key=value, got {text!r}")
    raw = raw.strip()
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def parse_assignments(texts: Iterable[str]) -> dict[str, Any]:
    """``--set`` options as a dict (later ones win)."""
    return dict(parse_assignment(text) for text in texts)


def _list_hint(name: str, registered: Iterable[str]) -> str:
    """The ``gemmascope presets`` command listing the presets of ``name``'s model (or all)."""
    model = name.split("/", 1)[0]
    if "*" not in model and any(other.startswith(f"{model}/") for other in registered):
        return f"gemmascope presets '{model}/*'"
    return "gemmascope presets"


def match_presets(patterns: Iterable[str]) -> list[TrainingPreset]:
    """Registered presets matching any of the glob ``patterns`` (``*`` also crosses ``/``), in
    registration order; a pattern matching nothing raises ``UnknownNameError``."""
    from saelens_gemmascope.host import load_plugins
    from saelens_gemmascope.models.spec import UnknownNameError, unknown_name_message

    registered = load_plugins().presets
    chosen: dict[str, TrainingPreset] = {}
    for pattern in patterns:
        found = [p for name, p in registered.items() if fnmatch.fnmatchcase(name, pattern)]
        if not found:
            raise UnknownNameError(
                unknown_name_message(
                    "preset", pattern, registered, list_command=_list_hint(pattern, registered)
                )
            )
        chosen.update((p.name, p) for p in found)
    return list(chosen.values())
