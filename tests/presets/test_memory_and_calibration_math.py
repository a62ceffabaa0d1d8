"""The memory planner and the calibration arithmetic (no training)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from saelens_gemmascope.suite.calibration import (
    CalibrationRecord,
    calibrate,
    lambda_for_target,
    read_record,
    record_path,
)
from saelens_gemmascope.suite.configs import PresetSAE, match_presets
from saelens_gemmascope.suite.memory import estimate_sae_memory, parse_bytes
from saelens_gemmascope.suite.plan import plan_suite


def test_sae_memory_estimate_for_a_gemma_scope_16k_sae() -> None:
    memory = estimate_sae_memory(d_in=2304, d_sae=16384, batch_tokens=4096)
    params = 2 * 2304 * 16384 + 2 * 16384 + 2304
    assert (
        memory.parameters == 4 * params and memory.optimizer == 8 * params and memory.gradients == 4 * params
    )
    assert memory.activations == 4096 * (6 * 16384 + 4 * 2304) * 4
    assert (
        2.8e9 < memory.total < 3.1e9
    )  # 1.2 GB of weights, gradients and Adam state, 1.8 GB of batch tensors


def test_planner_splits_a_suite_into_passes_that_fit_the_budget() -> None:
    presets = match_presets(["gemma-2-2b/res/layer_12/width_16k", "gemma-2-2b/mlp/layer_12/width_16k"])
    unlimited = plan_suite(presets)
    assert len(unlimited.passes) == 1 and len(unlimited.passes[0].rungs) == 10
    budget = parse_bytes("10GiB")
    plan = plan_suite(presets, memory_budget=budget)
    assert len(plan.groups) == 1 and len(plan.passes) > 1
    assert all(p.sae_bytes + p.stream_bytes <= budget for p in plan.passes)
    assert sorted(r.name for p in plan.passes for r in p.rungs) == sorted(
        r.name for r in unlimited.passes[0].rungs
    )
    # SAEs of one hook stay together: only one pass mixes the two hooks.
    assert sum(len(p.hooks) > 1 for p in plan.passes) <= 1
    assert "do not fit at once" in plan.describe()


def test_different_token_budgets_form_different_groups() -> None:
    plan = plan_suite(
        match_presets(["gemma-2-2b/res/layer_12/width_16k", "gemma-2-2b/res/layer_12/width_65k"])
    )
    assert sorted(g.training_tokens for g in plan.groups) == [4 * 10**9, 8 * 10**9]


def test_parse_bytes() -> None:
    assert (
        parse_bytes("8GiB") == 8 * 2**30
        and parse_bytes("500MB") == 500 * 10**6
        and parse_bytes("1e9") == 10**9
    )
    with pytest.raises(ValueError):
        parse_bytes("lots")


def _power_law(coefficient: float) -> float:
    return 3.0 * coefficient**-0.5


def test_interpolation_recovers_a_power_law_inside_and_outside_the_probes() -> None:
    probes = [(c, _power_law(c)) for c in (1e-3, 1e-2, 1e-1)]
    for target in (15.0, 40.0, 200.0, 5.0):  # inside, inside, above, below the probed L0s
        assert math.isclose(_power_law(lambda_for_target(probes, target)), target, rel_tol=1e-9)


def test_interpolation_survives_a_noisy_non_monotone_probe() -> None:
    probes = [(1e-3, 90.0), (3e-3, 60.0), (1e-2, 62.0), (3e-2, 20.0)]
    coefficient = lambda_for_target(probes, 40.0)
    assert 1e-2 < coefficient < 3e-2


def test_extrapolation_from_saturated_probes_stays_bounded() -> None:
    probes = [(1e-3, 60.0), (1e-2, 55.0), (1e-1, 54.0), (1.0, 54.2)]  # L0 stops responding near 54
    assert lambda_for_target(probes, 12.0) == pytest.approx(10.0)  # 10x the largest probed λ, no more
    assert lambda_for_target(probes, 500.0) == pytest.approx(1e-4)


def test_a_stored_record_is_reused_and_a_new_one_is_written(tmp_path: Path) -> None:
    (preset,) = match_presets(["tiny-gemma-2/res/layer_0/width_256"])
    calls: list[int] = []

    def fake_probes(saes: Sequence[PresetSAE], tokens: int) -> Mapping[str, float]:
        calls.append(len(saes))
        return {s.name: _power_law(s.l0_coefficient) for s in saes}

    records = calibrate(
        [preset], fake_probes, output_root=tmp_path, probe_tokens={preset.name: 1000}, grid=(1e-3, 1e-1)
    )
    assert calls == [2, 3]  # the grid, then one refinement probe per target
    record = records[preset.name]
    for target, coefficient in record.l0_coefficients.items():
        assert math.isclose(_power_law(coefficient), target, rel_tol=1e-6)
    assert record_path(tmp_path, preset.name).is_file()
    assert read_record(tmp_path, preset) == record
    assert CalibrationRecord.from_json(record.to_json()) == record

    def must_not_run(saes: Sequence[PresetSAE], tokens: int) -> Mapping[str, float]:
        raise AssertionError("the stored record should have been reused")

    again = calibrate([preset], must_not_run, output_root=tmp_path, probe_tokens={preset.name: 1000})
    assert again[preset.name] == record
