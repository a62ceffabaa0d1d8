"""Route and check training overrides (``--set KEY=VALUE`` or keyword arguments) before anything runs.

A training run is configured by two SAELens dataclasses: the SAE's
:class:`~saelens_gemmascope.recipe.sae.GemmaScopeTrainingSAEConfig` and the runner's
``LanguageModelSAERunnerConfig`` / ``MultiSAETrainingRunnerConfig``. SAELens has no router between
them: a flat ``{key: value}`` had to be split by field name, and a key present on both configs went
silently to the SAE side only, so ``device`` never reached the runner, which places the model and the
activation store. A typo, a wrong type or an out-of-range value
only surfaced deep inside a run, if at all.

:func:`route_overrides` sends every key to exactly one place and refuses, with a one-line
:class:`OverrideError` that starts with the key as written and says what is accepted:

* ``device`` and ``dtype`` are run-level (:data:`RUN_LEVEL_KEYS`): the caller hands them to the
  model, the activation store, every SAE, the trainer and the optimiser;
* ``sae.KEY`` / ``runner.KEY`` pick a side explicitly; a bare key goes to the one side that has it,
  and a key on both sides must be prefixed;
* keys the run sets itself (:data:`DERIVED_DEVICE_KEYS`, :data:`STRUCTURAL_RUNNER_KEYS`) are
  refused with what sets them;
* values are checked against the field's annotation (``1e6`` for an int field becomes ``1000000``)
  and against the numeric policy table :data:`NUMERIC_CONSTRAINTS`.

Field tables are read from the dataclasses once (lazily, so importing this module is cheap).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

SAE_PREFIX = "sae"
RUNNER_PREFIX = "runner"
PREFIXES: tuple[str, ...] = (SAE_PREFIX, RUNNER_PREFIX)

SAE_CONFIG_NAME = "GemmaScopeTrainingSAEConfig"
RUNNER_CONFIG_NAME = "LanguageModelSAERunnerConfig"

RUN_LEVEL_KEYS: tuple[str, ...] = ("device", "dtype")
"""Run-level settings: they reach the LM, the activation store, every SAE, the trainer and the optimiser."""

DERIVED_DEVICE_KEYS: tuple[str, ...] = ("llm_device", "act_store_device")
"""Runner fields that follow the run's ``device``; refused."""

STRUCTURAL_RUNNER_KEYS: frozenset[str] = frozenset(
    {
        "sae",
        "saes",
        "hook_name",
        "hook_names",
        "hook_head_indices",
        "evaluator",
        "model_name",
        "logger",
        "output_path",
        "checkpoint_path",
        "resume_from_checkpoint",
        "n_checkpoints",
    }
)
"""Runner fields that presets or the run itself set; refused with what sets them."""

_STRUCTURAL_SOURCES: Mapping[str, str] = types.MappingProxyType(
    {
        "sae": "the preset and the λ ladder (one SAE config per λ)",
        "saes": "the preset and the λ ladder (one SAE config per λ)",
        "hook_name": "the preset",
        "hook_names": "the preset",
        "hook_head_indices": "the preset",
        "evaluator": "the trainer",
        "model_name": "the preset",
        "logger": "--wandb [PROJECT] (Python: wandb_project=...)",
        "output_path": "--output (Python: the output folder argument)",
        "checkpoint_path": "--output (checkpoints live under it)",
        "resume_from_checkpoint": "--resume (Python: resume=True)",
        "n_checkpoints": "--checkpoints / --checkpoint-every (Python: n_checkpoints=...)",
    }
)

_SAE_REFUSED: Mapping[str, str] = types.MappingProxyType({"metadata": "the run (SAELens writes it)"})
"""SAE-config fields that are not settings."""

_RUN_OPTIONS: Mapping[str, str] = types.MappingProxyType(
    {"init_from": "--init-from SOURCE (Python: RunSpec(init_from=...) or the runners' init_from=...)"}
)
"""Run options that are no config field, which a user may still try to ``--set``: where they go."""

DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")


@dataclass(frozen=True)
class Bound:
    """An allowed numeric range; ``None`` leaves that end open-ended."""

    low: float | None
    low_inclusive: bool
    high: float | None
    high_inclusive: bool
    text: str

    def admits(self, x: float) -> bool:
        if self.low is not None and (x < self.low or (x == self.low and not self.low_inclusive)):
            return False
        return not (self.high is not None and (x > self.high or (x == self.high and not self.high_inclusive)))


POSITIVE = Bound(0.0, False, None, False, "> 0")
NON_NEGATIVE = Bound(0.0, True, None, False, ">= 0")
IN_0_1_OPEN = Bound(0.0, True, 1.0, False, "in [0, 1)")
IN_0_1 = Bound(0.0, True, 1.0, True, "in [0, 1]")
IN_OPEN_0_1 = Bound(0.0, False, 1.0, True, "in (0, 1]")

NUMERIC_CONSTRAINTS: Mapping[str, Bound] = types.MappingProxyType(
    {
        # strictly positive
        "training_tokens": POSITIVE,
        "train_batch_size_tokens": POSITIVE,
        "context_size": POSITIVE,
        "n_batches_in_buffer": POSITIVE,
        "store_batch_size_prompts": POSITIVE,
        "lr": POSITIVE,
        "d_sae": POSITIVE,
        "d_in": POSITIVE,
        "l0_coefficient": POSITIVE,
        "jumprelu_bandwidth": POSITIVE,
        "jumprelu_init_threshold": POSITIVE,
        "adam_eps": POSITIVE,
        "n_batches_for_norm_estimate": POSITIVE,
        "decoder_init_norm": POSITIVE,
        # The SAE config itself requires (0, 1]; saying so here fails before anything is built.
        "lr_warm_up_start_fraction": IN_OPEN_0_1,
        "eval_batch_size_prompts": POSITIVE,
        "max_grad_norm": POSITIVE,
        "target_l0": POSITIVE,
        # non-negative
        "frequency_penalty": NON_NEGATIVE,
        "frequency_input_gradient": NON_NEGATIVE,
        "lr_warm_up_steps": NON_NEGATIVE,
        "l0_warm_up_steps": NON_NEGATIVE,
        "lr_decay_steps": NON_NEGATIVE,
        "seed": NON_NEGATIVE,
        "n_eval_batches": NON_NEGATIVE,
        # fractions
        "adam_beta1": IN_0_1_OPEN,
        "adam_beta2": IN_0_1_OPEN,
        "activations_mixing_fraction": IN_0_1,
        "frequency_cap": IN_0_1_OPEN,
    }
)
"""Numeric policy, one place: a field's value (when a number, not ``None``) must lie in its bound."""


class OverrideError(ValueError):
    """An override that cannot be routed or is not accepted; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True)
class RoutedOverrides:
    """Overrides by destination, keyed by bare field name."""

    run: dict[str, Any]
    """``device`` and ``dtype``: for the model, the activation store, every SAE, trainer and optimiser."""
    runner: dict[str, Any]
    """Fields of SAELens's runner config."""
    sae: dict[str, Any]
    """Fields of :class:`~saelens_gemmascope.recipe.sae.GemmaScopeTrainingSAEConfig`."""


# -- field tables --------------------------------------------------------------------------------


def _field_hints(cls: type, exclude: Iterable[str]) -> dict[str, Any]:
    """Field name -> resolved annotation (``Any``, i.e. no type check, where it cannot be resolved)."""
    skip = set(exclude)
    try:
        hints: dict[str, Any] = typing.get_type_hints(cls)
    except Exception:
        hints = {}  # one unresolvable field spoils the lot: resolve field by field below
    table: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        table[f.name] = hints[f.name] if f.name in hints else _resolve_one(cls, f.name, f.type)
    return table


def _resolve_one(cls: type, name: str, annotation: Any) -> Any:
    """One field's annotation, evaluated where its class was defined (as ``get_type_hints`` would)."""
    if not isinstance(annotation, str):
        return annotation
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            module = sys.modules.get(klass.__module__)
            globalns = dict(vars(module)) if module is not None else {}
            try:
                return eval(annotation, globalns, dict(vars(klass)))
            except Exception:
                return Any
    return Any


@functools.cache
def sae_field_types() -> Mapping[str, Any]:
    """Settable fields of ``GemmaScopeTrainingSAEConfig`` and their annotations, with the transcoder
    config's own (``d_out``, ``encoder_init``, ``pre_encoder_bias``: a superset; an SAE refuses them)."""
    from saelens_gemmascope.recipe.transcoder import GemmaScopeTrainingTranscoderConfig

    return types.MappingProxyType(
        _field_hints(GemmaScopeTrainingTranscoderConfig, ("metadata", *RUN_LEVEL_KEYS))
    )


@functools.cache
def runner_field_types() -> Mapping[str, Any]:
    """Public fields of SAELens's single- and multi-SAE runner configs and their annotations."""
    from sae_lens.config import LanguageModelSAERunnerConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

    table: dict[str, Any] = {}
    for cls in (LanguageModelSAERunnerConfig, MultiSAETrainingRunnerConfig):
        for name, hint in _field_hints(cls, RUN_LEVEL_KEYS).items():
            if name in table and table[name] != hint:
                try:
                    hint = table[name] | hint
                except TypeError:
                    hint = Any
            table[name] = hint
    return types.MappingProxyType(table)


def sae_field_names() -> frozenset[str]:
    """Names of the settable fields of ``GemmaScopeTrainingSAEConfig`` (no ``metadata``/``device``/``dtype``)."""
    return frozenset(sae_field_types())


def runner_field_names() -> frozenset[str]:
    """Names of the public fields of SAELens's runner configs (no ``device``/``dtype``)."""
    return frozenset(runner_field_types())


# -- routing -------------------------------------------------------------------------------------


def route_overrides(values: Mapping[str, Any]) -> RoutedOverrides:
    """Send each override to the run, the runner config or the SAE config, checking its value.

    Raises :class:`OverrideError` (a one-line ``ValueError``) on the first key that cannot be routed
    or whose value is not accepted.
    """
    return route_with_tables(values, sae_field_types(), runner_field_types())


def route_with_tables(
    values: Mapping[str, Any], sae_fields: Mapping[str, Any], runner_fields: Mapping[str, Any]
) -> RoutedOverrides:
    """:func:`route_overrides` against given field tables (name -> annotation), e.g. fakes in tests."""
    routed = RoutedOverrides(run={}, runner={}, sae={})
    written: dict[tuple[str, str], str] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise OverrideError(f"{key!r}: setting names are strings, e.g. lr or sae.l0_coefficient")
        side, name = _destination(key, sae_fields, runner_fields)
        if (side, name) in written:
            raise OverrideError(
                f"{key}: the same setting is also given as {written[side, name]}; give it once"
            )
        written[side, name] = key
        if side == "run":
            routed.run[name] = _check_run_value(key, name, value)
        else:
            hint = (sae_fields if side == SAE_PREFIX else runner_fields)[name]
            checked = _check_value(key, value, hint)
            _check_bound(key, name, value, checked)
            (routed.sae if side == SAE_PREFIX else routed.runner)[name] = checked
    return routed


def _destination(
    key: str, sae_fields: Mapping[str, Any], runner_fields: Mapping[str, Any]
) -> tuple[str, str]:
    """(``"run"``, ``"sae"`` or ``"runner"``, bare field name) for a key as written."""
    prefix, dot, name = key.partition(".")
    if not dot:
        return _bare_destination(key, sae_fields, runner_fields)
    if prefix not in PREFIXES:
        close = difflib.get_close_matches(prefix, PREFIXES, n=1)
        hint = f" (did you mean {close[0]}.{name}?)" if close else ""
        raise OverrideError(
            f"{key}: unknown prefix {prefix!r}{hint}; write sae.KEY, runner.KEY or a bare KEY"
        )
    if name in RUN_LEVEL_KEYS:
        raise OverrideError(_run_level_message(key, name))
    _refuse_set_by_run(key, name)
    own, other = (sae_fields, runner_fields) if prefix == SAE_PREFIX else (runner_fields, sae_fields)
    if name in own:
        return prefix, name
    other_prefix = RUNNER_PREFIX if prefix == SAE_PREFIX else SAE_PREFIX
    own_config = SAE_CONFIG_NAME if prefix == SAE_PREFIX else RUNNER_CONFIG_NAME
    if name in other:
        raise OverrideError(
            f"{key}: {name} is {_side_word(other_prefix)} setting, not {_side_word(prefix)} one; "
            f"write {name} or {other_prefix}.{name}"
        )
    suggestions = [f"{prefix}.{n}" for n in difflib.get_close_matches(name, sorted(own), n=3)]
    tail = f"; did you mean {_either(suggestions)}?" if suggestions else f"; see the fields of {own_config}"
    raise OverrideError(f"{key}: {own_config} has no field {name!r}{tail}")


def _bare_destination(
    key: str, sae_fields: Mapping[str, Any], runner_fields: Mapping[str, Any]
) -> tuple[str, str]:
    if key in RUN_LEVEL_KEYS:
        return "run", key
    _refuse_set_by_run(key, key)
    on_sae, on_runner = key in sae_fields, key in runner_fields
    if on_sae and on_runner:
        raise OverrideError(
            f"{key}: ambiguous key, a field of both {SAE_CONFIG_NAME} and {RUNNER_CONFIG_NAME}; "
            f"write sae.{key} or runner.{key}"
        )
    if on_sae:
        return SAE_PREFIX, key
    if on_runner:
        return RUNNER_PREFIX, key
    raise OverrideError(_unknown_message(key, sae_fields, runner_fields))


def _refuse_set_by_run(key: str, name: str) -> None:
    if name in DERIVED_DEVICE_KEYS:
        raise OverrideError(
            f"{key}: follows the run's device; set device=... (--device) instead, which moves "
            "the model, the activation store and every SAE together"
        )
    if name in STRUCTURAL_RUNNER_KEYS:
        source = _STRUCTURAL_SOURCES.get(name, "the preset or the run itself")
        raise OverrideError(f"{key}: not an override; it is set by {source}")
    if name in _SAE_REFUSED:
        raise OverrideError(f"{key}: not an override; it is set by {_SAE_REFUSED[name]}")
    if name in _RUN_OPTIONS:
        raise OverrideError(f"{key}: not a config setting; give it as {_RUN_OPTIONS[name]}")


def _run_level_message(key: str, name: str) -> str:
    how = (
        "device=... (--device or --set device=...)" if name == "device" else f"{name}=... (--set {name}=...)"
    )
    return (
        f"{key}: {name} is a run-level setting (it reaches the model, the activation store, every SAE, "
        f"the trainer and the optimiser); set it as {how}, without a prefix"
    )


def _ambiguous(sae_fields: Mapping[str, Any], runner_fields: Mapping[str, Any]) -> set[str]:
    return set(sae_fields) & set(runner_fields)


def _refused(name: str) -> bool:
    return name in DERIVED_DEVICE_KEYS or name in STRUCTURAL_RUNNER_KEYS or name in _SAE_REFUSED


def _unknown_message(key: str, sae_fields: Mapping[str, Any], runner_fields: Mapping[str, Any]) -> str:
    both = _ambiguous(sae_fields, runner_fields)
    # What a user may write: run-level keys, bare unambiguous fields, prefixed ambiguous ones.
    written: dict[str, list[str]] = {k: [k] for k in RUN_LEVEL_KEYS}
    for name in (*sae_fields, *runner_fields):
        if not _refused(name):
            written[name] = [f"sae.{name}", f"runner.{name}"] if name in both else [name]
    close = difflib.get_close_matches(key, sorted(written), n=3)
    suggestions = [form for name in close for form in written[name]]
    if suggestions:
        return f"{key}: unknown setting {key!r}; did you mean {_either(suggestions)}?"
    return (
        f"{key}: unknown setting {key!r}; see the fields of {SAE_CONFIG_NAME} and {RUNNER_CONFIG_NAME} "
        f"(or the run-level {_either(RUN_LEVEL_KEYS, 'and')})"
    )


def _side_word(prefix: str) -> str:
    return "an SAE" if prefix == SAE_PREFIX else "a runner"


def _either(options: Iterable[object], word: str = "or", *, quote: bool = True) -> str:
    """``'a', 'b' or 'c'`` (each option's repr, or its str with ``quote=False``)."""
    shown = [repr(o) if quote else str(o) for o in options]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} {word} {shown[-1]}"


# -- values --------------------------------------------------------------------------------------


class _Mismatch(Exception):
    """The value does not fit an annotation; ``expected`` says what would."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _show(key: str, value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{key}={text}"


def _check_run_value(key: str, name: str, value: Any) -> str:
    if name == "dtype":
        if not isinstance(value, str) or value not in DTYPES:
            raise OverrideError(f"{_show(key, value)}: expected one of {_either(DTYPES)}")
        return value
    if not isinstance(value, str):
        raise OverrideError(f"{_show(key, value)}: expected a device name such as 'cpu', 'cuda' or 'cuda:1'")
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise OverrideError(
            f"{_show(key, value)}: not a torch device; expected e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from None
    return value


def _check_value(key: str, value: Any, hint: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise OverrideError(f"{_show(key, value)}: must be a finite number")
    try:
        return _coerce(value, hint)
    except _Mismatch as mismatch:
        raise OverrideError(f"{_show(key, value)}: expected {mismatch.expected}") from None


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` accepts it (ints from integral floats, floats from ints)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        options = typing.get_args(hint)
        if any(type(value) is type(option) and value == option for option in options):
            return value
        raise _Mismatch("one of " + ", ".join(repr(o) for o in options))
    if origin is Union or origin is types.UnionType:
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        expected: list[str] = []
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member)
            except _Mismatch as mismatch:
                expected.append(mismatch.expected)
        if type(None) in members:
            expected.append("None")
        raise _Mismatch(_either(expected, quote=False))
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch("None")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("a boolean (True or False)")
    if hint is int:
        if isinstance(value, bool):
            raise _Mismatch("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch("an integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    # Containers, Any, type variables, classes: accepted as they are; their config checks them.
    return value


def _check_bound(key: str, name: str, value: Any, checked: Any) -> None:
    """``checked`` (``value`` after conversion) against the policy table."""
    bound = NUMERIC_CONSTRAINTS.get(name)
    if bound is None or isinstance(checked, bool) or not isinstance(checked, int | float):
        return
    if not bound.admits(checked):
        raise OverrideError(f"{_show(key, value)}: must be {bound.text}")
