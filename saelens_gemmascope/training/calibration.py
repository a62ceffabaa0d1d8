"""Finding the λ that gives each target L0 (Gemma Scope never published its λs).

Method: short probe runs on the preset's own activation stream. Round one trains one probe SAE
per λ of a log grid; the λ for each target is then read off the measured (λ, L0) points by
linear interpolation of log L0 against log λ (extrapolating along the nearest segment outside
the probed range). Each refinement round probes those λs and interpolates again with every point
so far. All probes of all presets of one model run as one multi-SAE pass, so they share one
forward pass of the language model; this module only does the arithmetic and the bookkeeping, and
takes the function that runs probes as an argument.

The result is recorded beside the run (``<output>/calibration/<preset>.json``) and reused when it
exists, so a resumed or repeated run starts from the same λs.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saelens_gemmascope.training.preset import TrainingPreset
from saelens_gemmascope.training.preset_config import PresetSAE

CALIBRATION_DIR = "calibration"
CALIBRATION_FORMAT = "saelens-gemmascope/calibration"
#: λs of the first round: a log grid wide enough for the recipe's normalised inputs (the paper
#: mentions 6e-4 and 1e-3 for the real models; small models need larger λs).
DEFAULT_GRID: tuple[float, ...] = (3e-4, 3e-3, 3e-2, 3e-1)
#: Slope of log L0 in log λ assumed when the probes give no usable one (flat or rising).
FALLBACK_SLOPE = -0.5
#: Extrapolation goes at most this factor beyond the probed λs: where L0 barely responds to λ
#: (a saturated probe), a straight line would ask for absurd λs.
MAX_EXTRAPOLATION = 10.0

#: Runs probe SAEs for ``tokens`` tokens each and returns their measured L0 by SAE name.
ProbeRunner = Callable[[Sequence[PresetSAE], int], Mapping[str, float]]


@dataclass
class CalibrationRecord:
    """What calibration measured for one preset and the λ it chose for each target L0."""

    preset: str
    probe_tokens: int
    probes: list[tuple[float, float]] = field(default_factory=list)  # (λ, measured L0)
    l0_coefficients: dict[float, float] = field(default_factory=dict)  # target L0 -> λ
    method: str = "log-log interpolation of probe runs"
    #: targets outside every probed L0 (their λ is a bounded extrapolation; check the trained L0)
    out_of_range: list[float] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        data["format"] = CALIBRATION_FORMAT
        data["l0_coefficients"] = [[t, c] for t, c in sorted(self.l0_coefficients.items())]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CalibrationRecord:
        data: dict[str, Any] = json.loads(text)
        if data.pop("format", None) != CALIBRATION_FORMAT:
            raise ValueError("not a calibration record")
        data["probes"] = [(float(c), float(l0)) for c, l0 in data["probes"]]
        data["l0_coefficients"] = {float(t): float(c) for t, c in data["l0_coefficients"]}
        return cls(**data)

    def ladder(self, preset: TrainingPreset) -> list[PresetSAE]:
        """The preset's SAEs with the calibrated λs."""
        return [PresetSAE(preset, self.l0_coefficients[t], target_l0=t) for t in preset.l0_targets]


def record_path(output_root: str | Path, preset_name: str) -> Path:
    return Path(output_root) / CALIBRATION_DIR / f"{preset_name.replace('/', '__')}.json"


def read_record(output_root: str | Path, preset: TrainingPreset) -> CalibrationRecord | None:
    """The stored record, if it exists and covers every target of ``preset``."""
    path = record_path(output_root, preset.name)
    if not path.is_file():
        return None
    record = CalibrationRecord.from_json(path.read_text())
    return record if set(preset.l0_targets) <= set(record.l0_coefficients) else None


def write_record(output_root: str | Path, record: CalibrationRecord) -> Path:
    path = record_path(output_root, record.preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.to_json())
    return path


def lambda_for_target(probes: Sequence[tuple[float, float]], target_l0: float) -> float:
    """λ expected to give ``target_l0``, from (λ, L0) probe points.

    Interpolates log L0 linearly in log λ between the two probes whose L0s bracket the target
    (the bracket nearest the target when noise gives several); outside the probed range,
    extrapolates along the nearest end segment (its slope forced negative: more λ, fewer latents).
    """
    points = sorted((math.log(c), math.log(max(l0, 1e-3))) for c, l0 in probes if c > 0)
    if not points:
        raise ValueError("no probe points")
    y = math.log(target_l0)
    if len(points) == 1:
        return math.exp(points[0][0] + (y - points[0][1]) / FALLBACK_SLOPE)
    brackets = [(a, b) for a, b in itertools.pairwise(points) if min(a[1], b[1]) <= y <= max(a[1], b[1])]
    if brackets:
        a, b = min(brackets, key=lambda ab: abs(ab[0][1] + ab[1][1] - 2 * y))
        if a[1] == b[1]:
            return math.exp((a[0] + b[0]) / 2)
        return math.exp(a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1]))
    # Outside the probed L0s: above the densest probe means a smaller λ than any probed.
    a, b = (points[0], points[1]) if y > max(p[1] for p in points) else (points[-2], points[-1])
    slope = (b[1] - a[1]) / (b[0] - a[0]) if b[0] != a[0] else FALLBACK_SLOPE
    slope = slope if slope < -1e-3 else FALLBACK_SLOPE
    anchor = a if y > max(p[1] for p in points) else b
    log_c = anchor[0] + (y - anchor[1]) / slope
    limit = math.log(MAX_EXTRAPOLATION)
    return math.exp(min(max(log_c, points[0][0] - limit), points[-1][0] + limit))


def calibrate(
    presets: Sequence[TrainingPreset],
    run_probes: ProbeRunner,
    *,
    output_root: str | Path,
    probe_tokens: Mapping[str, int],
    grid: Sequence[float] = DEFAULT_GRID,
    refine_rounds: int = 1,
    write: bool = True,
) -> dict[str, CalibrationRecord]:
    """A record per preset: read from ``output_root`` when present, else measured and written.

    Presets still to calibrate are probed together (one ``run_probes`` call per round), so one
    forward pass feeds every probe. ``probe_tokens`` gives each preset's probe length; presets
    probed together must share it. ``write=False`` (the other ranks of a torchrun job) computes
    the same records without writing them.
    """
    records = {p.name: r for p in presets if (r := read_record(output_root, p)) is not None}
    pending = [p for p in presets if p.name not in records]
    for tokens in sorted({probe_tokens[p.name] for p in pending}):
        batch = [p for p in pending if probe_tokens[p.name] == tokens]
        found = {p.name: CalibrationRecord(preset=p.name, probe_tokens=tokens) for p in batch}
        _probe(run_probes, [PresetSAE(p, c) for p in batch for c in grid], tokens, found)
        for _ in range(refine_rounds):
            guesses = _interpolate(batch, found)
            _probe(run_probes, [s for p in batch for s in guesses[p.name]], tokens, found)
        for preset in batch:
            record = found[preset.name]
            record.l0_coefficients = {
                s.target_l0: s.l0_coefficient for s in _interpolate([preset], found)[preset.name]
            }  # type: ignore[misc]
            record.method = f"log-log interpolation; grid {list(grid)}, {refine_rounds} refinement round(s)"
            measured = [l0 for _, l0 in record.probes]
            record.out_of_range = [t for t in preset.l0_targets if not min(measured) <= t <= max(measured)]
            if write:
                write_record(output_root, record)
            records[preset.name] = record
    return {p.name: records[p.name] for p in presets}


def _interpolate(
    presets: Sequence[TrainingPreset], found: Mapping[str, CalibrationRecord]
) -> dict[str, list[PresetSAE]]:
    return {
        p.name: [PresetSAE(p, lambda_for_target(found[p.name].probes, t), target_l0=t) for t in p.l0_targets]
        for p in presets
    }


def _probe(
    run_probes: ProbeRunner, saes: Sequence[PresetSAE], tokens: int, found: Mapping[str, CalibrationRecord]
) -> None:
    measured = run_probes(saes, tokens)
    for sae in saes:
        found[sae.preset.name].probes.append((sae.l0_coefficient, float(measured[sae.name])))
