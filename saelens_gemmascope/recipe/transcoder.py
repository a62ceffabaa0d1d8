"""Gemma Scope transcoders trained with the recipe: ``jumprelu_gemmascope_transcoder`` and
``jumprelu_gemmascope_skip_transcoder``.

Public API (what the demo, the benchmarks and users build on):

* :class:`GemmaScopeTrainingTranscoderConfig` / :class:`GemmaScopeTrainingTranscoder`, and the skip
  variant :class:`GemmaScopeTrainingSkipTranscoderConfig` / :class:`GemmaScopeTrainingSkipTranscoder`
  (ŷ = W_dec f + b_dec + W_skip x, Gemma Scope 2's ``affine_skip_connection``, W_skip [d_out, d_in]
  learned from zero).
* :func:`paired_hook` / :func:`split_paired_hook`: the one "hook" a transcoder trains on,
  ``"<input hook>-><output hook>"``. The runners resolve it to the two real hooks of one model forward
  pass and hand the transcoder one tensor ``[x ; y]`` (width ``d_in + d_out``), so that SAELens's
  buffer mixing keeps the rows paired; the training forward pass splits it.
* From a preset: ``saelens_gemmascope.suite.configs.training_config("tiny-gemma-2/transcoder/layer_1/width_512",
  [λ1, λ2])`` gives a ``MultiSAETrainingRunnerConfig`` whose SAEs are transcoder configs on the paired
  hook; ``GemmaScopeMultiSAETrainingRunner(cfg).run()`` trains them (with SAEs of the same model in the
  same forward pass if the config has both) and returns ``{name: GemmaScopeTrainingTranscoder}``.
  (One λ gives a single-SAE config, which ``GemmaScopeTrainingRunner`` trains as well.) From the CLI:
  ``gemmascope train tiny-gemma-2/transcoder/layer_1/width_512``.
* After training (SAELens's trainers call the fold), :meth:`GemmaScopeTrainingTranscoder.inference_transcoder`
  gives SAELens's own ``JumpReLUTranscoder`` / ``JumpReLUSkipTranscoder`` on raw activations, with
  ``metadata.hook_name`` the input hook and ``metadata.hook_name_out`` the output hook; the saved folder
  (``save_inference_model``, the runners' output) is the same, loadable by plain SAELens.

Which tensors (Gemma 2 / Gemma Scope): the input is TransformerLens's ``blocks.L.ln2.hook_normalized``,
the pre-MLP RMSNorm's output *before* its (1 + w) gain (Gemma Scope folds the gain into the MLP's input
matrices; it is the hook the released transcoders are loaded on, ``models/gemma2.py`` site
``transcoder``, and spliced at, ``models/splice_plan.py``); the target is ``blocks.L.hook_mlp_out``, the
MLP output after the post-MLP RMSNorm (site ``mlp``).

The recipe is the SAE's (:mod:`saelens_gemmascope.recipe.sae`): the same estimators, λ schedule,
optimiser, unit-norm decoder with gradient projection, θ handling and fast paths; the loss is
‖y - ŷ‖² + λ·L0. Differences, each a config field:

* two fixed scalars, C_in for the input and C_out for the target, each with E‖·/C‖² = 1, estimated
  once before training (the SAE has one). The trainer's activation scaler multiplies the paired batch
  by 1/C_in (SAELens saves and restores it), and the transcoder's ``output_scale_ratio`` buffer
  (C_out/C_in, saved with the weights, so resuming restores it) rescales the target.
* ``encoder_init``: the paper ties W_enc = W_decᵀ at init, which lines a latent's encoder up with the
  direction its decoder writes. For a transcoder the decoder writes to another space (the MLP output),
  so that alignment means nothing; the default ``"independent"`` draws W_enc as W_dec is drawn
  (He-uniform, unit-norm columns), so pre-activations start at the SAE's scale and θ's init keeps its
  meaning. ``"decoder_transpose"`` is the paper's tie (needs d_in = d_out).
* ``pre_encoder_bias``: the SAE subtracts b_dec before the encoder; b_dec is in the output space here.
  ``"none"`` (default) has no pre-encoder bias: x @ W_enc + b_enc already spans what a learned one
  would (it only re-parametrises b_enc). ``"learned"`` trains a separate input-space bias b_in,
  subtracted before the encoder and folded into b_enc after training.

Fold (after training, with C_in, C_out): decoder rows keep unit norm, so a latent's activation is the
norm of its contribution in raw output units: W_enc' = (C_out/C_in)·W_enc, b_enc' = C_out·b_enc,
θ' = C_out·θ, b_dec' = C_out·b_dec, W_skip' = (C_out/C_in)·W_skip. Then
saved(x) = C_out · trained(x / C_in) exactly (up to rounding).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens.saes.sae import SAE, TrainStepInput, TrainStepOutput
from torch import nn

from saelens_gemmascope.recipe.sae import (
    GemmaScopeTrainingSAE,
    GemmaScopeTrainingSAEConfig,
    threshold_storage_dtype,
)

TRANSCODER_ARCHITECTURE = "jumprelu_gemmascope_transcoder"
SKIP_TRANSCODER_ARCHITECTURE = "jumprelu_gemmascope_skip_transcoder"

#: Between the input and the output hook of a transcoder's paired hook key.
PAIRED_HOOK_SEPARATOR = "->"

EncoderInit = Literal["independent", "decoder_transpose"]
PreEncoderBias = Literal["none", "learned"]

#: The buffer holding C_out / C_in (what rescales the target); not part of the inference model.
OUTPUT_SCALE_RATIO = "output_scale_ratio"
#: The learned pre-encoder bias (``pre_encoder_bias="learned"``); folded into b_enc, not saved for inference.
INPUT_BIAS = "b_in"


def paired_hook(input_hook: str, output_hook: str) -> str:
    """The hook key a transcoder trains on: its input and output hooks, read from one forward pass."""
    return f"{input_hook}{PAIRED_HOOK_SEPARATOR}{output_hook}"


def split_paired_hook(key: str | None) -> tuple[str, str] | None:
    """``(input hook, output hook)`` of a paired key; ``None`` for a plain hook."""
    if key is None or PAIRED_HOOK_SEPARATOR not in key:
        return None
    input_hook, output_hook = key.split(PAIRED_HOOK_SEPARATOR, 1)
    return input_hook, output_hook


def real_hooks(keys: list[str]) -> list[str]:
    """The model hooks that ``keys`` (plain hooks or paired keys) read, in first-seen order."""
    hooks: dict[str, None] = {}
    for key in keys:
        pair = split_paired_hook(key)
        hooks.update(dict.fromkeys(pair if pair is not None else (key,)))
    return list(hooks)


@dataclass
class GemmaScopeTrainingTranscoderConfig(GemmaScopeTrainingSAEConfig):
    """Training config of a ``jumprelu_gemmascope_transcoder`` (see the module docstring).

    Args:
        d_out: width of the target (``None``: ``d_in``).
        encoder_init: ``"independent"`` (default) or ``"decoder_transpose"`` (the SAE recipe's tie).
        pre_encoder_bias: ``"none"`` (default) or ``"learned"`` (an input-space bias, folded after training).
    """

    d_out: int | None = None
    encoder_init: EncoderInit = "independent"
    pre_encoder_bias: PreEncoderBias = "none"
    # b_dec lives in the output space: it is never subtracted from the input (SAELens's transcoder
    # configs refuse it too); ``pre_encoder_bias`` is the transcoder's own choice.
    apply_b_dec_to_input: bool = False

    @classmethod
    def architecture(cls) -> str:
        return TRANSCODER_ARCHITECTURE

    def __post_init__(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in
        if self.apply_b_dec_to_input:
            raise ValueError(
                f"{self.architecture()}: b_dec is in the output space and cannot be subtracted from the "
                "input; use pre_encoder_bias='learned' for an input-space pre-encoder bias"
            )
        if self.encoder_init not in ("independent", "decoder_transpose"):
            raise ValueError(
                f"encoder_init must be 'independent' or 'decoder_transpose', got {self.encoder_init!r}"
            )
        if self.encoder_init == "decoder_transpose" and self.d_out != self.d_in:
            raise ValueError("encoder_init='decoder_transpose' needs d_in == d_out")
        if self.pre_encoder_bias not in ("none", "learned"):
            raise ValueError(f"pre_encoder_bias must be 'none' or 'learned', got {self.pre_encoder_bias!r}")
        super().__post_init__()

    def get_inference_sae_cfg_dict(self) -> dict[str, Any]:
        # The runners name a transcoder's hook by its paired key; the saved transcoder names its two
        # hooks as SAELens's transcoders (and the released Gemma Scope ones) do.
        result = super().get_inference_sae_cfg_dict()
        pair = split_paired_hook(result["metadata"].get("hook_name"))
        if pair is not None:
            result["metadata"]["hook_name"], result["metadata"]["hook_name_out"] = pair
        return result


@dataclass
class GemmaScopeTrainingSkipTranscoderConfig(GemmaScopeTrainingTranscoderConfig):
    """Training config of a ``jumprelu_gemmascope_skip_transcoder`` (W_skip, init zero)."""

    @classmethod
    def architecture(cls) -> str:
        return SKIP_TRANSCODER_ARCHITECTURE


class GemmaScopeTrainingTranscoder(GemmaScopeTrainingSAE):
    """A JumpReLU transcoder trained with the Gemma Scope recipe (see the module docstring)."""

    cfg: GemmaScopeTrainingTranscoderConfig  # type: ignore[assignment]
    output_scale_ratio: torch.Tensor

    def __init__(self, cfg: GemmaScopeTrainingTranscoderConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]
        # C_out / C_in; float64 whatever the SAE's dtype (see _apply). Set by the trainer before the
        # first step, saved with the weights, so a resumed run keeps its checkpoint's.
        self.register_buffer(OUTPUT_SCALE_RATIO, torch.ones((), dtype=torch.float64, device=self.device))

    @property
    def d_out(self) -> int:
        assert self.cfg.d_out is not None  # set by the config's __post_init__
        return self.cfg.d_out

    # -- parameters ------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        d_in, d_sae, d_out = self.cfg.d_in, self.cfg.d_sae, self.d_out
        factory = {"dtype": self.dtype, "device": self.device}
        # The SAE recipe's decoder: He-uniform rows rescaled to decoder_init_norm (here into d_out).
        self.W_dec = nn.Parameter(_he_uniform_rows(d_sae, d_out, self.cfg.decoder_init_norm, **factory))
        if self.cfg.encoder_init == "decoder_transpose":
            self.W_enc = nn.Parameter(self.W_dec.data.T.clone().contiguous())
        else:  # an independent draw of the decoder's distribution, transposed
            self.W_enc = nn.Parameter(
                _he_uniform_rows(d_sae, d_in, self.cfg.decoder_init_norm, **factory).T.contiguous()
            )
        self.b_dec = nn.Parameter(torch.zeros(d_out, **factory))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **factory))
        if self.cfg.pre_encoder_bias == "learned":
            setattr(self, INPUT_BIAS, nn.Parameter(torch.zeros(d_in, **factory)))
        init = torch.full(
            (d_sae,), self.cfg.jumprelu_init_threshold, dtype=threshold_storage_dtype(self.dtype),
            device=self.device,
        )  # fmt: skip
        if self.cfg.threshold_parametrisation == "log":
            self.log_threshold = nn.Parameter(init.log())
        else:
            self.threshold = nn.Parameter(init)

    def _apply(self, fn: Any, recurse: bool = True) -> GemmaScopeTrainingTranscoder:
        # As θ (see the SAE's _apply): the scale ratio stays float64 through .to()/.half().
        ratio = self._buffers.get(OUTPUT_SCALE_RATIO)
        out = super()._apply(fn, recurse)
        if ratio is not None:
            buffer = self._buffers[OUTPUT_SCALE_RATIO]
            assert buffer is not None
            self._buffers[OUTPUT_SCALE_RATIO] = ratio.to(device=buffer.device, dtype=torch.float64)
        return out  # type: ignore[return-value]

    def set_scales(self, input_scale: float, output_scale: float) -> None:
        """Record C_out / C_in (the trainer's activation scaler divides the whole batch by C_in)."""
        self.output_scale_ratio.fill_(output_scale / input_scale)

    # -- what differs from the SAE's step ----------------------------------------------------------

    def split_step_input(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[x/C_in ; y/C_in]`` (the paired, scaled batch) -> ``(x/C_in, y/C_out)``."""
        d_in = self.cfg.d_in
        if batch.shape[-1] != d_in + self.d_out:
            raise ValueError(
                f"a transcoder trains on [input ; target] rows of width d_in + d_out = {d_in} + {self.d_out}, "
                f"got width {batch.shape[-1]}: train it on a paired hook (recipe.transcoder.paired_hook)"
            )
        ratio = self.output_scale_ratio.to(batch.dtype)
        return batch[..., :d_in], batch[..., d_in:] / ratio

    def pre_encoder_bias(self) -> torch.Tensor | None:
        return getattr(self, INPUT_BIAS) if self.cfg.pre_encoder_bias == "learned" else None

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        # SAELens's (dtype, hooks, run-time norm) without its b_dec term, which is in the output space.
        sae_in = self.hook_sae_input(self.reshape_fn_in(sae_in.to(self.dtype)))
        sae_in = self.run_time_activation_norm_fn_in(sae_in)
        bias = self.pre_encoder_bias()
        return sae_in - bias if bias is not None else sae_in

    RECIPE_TRAINER_DOES = "input and output scales, unit-norm decoder, cosine warm-up"
    RECIPE_RUNNERS = "GemmaScopeMultiSAETrainingRunner"

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        # Never SAELens's own step (it knows no target side or skip term), whatever fast_path says.
        self.warn_without_recipe_trainer(step_input)
        return self._training_forward_pass_choosing_path(step_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ŷ for an input ``x`` (in the space the transcoder currently reads: scaled before the fold)."""
        return self.add_skip(self.decode(self.encode(x)), x)

    # -- folding into the released (raw-space) form ----------------------------------------------

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold C_in = 1/scaling_factor, C_out (= C_in · the ratio) and any pre-encoder bias into the
        weights (see the module docstring); afterwards the transcoder maps raw input to raw output."""
        input_scale = 1.0 / scaling_factor
        output_scale = float(self.output_scale_ratio) * input_scale
        self.cfg = copy.deepcopy(self.cfg)  # the caller's config describes the unfolded transcoder
        bias = self.pre_encoder_bias()
        if bias is not None:
            self.b_enc.sub_(bias @ self.W_enc)
            bias.zero_()
        self.W_enc.mul_(output_scale / input_scale)
        self.b_enc.mul_(output_scale)
        self.b_dec.mul_(output_scale)
        self._scale_threshold(torch.full_like(self.threshold_values, output_scale))
        self._scale_skip(output_scale / input_scale)
        self.output_scale_ratio.fill_(1.0)
        self.cfg.normalize_activations = "none"
        # Provenance only: the folded weights no longer need the scales.
        self.cfg.metadata.gemmascope_input_scale = input_scale
        self.cfg.metadata.gemmascope_output_scale = output_scale
        pair = split_paired_hook(self.cfg.metadata.hook_name)
        if pair is not None:
            self.cfg.metadata.hook_name, self.cfg.metadata.hook_name_out = pair

    def _scale_skip(self, factor: float) -> None:
        """A skip transcoder scales W_skip; a plain one has none."""

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        # Training-only state: the scale ratio (folded) and the pre-encoder bias (folded into b_enc).
        state_dict.pop(OUTPUT_SCALE_RATIO, None)
        state_dict.pop(INPUT_BIAS, None)
        super().process_state_dict_for_saving_inference(state_dict)

    def inference_transcoder(self) -> SAE[Any]:
        """SAELens's own inference transcoder (``JumpReLUTranscoder`` or ``JumpReLUSkipTranscoder``)
        with this transcoder's weights, as ``save_inference_model`` would save it."""
        transcoder = SAE.from_dict(self.cfg.get_inference_sae_cfg_dict())
        transcoder.load_state_dict(self.inference_state_dict())
        return transcoder


class GemmaScopeTrainingSkipTranscoder(GemmaScopeTrainingTranscoder):
    """A JumpReLU skip transcoder (ŷ = W_dec f + b_dec + W_skip x) trained with the Gemma Scope recipe."""

    cfg: GemmaScopeTrainingSkipTranscoderConfig  # type: ignore[assignment]
    W_skip: nn.Parameter

    def initialize_weights(self) -> None:
        super().initialize_weights()
        # Gemma Scope 2's affine skip, [d_out, d_in] as SAELens's JumpReLUSkipTranscoder stores it,
        # from zero: training starts as the plain transcoder's.
        self.W_skip = nn.Parameter(
            torch.zeros(self.d_out, self.cfg.d_in, dtype=self.dtype, device=self.device)
        )

    def add_skip(self, sae_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # SAELens's skip reads the raw input, not the bias-shifted encoder input.
        return sae_out + x.to(self.W_skip.dtype) @ self.W_skip.T

    def _scale_skip(self, factor: float) -> None:
        self.W_skip.mul_(factor)


def _he_uniform_rows(
    n_rows: int, width: int, row_norm: float | None, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """He-uniform ``[n_rows, width]`` (SAELens's kaiming_uniform_), rows rescaled to ``row_norm``."""
    rows = torch.empty(n_rows, width, dtype=dtype, device=device)
    nn.init.kaiming_uniform_(rows)
    if row_norm is not None:
        rows = rows / rows.norm(dim=-1, keepdim=True) * row_norm
    return rows
