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
