"""Warm start: begin a recipe training run from a saved JumpReLU SAE of the same site.

Gemma Scope 2's IT SAEs were initialised from the PT SAEs of the same site and finetuned on chat
data with the same recipe. A saved (or released) SAE is in the raw-space, folded form that
:meth:`~saelens_gemmascope.recipe.sae.GemmaScopeTrainingSAE.fold_activation_norm_scaling_factor`
writes::

    b_enc' = C·b_enc - C·(b_dec @ W_enc),   b_dec' = C·b_dec,   θ' = C·θ,   W_enc, W_dec unchanged

A new run trains in its own scaled space, with its own C (estimated from the new data as usual), so
the warm start inverts the fold with that C::

    b_dec = b_dec'/C,   b_enc = b_enc'/C + b_dec @ W_enc,   θ = θ'/C,   W_enc, W_dec as saved

and the run starts from exactly the source's function: the training SAE applied to x/C, times C,
is the source applied to x. Folding the result again with the same C gives the source's weights back.

What a source is (:func:`load_source_sae`): a local SAELens folder (``SAE.load_from_disk``; an existing
path always wins) or ``release/sae_id`` (``SAE.from_pretrained``: a release of SAELens's directory,
in the Hugging Face cache, or a local Gemma Scope export registered in this process). It must be a
plain ``jumprelu`` SAE of the config's ``d_in`` and ``d_sae`` with finite weights; a hook other than
the run's gets a warning (the brief is "same site"). Transcoders are refused.

Which source each SAE of a ladder starts from (:func:`init_source_for`): one SAE (folder or
``release/id``) for every rung, or a folder holding one SAELens folder per rung, named as the rung
(the SAE's full name, or its last part such as ``target_l0_20``).

Resuming (:func:`resumed_warm_start`): a resumed run continues from its checkpoint's weights and
keeps the source its checkpoint's ``cfg.json`` records (SAELens restores weights, not the config's
metadata); ``init_from`` may be left out, and one naming another source is refused.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import SAE, TrainingSAE

from saelens_gemmascope.compat import pretrained_directory
from saelens_gemmascope.directory.saved import SavedSAEError, load_saved_sae
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig
from saelens_gemmascope.recipe.transcoder import GemmaScopeTrainingTranscoder

#: The saved SAE's architecture a warm start reads (what a recipe run saves; Gemma Scope's releases).
SOURCE_ARCHITECTURE = "jumprelu"

#: Metadata field of the trained SAE that records where it started from.
INIT_FROM_METADATA = "gemmascope_init_from"

#: A decoder row whose norm is further than this from 1 is renormalised (with a warning).
UNIT_NORM_TOLERANCE = 1e-4

_SAE_CONFIG_FILE = "cfg.json"


class WarmStartError(ValueError):
    """The warm-start source is missing, of another shape or kind, or holds non-finite weights."""


@dataclass(frozen=True)
class SourceWeights:
    """A source SAE in raw space with no pre-encoder bias and unit-norm decoder rows:
    ``f = JumpReLU_θ(x @ W_enc + b_enc)``, ``x̂ = f @ W_dec + b_dec``."""

    source: str
    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor
    hook_name: str | None

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])


# -- finding and loading a source -----------------------------------------------------------------


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", ".\\")) or Path(source).is_absolute()


def _is_sae_folder(path: Path) -> bool:
    return (path / _SAE_CONFIG_FILE).is_file()


def _how_to_provide() -> str:
    return (
        "give a folder saved by SAELens (a training run's output folder, or SAE.save_model), or "
        "'release/sae_id' of a release that is available offline (in the Hugging Face cache, or a "
        "local Gemma Scope export registered with gemmascope)"
    )


def load_source_sae(source: str) -> SAE[Any]:
    """The SAE ``source`` names, on the CPU in its saved dtype: a folder if the path exists, else
    ``release/sae_id`` through SAELens's directory. Raises :class:`WarmStartError` when missing."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir() or not _is_sae_folder(path):
            raise WarmStartError(
                f"init_from {source}: not an SAE folder (no {_SAE_CONFIG_FILE}); {_how_to_provide()}"
            )
        try:
            return load_saved_sae(path, device="cpu")
        except SavedSAEError as err:
            raise WarmStartError(f"init_from {source}: {err}") from None
    release, sae_id = split_release_id(source)
    if _looks_like_path(source) or not release or not sae_id:
        raise WarmStartError(
            f"init_from {source}: no such folder and not 'release/sae_id'; {_how_to_provide()}"
        )
    try:
        return SAE.from_pretrained(release, sae_id, device="cpu")
    except (ValueError, OSError, KeyError) as err:  # unknown release/id, or not in the offline cache
        raise WarmStartError(
            f"init_from {source}: cannot load SAE {sae_id!r} of release {release!r} ({type(err).__name__}: "
            f"{err}); {_how_to_provide()}"
        ) from None


def is_rung_folder(init_from: str) -> bool:
    """Whether ``init_from`` is a folder of per-rung SAE folders, not one SAE for every rung (a
    calibration probe, named by its λ, has no rung of its own there)."""
    root = Path(init_from).expanduser()
    return root.is_dir() and not _is_sae_folder(root)


def split_release_id(source: str) -> tuple[str, str]:
    """``release/sae_id`` as (release, sae_id). Both may hold slashes (a local release is named
    ``local/<folder>/<model>``, Gemma Scope ids are ``layer_12/width_16k/...``): the longest prefix
    that names a release of SAELens's directory wins, else the first slash splits."""
    known = pretrained_directory()
    cuts = [i for i, char in enumerate(source) if char == "/"]
    for cut in reversed(cuts):
        if source[:cut] in known:
            return source[:cut], source[cut + 1 :]
    release, _, sae_id = source.partition("/")
    return release, sae_id


def init_source_for(init_from: str, sae_name: str) -> str:
    """The source the SAE ``sae_name`` of a run starts from, given the run's ``init_from``.

    ``init_from`` is one SAE for every rung (an SAE folder, or ``release/sae_id``), or a folder
    holding one SAE folder per rung: ``<init_from>/<sae_name>`` or ``<init_from>/<last part of
    sae_name>`` (e.g. ``target_l0_20``), so the PT run's folder of a preset's rungs serves the IT run.
    """
    if not is_rung_folder(init_from):
        return init_from
    root = Path(init_from).expanduser()
    leaf = sae_name.rstrip("/").rsplit("/", 1)[-1]
    candidates = [root / sae_name, root / leaf]
    for candidate in candidates:
        if _is_sae_folder(candidate):
            return str(candidate)
    looked = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise WarmStartError(
        f"init_from {init_from}: a folder of per-rung SAEs, but none for SAE {sae_name!r} (looked for "
        f"{looked} with a {_SAE_CONFIG_FILE}); name each rung's folder as the rung, or give one SAE "
        "folder for every rung"
    )


# -- reading a source's weights --------------------------------------------------------------------


def source_weights(sae: SAE[Any], source: str, described: str | None = None) -> SourceWeights:
    """``sae``'s raw-space weights, checked (architecture, no input normalisation, finite) and with
    any pre-encoder bias and any non-unit decoder row folded into the encoder (the same function).
    Messages name the SAE as ``described`` (default ``init_from <source>``)."""
    who = described or f"init_from {source}"
    architecture = sae.cfg.architecture()
    if architecture != SOURCE_ARCHITECTURE:
        kind = "a transcoder" if "transcoder" in architecture else f"architecture {architecture!r}"
        raise WarmStartError(
            f"{who}: {kind}; a warm start reads a saved '{SOURCE_ARCHITECTURE}' SAE (a "
            "training run's output folder, not a checkpoint). Transcoders are not supported"
        )
    if sae.cfg.normalize_activations != "none":
        raise WarmStartError(
            f"{who}: normalize_activations={sae.cfg.normalize_activations!r}; a warm start "
            "reads an SAE on raw activations (normalize_activations='none', as Gemma Scope's are)"
        )
    tensors = {
        name: getattr(sae, name).detach() for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    }
    bad = [name for name, tensor in tensors.items() if not bool(torch.isfinite(tensor).all())]
    if bad:
        raise WarmStartError(f"{who}: non-finite values in {', '.join(bad)}; the source is corrupt")
    W_enc, W_dec, b_dec = tensors["W_enc"], tensors["W_dec"], tensors["b_dec"]
    b_enc, threshold = tensors["b_enc"], tensors["threshold"]
    if sae.cfg.apply_b_dec_to_input:  # (x - b_dec) @ W_enc + b_enc, written without the bias
        b_enc = b_enc - b_dec @ W_enc
    W_enc, W_dec, b_enc, threshold = _unit_decoder_rows(W_enc, W_dec, b_enc, threshold, who)
    return SourceWeights(source, W_enc, W_dec, b_enc, b_dec, threshold, sae.cfg.metadata.hook_name)


def _unit_decoder_rows(
    W_enc: torch.Tensor, W_dec: torch.Tensor, b_enc: torch.Tensor, threshold: torch.Tensor, who: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder rows at unit norm, the function kept: JumpReLU is positively homogeneous, so a latent
    whose row had norm n gets n times its encoder column, b_enc and θ (the recipe trains unit rows,
    and its gradient projection assumes them)."""
    norms = torch.linalg.vector_norm(W_dec.to(torch.float64), dim=-1)
    if bool(((norms - 1.0).abs() <= UNIT_NORM_TOLERANCE).all()):
        return W_enc, W_dec, b_enc, threshold
    if bool((norms == 0).any()):
        raise WarmStartError(f"{who}: {int((norms == 0).sum())} decoder row(s) are zero")
    warnings.warn(
        f"{who}: decoder rows are not unit norm (norms {float(norms.min()):.4g} to "
        f"{float(norms.max()):.4g}); renormalised, with the encoder rescaled so the SAE computes the same",
        stacklevel=3,
    )
    return (
        (W_enc * norms.to(W_enc.dtype)),
        (W_dec / norms.to(W_dec.dtype).unsqueeze(-1)),
        (b_enc * norms.to(b_enc.dtype)),
        (threshold * norms.to(threshold.dtype)),
    )


def check_fits(
    weights: SourceWeights, cfg: GemmaScopeTrainingSAEConfig, hook_name: str | None, label: str = "the SAE"
) -> None:
    """Refuse a source of another shape than ``cfg``'s; warn when it was trained at another hook."""
    wanted = (cfg.d_in, cfg.d_sae)
    if (weights.d_in, weights.d_sae) != wanted:
        raise WarmStartError(
            f"init_from {weights.source}: d_in={weights.d_in}, d_sae={weights.d_sae}, but {label} has "
            f"d_in={wanted[0]}, d_sae={wanted[1]}; start from an SAE of the same site and width"
        )
    if hook_name is not None and weights.hook_name != hook_name:
        found = f"hook {weights.hook_name!r}" if weights.hook_name else "no hook name"
        warnings.warn(
            f"init_from {weights.source}: the source records {found}, {label} trains at {hook_name!r}; "
            "a warm start is meant for the same site",
            stacklevel=2,
        )


def prepare_warm_start(source: str, cfg: Any, hook_name: str | None, label: str = "the SAE") -> SourceWeights:
    """Load ``source`` and check it can start a training SAE of ``cfg`` at ``hook_name`` (before
    anything runs, so a bad source fails fast)."""
    if not isinstance(cfg, GemmaScopeTrainingSAEConfig):
        raise WarmStartError(
            f"init_from {source}: {label} is a {type(cfg).__name__}; a warm start trains a "
            "jumprelu_gemmascope SAE (transcoders and other architectures are not supported)"
        )
    if cfg.architecture() != GemmaScopeTrainingSAEConfig.architecture():
        raise WarmStartError(
            f"init_from {source}: {label} is a {cfg.architecture()!r}; a warm start trains a "
            "jumprelu_gemmascope SAE (transcoders are not supported)"
        )
    weights = source_weights(load_source_sae(source), source)
    check_fits(weights, cfg, hook_name, label)
    return weights


# -- into the training SAE -------------------------------------------------------------------------


def _on_sae_device(sae: GemmaScopeTrainingSAE, weights: SourceWeights) -> SourceWeights:
    """``weights`` on ``sae``'s device, each in the dtype of the parameter it becomes (θ in θ's storage
    dtype, float32 or wider, as the fold scales it): the source is loaded on the CPU, the SAE may be
    on a GPU, and the unfold mixes the two (``b_enc + b_dec @ W_enc``)."""
    device = sae.W_enc.device
    theta = sae.log_threshold if sae.cfg.threshold_parametrisation == "log" else sae.threshold
    return replace(
        weights,
        W_enc=weights.W_enc.to(device=device, dtype=sae.W_enc.dtype),
        W_dec=weights.W_dec.to(device=device, dtype=sae.W_dec.dtype),
        b_enc=weights.b_enc.to(device=device, dtype=sae.b_enc.dtype),
        b_dec=weights.b_dec.to(device=device, dtype=sae.b_dec.dtype),
        threshold=weights.threshold.to(device=device, dtype=theta.dtype),
    )


def _check_log_threshold(sae: GemmaScopeTrainingSAE, weights: SourceWeights) -> None:
    # On the source (CPU) values, before anything is written: dividing by C > 0 keeps the sign.
    if sae.cfg.threshold_parametrisation != "log":
        return
    if bool((weights.threshold <= 0).any()):
        raise WarmStartError(
            f"init_from {weights.source}: {int((weights.threshold <= 0).sum())} threshold(s) are <= 0, "
            "which threshold_parametrisation='log' cannot hold; train with threshold_parametrisation='direct'"
        )


@torch.no_grad()
def unfold_into(sae: GemmaScopeTrainingSAE, weights: SourceWeights, input_scale: float) -> None:
    """Set ``sae``'s parameters (in place: an optimiser built on them keeps them) so that
    ``input_scale · sae(x / input_scale)`` is the source's ``x̂`` (the inverse of the recipe's fold)."""
    if isinstance(sae, GemmaScopeTrainingTranscoder):
        raise WarmStartError(f"init_from {weights.source}: transcoders are not supported")
    if not (math.isfinite(input_scale) and input_scale > 0):
        raise WarmStartError(
            f"init_from {weights.source}: the input scale must be positive, got {input_scale}"
        )
    check_fits(weights, sae.cfg, None)
    _check_log_threshold(sae, weights)
    source = _on_sae_device(sae, weights)
    scale = 1.0 / input_scale
    sae.W_enc.copy_(source.W_enc)
    sae.W_dec.copy_(source.W_dec)
    sae.b_dec.copy_(source.b_dec * scale)
    b_enc = source.b_enc * scale
    if sae.cfg.apply_b_dec_to_input:  # the trained encoder subtracts b_dec first: add it back
        b_enc = b_enc + sae.b_dec @ sae.W_enc
    sae.b_enc.copy_(b_enc)
    threshold = source.threshold * scale
    if sae.cfg.threshold_parametrisation == "log":
        sae.log_threshold.copy_(threshold.log())
    else:
        sae.threshold.copy_(threshold.clamp(min=0.0))


def record_init_source(sae: TrainingSAE[Any], source: str) -> None:
    """Write the source into the SAE's metadata (saved with it), in a copy of its config: the config
    object is the caller's, and the runner's saved settings (which a resume compares) must not change."""
    sae.cfg = copy.deepcopy(sae.cfg)
    sae.cfg.metadata[INIT_FROM_METADATA] = source


def warm_start(sae: GemmaScopeTrainingSAE, weights: SourceWeights, input_scale: float) -> None:
    """Start ``sae`` from ``weights`` given the run's input scale C, and record the source."""
    unfold_into(sae, weights, input_scale)
    record_init_source(sae, weights.source)


@dataclass(frozen=True)
class WarmStart:
    """One SAE's warm start as a trainer applies it once C is known: ``weights`` for a new run, or
    only ``source`` for a resumed one (which continues from its checkpoint and records the source)."""

    source: str
    weights: SourceWeights | None = None

    def apply(self, sae: TrainingSAE[Any], input_scale: float | None, *, resumed: bool) -> None:
        if resumed:
            record_init_source(sae, self.source)
            return
        if self.weights is None:
            raise WarmStartError(
                f"init_from {self.source}: the source was not loaded (this warm start was planned for a "
                "resumed run, which only records it); plan a new run's with plan_warm_start(resume_from=None)"
            )
        if input_scale is None:
            raise WarmStartError(
                f"init_from {self.source}: the run's input scale C is not known yet; apply the warm "
                "start after C is estimated (the trainer does, before its first step)"
            )
        if not isinstance(sae, GemmaScopeTrainingSAE):
            raise WarmStartError(
                f"init_from {self.source}: the SAE is a {type(sae).__name__}; a warm start trains a "
                "jumprelu_gemmascope SAE (GemmaScopeTrainingSAE)"
            )
        warm_start(sae, self.weights, input_scale)


# -- resuming --------------------------------------------------------------------------------------


def recorded_init_source(sae_folder: Path) -> str | None:
    """The warm-start source a saved SAE records (``metadata.gemmascope_init_from`` in its
    ``cfg.json``: a checkpoint's SAE folder holds one), or None when it started cold."""
    config_path = sae_folder / _SAE_CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise WarmStartError(f"cannot read {config_path} ({err}); resume from an intact checkpoint") from None
    metadata = config.get("metadata") if isinstance(config, dict) else None
    recorded = metadata.get(INIT_FROM_METADATA) if isinstance(metadata, dict) else None
    return str(recorded) if recorded is not None else None


def same_source(given: str, recorded: str) -> bool:
    """Whether two spellings name the same source: one folder (however the path is written), or
    the same ``release/sae_id``."""
    if given == recorded:
        return True
    paths = [Path(name).expanduser() for name in (given, recorded)]
    return all(path.exists() for path in paths) and paths[0].resolve() == paths[1].resolve()


def resumed_warm_start(source: str | None, sae_checkpoint: Path, label: str = "the SAE") -> WarmStart | None:
    """A resumed SAE's warm start: the source its checkpoint records (SAELens restores a checkpoint's
    weights, not its config's metadata, so it is read from the checkpoint's ``cfg.json``). ``source``,
    the one given now, may be left out; one that differs from the checkpoint's is refused."""
    recorded = recorded_init_source(sae_checkpoint)
    if source is None:
        return WarmStart(recorded) if recorded is not None else None
    if recorded is None:
        raise WarmStartError(
            f"init_from {source}: {label} resumes from {sae_checkpoint}, which started cold (its "
            f"{_SAE_CONFIG_FILE} records no {INIT_FROM_METADATA}); resume without --init-from, or train "
            "into a new output folder to warm-start"
        )
    if not same_source(source, recorded):
        raise WarmStartError(
            f"init_from {source}: {label} resumes from {sae_checkpoint}, which was warm-started from "
            f"{recorded}; resume without --init-from (the checkpoint's source is kept) or with that "
            "source, or train into a new output folder"
        )
    return WarmStart(recorded)


def plan_warm_start(
    source: str | None,
    cfg: Any,
    hook_name: str | None,
    *,
    resume_from: Path | None,
    label: str = "the SAE",
) -> WarmStart | None:
    """The warm start of an SAE of ``cfg`` at ``hook_name``, or None (a cold start). A new run's
    source is loaded and checked now (a bad one fails before anything runs); a run resumed from the
    SAE's checkpoint folder ``resume_from`` keeps the source that checkpoint records
    (:func:`resumed_warm_start`)."""
    if resume_from is not None:
        return resumed_warm_start(source, resume_from, label)
    if source is None:
        return None
    return WarmStart(source, prepare_warm_start(source, cfg, hook_name, label))
