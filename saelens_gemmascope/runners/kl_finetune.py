"""End-to-end KL finetuning of a trained JumpReLU SAE (Gemma Scope 2's recipe).

Gemma Scope 2 finetunes a few of its SAEs end to end: the SAE is spliced into the model's forward
pass and trained on ``(MSE + alpha·β·KL) / (1 + β)``, with ``alpha = MSE / (KL + 1e-8)`` held
constant. The paper publishes neither β, the learning rate nor the length; our choices are below.

One step, on a batch of token rows:

1. clean forward pass of the (frozen) model, no gradient: the clean next-token distributions and the
   activations ``x`` at the SAE's hook (``sae.cfg.metadata.hook_name``; ``attn.hook_z`` is flattened
   to ``n_heads·d_head``);
2. ``x̂ = SAE(x)``; ``MSE = ‖x - x̂‖²`` summed over d, mean over the counted tokens (the recipe's);
3. spliced forward pass: the hook's activations replaced by ``x̂``, through the evaluation's own
   splice (:mod:`saelens_gemmascope.models.splice_plan`: the hook must be a site of the model's
   spec; the pass starts from the clean pass's ``blocks.L.hook_resid_pre`` when the hook lies in
   block L, exactly); ``KL = KL(p_clean ‖ p_spliced)`` per
   predicted position, in nats, mean over the counted predictions;
4. ``loss = (MSE + alpha·β·KL) / (1 + β)``; Adam with the recipe's betas (0, 0.999) and eps 1e-8;
   the decoder's unit-norm constraint (gradient projection before, renormalisation after the step)
   and θ ≥ 0 come from the recipe's :class:`~saelens_gemmascope.recipe.sae.GemmaScopeTrainingSAE`,
   and θ trains through the recipe's JumpReLU straight-through estimator (bandwidth ε).

Which tokens count (the evaluation's rules, :mod:`saelens_gemmascope.models.token_masks`): an activation counts, and is replaced in the spliced
pass, unless its token is BOS, EOS or padding (elsewhere the clean activation stays: SAEs are not
meant for those outliers); the prediction made at position t counts unless token t is padding or
token t + 1 is padding or BOS. The ids are the model tokenizer's.

alpha is computed once, from the *starting* SAE, over the first :attr:`KLFinetuneConfig.alpha_batches`
batches (token-weighted means of MSE and KL), then held constant for every step (each step's record
carries it). So at the start both terms weigh the same and ``loss ≈ MSE``; β is how much more the
KL term weighs from then on. **β = 1** by default (our choice: equal weight at the start); larger β
trades reconstruction for KL.

The trainable form and the input scale: the SAE's weights are raw-space (Gemma Scope's fold: no
input scale, no pre-encoder bias; an SAE with ``apply_b_dec_to_input`` has it folded into ``b_enc``,
exactly; decoder rows not of unit norm are folded into the encoder and θ, exactly). They are
trained in the recipe's *normalised* coordinates: inputs divided by a scalar C with E‖x/C‖² = 1
(estimated on the alpha batches' counted activations, as the recipe's trainer estimates it), and
``b_enc``, ``b_dec``, θ divided by C, so the SAE computes the same function. Why: Adam moves every
parameter by about the learning rate per step and the estimator's window ε is absolute, so in raw
space (where θ and the biases are C times larger) the recipe's η and ε would mean C times less for
them than for the matrices. After training they are multiplied back by C
(:meth:`GemmaScopeTrainingSAE.fold_activation_norm_scaling_factor`) into a plain SAELens ``jumprelu``
SAE of the starting SAE's class, config (``apply_b_dec_to_input`` off), dtype and device, with a
``kl_finetune`` record in its metadata; ``SAE.load_from_disk`` reads what ``save_model`` writes.

Defaults (not published): β = 1; learning rate 7e-5, the recipe's η (the SAE was trained at that
pace in these coordinates; the paper gives no finetuning rate: lower it for a gentler finetune);
1,000 steps of 8 rows. On the tiny Gemma 3 (``tests/finetune/test_kl_finetune.py``: a briefly
trained SAE, 40 steps of 8 x 64 tokens at lr 1e-3) held-out KL fell 0.198 -> 0.142 (1.39x), FVU
0.096 -> 0.071, L0 28.3 -> 33.7 (no sparsity term, so L0 drifts); on one fixed batch, β = 100
lowers that batch's KL further than β = 0 (MSE only) while its FVU improves less. On held-out rows
there the KL term has not been shown to help: β = 0 lowered held-out KL further (0.198 -> 0.125), and
so it did for longer-trained SAEs and β up to 100 (MSE alone lowers θ and cuts both errors).

Device and dtype: the SAE's (:func:`placement`); the model must live on the same device; token rows
are moved there. The SAE trains in its own dtype (θ in at least float32, as the recipe stores it)
and the result is cast back to it; log-probabilities and the KL are computed in at least float32.

Stopping: a non-finite loss or gradient stops before the optimiser step with
:class:`KLFinetuneNonFiniteError` naming the step, which carries (``.partial``) the result of the
steps finished before it, so nothing is lost. SIGINT/SIGTERM (Ctrl-C) stop at the next step boundary
(:class:`~saelens_gemmascope.runners.interrupts.InterruptWatch`): the result of the finished steps is
returned with ``interrupted_by`` set. The model is frozen during the run (``requires_grad`` off) and
its flags restored after; only the SAE trains.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import torch
from sae_lens import SAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE
from sae_lens.saes.transcoder import Transcoder

from saelens_gemmascope.models.next_token import kl_divergence, next_token_log_probs
from saelens_gemmascope.models.splice_plan import encode_decode, flat_site_tensor, plan_splice, spliced_logits
from saelens_gemmascope.models.token_masks import SpecialTokens, activation_mask, loss_mask
from saelens_gemmascope.progress import progress_task
from saelens_gemmascope.recipe.finite_guard import NonFiniteTrainingError, nonfinite_tensors
from saelens_gemmascope.recipe.input_scale import MeanSquaredNormMeter
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig
from saelens_gemmascope.recipe.warm_start import source_weights, unfold_into
from saelens_gemmascope.runners.interrupts import InterruptWatch, StopAtStepBoundary

logger = logging.getLogger(__name__)

#: The paper's guard in alpha = MSE / (KL + 1e-8).
KL_EPSILON = 1e-8

#: Adam's betas and eps: the recipe's.
ADAM_BETAS = (0.0, 0.999)
ADAM_EPS = 1e-8

#: The metadata key of the finetuned SAE's record (β, alpha, steps, lr, C).
METADATA_KEY = "kl_finetune"

TokenRows = torch.Tensor | Iterable[torch.Tensor]


@dataclass(frozen=True)
class KLFinetuneConfig:
    """Settings of :func:`kl_finetune` (defaults are our choices; the paper publishes none).

    Args:
        beta: β, the KL term's weight relative to the MSE term (after alpha equalised them).
        steps: optimiser steps.
        lr: Adam's learning rate, in the normalised coordinates (see the module docstring).
        batch_size: token rows per step.
        alpha_batches: batches the starting SAE's MSE and KL are averaged over for alpha (and C).
        jumprelu_bandwidth: ε of θ's straight-through estimator, in normalised units (recipe: 0.001).
        progress: show a progress line on stderr (or on the active display).
    """

    beta: float = 1.0
    steps: int = 1_000
    lr: float = 7e-5
    batch_size: int = 8
    alpha_batches: int = 1
    jumprelu_bandwidth: float = 1e-3
    progress: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("steps", "batch_size", "alpha_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.jumprelu_bandwidth <= 0:
            raise ValueError(f"jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth}")


@dataclass(frozen=True)
class StepRecord:
    """One optimiser step: the loss and its parts, measured before the step (1-based ``step``)."""

    step: int
    loss: float
    mse: float
    kl: float
    l0: float
    alpha: float


@dataclass
class KLFinetuneResult:
    """The finetuned SAE (a plain SAELens ``jumprelu`` SAE) and how it got there."""

    sae: SAE[Any]
    alpha: float
    beta: float
    input_scale: float
    steps_done: int
    history: list[StepRecord] = field(default_factory=list)
    #: the signal number when SIGINT/SIGTERM stopped the run early, else None
    interrupted_by: int | None = None


class KLFinetuneNonFiniteError(NonFiniteTrainingError):
    """The loss or a gradient of a step was not finite; ``partial`` holds the steps before it."""

    def __init__(self, message: str, partial: KLFinetuneResult) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True)
class SpliceMetrics:
    """The SAE spliced into the model on some tokens (the evaluation's definitions and masks)."""

    kl: float
    mse: float
    fvu: float
    l0: float
    n_tokens: int


# -- the SAE: checks, trainable form, inference form ---------------------------------------------


def placement(sae: SAE[Any]) -> tuple[torch.device, torch.dtype]:
    """The device and dtype every tensor of the run takes (the SAE's)."""
    return sae.W_enc.device, sae.W_enc.dtype


def check_finetunable(sae: Any) -> None:
    """Refuse what this module cannot finetune, in one line saying why."""
    meta = sae.cfg.metadata
    if isinstance(sae, Transcoder) or meta.hook_name_out is not None:
        raise ValueError(
            "KL finetuning takes an SAE that reads and writes one hook; transcoders are not supported"
        )
    if not isinstance(sae, JumpReLUSAE):
        raise ValueError(
            f"KL finetuning takes an inference JumpReLU SAE (architecture 'jumprelu'), got "
            f"{type(sae).__name__}; save a training SAE for inference and load it with SAE.load_from_disk"
        )
    if meta.hook_name is None:
        raise ValueError("the SAE's cfg.metadata.hook_name is unset: cannot tell where to splice it")
    if meta.hook_head_index is not None:
        raise ValueError(f"single-head SAEs (hook_head_index={meta.hook_head_index}) are not supported")
    if sae.cfg.normalize_activations != "none":
        raise ValueError(
            f"the SAE normalises its inputs ({sae.cfg.normalize_activations!r}); KL finetuning takes "
            "raw-space SAEs (normalize_activations='none')"
        )


@torch.no_grad()
def trainable_from(sae: SAE[Any], input_scale: float, bandwidth: float) -> GemmaScopeTrainingSAE:
    """The recipe's training SAE computing ``sae``'s function on inputs divided by ``input_scale``."""
    device, dtype = placement(sae)
    cfg = GemmaScopeTrainingSAEConfig(
        d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, dtype=str(dtype).removeprefix("torch."), device=str(device),
        apply_b_dec_to_input=False, normalize_activations="none", input_scaling="none",
        l0_coefficient=0.0, jumprelu_bandwidth=bandwidth, fast_path="dense",
    )  # fmt: skip
    trainable = GemmaScopeTrainingSAE(cfg)
    # Nobody else drives it: tell training_forward_pass not to warn if something calls it.
    trainable.recipe_trainer_attached = True
    # The warm start's unfold (recipe.warm_start): the pre-encoder bias and any non-unit decoder row
    # folded into the encoder (the recipe renormalises rows every step), b_enc, b_dec and θ over C.
    unfold_into(trainable, source_weights(sae, "the SAE to finetune", described="KL finetuning"), input_scale)
    return trainable


@torch.no_grad()
def inference_from(
    trainable: GemmaScopeTrainingSAE, start: SAE[Any], input_scale: float, record: dict[str, Any]
) -> SAE[Any]:
    """``start``'s class and config holding ``trainable``'s weights, back in raw space."""
    folded = copy.deepcopy(trainable)
    folded.fold_activation_norm_scaling_factor(1.0 / input_scale)  # b_enc, b_dec, θ times C
    sae = copy.deepcopy(start)
    sae.cfg.apply_b_dec_to_input = False
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        target = getattr(sae, name)
        target.copy_(getattr(folded, name).detach().to(target.dtype))
    sae.cfg.metadata[METADATA_KEY] = record
    return sae


# -- the model side: the evaluation's splice (models.splice_plan) ---------------------------------


@dataclass
class _Clean:
    """A clean pass: what a step needs from it."""

    act: torch.Tensor  # the read hook's activations as cached (attn.hook_z: heads unflattened)
    x: torch.Tensor  # the same as (batch, pos, d_in), heads flattened, in the SAE's dtype
    log_probs: torch.Tensor
    cache: dict[str, torch.Tensor]  # the hooks the plan caches (the spliced pass starts from one)
    act_mask: torch.Tensor
    pred_mask: torch.Tensor


class _Splicer:
    """Clean and spliced forward passes of one model at one SAE's site."""

    def __init__(self, model: Any, sae: SAE[Any]) -> None:
        self.model = model
        self.plan = plan_splice(model, sae)
        self.special = SpecialTokens.of_model(model)
        self.device, self.dtype = placement(sae)

    @torch.no_grad()
    def clean(self, tokens: torch.Tensor) -> _Clean:
        tokens = tokens.to(self.device)
        names = sorted(self.plan.cache_hooks)
        logits, cache = self.model.run_with_cache(tokens, names_filter=names, return_type="logits")
        act = cache[self.plan.read_hook]
        return _Clean(
            act=act,
            x=flat_site_tensor(self.plan, act).to(self.dtype),
            log_probs=next_token_log_probs(logits),
            cache={name: cache[name] for name in names},
            act_mask=activation_mask(tokens, self.special),
            pred_mask=loss_mask(tokens, self.special),
        )

    def kl(self, tokens: torch.Tensor, clean: _Clean, reconstruction: torch.Tensor) -> torch.Tensor:
        """Mean KL(clean ‖ spliced) over the counted predictions, ``reconstruction`` spliced in (with
        its autograd graph: the finetuning trains through it)."""
        tokens = tokens.to(self.device)
        logits = spliced_logits(self.model, self.plan, tokens, clean.cache, reconstruction, clean.act_mask)
        per_prediction = kl_divergence(clean.log_probs, next_token_log_probs(logits))
        return _masked_mean(per_prediction, clean.pred_mask)

    def inference_reconstruction(self, sae: SAE[Any], clean: _Clean) -> tuple[torch.Tensor, torch.Tensor]:
        """``(feature_acts, x̂)`` of an inference SAE, ``x̂`` flattened as ``clean.x``."""
        return encode_decode(sae, self.plan, clean.act)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return values[mask].mean() if bool(mask.any()) else values.sum() * 0.0


def _squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return (x - x_hat).pow(2).sum(-1)


# -- token batches -------------------------------------------------------------------------------


def token_batches(tokens: TokenRows, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of ``batch_size`` rows: a ``(n, ctx)`` tensor is cycled in order for ever; an iterable
    of such tensors is read once (each re-cut into batches; a short last one is kept)."""
    if isinstance(tokens, torch.Tensor):
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
            raise ValueError(
                f"token rows must be a (n >= 1, ctx >= 2) tensor, got shape {tuple(tokens.shape)}"
            )
        while True:
            yield from tokens.long().split(batch_size)
    else:
        for chunk in tokens:
            yield from token_batches_once(chunk, batch_size)


def token_batches_once(tokens: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"token rows must be a (n, ctx >= 2) tensor, got shape {tuple(tokens.shape)}")
    yield from tokens.long().split(batch_size)


# -- the run -------------------------------------------------------------------------------------


@dataclass
class _Start:
    """alpha and C from the starting SAE on the first batches."""

    alpha: float
    input_scale: float
    batches: list[torch.Tensor]


@torch.no_grad()
def _measure_start(
    splicer: _Splicer, sae: SAE[Any], batches: Iterator[torch.Tensor], n_batches: int
) -> _Start:
    meter = MeanSquaredNormMeter()
    mse_sum = kl_sum = 0.0
    n_act = n_pred = 0
    taken = list(itertools.islice(batches, n_batches))
    if not taken:
        raise ValueError("no token rows to finetune on")
    for tokens in taken:
        clean = splicer.clean(tokens)
        x = clean.x[clean.act_mask]
        meter.update(x)
        _, x_hat = splicer.inference_reconstruction(sae, clean)
        mse_sum += float(_squared_error(clean.x, x_hat)[clean.act_mask].double().sum())
        n_act += int(clean.act_mask.sum())
        kl = splicer.kl(tokens, clean, x_hat)
        n = int(clean.pred_mask.sum())
        kl_sum += float(kl) * n
        n_pred += n
    if n_act == 0 or n_pred == 0:
        raise ValueError("the first batches hold no counted tokens (all BOS, EOS or padding)")
    mse, kl_mean = mse_sum / n_act, kl_sum / n_pred
    alpha = mse / (kl_mean + KL_EPSILON)
    if not (math.isfinite(alpha) and alpha > 0):
        raise NonFiniteTrainingError(
            f"alpha = MSE / (KL + 1e-8) of the starting SAE is {alpha} (MSE {mse}, KL {kl_mean})"
        )
    return _Start(alpha=alpha, input_scale=meter.input_scale(), batches=taken)


@dataclass
class _StepParts:
    loss: torch.Tensor
    mse: torch.Tensor
    kl: torch.Tensor
    l0: torch.Tensor


def finetune_loss(mse: torch.Tensor, kl: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``(MSE + alpha·β·KL) / (1 + β)``."""
    return (mse + alpha * beta * kl) / (1.0 + beta)


def _step_parts(
    splicer: _Splicer, trainable: GemmaScopeTrainingSAE, tokens: torch.Tensor, input_scale: float,
    alpha: float, beta: float,
) -> _StepParts:  # fmt: skip
    clean = splicer.clean(tokens)
    feature_acts = trainable.encode(clean.x / input_scale)
    x_hat = trainable.decode(feature_acts) * input_scale
    mse = _masked_mean(_squared_error(clean.x, x_hat), clean.act_mask)
    kl = splicer.kl(tokens, clean, x_hat)
    with torch.no_grad():
        l0 = _masked_mean((feature_acts > 0).sum(-1).to(torch.float32), clean.act_mask)
    return _StepParts(loss=finetune_loss(mse, kl, alpha, beta), mse=mse, kl=kl, l0=l0)


def _nonfinite_gradients(trainable: GemmaScopeTrainingSAE) -> list[str]:
    return nonfinite_tensors(
        (name, param.grad) for name, param in trainable.named_parameters() if param.grad is not None
    )


class _FrozenModel:
    """The model's parameters without gradients for the run; their flags restored after."""

    def __init__(self, model: Any) -> None:
        self.params = list(model.parameters())
        self.flags = [p.requires_grad for p in self.params]

    def __enter__(self) -> _FrozenModel:
        for p in self.params:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc: object) -> None:
        for p, flag in zip(self.params, self.flags, strict=True):
            p.requires_grad_(flag)


def _check_model_device(model: Any, sae: SAE[Any]) -> None:
    device, _ = placement(sae)
    model_device = next(iter(model.parameters())).device
    if model_device != device:
        raise ValueError(f"the model is on {model_device} but the SAE on {device}: move one of them")


def kl_finetune(
    sae: SAE[Any],
    model: Any,
    tokens: TokenRows,
    config: KLFinetuneConfig | None = None,
    **overrides: Any,
) -> KLFinetuneResult:
    """Finetune ``sae`` (spliced into ``model``, a TransformerLens ``HookedTransformer``) on
    ``(MSE + alpha·β·KL) / (1 + β)`` for ``config.steps`` steps (see the module docstring).

    ``tokens``: a ``(n, ctx)`` tensor of token rows (cycled) or an iterable of such tensors (read
    once; the run ends early when it runs out). ``overrides`` replace fields of ``config``, e.g.
    ``kl_finetune(sae, model, rows, beta=3.0, steps=500)``. ``sae`` itself is not changed.
    """
    config = KLFinetuneConfig(**{**asdict(config or KLFinetuneConfig()), **overrides})
    check_finetunable(sae)
    _check_model_device(model, sae)
    splicer = _Splicer(model, sae)
    with _FrozenModel(model):
        batches = token_batches(tokens, config.batch_size)
        start = _measure_start(splicer, sae, batches, config.alpha_batches)
        trainable = trainable_from(sae, start.input_scale, config.jumprelu_bandwidth)
        # The alpha batches are trained on too: they are the first batches of the stream.
        return _train(splicer, sae, trainable, itertools.chain(start.batches, batches), start, config)


def _train(
    splicer: _Splicer,
    start_sae: SAE[Any],
    trainable: GemmaScopeTrainingSAE,
    batches: Iterator[torch.Tensor],
    start: _Start,
    config: KLFinetuneConfig,
) -> KLFinetuneResult:
    optimizer = torch.optim.Adam(trainable.parameters(), lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    history: list[StepRecord] = []

    def result(interrupted_by: int | None = None) -> KLFinetuneResult:
        record = {
            "beta": config.beta, "alpha": start.alpha, "steps": len(history), "lr": config.lr,
            "batch_size": config.batch_size, "input_scale": start.input_scale,
        }  # fmt: skip
        return KLFinetuneResult(
            sae=inference_from(trainable, start_sae, start.input_scale, record),
            alpha=start.alpha, beta=config.beta, input_scale=start.input_scale,
            steps_done=len(history), history=history, interrupted_by=interrupted_by,
        )  # fmt: skip

    watch = InterruptWatch()
    with watch, progress_task("KL finetune", config.steps, unit="step", show=config.progress) as task:
        for step, tokens in enumerate(itertools.islice(batches, config.steps), start=1):
            try:
                watch.stop_at_step_boundary()
            except StopAtStepBoundary as stop:
                logger.warning(f"stopped by {stop} after step {len(history)}")
                return result(interrupted_by=stop.signum)
            parts = _step_parts(splicer, trainable, tokens, start.input_scale, start.alpha, config.beta)
            loss = float(parts.loss.detach())
            if not math.isfinite(loss):
                _stop_nonfinite(step, f"the loss is {loss}", history, result)
            optimizer.zero_grad(set_to_none=True)
            parts.loss.backward()
            bad = _nonfinite_gradients(trainable)
            if bad:
                _stop_nonfinite(step, f"the gradient of {', '.join(bad)} is not finite", history, result)
            trainable.before_optimizer_step()
            optimizer.step()
            trainable.after_optimizer_step()
            record = StepRecord(
                step, loss, float(parts.mse.detach()), float(parts.kl.detach()), float(parts.l0), start.alpha
            )
            history.append(record)
            task.update(step, note=lambda r=record: f"loss {r.loss:.4g} | KL {r.kl:.4g} | L0 {r.l0:.3g}")
    if len(history) < config.steps:
        logger.warning(f"the token rows ran out after {len(history)} of {config.steps} steps")
    return result()


def _stop_nonfinite(step: int, what: str, history: list[StepRecord], result: Any) -> NoReturn:
    """Raise before the optimiser step, with the result of the steps finished before ``step``."""
    raise KLFinetuneNonFiniteError(
        f"KL finetuning stopped at step {step}: {what}; the weights after step {len(history)} are kept "
        "(the error's .partial); check the model's dtype and the token rows, or lower the learning rate",
        result(),
    )


@torch.no_grad()
def splice_metrics(sae: SAE[Any], model: Any, tokens: torch.Tensor, batch_size: int = 8) -> SpliceMetrics:
    """KL(clean ‖ spliced), MSE, FVU and L0 of ``sae`` spliced into ``model`` on ``(n, ctx)`` token
    rows, over the counted tokens (FVU: MSE over the variance of x about its own mean)."""
    check_finetunable(sae)
    _check_model_device(model, sae)
    splicer = _Splicer(model, sae)
    sums = {"kl": 0.0, "se": 0.0, "l0": 0.0, "x": 0.0, "x2": 0.0}
    x_sum: torch.Tensor | None = None
    n_act = n_pred = 0
    for batch in token_batches_once(tokens, batch_size):
        clean = splicer.clean(batch)
        acts, x_hat = splicer.inference_reconstruction(sae, clean)
        x = clean.x[clean.act_mask].double()
        batch_sum = x.sum(0)
        x_sum = batch_sum if x_sum is None else x_sum + batch_sum
        sums["x2"] += float(x.pow(2).sum())
        sums["se"] += float(_squared_error(clean.x, x_hat)[clean.act_mask].double().sum())
        sums["l0"] += float((acts[clean.act_mask] > 0).sum())
        n_act += int(clean.act_mask.sum())
        n = int(clean.pred_mask.sum())
        sums["kl"] += float(splicer.kl(batch, clean, x_hat)) * n
        n_pred += n
    if x_sum is None or n_act == 0 or n_pred == 0:
        raise ValueError("no counted tokens to measure on")
    mse = sums["se"] / n_act
    variance = sums["x2"] / n_act - float((x_sum / n_act).pow(2).sum())
    return SpliceMetrics(
        kl=sums["kl"] / n_pred, mse=mse, fvu=mse / variance, l0=sums["l0"] / n_act, n_tokens=n_act
    )
