"""Config helpers: SAELens configs with the Gemma Scope recipe's values as defaults.

Every default can be overridden by keyword; anything not listed here keeps SAELens's default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAEConfig
from saelens_gemmascope.recipe.transcoder import (
    GemmaScopeTrainingSkipTranscoderConfig,
    GemmaScopeTrainingTranscoderConfig,
)


class BufferTooSmallError(ValueError):
    """The activation buffer cannot hold one training batch."""


def check_buffer(context_size: int, n_batches_in_buffer: int, train_batch_size_tokens: int) -> None:
    """Raise :class:`BufferTooSmallError` unless ``n_batches_in_buffer * context_size`` holds a batch."""
    held = n_batches_in_buffer * context_size
    if held >= train_batch_size_tokens:
        return
    raise BufferTooSmallError(
        f"the activation buffer holds n_batches_in_buffer * context_size = {n_batches_in_buffer} * "
        f"{context_size} = {held:,} tokens, fewer than one training batch (train_batch_size_tokens = "
        f"{train_batch_size_tokens:,}), so it would never yield a batch. Change one of: "
        f"n_batches_in_buffer={math.ceil(train_batch_size_tokens / context_size)} (or more), "
        f"train_batch_size_tokens={held} (or less)"
    )


#: Runner-level recipe values (paper §2): the ones SAELens's runner configs can express.
RECIPE_RUNNER_DEFAULTS: dict[str, Any] = {
    "train_batch_size_tokens": 4096,
    "context_size": 1024,
    "lr": 7e-5,
    "lr_scheduler_name": "constant",
    "lr_warm_up_steps": 1000,
    "lr_decay_steps": 0,
    "adam_beta1": 0.0,
    "adam_beta2": 0.999,
    # BOS, EOS and padding activations are never used; SAELens drops every structural special token.
    "exclude_special_tokens": True,
    "dtype": "float32",
    "autocast": False,
}


def gemmascope_sae_config(
    d_in: int, d_sae: int, l0_coefficient: float = 1e-3, **overrides: Any
) -> GemmaScopeTrainingSAEConfig:
    """A ``jumprelu_gemmascope`` SAE config with the recipe's defaults (see its docstring)."""
    return GemmaScopeTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l0_coefficient=l0_coefficient, **overrides)


#: Gemma Scope 2's λ warm-up (linear from 0), against Gemma Scope's 10,000 steps.
GEMMASCOPE2_L0_WARM_UP_STEPS = 50_000

#: Our default strength μ of the frequency penalty (``GemmaScopeTrainingSAEConfig.frequency_penalty``,
#: relative to λ), with the default cap c = 10 % and input gradient κ = 1. Our choice: Gemma Scope 2
#: publishes neither the penalty's form nor its strength. At μ = 100 a latent 1 % above the cap
#: already gets twice the linear L0 penalty's push on its threshold. On the tiny model
#: (``benchmarks/bench_frequency_penalty.py``, λ = 5e-3, 6,400 steps, 256 latents) it cut the latents
#: above 10 % from 27 to 5 on held-out tokens and from 27 to 1 on training tokens, for FVU
#: 0.085 -> 0.101 held-out; L0 fell from 10.0 to 8.6, and at equal L0 (against a penalty-free λ
#: ladder) the FVU cost is 5 % held-out, 1 % on training tokens.
GEMMASCOPE2_FREQUENCY_PENALTY = 100.0

#: The aggressive setting (μ, c): the paper reports that an aggressive frequency penalty leaves no
#: latent above 10 %. The cap sits at 5 % rather than 10 % because the penalty holds frequencies at
#: the cap on *training* batches, and on other text they scatter around it (on the tiny model a
#: latent at 10 % on training tokens fires on up to 13-15 % of held-out ones). Same benchmark: the
#: latents above 10 % went from 27 to 0 on training tokens and from 27 to 1 on held-out tokens (the
#: one left fires on 5.9 % of training tokens and 11.5 % of held-out ones: the text, not the
#: penalty), for FVU 0.085 -> 0.160 held-out at L0 10.0 -> 4.6, i.e. 14 % above the penalty-free
#: FVU at that L0 (10 % on training tokens). Before the input gradient (κ = 0, θ only) μ = 1,000 and 10,000 left 1-2 latents
#: above 10 % whatever the strength: latents whose pre-activations are bimodal with θ in the gap
#: give θ no gradient at all.
GEMMASCOPE2_AGGRESSIVE_FREQUENCY_PENALTY = 1000.0
GEMMASCOPE2_AGGRESSIVE_FREQUENCY_CAP = 0.05


def gemmascope2_sae_config(
    d_in: int, d_sae: int, target_l0: float, l0_coefficient: float = 1e-3, **overrides: Any
) -> GemmaScopeTrainingSAEConfig:
    """A ``jumprelu_gemmascope`` SAE config with Gemma Scope 2's recipe: the quadratic L0 penalty
    around ``target_l0``, λ warmed up over 50,000 steps and the frequency penalty on
    (:data:`GEMMASCOPE2_FREQUENCY_PENALTY`, cap 10 %, input gradient κ = 1; for the aggressive
    setting pass ``frequency_penalty=GEMMASCOPE2_AGGRESSIVE_FREQUENCY_PENALTY`` and
    ``frequency_cap=GEMMASCOPE2_AGGRESSIVE_FREQUENCY_CAP``); the rest as :func:`gemmascope_sae_config`.
    Matryoshka prefixes stay off (Gemma Scope 2 publishes no prefix sizes): pass
    ``matryoshka_widths=[...]`` to turn them on."""
    values: dict[str, Any] = {
        "l0_penalty": "quadratic",
        "target_l0": target_l0,
        "l0_warm_up_steps": GEMMASCOPE2_L0_WARM_UP_STEPS,
        "frequency_penalty": GEMMASCOPE2_FREQUENCY_PENALTY,
        **overrides,
    }
    return gemmascope_sae_config(d_in, d_sae, l0_coefficient, **values)


def gemmascope_transcoder_config(
    d_in: int,
    d_sae: int,
    l0_coefficient: float = 1e-3,
    *,
    d_out: int | None = None,
    skip: bool = False,
    **overrides: Any,
) -> GemmaScopeTrainingTranscoderConfig:
    """A ``jumprelu_gemmascope_transcoder`` config (``skip``: ``jumprelu_gemmascope_skip_transcoder``)
    with the recipe's defaults; train it on ``recipe.transcoder.paired_hook(input, output)``."""
    cls = GemmaScopeTrainingSkipTranscoderConfig if skip else GemmaScopeTrainingTranscoderConfig
    return cls(d_in=d_in, d_sae=d_sae, d_out=d_out, l0_coefficient=l0_coefficient, **overrides)


def gemmascope_ladder(
    d_in: int, d_sae: int, l0_coefficients: Iterable[float], **overrides: Any
) -> dict[str, GemmaScopeTrainingSAEConfig]:
    """One SAE config per λ (Gemma Scope's sparsity variants), named ``l0_coef_{λ:g}``."""
    return {
        f"l0_coef_{coefficient:g}": gemmascope_sae_config(d_in, d_sae, coefficient, **overrides)
        for coefficient in l0_coefficients
    }


def _check_buffer_before(config_class: type, values: Mapping[str, Any]) -> None:
    # Checked before SAELens builds its config, so that our message (which numbers to change) is
    # the one the user sees; SAELens's own defaults fill what the caller left out.
    defaults = {f.name: f.default for f in fields(config_class)}
    check_buffer(
        int(values.get("context_size", defaults["context_size"])),
        int(values.get("n_batches_in_buffer", defaults["n_batches_in_buffer"])),
        int(values.get("train_batch_size_tokens", defaults["train_batch_size_tokens"])),
    )


def gemmascope_runner_config(
    sae: GemmaScopeTrainingSAEConfig,
    *,
    model_name: str,
    hook_name: str,
    training_tokens: int,
    dataset_path: str = "",
    **overrides: Any,
) -> LanguageModelSAERunnerConfig[GemmaScopeTrainingSAEConfig]:
    """A ``LanguageModelSAERunnerConfig`` for :class:`GemmaScopeTrainingRunner` with the recipe's
    batch (4,096 activations), context (1,024), η = 7e-5 with 1,000 warm-up steps, Adam
    β = (0, 0.999), special tokens excluded and fp32 (``autocast=True`` for bf16)."""
    values = {**RECIPE_RUNNER_DEFAULTS, **overrides}
    _check_buffer_before(LanguageModelSAERunnerConfig, values)
    cfg = LanguageModelSAERunnerConfig(
        sae=sae, model_name=model_name, hook_name=hook_name, training_tokens=training_tokens,
        dataset_path=dataset_path, **values,
    )  # fmt: skip
    return cfg


def gemmascope_multi_runner_config(
    saes: Mapping[str, GemmaScopeTrainingSAEConfig],
    hook_names: Mapping[str, str] | str,
    *,
    model_name: str,
    training_tokens: int,
    dataset_path: str = "",
    **overrides: Any,
) -> MultiSAETrainingRunnerConfig:
    """A ``MultiSAETrainingRunnerConfig`` for :class:`GemmaScopeMultiSAETrainingRunner` with the
    recipe's runner defaults (as :func:`gemmascope_runner_config`)."""
    values = {**RECIPE_RUNNER_DEFAULTS, **overrides}
    _check_buffer_before(MultiSAETrainingRunnerConfig, values)
    cfg = MultiSAETrainingRunnerConfig(
        saes=dict(saes), hook_names=hook_names, model_name=model_name, training_tokens=training_tokens,
        dataset_path=dataset_path, **values,
    )  # fmt: skip
    return cfg
