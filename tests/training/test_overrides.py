"""Routing and checking of training overrides (``--set KEY=VALUE`` / keyword arguments)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import pytest
from sae_lens.config import LanguageModelSAERunnerConfig

from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAEConfig
from saelens_gemmascope.runners import overrides
from saelens_gemmascope.runners.overrides import (
    DERIVED_DEVICE_KEYS,
    NUMERIC_CONSTRAINTS,
    RUN_LEVEL_KEYS,
    STRUCTURAL_RUNNER_KEYS,
    OverrideError,
    RoutedOverrides,
    route_overrides,
    route_with_tables,
    runner_field_names,
    sae_field_names,
)


def error_of(values: dict[Any, Any]) -> str:
    with pytest.raises(OverrideError) as caught:
        route_overrides(values)
    return str(caught.value)


# -- field tables --------------------------------------------------------------------------------


def test_field_tables_hold_each_side_and_leave_out_run_level_and_private_names() -> None:
    sae, runner = sae_field_names(), runner_field_names()
    assert {"l0_coefficient", "d_sae", "d_in", "fast_path", "adam_eps", "max_grad_norm"} <= sae
    assert {"lr", "training_tokens", "context_size", "seed", "adam_beta1"} <= runner
    # Both runner configs contribute: single-SAE only and multi-SAE only fields.
    assert {"hook_name", "sae", "hook_names", "saes"} <= runner
    for table in (sae, runner):
        assert not set(RUN_LEVEL_KEYS) & table
        assert not any(name.startswith("_") for name in table)
    assert "metadata" not in sae


def test_field_tables_are_cached() -> None:
    assert overrides.sae_field_types() is overrides.sae_field_types()
    assert overrides.runner_field_types() is overrides.runner_field_types()


def test_every_policy_key_is_a_real_field() -> None:
    """A typo in the numeric policy table would silently check nothing."""
    assert set(NUMERIC_CONSTRAINTS) <= sae_field_names() | runner_field_names()


def test_unresolvable_hint_means_no_type_check() -> None:
    @dataclasses.dataclass
    class Broken:
        good: int = 1
        bad: NoSuchType = None  # type: ignore[name-defined]  # noqa: F821

    table = overrides._field_hints(Broken, ())
    assert table["good"] is int
    assert table["bad"] is Any
    routed = route_with_tables({"bad": object, "good": 2.0}, {}, table)
    assert routed.runner == {"bad": object, "good": 2}


# -- routing -------------------------------------------------------------------------------------


def test_bare_keys_go_to_their_side() -> None:
    routed = route_overrides(
        {"lr": 1e-4, "l0_coefficient": 6e-4, "d_sae": 4096, "device": "cuda:1", "dtype": "bfloat16"}
    )
    assert routed == RoutedOverrides(
        run={"device": "cuda:1", "dtype": "bfloat16"},
        runner={"lr": 1e-4},
        sae={"l0_coefficient": 6e-4, "d_sae": 4096},
    )


def test_prefixed_keys_pick_their_side() -> None:
    routed = route_overrides({"sae.fast_path": "sparse", "runner.seed": 7, "sae.l0_warm_up_steps": 0})
    assert routed.sae == {"fast_path": "sparse", "l0_warm_up_steps": 0}
    assert routed.runner == {"seed": 7}
    assert routed.run == {}


def test_empty_overrides_route_to_nothing() -> None:
    assert route_overrides({}) == RoutedOverrides(run={}, runner={}, sae={})


def test_device_reaches_both_configs_when_the_caller_applies_the_run_level() -> None:
    routed = route_overrides({"device": "meta", "lr": 3e-4, "d_sae": 32.0, "l0_coefficient": 2e-3})
    sae = GemmaScopeTrainingSAEConfig(d_in=8, **routed.sae, **routed.run)
    runner = LanguageModelSAERunnerConfig(
        sae=sae,
        model_name="tiny-gemma-2",
        hook_name="blocks.0.hook_resid_post",
        **routed.runner,
        **routed.run,
    )
    assert (sae.device, runner.device, sae.d_sae, runner.lr) == ("meta", "meta", 32, 3e-4)


def test_a_key_on_both_sides_must_be_prefixed() -> None:
    sae_fields: dict[str, Any] = {"width": int, "only_sae": float}
    runner_fields: dict[str, Any] = {"width": int, "only_runner": str}
    with pytest.raises(OverrideError, match=r"^width: ambiguous key.*write sae\.width or runner\.width$"):
        route_with_tables({"width": 3}, sae_fields, runner_fields)
    routed = route_with_tables(
        {"sae.width": 3, "runner.width": 5, "only_sae": 1, "only_runner": "x"}, sae_fields, runner_fields
    )
    assert routed.sae == {"width": 3, "only_sae": 1.0}
    assert routed.runner == {"width": 5, "only_runner": "x"}


def test_a_misspelt_ambiguous_key_suggests_both_prefixed_forms() -> None:
    with pytest.raises(OverrideError, match=r"did you mean 'sae\.width' or 'runner\.width'\?"):
        route_with_tables({"widht": 3}, {"width": int}, {"width": int})


def test_the_real_tables_route_every_bare_field() -> None:
    """Every settable field routes somewhere, either bare or (when on both sides) prefixed."""
    sae, runner = sae_field_names(), runner_field_names()
    refused = STRUCTURAL_RUNNER_KEYS | set(DERIVED_DEVICE_KEYS)
    for name in (sae | runner) - refused:
        keys = [f"sae.{name}", f"runner.{name}"] if name in sae and name in runner else [name]
        for key in keys:
            try:
                route_overrides({key: None})
            except OverrideError as error:
                # A value error is fine here; a routing error is not.
                assert str(error).startswith(f"{key}=None: "), str(error)


def test_the_same_setting_given_twice_is_refused() -> None:
    assert error_of({"lr": 1e-4, "runner.lr": 2e-4}) == (
        "runner.lr: the same setting is also given as lr; give it once"
    )


# -- refused keys --------------------------------------------------------------------------------


def test_unknown_key_suggests_close_matches() -> None:
    assert error_of({"lrr": 1e-4}) == "lrr: unknown setting 'lrr'; did you mean 'lr'?"
    assert "'l0_coefficient'" in error_of({"l0_coeficient": 1e-3})


def test_unknown_key_without_a_close_match_points_at_the_configs() -> None:
    message = error_of({"xyzzy_quux": 1})
    assert message.startswith("xyzzy_quux: unknown setting")
    assert "GemmaScopeTrainingSAEConfig" in message and "LanguageModelSAERunnerConfig" in message
    assert "did you mean" not in message


def test_unknown_prefix_names_the_valid_ones() -> None:
    message = error_of({"foo.lr": 1e-4})
    assert message.startswith("foo.lr: unknown prefix 'foo'")
    assert "sae.KEY" in message and "runner.KEY" in message
    assert "did you mean sae.lr?" in error_of({"saes.lr": 1e-4})


def test_prefixed_key_on_the_wrong_side_says_where_it_lives() -> None:
    assert (
        error_of({"sae.lr": 1e-4}) == "sae.lr: lr is a runner setting, not an SAE one; write lr or runner.lr"
    )
    assert "write l0_coefficient or sae.l0_coefficient" in error_of({"runner.l0_coefficient": 1e-3})


def test_prefixed_unknown_field_suggests_from_its_own_side() -> None:
    assert error_of({"sae.l0_coeficient": 1e-3}).endswith("did you mean 'sae.l0_coefficient'?")
    assert error_of({"runner.zzzzzz": 1}).endswith("see the fields of LanguageModelSAERunnerConfig")


@pytest.mark.parametrize("key", ["sae.device", "runner.device", "sae.dtype", "runner.dtype"])
def test_prefixed_run_level_key_is_refused(key: str) -> None:
    name = key.split(".")[1]
    message = error_of({key: "cpu" if name == "device" else "float32"})
    assert message.startswith(f"{key}: {name} is a run-level setting")
    assert "every SAE" in message and "optimiser" in message
    assert f"{name}=..." in message and "without a prefix" in message


@pytest.mark.parametrize("key", [*DERIVED_DEVICE_KEYS, *(f"runner.{k}" for k in DERIVED_DEVICE_KEYS)])
def test_derived_device_keys_are_refused(key: str) -> None:
    message = error_of({key: "cpu"})
    assert message.startswith(f"{key}: follows the run's device")
    assert "device=..." in message


@pytest.mark.parametrize("key", sorted(STRUCTURAL_RUNNER_KEYS))
def test_structural_keys_are_refused_with_what_sets_them(key: str) -> None:
    for written in (key, f"runner.{key}"):
        message = error_of({written: "x"})
        assert message.startswith(f"{written}: not an override; it is set by ")


@pytest.mark.parametrize(
    ("key", "setter"),
    [
        ("output_path", "--output"),
        ("checkpoint_path", "--output"),
        ("n_checkpoints", "--checkpoints"),
        ("resume_from_checkpoint", "--resume"),
        ("logger", "--wandb"),
        ("hook_name", "the preset"),
        ("saes", "the preset"),
    ],
)
def test_structural_messages_name_the_setter(key: str, setter: str) -> None:
    assert setter in error_of({key: "x"})


def test_metadata_is_refused() -> None:
    assert error_of({"sae.metadata": {}}).startswith("sae.metadata: not an override")


def test_non_string_key_is_refused() -> None:
    assert error_of({3: 1}).startswith("3: setting names are strings")


# -- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("context_size", "abc", "context_size='abc': expected an integer"),
        ("context_size", 1.5, "context_size=1.5: expected an integer"),
        ("context_size", True, "context_size=True: expected an integer"),
        ("d_sae", [4096], "d_sae=[4096]: expected an integer"),
        ("lr", True, "lr=True: expected a number"),
        ("lr", "1e-4", "lr='1e-4': expected a number"),
        ("unit_norm_decoder", 1, "unit_norm_decoder=1: expected a boolean (True or False)"),
        ("unit_norm_decoder", "true", "unit_norm_decoder='true': expected a boolean (True or False)"),
        ("lr_scheduler_name", 3, "lr_scheduler_name=3: expected a string"),
        ("fast_path", "quick", "fast_path='quick': expected one of 'auto', 'dense', 'sparse'"),
        ("sae.threshold_parametrisation", "exp", "sae.threshold_parametrisation='exp': expected one of 'direct', 'log'"),
        ("max_grad_norm", "a", "max_grad_norm='a': expected a number or None"),
        ("eval_batch_size_prompts", 2.5, "eval_batch_size_prompts=2.5: expected an integer or None"),
        (
            "sequence_separator_token",
            "cls",
            "sequence_separator_token='cls': expected an integer, one of 'bos', 'eos', 'sep' or None",
        ),
        ("prefetch_llm_batches", "x", "prefetch_llm_batches='x': expected a boolean (True or False) or an integer"),
    ],
)  # fmt: skip
def test_type_errors(key: str, value: Any, message: str) -> None:
    assert error_of({key: value}) == message


def test_none_is_refused_where_the_field_is_not_optional() -> None:
    assert error_of({"lr": None}) == "lr=None: expected a number"
    assert route_overrides({"max_grad_norm": None}).sae == {"max_grad_norm": None}


def test_integral_floats_become_ints() -> None:
    routed = route_overrides({"training_tokens": 1e6, "d_sae": 4096.0, "runner.seed": 3.0})
    assert routed.runner == {"training_tokens": 1_000_000, "seed": 3}
    assert routed.sae == {"d_sae": 4096}
    assert type(routed.runner["training_tokens"]) is int and type(routed.sae["d_sae"]) is int


def test_ints_become_floats_for_float_fields() -> None:
    routed = route_overrides({"lr": 1, "max_grad_norm": 2})
    assert routed.runner == {"lr": 1.0} and type(routed.runner["lr"]) is float
    assert routed.sae == {"max_grad_norm": 2.0} and type(routed.sae["max_grad_norm"]) is float


def test_unions_accept_any_member_and_keep_booleans() -> None:
    routed = route_overrides(
        {"prefetch_llm_batches": True, "sequence_separator_token": "bos", "exclude_special_tokens": [1, 2]}
    )
    assert routed.runner["prefetch_llm_batches"] is True
    assert routed.runner["sequence_separator_token"] == "bos"
    assert routed.runner["exclude_special_tokens"] == [1, 2]
    assert route_overrides({"prefetch_llm_batches": 2.0}).runner == {"prefetch_llm_batches": 2}
    assert route_overrides({"sequence_separator_token": None}).runner == {"sequence_separator_token": None}


def test_literal_does_not_confuse_booleans_with_ints() -> None:
    table: dict[str, Any] = {"mode": Literal[0, 1], "maybe": Literal["a"] | None}
    assert route_with_tables({"mode": 1}, table, {}).sae == {"mode": 1}
    with pytest.raises(OverrideError, match=r"^mode=True: expected one of 0, 1$"):
        route_with_tables({"mode": True}, table, {})
    assert route_with_tables({"maybe": None}, table, {}).sae == {"maybe": None}
    with pytest.raises(OverrideError, match=r"^maybe='b': expected one of 'a' or None$"):
        route_with_tables({"maybe": "b"}, table, {})


def test_containers_and_other_types_pass_as_they_are() -> None:
    kwargs = {"trust_remote_code": True}
    routed = route_overrides({"model_kwargs": kwargs, "seqpos_slice": (0, None)})
    assert routed.runner["model_kwargs"] is kwargs
    assert routed.runner["seqpos_slice"] == (0, None)


# -- run-level values ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_dtype_accepts_the_four_names(dtype: str) -> None:
    assert route_overrides({"dtype": dtype}).run == {"dtype": dtype}


@pytest.mark.parametrize("dtype", ["fp16", "torch.float32", "int8", 32, None])
def test_dtype_refuses_other_values(dtype: Any) -> None:
    message = error_of({"dtype": dtype})
    assert message.startswith(
        f"dtype={dtype!r}: expected one of 'float32', 'float64', 'float16' or 'bfloat16'"
    )


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps", "meta"])
def test_device_accepts_torch_devices(device: str) -> None:
    assert route_overrides({"device": device}).run == {"device": device}


# Explicit ids: an id "gpu" would become the keyword that marks CUDA-only tests (see conftest).
@pytest.mark.parametrize("device", ["gpu", "cuda:x", ""], ids=["unknown-type", "bad-index", "empty"])
def test_device_refuses_what_torch_cannot_parse(device: str) -> None:
    assert error_of({"device": device}).startswith(f"device={device!r}: not a torch device")


@pytest.mark.parametrize("device", [0, None, ["cpu"]])
def test_device_must_be_a_string(device: Any) -> None:
    assert error_of({"device": device}).startswith(f"device={device!r}: expected a device name")


# -- numeric policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["lr", "l0_coefficient", "adam_beta1", "context_size", "sae.jumprelu_bandwidth"]
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(key: str, value: float) -> None:
    assert error_of({key: value}) == f"{key}={value!r}: must be a finite number"


def test_non_finite_numbers_are_refused_even_without_a_policy() -> None:
    assert "dead_feature_threshold" not in NUMERIC_CONSTRAINTS
    assert error_of({"dead_feature_threshold": math.nan}).endswith("must be a finite number")


@pytest.mark.parametrize(
    "key",
    [
        "training_tokens",
        "train_batch_size_tokens",
        "context_size",
        "n_batches_in_buffer",
        "store_batch_size_prompts",
        "lr",
        "d_sae",
        "d_in",
        "l0_coefficient",
        "jumprelu_bandwidth",
        "jumprelu_init_threshold",
        "adam_eps",
        "n_batches_for_norm_estimate",
        "decoder_init_norm",
        "lr_warm_up_start_fraction",
        "eval_batch_size_prompts",
        "max_grad_norm",
    ],
)
@pytest.mark.parametrize("value", [0, -1])
def test_strictly_positive_settings_refuse_zero_and_negatives(key: str, value: int) -> None:
    message = error_of({key: value})
    assert message.startswith(f"{key}={value!r}: must be ")
    assert "> 0" in message or "(0, 1]" in message


@pytest.mark.parametrize(
    "key", ["lr_warm_up_steps", "l0_warm_up_steps", "lr_decay_steps", "seed", "n_eval_batches"]
)
def test_non_negative_settings_take_zero_and_refuse_negatives(key: str) -> None:
    routed = route_overrides({key: 0})
    assert 0 in (*routed.sae.values(), *routed.runner.values())
    assert error_of({key: -1}) == f"{key}=-1: must be >= 0"


def test_adam_betas_lie_in_the_half_open_unit_interval() -> None:
    assert route_overrides({"adam_beta1": 0, "adam_beta2": 0.999}).runner == {
        "adam_beta1": 0.0,
        "adam_beta2": 0.999,
    }
    assert error_of({"adam_beta2": 1.0}) == "adam_beta2=1.0: must be in [0, 1)"
    assert error_of({"adam_beta1": -0.1}) == "adam_beta1=-0.1: must be in [0, 1)"


def test_mixing_fraction_lies_in_the_closed_unit_interval() -> None:
    assert route_overrides({"activations_mixing_fraction": 1}).runner == {"activations_mixing_fraction": 1.0}
    assert route_overrides({"activations_mixing_fraction": 0.0}).runner == {
        "activations_mixing_fraction": 0.0
    }
    assert (
        error_of({"activations_mixing_fraction": 1.5}) == "activations_mixing_fraction=1.5: must be in [0, 1]"
    )


def test_warm_up_start_fraction_matches_the_sae_configs_own_range() -> None:
    assert route_overrides({"lr_warm_up_start_fraction": 1}).sae == {"lr_warm_up_start_fraction": 1.0}
    assert error_of({"lr_warm_up_start_fraction": 1.5}).endswith("must be in (0, 1]")


def test_optional_positive_settings_take_none() -> None:
    routed = route_overrides(
        {"max_grad_norm": None, "decoder_init_norm": None, "eval_batch_size_prompts": None}
    )
    assert routed.sae == {"max_grad_norm": None, "decoder_init_norm": None}
    assert routed.runner == {"eval_batch_size_prompts": None}


# -- messages ------------------------------------------------------------------------------------


class MultiLineRepr:
    def __repr__(self) -> str:
        return "first line\nsecond line"


BAD = [
    {"lrr": 1},
    {"xyzzy_quux": 1},
    {"foo.lr": 1},
    {"sae.device": "cpu"},
    {"runner.dtype": "float32"},
    {"sae.lr": 1e-3},
    {"sae.l0_coeficient": 1e-3},
    {"llm_device": "cpu"},
    {"output_path": "out"},
    {"context_size": "abc"},
    {"lr": math.nan},
    {"lr": 0},
    {"fast_path": "quick"},
    {"dtype": "fp16"},
    {"device": "gpu"},
    {"lr_scheduler_name": MultiLineRepr()},
    {"lr": "x" * 500},
    {"lr": 1e-4, "runner.lr": 1e-4},
]


@pytest.mark.parametrize("values", BAD, ids=[next(reversed(v)) for v in BAD])
def test_every_error_is_one_line_starting_with_the_key(values: dict[str, Any]) -> None:
    message = error_of(values)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(next(reversed(values)))
    assert len(message) < 300


def test_override_error_is_a_value_error() -> None:
    assert issubclass(OverrideError, ValueError)
    assert str(OverrideError("a\nb")) == "a b"


def test_the_caller_mapping_is_not_modified() -> None:
    values = {"training_tokens": 1e6, "device": "cpu"}
    route_overrides(values)
    assert values == {"training_tokens": 1e6, "device": "cpu"}
