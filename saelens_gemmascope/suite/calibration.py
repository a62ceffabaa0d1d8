"""Finding the λ that gives each target L0 (Gemma Scope never published its λs).

Method: short probe runs on the preset's own activation stream. Round one trains one probe SAE
per λ of a log grid; the λ for each target is then read off the measured (λ, L0) points by
linear interpolation of log L0 against log λ (extrapolating along the nearest segment outside
the probed range). Each refinement round probes those λs and interpolates again with every point
so far. All probes of all presets of one model run as one multi-SAE pass, so they share one
forward pass of the language model; this module only does the arithmetic and the bookkeeping, and
takes the function that runs probes as an argument.

The result is recorded beside the run (``<output>/calibration/<preset>.json``, written atomically)
and reused when it exists, so a resumed or repeated run starts from the same λs. Inputs are checked:
a grid λ that is not a positive finite number, or a probe whose L0 is not finite, stops calibration
with one line before (or instead of) training; a record that does not validate is an error naming
the file (delete it to calibrate again), never silently replaced.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saelens_gemmascope.suite.configs import PresetSAE
from saelens_gemmascope.suite.preset import TrainingPreset

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


class CalibrationError(ValueError):
    """Calibration cannot give a usable λ: a bad grid, a probe that diverged, an unreadable record."""


def _positive_finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _finite_l0(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_l0_list(value: Any) -> bool:
    return isinstance(value, list) and all(map(_positive_finite, value))


def check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    """The grid as a tuple, if every λ is a positive finite number (else :class:`CalibrationError`)."""
    values = tuple(grid)
    bad = [c for c in values if not _positive_finite(c)]
    if not values or bad:
        raise CalibrationError(
            f"the calibration grid must be positive finite λs, e.g. {','.join(f'{c:g}' for c in DEFAULT_GRID)}; "
            f"got {list(values)}"
        )
    return values


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
        return json.dumps(data, indent=2, allow_nan=False) + "\n"  # NaN/inf would not be JSON

    @classmethod
    def from_json(cls, text: str) -> CalibrationRecord:
        """The record in ``text``, validated (:class:`CalibrationError` says what is wrong)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CalibrationError(f"not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"not a {CALIBRATION_FORMAT} record")
        return cls(
            preset=_field(data, "preset", _is_name, "a preset name"),
            probe_tokens=_field(data, "probe_tokens", _is_count, "an integer >= 0"),
            probes=[(float(c), float(l0)) for c, l0 in _pairs(data, "probes", _positive_finite, _finite_l0)],
            l0_coefficients={
                float(t): float(c)
                for t, c in _pairs(data, "l0_coefficients", _positive_finite, _positive_finite)
            },
            method=_field(data, "method", lambda v: isinstance(v, str), "a string"),
            out_of_range=[float(t) for t in _field(data, "out_of_range", _is_l0_list, "a list of L0s")],
        )

    def ladder(self, preset: TrainingPreset) -> list[PresetSAE]:
        """The preset's SAEs with the calibrated λs."""
        return [PresetSAE(preset, self.l0_coefficients[t], target_l0=t) for t in preset.l0_targets]


def _field(data: Mapping[str, Any], key: str, valid: Callable[[Any], bool], expected: str) -> Any:
    if key not in data:
        raise CalibrationError(f"field {key!r} is missing")
    if not valid(data[key]):
        raise CalibrationError(f"field {key!r}: expected {expected}, got {data[key]!r}")
    return data[key]


def _pairs(
    data: Mapping[str, Any], key: str, first: Callable[[Any], bool], second: Callable[[Any], bool]
) -> list[tuple[Any, Any]]:
    """``data[key]`` as a list of validated pairs (JSON keeps them as two-element lists)."""
    pairs = _field(data, key, lambda v: isinstance(v, list), "a list of pairs")
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and first(pair[0]) and second(pair[1])):
            raise CalibrationError(f"field {key!r}: {pair!r} is not a pair of finite numbers in range")
    return [(pair[0], pair[1]) for pair in pairs]


def record_path(output_root: str | Path, preset_name: str) -> Path:
    return Path(output_root) / CALIBRATION_DIR / f"{preset_name.replace('/', '__')}.json"


def read_record(output_root: str | Path, preset: TrainingPreset) -> CalibrationRecord | None:
    """The stored record, if it exists and covers every target of ``preset``."""
    path = record_path(output_root, preset.name)
    if not path.is_file():
        return None
    try:
        record = CalibrationRecord.from_json(path.read_text(encoding="utf-8"))
        if record.preset != preset.name:
            raise CalibrationError(f"it records preset {record.preset!r}, not {preset.name!r}")
    except (CalibrationError, UnicodeDecodeError) as err:
        raise CalibrationError(
            f"{path}: not a usable calibration record ({err}); delete it to calibrate {preset.name} again"
        ) from None
    return record if set(preset.l0_targets) <= set(record.l0_coefficients) else None


def write_record(output_root: str | Path, record: CalibrationRecord) -> Path:
    """Write the record through a temporary file and ``os.replace``: a reader (or a run killed
    mid-write) sees the old record or the new one, never half of one."""
    path = record_path(output_root, record.preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = record.to_json()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    grid = check_grid(grid)
    fixed = [p.name for p in presets if p.fixed_lambda]
    if fixed:
        raise CalibrationError(
            f"{', '.join(fixed[:3])}{', ...' if len(fixed) > 3 else ''}: Gemma Scope 2 presets are not "
            "calibrated (their quadratic L0 penalty aims at each target with one fixed λ)"
        )
    if isinstance(refine_rounds, bool) or not isinstance(refine_rounds, int) or refine_rounds < 0:
        raise CalibrationError(f"refine_rounds must be an integer >= 0, got {refine_rounds!r}")
    records = {p.name: r for p in presets if (r := read_record(output_root, p)) is not None}
    pending = [p for p in presets if p.name not in records]
    short = [p.name for p in pending if not probe_tokens.get(p.name, 0) > 0]
    if short:
        raise CalibrationError(
            f"probe tokens must be positive for every preset to calibrate; not for {short}"
        )
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
    ladders = {}
    for p in presets:
        ladder = [PresetSAE(p, lambda_for_target(found[p.name].probes, t), target_l0=t) for t in p.l0_targets]
        bad = [(s.target_l0, s.l0_coefficient) for s in ladder if not _positive_finite(s.l0_coefficient)]
        if bad:
            raise CalibrationError(
                f"calibration of {p.name} gave no usable λ for (target L0, λ) {bad} from probes "
                f"{found[p.name].probes}; give explicit λs (--l0-coefficients) or another grid"
            )
        ladders[p.name] = ladder
    return ladders


def _probe(
    run_probes: ProbeRunner, saes: Sequence[PresetSAE], tokens: int, found: Mapping[str, CalibrationRecord]
) -> None:
    measured = run_probes(saes, tokens)
    for sae in saes:
        l0 = float(measured[sae.name])
        if not _finite_l0(l0):
            raise CalibrationError(
                f"calibration probe {sae.name} (λ={sae.l0_coefficient:g}, {tokens:,} tokens) measured L0 {l0}: "
                "the probe diverged, so no λ can be read off it; check the data, or give explicit λs "
                "(--l0-coefficients) or a smaller grid"
            )
        found[sae.preset.name].probes.append((sae.l0_coefficient, l0))
