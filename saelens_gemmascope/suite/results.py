"""What a finished suite reports: each trained SAE (target, reached L0, where it was exported), and
the shape of the function that trains one pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelens_gemmascope.suite.configs import PresetSAE


@dataclass(frozen=True)
class TrainedSAE:
    """One SAE of a finished suite: what it aimed at, what it reached and where it was exported
    (``note`` says why it was not, when it was not)."""

    name: str
    preset: str
    target_l0: float | None
    l0_coefficient: float
    l0: float
    saelens_path: str
    export_id: str | None
    release: str | None
    note: str | None = None


@dataclass(frozen=True)
class SuiteResult:
    output_root: Path
    saes: tuple[TrainedSAE, ...]
    releases: tuple[str, ...]

    def summary(self) -> str:
        """One line per SAE: measured L0 against its target, and where it was exported."""
        lines = [f"{len(self.saes)} SAEs trained under {self.output_root}"]
        for sae in self.saes:
            where = (
                f"{sae.release} {sae.export_id}"
                if sae.export_id
                else f"not exported: {sae.note or 'see log'}"
            )
            target = f" (target {sae.target_l0:g}, x{sae.l0 / sae.target_l0:.2f})" if sae.target_l0 else ""
            lines.append(f"  {sae.name}: L0 {sae.l0:.1f}{target} λ={sae.l0_coefficient:.3g} -> {where}")
        if self.releases:
            lines.append(f"registered local releases: {', '.join(self.releases)}")
        return "\n".join(lines)


#: Runs one pass (SAEs, tokens, pass id or None for a probe run) and returns trained SAEs by name.
TrainPass = Callable[[Sequence[PresetSAE], int, str | None], Mapping[str, Any]]
