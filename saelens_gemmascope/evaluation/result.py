"""What an evaluation returns (and writes to ``metrics.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The headline numbers of one SAE, in report order.
SCALAR_METRICS = (
    "l0",
    "delta_loss",
    "fvu",
    "mse",
    "kl",
    "ce_clean",
    "ce_spliced",
    "dead_fraction",
    "dense_fraction",
    "n_tokens",
    "n_loss_tokens",
)

#: One name per metric, used by the report, the plots and the demo's summary (``metrics.json`` keeps
#: the keys). FVU is the fraction of variance unexplained; explained variance is 1 - FVU.
METRIC_NAMES = {
    "l0": "L0",
    "delta_loss": "delta LM loss",
    "fvu": "FVU",
    "kl": "KL",
    "dead_fraction": "dead latents",
    "dense_fraction": "dense latents",
}

#: Flagged in the report and the summary: more than this fraction of latents never fired ...
DEAD_FLAG_FRACTION = 0.10
#: ... or more than this fraction fired on over ``dense_threshold`` (10%) of the tokens.
DENSE_FLAG_FRACTION = 0.01

Number = float | int | None


@dataclass
class SAEMetrics:
    """Every number measured for one SAE."""

    label: str
    source: str
    release: str | None
    sae_id: str | None
    site: str
    layer: int | None
    d_sae: int
    hook_name: str
    hook_name_out: str | None
    #: the SCALAR_METRICS, over every counted token
    metrics: dict[str, Number]
    #: per position: l0, mse, fvu (``pos`` points); delta_loss, kl, ce_clean, ce_spliced (``pos - 1``)
    by_position: dict[str, list[Number]]
    #: per domain: the scalar metrics restricted to that domain's sequences
    by_domain: dict[str, dict[str, Number]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Number:
        return self.metrics[name]

    @property
    def is_zero_ablation(self) -> bool:
        """A baseline whose reconstruction is always zero (no latent ever fires)."""
        return self.source == "baseline" or self.metrics.get("l0") == 0

    def latent_flags(self) -> list[str]:
        """Why this SAE's latents need a look: too many dead or dense ones (none for a zero ablation)."""
        if self.is_zero_ablation:
            return []
        return latent_flags(self.metrics.get("dead_fraction"), self.metrics.get("dense_fraction"))


def latent_flags(dead_fraction: Number, dense_fraction: Number) -> list[str]:
    """``["dead 14.0% > 10%", ...]`` for the fractions above :data:`DEAD_FLAG_FRACTION` /
    :data:`DENSE_FLAG_FRACTION`; empty when neither is (or neither was measured)."""
    flags = []
    if dead_fraction is not None and dead_fraction > DEAD_FLAG_FRACTION:
        flags.append(f"dead {100 * dead_fraction:.1f}% > {100 * DEAD_FLAG_FRACTION:g}%")
    if dense_fraction is not None and dense_fraction > DENSE_FLAG_FRACTION:
        flags.append(f"dense {100 * dense_fraction:.1f}% > {100 * DENSE_FLAG_FRACTION:g}%")
    return flags


@dataclass
class EvalResult:
    saes: list[SAEMetrics]
    settings: dict[str, Any]
    #: files written by :func:`saelens_gemmascope.evaluation.report.write_outputs`, by kind
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "saes": [asdict(sae) for sae in self.saes]}

    def by_label(self, label: str) -> SAEMetrics:
        for sae in self.saes:
            if sae.label == label:
                return sae
        raise KeyError(label)
