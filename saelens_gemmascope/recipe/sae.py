"""The ``jumprelu_gemmascope`` training SAE: a JumpReLU SAE that follows the Gemma Scope recipe.

Every recipe point is a field of :class:`GemmaScopeTrainingSAEConfig` with the paper's value as its
default. The SAE owns what concerns its own weights (estimators, initialisation, the unit-norm
decoder constraint, the fold-in); :mod:`saelens_gemmascope.recipe.trainer` owns the optimiser, the
learning-rate warm-up, clipping and the input scale ``C``, and calls the SAE's two step hooks
(:meth:`GemmaScopeTrainingSAE.before_optimizer_step`, :meth:`~GemmaScopeTrainingSAE.after_optimizer_step`).

What it saves for inference is a plain SAELens ``jumprelu`` SAE: the inference registry entry for
``jumprelu_gemmascope`` is SAELens's own ``JumpReLUSAE``/``JumpReLUSAEConfig``, whose config writes
``architecture: jumprelu``, so the saved folder loads without this package.

Relation to SAELens's ``JumpReLUTrainingSAE`` (``sae_lens/saes/jumprelu_sae.py``): the straight-through
estimators are SAELens's own (:mod:`~saelens_gemmascope.recipe.estimators`) and a dense step computes
the same losses and gradients as a ``JumpReLUTrainingSAE`` with ``jumprelu_sparsity_loss_mode="step"``,
``jumprelu_ste_to_input=False``, no pre-activation loss and the same ε and λ
(``tests/recipe/test_differential.py``). The class does not subclass it, which would fight it: its
config would bring the tanh/quadratic/pre-activation-loss options into a recipe SAE's config; its θ
is always a ``threshold`` parameter created in ``__init__`` and used by its forward, loss, fold and
projection, while the recipe may train ``log_threshold`` instead (and SAELens's loader turns a saved
``log_threshold`` into ``threshold``, which would break resuming such a run); and it casts θ to the
pre-activations' dtype before comparing, where this class compares in float32 (see below). What
would be inherited (the L0 coefficient, ``b_enc``'s init) is a few lines.

θ's precision follows SAELens 6.54: θ (or log θ) is stored in float32 whatever the SAE's dtype, since
Adam's steps of about η on θ round away in bf16, and stays so through ``.to()``/``.half()``. Unlike
SAELens, a float64 SAE keeps a float64 θ (float32 is a floor, not a ceiling), and θ is not cast down
to a bf16 pre-activation's dtype for the estimators' comparisons.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens.saes.sae import (
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import nn

from saelens_gemmascope.recipe.estimators import jumprelu, step
from saelens_gemmascope.recipe.matryoshka import normalised_widths, partial_decodes
from saelens_gemmascope.recipe.sparse_step import (
    SPARSE_DENSITY_CUTOFF,
    SPARSE_DTYPES,
    SparseJumpReLUStep,
    candidate_mask,
    prefers_sparse,
    select_entries,
)

ARCHITECTURE_NAME = "jumprelu_gemmascope"

#: The parameters that hold θ (one of them per SAE, by ``threshold_parametrisation``).
THRESHOLD_PARAMETER_NAMES = ("threshold", "log_threshold")

ThresholdParametrisation = Literal["direct", "log"]
InputScaling = Literal["unit_mean_squared_norm", "none"]
LrWarmUpShape = Literal["cosine", "linear"]
FastPath = Literal["auto", "dense", "sparse"]
L0Penalty = Literal["linear", "quadratic"]
StepPath = Literal["dense", "sparse"]


@dataclass
class GemmaScopeTrainingSAEConfig(TrainingSAEConfig):
    """Training config of a ``jumprelu_gemmascope`` SAE; defaults are the paper's values.

    Args:
        decoder_init_norm: norm of every decoder row at init (recipe: He-uniform, then unit norm).
        jumprelu_init_threshold: θ at init, for every latent (recipe: 0.001).
        jumprelu_bandwidth: ε of the rectangle-kernel estimators (recipe: 0.001).
        l0_coefficient: λ, the L0 penalty's final coefficient. Not published per SAE (the paper
            mentions 6e-4 and 1e-3); sparsity variants come from sweeping it.
        l0_warm_up_steps: λ rises linearly from 0 over this many steps (recipe: 10,000).
        threshold_parametrisation: ``"direct"`` trains θ itself (kept ≥ 0 by projection after each
            step); ``"log"`` trains log θ. Which one Gemma Scope used is unconfirmed. Adam moves a
            parameter by about η per step, so log θ changes θ by a factor of about e^η per step: from
            0.001 to 0.1 takes ln(100)/η ≈ 66k steps at η = 7e-5. That is fine over the paper's 1M
            steps but leaves θ stuck at init in shorter runs, hence ``"direct"`` by default.
        unit_norm_decoder: renormalise every decoder row to unit norm after every step and remove
            the gradient component parallel to each row before the optimiser step (recipe: on).
        input_scaling: ``"unit_mean_squared_norm"`` divides inputs by one scalar C, estimated from
            data before training, with E‖x/C‖² = 1 (recipe); ``"none"`` uses C = 1.
        lr_warm_up_shape: ``"cosine"`` warms the learning rate up from
            ``lr_warm_up_start_fraction·η`` to η over the runner's ``lr_warm_up_steps`` along a
            half cosine, then holds it (recipe); ``"linear"`` keeps SAELens's own schedulers.
        lr_warm_up_start_fraction: where the cosine warm-up starts, as a fraction of η (recipe: 0.1).
        adam_eps: Adam's epsilon (recipe: 1e-8). Betas come from the runner config.
        max_grad_norm: clip the gradient to this global norm; ``None`` (recipe) never clips.
        fast_path: how a training step computes what follows the encoder's dense product (a speed
            setting; the saved SAE's metadata records it, inference ignores it). ``"dense"``: dense
            tensors throughout, the reference. ``"sparse"``: only the entries that fire or sit inside the estimators'
            window (:mod:`~saelens_gemmascope.recipe.sparse_step`); the same numbers up to
            floating-point summation order, several times faster once few latents fire.
            ``"auto"``: per step, sparse while the fraction of such entries in the batch is at most
            the device's cut-off in ``sparse_step.SPARSE_DENSITY_CUTOFF`` (CPU 0.08, measured;
            CUDA and other devices: dense until measured there), else dense: early in training,
            θ = 0.001 makes about half the latents fire. The sparse path needs float32/float64
            parameters (bf16 through autocast is fine), no hooks on the SAE's hook points and an
            input without gradient; ``"auto"`` falls back to dense otherwise, ``"sparse"`` raises.
            It covers both ``l0_penalty`` forms; a step with ``frequency_penalty`` or
            ``matryoshka_widths`` on is dense (``"auto"`` falls back, ``"sparse"`` raises).

    Gemma Scope 2 knobs (off by default, so a Gemma Scope config trains exactly as before; the
    helper ``recipe.config.gemmascope2_sae_config`` turns them on):

    Args:
        l0_penalty: ``"linear"`` (Gemma Scope): λ·‖f‖₀ per row. ``"quadratic"`` (Gemma Scope 2):
            λ·(2/L0*)·(‖f‖₀ - L0*)² per row, around ``target_l0`` = L0*. Both use the same
            straight-through estimator for ‖f‖₀ and are averaged over the batch's rows. (Same
            formula as SAELens's ``jumprelu_sparsity_loss_mode="quadratic"``.) At ‖f‖₀ = 2·L0*
            the two penalties have equal *values*; their θ-gradients are equal at
            ‖f‖₀ = 1.25·L0* (the quadratic's slope in ‖f‖₀ is λ·4(‖f‖₀ - L0*)/L0*).
        target_l0: L0*, required by (and only read by) the quadratic penalty; in (0, d_sae].
        frequency_penalty: strength μ of the penalty on high-frequency latents (0 = off). Gemma
            Scope 2 does not publish its form; ours: with ``p_i`` latent i's firing frequency over
            the batch (the mean over rows of ``H(pre - θ_i)``), the loss adds λ·μ·Σ_i relu(p_i - c)²
            with c = ``frequency_cap`` and λ the current (warmed-up) L0 coefficient, so μ is the
            penalty's strength *relative to λ*: it ramps up with λ's warm-up and keeps its meaning
            along a λ ladder. Latents at or below the cap are untouched. For one above it,
            ∂loss/∂p_i = 2λμ·(p_i - c), and p_i's straight-through estimator sends it two ways:
            to θ_i as the L0 penalty's step does, ∂p_i/∂θ_i = -(1/ε)·mean_rows K((pre - θ_i)/ε)
            (a latent 0.1 above the cap gets 0.2·μ times the linear penalty's push on θ), and to
            the pre-activation of each entry where the latent fires,
            ∂p_i/∂pre_ri = κ·H(pre_ri - θ_i)/n (κ = ``frequency_input_gradient``, n rows): an L1
            push of strength 2λμκ·(p_i - c) on the latent's active entries. The second is what
            lowers a latent whose pre-activations are bimodal with θ in the gap between the modes
            (a latent that fires on a whole class of tokens): no entry is within ε/2 of θ, so θ
            gets no gradient from any penalty and only moving the encoder lowers its frequency.
        frequency_cap: c above, the firing frequency a latent may reach unpenalised (in [0, 1)).
        frequency_input_gradient: κ above, in units of 1/pre-activation (inputs scaled to
            E‖x‖² = 1); 0 keeps the frequency penalty on θ only. Measured on the tiny model:
            ``benchmarks/bench_frequency_penalty.py``, ``recipe.config.GEMMASCOPE2_FREQUENCY_PENALTY``.

    Matryoshka prefixes (Gemma Scope 2 mentions Matryoshka training for its SAEs; it publishes no
    prefix sizes, so it is off by default):

    Args:
        matryoshka_widths: prefix widths m_1 < … < m_K, each in (0, d_sae]; ``None`` (default) is
            off. The full width d_sae is always the last prefix (added when missing; the field
            holds it afterwards, as a tuple: a list, from a JSON round trip, is accepted). Prefix k
            reconstructs the target from the first m_k latents alone:
            x̂_k = f[:, :m_k] @ W_dec[:m_k] + b_dec (plus a transcoder's skip term), and the loss's
            reconstruction term ``mse_loss`` is (1/K)·Σ_k mean_rows ‖x̂_k - x‖² (each prefix's MSE
            as the plain ``mse_loss``, averaged with equal weights). A latent in the first prefix
            gets gradient from all K terms, one beyond m_k from none of the first k. ``sae_out``
            (and so SAELens's explained-variance metrics) stays the full-width reconstruction;
            the L0 and frequency penalties are unchanged. Training only: the saved SAE is the
            plain full-width ``jumprelu`` SAE (the widths are kept in the metadata's
            ``training_architecture_details``). The sparse fast path decodes the full width only,
            so a Matryoshka step is dense (``"auto"`` falls back, ``"sparse"`` raises).
    """

    decoder_init_norm: float | None = 1.0
    jumprelu_init_threshold: float = 1e-3
    jumprelu_bandwidth: float = 1e-3
    l0_coefficient: float = 1e-3
    l0_warm_up_steps: int = 10_000
    threshold_parametrisation: ThresholdParametrisation = "direct"
    unit_norm_decoder: bool = True
    input_scaling: InputScaling = "unit_mean_squared_norm"
    lr_warm_up_shape: LrWarmUpShape = "cosine"
    lr_warm_up_start_fraction: float = 0.1
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None
    fast_path: FastPath = "auto"
    l0_penalty: L0Penalty = "linear"
    target_l0: float | None = None
    frequency_penalty: float = 0.0
    frequency_cap: float = 0.1
    frequency_input_gradient: float = 1.0
    matryoshka_widths: tuple[int, ...] | list[int] | None = None

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE_NAME

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.normalize_activations != "none":
            # The recipe scales inputs by C in the trainer; a second SAELens normalisation would
            # make the fold-in inexact.
            raise ValueError(
                f"{ARCHITECTURE_NAME} scales inputs with input_scaling={self.input_scaling!r}; "
                f"normalize_activations must be 'none', got {self.normalize_activations!r}"
            )
        if self.jumprelu_init_threshold <= 0 and self.threshold_parametrisation == "log":
            raise ValueError("a log-parametrised threshold needs jumprelu_init_threshold > 0")
        if self.jumprelu_bandwidth <= 0:
            raise ValueError("jumprelu_bandwidth must be > 0")
        if not 0.0 < self.lr_warm_up_start_fraction <= 1.0:
            raise ValueError("lr_warm_up_start_fraction must be in (0, 1]")
        if self.fast_path not in ("auto", "dense", "sparse"):
            raise ValueError(f"fast_path must be 'auto', 'dense' or 'sparse', got {self.fast_path!r}")
        self._check_gemmascope2_knobs()

    def _check_gemmascope2_knobs(self) -> None:
        if self.l0_penalty not in ("linear", "quadratic"):
            raise ValueError(f"l0_penalty must be 'linear' or 'quadratic', got {self.l0_penalty!r}")
        if self.l0_penalty == "quadratic":
            if self.target_l0 is None:
                raise ValueError("l0_penalty='quadratic' needs target_l0 (the L0 it pulls towards)")
            if not 0 < self.target_l0 <= self.d_sae:
                raise ValueError(f"target_l0 must be in (0, d_sae={self.d_sae}], got {self.target_l0}")
        if self.frequency_penalty < 0:
            raise ValueError(f"frequency_penalty must be >= 0, got {self.frequency_penalty}")
        if not 0.0 <= self.frequency_cap < 1.0:
            raise ValueError(f"frequency_cap must be in [0, 1), got {self.frequency_cap}")
        if self.frequency_input_gradient < 0:
            raise ValueError(f"frequency_input_gradient must be >= 0, got {self.frequency_input_gradient}")
        # A JSON round trip turns the tuple into a list: both are accepted, stored as a tuple.
        self.matryoshka_widths = normalised_widths(self.matryoshka_widths, self.d_sae)


class GemmaScopeTrainingSAE(TrainingSAE[GemmaScopeTrainingSAEConfig]):
    """JumpReLU SAE trained with the Gemma Scope recipe (see :class:`GemmaScopeTrainingSAEConfig`)."""

    b_enc: nn.Parameter

    def __init__(self, cfg: GemmaScopeTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        # Set by the recipe's trainer; without it nobody calls the step hooks (see training_forward_pass).
        self.recipe_trainer_attached = False
        # Which path the last training step took (diagnostics, benchmarks, tests).
        self.last_step_path: StepPath | None = None

    # -- parameters ------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        # SAELens's base init is the recipe's: He-uniform (kaiming_uniform_) decoder, rows rescaled to
        # decoder_init_norm (1.0 here), W_enc = W_decᵀ, zero b_dec.
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        init = torch.full(
            (self.cfg.d_sae,),
            self.cfg.jumprelu_init_threshold,
            dtype=threshold_storage_dtype(self.dtype),
            device=self.device,
        )
        if self.cfg.threshold_parametrisation == "log":
            self.log_threshold = nn.Parameter(init.log())
        else:
            self.threshold = nn.Parameter(init)

    def _apply(self, fn: Any, recurse: bool = True) -> GemmaScopeTrainingSAE:
        # nn.Module.to()/.half()/.bfloat16() cast every floating parameter, and SAELens's load paths
        # call .to(cfg.dtype): keep θ at float32 or wider, restored from its values before the cast
        # rather than widened back from bf16 (which would keep the bf16 rounding).
        before = {
            name: param.data
            for name, param in self._parameters.items()
            if name in THRESHOLD_PARAMETER_NAMES and param is not None
        }
        out = super()._apply(fn, recurse)
        for name, old in before.items():
            param = self._parameters[name]
            assert param is not None
            wanted = threshold_storage_dtype(param.dtype)
            if param.dtype != wanted:
                param.data = old.to(device=param.device, dtype=wanted)
                if param.grad is not None:
                    param.grad = param.grad.to(wanted)
        return out

    @property
    def threshold_values(self) -> torch.Tensor:
        """θ, whatever the parametrisation (differentiable)."""
        if self.cfg.threshold_parametrisation == "log":
            return self.log_threshold.exp()
        return self.threshold

    # -- forward and loss ------------------------------------------------------------------------

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, hidden_pre = self._encoder_product(x)
        return self._activate(hidden_pre), hidden_pre

    def _encoder_product(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's input and its dense product ``hidden_pre`` (the only step every latent needs)."""
        # process_sae_in subtracts b_dec while apply_b_dec_to_input is on: the pre-encoder bias.
        sae_in = self.process_sae_in(x)
        return sae_in, self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)

    def _activate(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        # θ as stored (float32 or wider), not cast to hidden_pre's dtype: see the estimators module.
        threshold = self.threshold_values
        return self.hook_sae_acts_post(jumprelu(hidden_pre, threshold, self.cfg.jumprelu_bandwidth))

    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        threshold = self.threshold_values
        fires = step(hidden_pre, threshold, self.cfg.jumprelu_bandwidth)
        return self._sparsity_losses(step_input, fires.sum(dim=-1), hidden_pre)

    def _sparsity_losses(
        self, step_input: TrainStepInput, l0_per_row: torch.Tensor, hidden_pre: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """``l0_loss``, plus ``frequency_loss`` when ``frequency_penalty`` is on (then every entry's
        pre-activation ``hidden_pre`` is needed: a dense step)."""
        losses = {"l0_loss": self._l0_loss(step_input, l0_per_row)}
        if self.cfg.frequency_penalty > 0:
            assert hidden_pre is not None, "the frequency penalty needs every entry (a dense step)"
            losses["frequency_loss"] = self._frequency_loss(step_input, hidden_pre)
        return losses

    def _l0_loss(self, step_input: TrainStepInput, l0_per_row: torch.Tensor) -> torch.Tensor:
        if self.cfg.l0_penalty == "quadratic":
            target = self.cfg.target_l0
            assert target is not None  # checked by the config
            # Gemma Scope 2: λ·(2/L0*)·(‖f‖₀ - L0*)², averaged over rows as the linear one is.
            return (step_input.coefficients["l0"] * (2.0 / target) * (l0_per_row - target).square()).mean()
        return (step_input.coefficients["l0"] * l0_per_row).mean()

    def _frequency_loss(self, step_input: TrainStepInput, hidden_pre: torch.Tensor) -> torch.Tensor:
        # p_i over every row of the batch (any leading shape), with the estimators of FiringFrequency.
        frequency = firing_frequency(
            hidden_pre, self.threshold_values, self.cfg.jumprelu_bandwidth, self.cfg.frequency_input_gradient
        )
        excess = torch.relu(frequency - self.cfg.frequency_cap)
        # Relative to λ (warm-up included): see frequency_penalty in the config's docstring.
        strength = step_input.coefficients["l0"] * self.cfg.frequency_penalty
        return strength * excess.square().sum()

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        # SAELens's CoefficientScheduler gives λ·n/W at step n: linear from 0, as the recipe says.
        return {
            "l0": TrainCoefficientConfig(
                value=self.cfg.l0_coefficient, warm_up_steps=self.cfg.l0_warm_up_steps
            )
        }

    #: What a trainer other than the recipe's would leave out (named by the warning below).
    RECIPE_TRAINER_DOES = "unit-norm decoder, cosine warm-up, no clipping, input scale C"
    RECIPE_RUNNERS = "GemmaScopeTrainingRunner or GemmaScopeMultiSAETrainingRunner"

    def warn_without_recipe_trainer(self, step_input: TrainStepInput) -> None:
        """Warn once, at step 0, when no recipe trainer calls the step hooks (see training_forward_pass)."""
        if self.recipe_trainer_attached or step_input.n_training_steps != 0:
            return
        warnings.warn(
            f"{self.cfg.architecture()} is being trained by a trainer that does not apply the recipe "
            f"({self.RECIPE_TRAINER_DOES}). Use saelens_gemmascope.runners.{self.RECIPE_RUNNERS}.",
            stacklevel=3,
        )

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        self.warn_without_recipe_trainer(step_input)
        if self.cfg.fast_path == "dense" and self.cfg.matryoshka_widths is None:
            # SAELens's own step: the reference the differential tests hold the other paths to.
            self.last_step_path = "dense"
            return super().training_forward_pass(step_input)
        return self._training_forward_pass_choosing_path(step_input)

    def _sparse_path_blocker(self, sae_in: torch.Tensor) -> str | None:
        """Why this step cannot take the sparse path, or ``None`` when it can."""
        if sae_in.requires_grad:
            return "the input requires a gradient, which the sparse path does not compute"
        if self.W_enc.dtype not in SPARSE_DTYPES:
            return f"the parameters are {self.W_enc.dtype}; it needs float32 or float64 (autocast for bf16)"
        if any(hook.fwd_hooks or hook.bwd_hooks for hook in self.hook_dict.values()):
            return "hooks are attached to the SAE; the sparse path skips the hook points after the encoder"
        if self.cfg.frequency_penalty > 0:
            # Each latent's batch frequency needs every entry's step; the sparse kernel yields rows' L0s.
            return "frequency_penalty is on; the sparse path computes no per-latent frequencies"
        if self.cfg.matryoshka_widths is not None:
            # The sparse kernel decodes the full width only.
            return "matryoshka_widths is set; the sparse path computes no prefix reconstructions"
        return None

    # -- what a transcoder changes (recipe.transcoder overrides these four) ----------------------

    def split_step_input(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's input and the reconstruction target of a training batch (an SAE: both ``batch``)."""
        return batch, batch

    def pre_encoder_bias(self) -> torch.Tensor | None:
        """The bias subtracted from the input before the encoder, if any (an SAE: ``b_dec``)."""
        return self.b_dec if self.cfg.apply_b_dec_to_input else None

    def add_skip(self, sae_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction plus any term that reads the input directly (an SAE: none)."""
        return sae_out

    @property
    def d_out(self) -> int:
        """Width of the reconstruction (an SAE's is its input's)."""
        return int(self.W_dec.shape[1])

    def _training_forward_pass_choosing_path(self, step_input: TrainStepInput) -> TrainStepOutput:
        """The step with ``fast_path`` ``"auto"`` or ``"sparse"`` (a transcoder: ``"dense"`` too): the
        dense encoder product, then the dense or the sparse rest (see :class:`GemmaScopeTrainingSAEConfig`)."""
        x, target = self.split_step_input(step_input.sae_in)
        blocker = "fast_path='dense'" if self.cfg.fast_path == "dense" else self._sparse_path_blocker(x)
        if blocker is not None and self.cfg.fast_path == "sparse":
            raise ValueError(f"fast_path='sparse' cannot run this step: {blocker}")
        eps = self.cfg.jumprelu_bandwidth
        # The encoder as encode_with_hidden_pre computes it (autocast included). Its graph is only
        # walked by the dense rest; the sparse rest computes the encoder's gradients itself.
        sae_in, hidden_pre = self._encoder_product(x)
        # θ as stored, as in _activate: both paths compare in (at least) float32.
        threshold = self.threshold_values
        entries = None
        if (
            blocker is None
            and self.cfg.fast_path == "auto"
            and hidden_pre.device.type not in SPARSE_DENSITY_CUTOFF
        ):
            # "auto" never picks sparse on this device: skip the candidate pass and its host sync.
            blocker = f"no sparse cut-off for {hidden_pre.device.type}"
        if blocker is None:
            with torch.no_grad():
                flat_pre = hidden_pre.detach().reshape(-1, self.cfg.d_sae)
                candidates = candidate_mask(flat_pre, threshold.detach(), eps)
                if self.cfg.fast_path == "sparse" or prefers_sparse(
                    int(torch.count_nonzero(candidates)) / max(candidates.numel(), 1), flat_pre.device
                ):
                    entries = select_entries(flat_pre, threshold.detach(), eps, candidates)
        if entries is None:
            self.last_step_path = "dense"
            feature_acts = self._activate(hidden_pre)
            sae_out = self.add_skip(self.decode(feature_acts), x)
            fires = step(hidden_pre, threshold, eps)
            return self._step_output(
                step_input, target, sae_out, feature_acts, hidden_pre, fires.sum(dim=-1), hidden_pre, x
            )
        self.last_step_path = "sparse"
        # sae_in carries no gradient (checked above); the Function computes only the parameters'.
        decoded, l0_per_row = SparseJumpReLUStep.apply(
            sae_in.detach().reshape(-1, self.cfg.d_in), self.W_enc, self.b_enc, self.W_dec, threshold,
            self.pre_encoder_bias(), entries, eps,
        )  # fmt: skip
        leading = hidden_pre.shape[:-1]
        # decode()'s b_dec; its hooks are idle (checked above) and normalize_activations is "none".
        sae_out = self.add_skip(decoded.reshape(*leading, self.d_out) + self.b_dec, x)
        with torch.no_grad():
            feature_acts = entries.feature_acts().reshape(hidden_pre.shape)
        return self._step_output(
            step_input, target, sae_out, feature_acts, hidden_pre, l0_per_row.reshape(leading), None, x
        )

    def _step_output(
        self,
        step_input: TrainStepInput,
        target: torch.Tensor,
        sae_out: torch.Tensor,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        l0_per_row: torch.Tensor,
        dense_pre: torch.Tensor | None,
        x: torch.Tensor,
    ) -> TrainStepOutput:
        # The losses as SAELens's TrainingSAE.training_forward_pass forms them (it has no seam
        # for a forward pass that yields the L0 itself): MSE summed over the output, mean over rows.
        # ``sae_in`` is the target, so that SAELens's logged metrics compare like with like.
        mse_loss = self._reconstruction_loss(target, sae_out, feature_acts, x)
        losses = {"mse_loss": mse_loss, **self._sparsity_losses(step_input, l0_per_row, dense_pre)}
        # Summed in insertion order, as SAELens sums its losses: mse + l0 (+ frequency).
        loss = mse_loss
        for name, value in losses.items():
            if name != "mse_loss":
                loss = loss + value
        return TrainStepOutput(
            sae_in=target, sae_out=sae_out, feature_acts=feature_acts, hidden_pre=hidden_pre,
            loss=loss, losses=losses,
        )  # fmt: skip

    def _reconstruction_loss(
        self, target: torch.Tensor, sae_out: torch.Tensor, feature_acts: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """``mse_loss``: the full reconstruction's MSE, or with ``matryoshka_widths`` the mean over the
        prefixes (the full width included) of each prefix's MSE."""
        full = self.mse_loss_fn(sae_out, target).sum(dim=-1).mean()
        widths = self.cfg.matryoshka_widths
        if widths is None:
            return full
        # The full width is sae_out itself (decode()'s hooks included); the prefixes below it, here.
        prefixes = [
            self.add_skip(decoded + self.b_dec, x)
            for decoded in partial_decodes(feature_acts, self.W_dec, widths[:-1])
        ]
        mses = [self.mse_loss_fn(prefix, target).sum(dim=-1).mean() for prefix in prefixes]
        return torch.stack([*mses, full]).mean()

    # -- the step hooks the recipe's trainer calls -----------------------------------------------

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove from each decoder row's gradient its component parallel to that row."""
        if not self.cfg.unit_norm_decoder or self.W_dec.grad is None:
            return
        # grad -= (grad·w / ‖w‖²)·w per row, with one decoder-sized temporary instead of four (it
        # runs every step on the whole decoder).
        W_dec, grad = self.W_dec, self.W_dec.grad
        squared_norms = torch.linalg.vector_norm(W_dec, dim=-1).square().clamp(min=1e-24)
        parallel = torch.linalg.vecdot(grad, W_dec) / squared_norms
        grad.addcmul_(W_dec, parallel.unsqueeze(-1), value=-1.0)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Renormalise decoder rows to unit norm; keep a directly trained θ non-negative."""
        if self.cfg.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-12))
        if self.cfg.threshold_parametrisation == "direct":
            # Projection on the data, not a clamp in the graph, which would zero θ's gradient.
            self.threshold.clamp_(min=0.0)

    # -- folding into the released (raw-space) form ----------------------------------------------

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold the input scale C = 1/scaling_factor and the pre-encoder bias into the weights.

        SAELens's trainers call this once after training with the factor that multiplied the
        inputs. Gemma Scope's fold (paper App. A) keeps both matrices and scales the rest:
        b_enc' = C·b_enc - C·(b_dec @ W_enc), b_dec' = C·b_dec, θ' = C·θ. Afterwards the SAE reads
        raw activations, its latents are C times the training-time ones and decoder rows keep
        unit norm. (SAELens's own fold rescales W_enc and W_dec instead.)
        """
        scale = 1.0 / scaling_factor
        # The config object is the caller's (a runner config, a ladder reused for another run):
        # describe the folded SAE in a copy of it, or the next run would train without the recipe's
        # pre-encoder bias.
        self.cfg = copy.deepcopy(self.cfg)
        if self.cfg.apply_b_dec_to_input:
            self.b_enc.sub_(self.b_dec @ self.W_enc)
            self.cfg.apply_b_dec_to_input = False
        self.b_enc.mul_(scale)
        self.b_dec.mul_(scale)
        # The factor in θ's (float32 or wider) dtype, not rounded to a bf16 b_enc's.
        self._scale_threshold(torch.full_like(self.threshold_values, scale))
        self.cfg.normalize_activations = "none"
        # Provenance only: the folded weights no longer need C.
        self.cfg.metadata.gemmascope_input_scale = scale

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        norms = self.fold_and_get_W_dec_norm()
        self._scale_threshold(norms)

    @torch.no_grad()
    def _scale_threshold(self, factor: torch.Tensor) -> None:
        if self.cfg.threshold_parametrisation == "log":
            self.log_threshold.add_(factor.log().to(self.log_threshold.dtype))
        else:
            self.threshold.mul_(factor.to(self.threshold.dtype))

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        # The inference architecture is plain jumprelu, which stores θ itself.
        if "log_threshold" in state_dict:
            state_dict["threshold"] = state_dict.pop("log_threshold").exp().contiguous()
        super().process_state_dict_for_saving_inference(state_dict)

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """W_enc, W_dec, b_enc, b_dec, threshold as the saved inference model holds them."""
        state_dict = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self.process_state_dict_for_saving_inference(state_dict)
        return state_dict


#: Entries per chunk when FiringFrequency counts over a batch: its temporaries stay at one or two
#: float32 chunks (64 MB each) whatever the batch and width, and a float32 sum over a chunk's rows
#: (at most 2^24 of them) counts exactly.
_FREQUENCY_CHUNK_ENTRIES = 1 << 24


class FiringFrequency(torch.autograd.Function):
    """``p_i = mean_rows H(pre_ri - θ_i)`` (the frequency penalty's per-latent firing frequency).

    Backward, for ``g = ∂loss/∂p`` and ``n`` rows: θ_i gets the step's estimator,
    ``-(1/ε)·Σ_rows K((pre_ri - θ_i)/ε)·g_i/n``, and ``pre_ri`` gets ``κ·H(pre_ri - θ_i)·g_i/n``
    (κ = ``input_gradient``; nothing at all when κ = 0). The numbers of SAELens's ``Step`` on ``pre``
    averaged over rows plus a straight-through term ``κ·H·(pre - pre.detach())`` (values and ``pre``'s
    gradient bit for bit; θ's up to summation order), but it saves only ``pre`` and θ, which the
    step's graph keeps anyway, and counts in row chunks: the composition kept a batch-by-d_sae tensor
    for its backward and built about ten more.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float, input_gradient: float
    ) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth, ctx.input_gradient = bandwidth, input_gradient
        # θ as stored (float32 or wider) in the comparison, as the estimators compare.
        fires = _count_per_latent(pre, lambda chunk: _fires(chunk, threshold, torch.float32))
        # In pre's dtype, as mean() over Step's output gives it: the exact count, then one division.
        return fires.to(pre.dtype) / (pre.numel() // pre.shape[-1])

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_frequency: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        pre, threshold = ctx.saved_tensors
        bandwidth, input_gradient = ctx.bandwidth, ctx.input_gradient
        # Every entry's share of ∂loss/∂p_i, as mean()'s backward gives it.
        per_entry = grad_frequency / (pre.numel() // pre.shape[-1])
        threshold_grad = None
        if ctx.needs_input_grad[1]:
            in_window = _count_per_latent(pre, lambda chunk: _in_window(chunk, threshold, bandwidth))
            # Step's per-entry term (1/ε)·K·g/n in the compared dtype, times the entries in the window.
            per_window_entry = (1.0 / bandwidth) * per_entry.to(
                torch.promote_types(pre.dtype, threshold.dtype)
            )
            threshold_grad = (in_window.to(per_window_entry.dtype) * -per_window_entry).to(threshold.dtype)
        pre_grad = None
        if ctx.needs_input_grad[0] and input_gradient != 0:
            # κ rounded to pre's dtype first, as the straight-through term's κ·H was.
            scale = per_entry * torch.tensor(input_gradient, dtype=pre.dtype, device=pre.device)
            pre_grad = _fires(pre, threshold, pre.dtype).mul_(scale)
        return pre_grad, threshold_grad, None, None


def firing_frequency(
    pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float, input_gradient: float
) -> torch.Tensor:
    """Each latent's firing frequency over ``pre``'s rows (any leading shape), with the frequency
    penalty's estimators (see :class:`FiringFrequency` and ``frequency_input_gradient`` in
    :class:`GemmaScopeTrainingSAEConfig`)."""
    return FiringFrequency.apply(pre, threshold, bandwidth, input_gradient)  # type: ignore[no-any-return]


def _fires(pre: torch.Tensor, threshold: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``H(pre - θ)`` as 0/1 in ``dtype``, written straight into its output (no bool temporary)."""
    return torch.gt(pre, threshold, out=torch.empty(pre.shape, dtype=dtype, device=pre.device))


def _in_window(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``K((pre - θ)/ε)`` as 0/1, in one temporary: SAELens's ``rectangle`` tests -1/2 < u < 1/2 on the
    same ``u``, which is |u| < 1/2."""
    return (pre - threshold).div_(bandwidth).abs_().lt_(0.5)


def _count_per_latent(pre: torch.Tensor, indicator: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``indicator(pre)`` (0/1, float32 or wider) summed over every row, a chunk of rows at a time (int64)."""
    flat_pre = pre.reshape(-1, pre.shape[-1])
    n_rows, width = flat_pre.shape
    chunk_rows = max(1, _FREQUENCY_CHUNK_ENTRIES // max(width, 1))
    counts = torch.zeros(width, dtype=torch.int64, device=pre.device)
    for start in range(0, n_rows, chunk_rows):
        counts += indicator(flat_pre[start : start + chunk_rows]).sum(dim=0).to(torch.int64)
    return counts


def threshold_storage_dtype(parameter_dtype: torch.dtype) -> torch.dtype:
    """θ's dtype for an SAE whose other parameters are ``parameter_dtype``: that or float32, the wider."""
    return torch.promote_types(parameter_dtype, torch.float32)
