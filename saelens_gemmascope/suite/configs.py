"""The one builder from a :class:`~saelens_gemmascope.runners.run_spec.RunSpec` plus presets to
SAELens runner configs, used by every entry path.

:func:`training_config` is the Python entry point: one preset and one λ give a
``LanguageModelSAERunnerConfig``; a ladder of λs, or several presets, give one
``MultiSAETrainingRunnerConfig`` whose SAEs all read one model forward pass. The suite runner and
the CLI call :func:`multi_config_for` / :func:`single_config_for` with their own run settings
(output, checkpoints, resume). Overrides are routed by
:func:`~saelens_gemmascope.runners.overrides.route_overrides`; precedence: recipe defaults < the
preset's ``overrides`` < the caller's < the run's device and dtype (on every device/dtype field).
"""

from __future__ import annotations

import ast
import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, overload

from sae_lens import LoggingConfig
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

from saelens_gemmascope.recipe.config import (
    GEMMASCOPE2_FREQUENCY_PENALTY,
    GEMMASCOPE2_L0_WARM_UP_STEPS,
    gemmascope_multi_runner_config,
    gemmascope_runner_config,
    gemmascope_sae_config,
    gemmascope_transcoder_config,
)
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAEConfig
from saelens_gemmascope.recipe.transcoder import SKIP_TRANSCODER_ARCHITECTURE
from saelens_gemmascope.runners.data_sources import STDLIB_SOURCE
from saelens_gemmascope.runners.overrides import RoutedOverrides, route_overrides
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.catalog import is_transcoder_preset, stream_key
from saelens_gemmascope.suite.checks import check_input_width
from saelens_gemmascope.suite.preset import TrainingPreset


@dataclass(frozen=True)
class PresetSAE:
    """One SAE of a preset's ladder: its λ and, when it came from calibration, its target L0."""

    preset: TrainingPreset
    l0_coefficient: float
    target_l0: float | None = None

    @property
    def name(self) -> str:
        return sae_name(self.preset, self.target_l0, self.l0_coefficient)


def sae_name(preset: TrainingPreset, target_l0: float | None, l0_coefficient: float | None) -> str:
    """``<preset>/target_l0_<L0>`` (or ``<preset>/l0_coef_<λ>`` without a target): unique in a run,
    and known before calibration (a target names the SAE whatever λ reaches it)."""
    if target_l0 is not None:
        return f"{preset.name}/target_l0_{target_l0:g}"
    if l0_coefficient is None:
        raise ValueError(f"an SAE of {preset.name} needs a target L0 or a λ")
    return f"{preset.name}/l0_coef_{l0_coefficient:g}"


@cache
def multi_runner_fields() -> frozenset[str]:
    return frozenset(f.name for f in fields(MultiSAETrainingRunnerConfig))


def routed_preset_overrides(preset: TrainingPreset) -> RoutedOverrides:
    """A preset's own overrides, routed to the runner and SAE sides like the caller's."""
    return route_overrides(preset.overrides)


def runner_settings_of(preset: TrainingPreset, spec: RunSpec) -> dict[str, Any]:
    """The runner-level settings a preset trains with (its own overrides, then the caller's),
    without the run-level device and dtype (the same for every preset of a run)."""
    return {
        "training_tokens": preset.training_tokens,
        **routed_preset_overrides(preset).runner,
        **spec.runner,
    }


def sae_settings_of(preset: TrainingPreset, spec: RunSpec) -> dict[str, Any]:
    """The SAE-level settings of a preset's SAEs: its overrides, the caller's, the run's device/dtype."""
    return {**routed_preset_overrides(preset).sae, **spec.sae_fields()}


def effective_d_sae(preset: TrainingPreset, spec: RunSpec) -> int:
    """The preset's latent count, or the caller's ``d_sae`` override."""
    return int(sae_settings_of(preset, spec).get("d_sae", preset.d_sae))


def sae_config_for(sae: PresetSAE, spec: RunSpec) -> GemmaScopeTrainingSAEConfig:
    sae.preset.require_trainable()
    settings = sae_settings_of(sae.preset, spec)
    check_input_width(sae.preset, settings.pop("d_in", None))
    d_sae = int(settings.pop("d_sae", sae.preset.d_sae))
    # The λ of a rung is the ladder's (explicit or calibrated); an l0_coefficient override is turned
    # into a one-rung ladder by the caller (see ladder_from_spec), never applied on top of it.
    settings.pop("l0_coefficient", None)
    if sae.preset.fixed_lambda:
        check_scope2_penalty(sae.preset, settings)
        # Gemma Scope 2's knobs first, so that the preset's and the caller's overrides win.
        settings = {**gemmascope2_recipe_fields(sae, settings.pop("target_l0", None)), **settings}
    if is_transcoder_preset(sae.preset):
        # The preset's architecture says plain or skip transcoder; it trains on the paired key.
        skip = sae.preset.architecture == SKIP_TRANSCODER_ARCHITECTURE
        return gemmascope_transcoder_config(sae.preset.d_in, d_sae, sae.l0_coefficient, skip=skip, **settings)
    only_transcoders = sorted(set(settings) & TRANSCODER_ONLY_FIELDS)
    if only_transcoders:
        raise ValueError(
            f"{', '.join(only_transcoders)}: transcoder setting(s), but {sae.preset.name!r} is an SAE preset"
        )
    return gemmascope_sae_config(sae.preset.d_in, d_sae, sae.l0_coefficient, **settings)


#: The L0 penalty of Gemma Scope 2's recipe (``recipe.config.gemmascope2_sae_config``).
SCOPE2_L0_PENALTY = "quadratic"


def check_scope2_penalty(preset: TrainingPreset, settings: Mapping[str, Any]) -> None:
    """Refuses another L0 penalty on a Gemma Scope 2 preset: with the linear one every rung would
    train the same SAE (one fixed λ, the targets ignored), yet be exported as ``l0_small``,
    ``l0_medium``... as if it had reached its target."""
    penalty = settings.get("l0_penalty", SCOPE2_L0_PENALTY)
    if penalty != SCOPE2_L0_PENALTY:
        raise ValueError(
            f"l0_penalty={penalty!r} on {preset.name}: Gemma Scope 2 presets train the quadratic penalty "
            "around each target; for a linear λ ladder use a Gemma Scope preset"
        )


def gemmascope2_recipe_fields(sae: PresetSAE, target_override: Any = None) -> dict[str, Any]:
    """Gemma Scope 2's recipe for one rung (what ``recipe.config.gemmascope2_sae_config`` sets, for
    SAEs and transcoders alike): the quadratic L0 penalty around the rung's target, λ warmed up over
    50,000 steps, the frequency penalty on. ``target_override`` (a ``target_l0`` override) gives the
    target of an SAE built outside a ladder (``training_config(preset, λ, target_l0=60)``)."""
    target = sae.target_l0
    if target is not None and target_override is not None and float(target_override) != target:
        raise ValueError(
            f"target_l0={target_override!r}: {sae.name} is the ladder's SAE of target L0 {target:g}; "
            "a Gemma Scope 2 preset's targets are its ladder"
        )
    target = target if target is not None else target_override
    if target is None:
        targets = ", ".join(f"{t:g}" for t in sae.preset.l0_targets)
        raise ValueError(
            f"{sae.preset.name} trains with Gemma Scope 2's quadratic L0 penalty, which needs a target L0: "
            f"give target_l0= (the preset's ladder: {targets})"
        )
    return {
        "l0_penalty": SCOPE2_L0_PENALTY,
        "target_l0": float(target),
        "l0_warm_up_steps": GEMMASCOPE2_L0_WARM_UP_STEPS,
        "frequency_penalty": GEMMASCOPE2_FREQUENCY_PENALTY,
    }


#: SAE-level settings only a transcoder config has.
TRANSCODER_ONLY_FIELDS = frozenset({"d_out", "encoder_init", "pre_encoder_bias"})


def run_defaults(spec: RunSpec) -> dict[str, Any]:
    """Output, checkpoint and logging fields for a spec used outside the suite runner: nothing is
    written unless the spec has an output folder (or asks for wandb)."""
    output = spec.output
    return {
        "logger": LoggingConfig(
            log_to_wandb=spec.wandb_project is not None, wandb_project=spec.wandb_project or "gemmascope"
        ),
        "output_path": str(output) if output is not None else None,
        "checkpoint_path": str(output / "checkpoints") if output is not None else None,
        "n_checkpoints": spec.n_checkpoints if output is not None else 0,
        "dataset_path": "" if spec.data == STDLIB_SOURCE else spec.data,
    }


def single_config_for(
    sae: PresetSAE, spec: RunSpec, **run_settings: Any
) -> LanguageModelSAERunnerConfig[GemmaScopeTrainingSAEConfig]:
    """The runner config of one SAE: preset, spec, then the run's own settings (output,
    checkpoints, resume, cached activations), which are this package's and not validated again."""
    preset = sae.preset
    settings = {**runner_settings_of(preset, spec), **spec.runner_fields(), **run_settings}
    return gemmascope_runner_config(
        sae_config_for(sae, spec), model_name=preset.model_name, hook_name=stream_key(preset), **settings
    )


def multi_config_for(
    saes: Sequence[PresetSAE], spec: RunSpec, **run_settings: Any
) -> MultiSAETrainingRunnerConfig:
    """One multi-SAE config for SAEs of presets of one model with the same runner settings."""
    if not saes:
        raise ValueError("no SAEs to configure")
    presets = list({sae.preset.name: sae.preset for sae in saes}.values())
    models = {p.model_name for p in presets}
    if len(models) > 1:
        raise ValueError(f"one forward pass reads one model; got {sorted(models)}")
    runner = _shared_runner_settings(presets, spec)
    single_only = sorted(set(spec.runner) - multi_runner_fields())
    if single_only:
        raise ValueError(
            f"{', '.join(single_only)}: field(s) of SAELens's single-SAE runner config only; the suite "
            "trains every pass through the multi-SAE runner, which has no such setting"
        )
    names = [sae.name for sae in saes]
    if len(set(names)) != len(names):
        raise ValueError(f"two SAEs share a name: {sorted(n for n in names if names.count(n) > 1)}")
    return gemmascope_multi_runner_config(
        {sae.name: sae_config_for(sae, spec) for sae in saes},
        {sae.name: stream_key(sae.preset) for sae in saes},
        model_name=presets[0].model_name,
        **{**runner, **spec.runner_fields(), **run_settings},
    )


def _shared_runner_settings(presets: Sequence[TrainingPreset], spec: RunSpec) -> dict[str, Any]:
    first = runner_settings_of(presets[0], spec)
    for preset in presets[1:]:
        other = runner_settings_of(preset, spec)
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
    presets: TrainingPreset | str, l0_coefficients: float, *, spec: RunSpec | None = None, **overrides: Any
) -> LanguageModelSAERunnerConfig[GemmaScopeTrainingSAEConfig]: ...
@overload
def training_config(
    presets: PresetsArg,
    l0_coefficients: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    spec: RunSpec | None = None,
    **overrides: Any,
) -> MultiSAETrainingRunnerConfig: ...
def training_config(
    presets: PresetsArg, l0_coefficients: CoefficientsArg, *, spec: RunSpec | None = None, **overrides: Any
) -> LanguageModelSAERunnerConfig[GemmaScopeTrainingSAEConfig] | MultiSAETrainingRunnerConfig:
    """SAELens config(s) for presets (objects or registered names).

    ``l0_coefficients``: one λ (one preset: a ``LanguageModelSAERunnerConfig``), a ladder of λs
    applied to every preset, or preset name -> ladder (both: a ``MultiSAETrainingRunnerConfig``).
    λs for the released L0 targets come from :mod:`saelens_gemmascope.suite.calibration`.
    ``overrides`` set run-level (``device``, ``dtype``), runner-level (``lr=1e-4``) or SAE-level
    (``l0_warm_up_steps=500``, ``d_sae=4096``) fields; ``sae.KEY`` / ``runner.KEY`` say which side
    explicitly. Or pass a whole :class:`RunSpec` as ``spec`` (output folder, data, checkpoints).
    The config runs as it is: ``GemmaScopeTrainingRunner(cfg).run()`` loads the preset's model and
    the spec's data, and writes nothing unless the spec has an output folder or a wandb project.
    """
    if spec is not None and overrides:
        raise ValueError("pass either spec=RunSpec(...) or keyword overrides, not both")
    spec = spec if spec is not None else RunSpec.from_overrides(overrides)
    if "l0_coefficient" in spec.sae:
        raise ValueError("λ is training_config's second argument; do not also set l0_coefficient")
    resolved = resolve_presets(presets)
    if isinstance(l0_coefficients, int | float):
        if len(resolved) != 1:
            raise ValueError("one λ gives one SAE: pass one preset, or a ladder of λs")
        return single_config_for(PresetSAE(resolved[0], float(l0_coefficients)), spec, **run_defaults(spec))
    ladders = _ladders(resolved, l0_coefficients)
    saes = [PresetSAE(p, float(c)) for p in resolved for c in ladders[p.name]]
    return multi_config_for(saes, spec, **run_defaults(spec))


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
    from saelens_gemmascope.models.spec import UnknownNameError, unknown_name_message
    from saelens_gemmascope.registry import registered_presets

    registered = registered_presets()
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
    if raw.lower().lstrip("+-") in {"nan", "inf", "infinity"}:
        return key, float(raw)  # a number, so that the check for finite numbers names it as one
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
    from saelens_gemmascope.models.spec import UnknownNameError, unknown_name_message
    from saelens_gemmascope.registry import registered_presets

    registered = registered_presets()
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
