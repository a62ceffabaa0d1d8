"""Per-token metric tensors of one batch, and running sums that turn them into the paper's numbers.

Every sum is float64 and masked by the rules in :mod:`saelens_gemmascope.models.token_masks`, so a
metric is a ratio of two sums over exactly the tokens that count, however the batches fall:

* ``l0``         = Σ ‖f(x)‖₀ / n
* ``mse``        = Σ ‖x - x̂‖² / n                      (summed over d, averaged over tokens)
* ``fvu``        = mse / (Σ ‖x‖² / n - ‖Σ x / n‖²)      (the variance of x about its own mean)
* ``ce_clean``, ``ce_spliced`` = mean next-token cross-entropy; ``delta_loss`` = their difference
* ``kl``         = mean KL(clean ‖ spliced) of the next-token distributions

``x`` is the tensor the SAE reconstructs: its input for an SAE, the MLP output for a transcoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# One definition, shared with the KL finetuning (runners/ may not import evaluation/).


@dataclass
class TokenMetrics:
    """One SAE on one batch, per token. ``act_*`` are ``(batch, pos)``, ``loss_*`` ``(batch, pos - 1)``."""

    act_mask: torch.Tensor
    l0: torch.Tensor
    squared_error: torch.Tensor
    target: torch.Tensor  # (batch, pos, d): what the SAE reconstructs, for the variance
    loss_mask: torch.Tensor
    ce_clean: torch.Tensor
    ce_spliced: torch.Tensor
    kl: torch.Tensor


def cross_entropy(log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``(batch, pos - 1)``: -log p(tokens[t + 1]) under the prediction made at ``t``."""
    return -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)


class MetricSums:
    """Running masked sums over batches, over all positions or kept per position.

    ``by_position=True`` keeps the position axis, so every metric becomes a curve with one point per
    position (activation metrics: ``pos`` points; loss metrics: ``pos - 1``, the last position
    predicting nothing).
    """

    def __init__(self, by_position: bool = False) -> None:
        self.by_position = by_position
        self._sums: dict[str, torch.Tensor] = {}

    def _add(self, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        # mask broadcast over trailing dims (the d axis of the target)
        while mask.ndim < values.ndim:
            mask = mask.unsqueeze(-1)
        total = torch.where(mask, values.double(), 0.0).sum(0)
        if not self.by_position:
            total = total.sum(0)
        self._sums[name] = self._sums[name] + total if name in self._sums else total

    def add(self, batch: TokenMetrics, rows: torch.Tensor | None = None) -> None:
        """Add ``batch``, or only its ``rows`` (a ``(batch,)`` bool mask, e.g. one domain's sequences)."""
        act_mask, loss_mask = batch.act_mask, batch.loss_mask
        if rows is not None:
            act_mask = act_mask & rows[:, None]
            loss_mask = loss_mask & rows[:, None]
        target = batch.target.double()
        self._add("n_act", torch.ones_like(batch.l0), act_mask)
        self._add("l0", batch.l0, act_mask)
        self._add("squared_error", batch.squared_error, act_mask)
        self._add("target", target, act_mask)
        self._add("target_squared_norm", target.pow(2).sum(-1), act_mask)
        self._add("n_loss", torch.ones_like(batch.ce_clean), loss_mask)
        self._add("ce_clean", batch.ce_clean, loss_mask)
        self._add("ce_spliced", batch.ce_spliced, loss_mask)
        self._add("kl", batch.kl, loss_mask)

    def summed_over_positions(self) -> MetricSums:
        """The same sums with the position axis summed out (overall metrics from per-position sums)."""
        if not self.by_position:
            return self
        total = MetricSums(by_position=False)
        total._sums = {name: values.sum(0) for name, values in self._sums.items()}
        return total

    def results(self) -> dict[str, torch.Tensor]:
        """Every metric as a float64 tensor (a scalar, or one value per position); NaN where no token counted."""
        if not self._sums:
            raise ValueError("no batch was added")
        s = self._sums
        n_act = s["n_act"]
        n_loss = s["n_loss"]
        mean_target = s["target"] / n_act.unsqueeze(-1)
        variance = s["target_squared_norm"] / n_act - mean_target.pow(2).sum(-1)
        mse = s["squared_error"] / n_act
        ce_clean = s["ce_clean"] / n_loss
        ce_spliced = s["ce_spliced"] / n_loss
        return {
            "n_tokens": n_act,
            "l0": s["l0"] / n_act,
            "mse": mse,
            "fvu": mse / variance,
            "n_loss_tokens": n_loss,
            "ce_clean": ce_clean,
            "ce_spliced": ce_spliced,
            "delta_loss": ce_spliced - ce_clean,
            "kl": s["kl"] / n_loss,
        }


def to_python(value: torch.Tensor) -> float | int | list[float | int | None] | None:
    """A JSON-ready number (or list): NaN and infinities become None, counts become ints."""

    def one(x: float) -> float | int | None:
        if not math.isfinite(x):
            return None
        return int(x) if float(x).is_integer() and abs(x) < 2**53 else x

    if value.ndim == 0:
        return one(float(value))
    return [one(float(x)) for x in value.tolist()]


@dataclass
class LatentFiring:
    """How often each latent fires over the counted tokens."""

    counts: torch.Tensor  # (d_sae,) int64
    n_tokens: int = 0

    @classmethod
    def empty(cls, d_sae: int, device: torch.device | str) -> LatentFiring:
        return cls(counts=torch.zeros(d_sae, dtype=torch.int64, device=device))

    def add(self, feature_acts: torch.Tensor, act_mask: torch.Tensor) -> None:
        fired = (feature_acts != 0) & act_mask.to(feature_acts.device)[..., None]
        self.counts += fired.flatten(0, -2).sum(0)
        self.n_tokens += int(act_mask.sum())

    def dead_fraction(self) -> float:
        """Fraction of latents that never fired."""
        return float((self.counts == 0).double().mean())

    def dense_fraction(self, threshold: float = 0.1) -> float:
        """Fraction of latents firing on more than ``threshold`` of the counted tokens."""
        if self.n_tokens == 0:
            return math.nan
        return float((self.counts.double() / self.n_tokens > threshold).double().mean())
