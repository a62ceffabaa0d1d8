"""Faults of issue 14, items 1 and 2: non-finite values never saved or exported, exports never overwritten.

Item 1: one NaN activation in one forward pass of the tiny model, after the run's first checkpoint,
stops the run with one line naming the hook, the step and the SAEs; nothing is saved, exported or
registered, the checkpoint before the fault stays the latest complete one, and ``--resume`` from
it ends with the weights of an uninterrupted run; the CLI says so in one line, exit status 2. A
NaN drawn into the stream's pool before a checkpoint keeps that checkpoint from being written (it
would replay the NaN). A checkpoint with one byte flipped (a NaN weight, or a finite but huge one)
does not resume into an export either. The export refuses non-finite weights by itself too.

Item 2: a λ ladder split over passes by the memory budget, two of whose SAEs measure L0s that
round to one ``average_l0_K`` folder: the first keeps it, the second is not exported (a warning
and a note in the summary), and ``summary.json`` equals what is on disk, also after ``--resume``
and after a later run into the same output.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file

from saelens_gemmascope.demo.tiny_model import TinyGemma2
from saelens_gemmascope.directory.layout import gemmascope_params
from saelens_gemmascope.recipe.finite_guard import FiniteGuard, NonFiniteTrainingError
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.configs import PresetSAE, match_presets
from saelens_gemmascope.suite.export import export_pass
from saelens_gemmascope.suite.passes import complete_checkpoints, pass_training
from saelens_gemmascope.suite.plan import SuiteGroup, plan_suite
from saelens_gemmascope.suite.preset import TrainingPreset
from saelens_gemmascope.suite.results import SuiteResult, TrainPass
from saelens_gemmascope.suite.run import run_suite

PRESET = "tiny-gemma-2/res/layer_1/width_256"
HOOK = "blocks.1.hook_resid_post"
BATCH_TOKENS = 256  # the tiny presets' train_batch_size_tokens
LAMBDAS = (3e-2, 3e-3)
STEPS = 48
N_CHECKPOINTS = 2  # after 4,352 and 8,448 tokens: steps 17 and 33


def _preset(steps: int) -> TrainingPreset:
    (preset,) = match_presets([PRESET])
    return dataclasses.replace(preset, training_tokens=steps * BATCH_TOKENS)


def _run(
    root: Path,
    tiny: TinyGemma2,
    data: datasets.Dataset,
    *,
    steps: int = STEPS,
    lambdas: Sequence[float] = LAMBDAS,
    n_checkpoints: int = N_CHECKPOINTS,
    resume: bool = False,
    memory_budget: int | None = None,
    wrap: Callable[[TrainPass], TrainPass] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> SuiteResult:
    spec = RunSpec(output=root, n_checkpoints=n_checkpoints)
    plan = plan_suite([_preset(steps)], spec, l0_coefficients=lambdas, memory_budget=memory_budget)
    trainers = pass_training(spec, model=tiny.tl_model, dataset=data, resume=resume)

    def training_for_group(group: SuiteGroup) -> TrainPass:
        train = trainers(group)
        return train if wrap is None else wrap(train)

    return run_suite(plan, root, training_for_group, progress=progress)


def _saved_weights(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        str(path.parent.relative_to(root / "saes")): load_file(path)
        for path in sorted((root / "saes").rglob("sae_weights.safetensors"))
    }


def _checkpoint_folders(root: Path) -> list[Path]:
    """Every numbered checkpoint folder, complete or not."""
    return sorted(p for p in (root / "checkpoints").glob("*/*/*") if p.is_dir() and p.name.isdigit())


@contextmanager
def nan_after_first_checkpoint(tiny: TinyGemma2, root: Path) -> Iterator[None]:
    """Makes one element of the hook's activations NaN, in the first forward pass after the run's
    first checkpoint is complete (so the fault lies between its two checkpoints)."""
    state = {"done": False}

    def poison(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if state["done"] or not complete_checkpoints(root / "checkpoints" / "group0_pass0"):
            return None
        state["done"] = True
        output = output.clone()
        output[0, 3, 5] = float("nan")
        return output

    handle = tiny.tl_model.hook_dict[HOOK].register_forward_hook(poison)
    try:
        yield
    finally:
        handle.remove()
    assert state["done"], "the NaN was never injected"


@dataclasses.dataclass
class FaultedRun:
    root: Path
    error: str
    clean: dict[str, dict[str, torch.Tensor]]  # an uninterrupted run's final weights


@pytest.fixture(scope="module")
def faulted(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory
) -> FaultedRun:
    clean = tmp_path_factory.mktemp("clean")
    _run(clean, tiny, token_data)
    root = tmp_path_factory.mktemp("faulted")
    with nan_after_first_checkpoint(tiny, root), pytest.raises(NonFiniteTrainingError) as caught:
        _run(root, tiny, token_data)
    return FaultedRun(root, str(caught.value), _saved_weights(clean))


def test_one_nan_activation_stops_the_run_naming_hook_step_and_saes(faulted: FaultedRun) -> None:
    message = faulted.error
    assert "\n" not in message
    names = [PresetSAE(_preset(STEPS), lam).name for lam in LAMBDAS]
    assert HOOK in message and all(name in message for name in names), message
    found = re.search(r"non-finite activations at hook \S+ in step (\d+)", message)
    assert found is not None, message
    step = int(found.group(1))
    assert 4352 // BATCH_TOKENS <= step < 8448 // BATCH_TOKENS, message
    # Nothing exported, registered or summarised; no SAE saved.
    assert not (faulted.root / "saes").exists()
    assert not (faulted.root / "release").exists()
    assert not (faulted.root / "summary.json").exists()


def test_the_checkpoint_before_the_fault_stays_the_latest_and_holds_finite_weights(
    faulted: FaultedRun,
) -> None:
    (kept,) = _checkpoint_folders(faulted.root)  # the second checkpoint was not even begun
    assert kept.name == "4352" and str(kept) in faulted.error
    assert list(complete_checkpoints(kept.parent.parent).values()) == [kept]
    weights = [load_file(p) for p in kept.rglob("sae_weights.safetensors")]
    assert len(weights) == len(LAMBDAS)
    assert all(torch.isfinite(t).all() for w in weights for t in w.values())


def test_resuming_the_kept_checkpoint_ends_with_the_weights_of_an_uninterrupted_run(
    faulted: FaultedRun, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    root = tmp_path / "resumed"
    shutil.copytree(faulted.root, root)
    result = _run(root, tiny, token_data, resume=True)
    weights = _saved_weights(root)
    assert weights.keys() == faulted.clean.keys() and len(weights) == len(LAMBDAS)
    for name, tensors in faulted.clean.items():
        for key, tensor in tensors.items():
            assert torch.equal(weights[name][key], tensor), (name, key)
    assert all(s.export_id is not None for s in result.saes) and result.releases


def test_a_nan_drawn_but_not_yet_trained_on_is_not_saved_in_a_checkpoint(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    # The 8th forward pass's activations are still in the stream's pool (drawn, not trained on) at
    # the first checkpoint (with the tiny presets' buffer). A checkpoint saves that pool with the
    # stream position, so it would replay the NaN on every resume: no checkpoint is written.
    state = {"calls": 0}

    def poison(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        state["calls"] += 1
        if state["calls"] != 8:
            return None
        output = output.clone()
        output[0, 3, 5] = float("nan")
        return output

    handle = tiny.tl_model.hook_dict[HOOK].register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteTrainingError) as caught:
            _run(tmp_path, tiny, token_data)
    finally:
        handle.remove()
    message = str(caught.value)
    assert f"non-finite activations at hook {HOOK} drawn for the next steps" in message, message
    assert "no checkpoint was written" in message
    assert _checkpoint_folders(tmp_path) == []
    assert not (tmp_path / "saes").exists() and not (tmp_path / "release").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a host sync is only visible on CUDA")
def test_recording_a_step_makes_no_host_sync() -> None:
    guard = FiniteGuard()
    batch = torch.randn(256, 64, device="cuda")
    loss = batch.square().mean()
    guard.record(0, batch, loss)  # the first call allocates
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 5):
            guard.record(step, batch, loss if step != 3 else loss * float("nan"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.first_bad_steps() == (None, 3)


def test_the_cli_stops_with_one_line_and_exit_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from saelens_gemmascope.cli import main
    from saelens_gemmascope.models import loading

    root = tmp_path / "cli"
    handles: list[Any] = []
    load = loading.load_language_model

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        model = load(*args, **kwargs)
        state = {"done": False}

        def poison(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if state["done"] or not complete_checkpoints(root / "checkpoints" / "group0_pass0"):
                return None
            state["done"] = True
            output = output.clone()
            output[0, 3, 5] = float("inf")
            return output

        handles.append(model.hook_dict[HOOK].register_forward_hook(poison))
        return model

    monkeypatch.setattr(loading, "load_language_model", poisoned)
    monkeypatch.delenv("GEMMASCOPE_TRACEBACK", raising=False)
    argv = [
        "train", PRESET, "--output", str(root), "--l0-coefficients", ",".join(map(str, LAMBDAS)),
        "--checkpoints", str(N_CHECKPOINTS), "--set", f"training_tokens={STEPS * BATCH_TOKENS}",
    ]  # fmt: skip
    try:
        code = main(argv)
    finally:
        for handle in handles:
            handle.remove()
    err = capsys.readouterr().err
    # (SAELens's progress bar writes no newline, so the error may follow it on its line.)
    error_lines = [line.partition("gemmascope ")[2] for line in err.splitlines() if "gemmascope " in line]
    assert code == 2 and len(error_lines) == 1, err[-3000:]
    (line,) = error_lines
    assert line.startswith("train: error: training stopped at step") and HOOK in line
    assert "(set GEMMASCOPE_TRACEBACK=1 to see the traceback)" in err
    assert not (root / "release").exists() and not (root / "summary.json").exists()
    assert [p.name for p in _checkpoint_folders(root)] == ["4352"]


# -- a flipped byte in the checkpoint ----------------------------------------------------------------


def _flip_exponent_byte(weights_file: Path, key: str, *, to_nan: bool) -> float:
    """Sets the high byte of one float32 of ``key`` so that its exponent is all ones (a NaN, with
    ``to_nan``) or all ones but the last bit (a finite value near 2^127); returns the new value."""
    raw = bytearray(weights_file.read_bytes())
    header_size = struct.unpack("<Q", raw[:8])[0]
    entry = json.loads(raw[8 : 8 + header_size])[key]
    assert entry["dtype"] == "F32"
    start, end = (8 + header_size + offset for offset in entry["data_offsets"])
    for offset in range(start, end, 4):
        low_exponent_bit = bool(raw[offset + 2] & 0x80)
        if low_exponent_bit == to_nan:
            raw[offset + 3] = (raw[offset + 3] & 0x80) | 0x7F  # one byte: sign kept, exponent bits set
            value = float(np.frombuffer(bytes(raw[offset : offset + 4]), dtype="<f4")[0])
            weights_file.write_bytes(bytes(raw))
            return value
    raise AssertionError(f"no float of {key} to flip")


def _corrupted_copy(faulted: FaultedRun, into: Path, *, to_nan: bool) -> tuple[Path, str, float]:
    shutil.copytree(faulted.root, into)
    (kept,) = _checkpoint_folders(into)
    weights_file = sorted(kept.rglob("sae_weights.safetensors"))[0]
    sae_name = str(weights_file.parent.relative_to(kept))
    return kept, sae_name, _flip_exponent_byte(weights_file, "W_enc", to_nan=to_nan)


def test_a_checkpoint_with_a_flipped_byte_making_a_nan_is_refused_on_resume(
    faulted: FaultedRun, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    root = tmp_path / "nan-byte"
    kept, sae_name, value = _corrupted_copy(faulted, root, to_nan=True)
    assert np.isnan(value)
    with pytest.raises(NonFiniteTrainingError) as caught:
        _run(root, tiny, token_data, resume=True)
    message = str(caught.value)
    assert "\n" not in message and str(kept) in message and sae_name in message and "W_enc" in message
    assert not (root / "saes").exists() and not (root / "release").exists()
    assert _checkpoint_folders(root) == [kept]


def test_a_flipped_byte_making_a_huge_weight_stops_the_resumed_run(
    faulted: FaultedRun, tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    # Finite, so the checkpoint loads; the SAE's loss overflows and the guard stops the run.
    root = tmp_path / "huge-byte"
    kept, sae_name, value = _corrupted_copy(faulted, root, to_nan=False)
    assert np.isfinite(value) and abs(value) > 1e38
    with pytest.raises(NonFiniteTrainingError) as caught:
        _run(root, tiny, token_data, resume=True)
    message = str(caught.value)
    assert "\n" not in message and sae_name in message and re.search(r"not finite from step \d+", message)
    assert str(kept) in message  # the checkpoint it resumed from is still the latest
    assert not (root / "saes").exists() and not (root / "release").exists()
    assert _checkpoint_folders(root) == [kept]


def test_export_refuses_an_sae_with_non_finite_weights(faulted: FaultedRun, tmp_path: Path) -> None:
    # What a pass that finished with NaN weights (saved by an older version) would hand the export.
    (kept,) = _checkpoint_folders(faulted.root)
    preset = _preset(STEPS)
    saes = [PresetSAE(preset, lam) for lam in LAMBDAS]
    trained = {s.name: SAE.load_from_disk(str(kept / s.name)) for s in saes}
    trained[saes[1].name].cfg.metadata.l0 = 20.0
    trained[saes[0].name].cfg.metadata.l0 = 30.0
    with torch.no_grad():
        trained[saes[1].name].W_dec[3, 7] = float("nan")
    with pytest.raises(NonFiniteTrainingError) as caught:
        export_pass(tmp_path, "group0_pass0", saes, trained, progress=lambda _: None)
    message = str(caught.value)
    assert "\n" not in message and saes[1].name in message and "W_dec" in message
    assert saes[0].name not in message
    assert not (tmp_path / "release").exists()  # not even the finite SAE of the pass


# -- item 2: one export folder, two SAEs, several passes ---------------------------------------------

#: A ladder of three, one SAE per pass under this budget (see test_memory_and_calibration_math).
LADDER = (3e-2, 1e-2, 3e-3)
#: Forced measured L0s: the first and the last SAE round to one folder (average_l0_20).
FORCED_L0 = {3e-2: 20.2, 1e-2: 31.0, 3e-3: 19.8}
COLLISION_STEPS = 16


def forcing_l0(l0_by_lambda: Mapping[float, float]) -> Callable[[TrainPass], TrainPass]:
    """Wraps a pass trainer so that the SAEs it returns report the given L0s (as if measured)."""

    def wrap(train: TrainPass) -> TrainPass:
        def forced(saes: Sequence[PresetSAE], tokens: int, pass_id: str | None) -> Mapping[str, Any]:
            trained = train(saes, tokens, pass_id)
            for sae in saes:
                trained[sae.name].cfg.metadata.l0 = l0_by_lambda[sae.l0_coefficient]
            return trained

        return forced

    return wrap


def _one_sae_per_pass_budget() -> int:
    unlimited = plan_suite([_preset(COLLISION_STEPS)], l0_coefficients=LADDER).passes[0]
    return unlimited.sae_bytes // len(LADDER) + unlimited.stream_bytes


def _release_entries(root: Path) -> dict[str, dict[str, Any]]:
    (manifest,) = (root / "release").glob("*/release.json")
    return {e["id"]: e for e in json.loads(manifest.read_text())["saes"]}


def assert_summary_equals_disk(root: Path, earlier_runs: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every SAE the summary lists as exported is in release.json under its id, with the weights of
    its SAELens copy; every SAE it lists as not exported has no entry; the only other entries are
    the SAEs ``earlier_runs`` exported into this output."""
    summary = json.loads((root / "summary.json").read_text())["saes"]
    entries = _release_entries(root)
    (release_folder,) = (root / "release").glob("*")
    exported = [s for s in summary if s["export_id"] is not None]
    assert sorted(e["sae_name"] for e in entries.values()) == sorted(
        [s["name"] for s in exported] + list(earlier_runs)
    )
    for sae in exported:
        assert entries[sae["export_id"]]["sae_name"] == sae["name"]
        on_disk = np.load(release_folder / sae["export_id"] / "params.npz")
        want = gemmascope_params(SAE.load_from_disk(sae["saelens_path"]))
        assert np.array_equal(on_disk["W_dec"], want["W_dec"].numpy()), sae["name"]
    return summary


def test_two_saes_of_different_passes_never_share_an_export_folder(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    root = tmp_path / "ladder"
    budget = _one_sae_per_pass_budget()
    plan = plan_suite([_preset(COLLISION_STEPS)], l0_coefficients=LADDER, memory_budget=budget)
    assert [len(p.rungs) for p in plan.passes] == [1, 1, 1]
    messages: list[str] = []
    first, middle, last = (PresetSAE(_preset(COLLISION_STEPS), lam).name for lam in LADDER)
    result = _run(
        root, tiny, token_data, steps=COLLISION_STEPS, lambdas=LADDER, n_checkpoints=0,
        memory_budget=budget, wrap=forcing_l0(FORCED_L0), progress=messages.append,
    )  # fmt: skip
    by_name = {s.name: s for s in result.saes}
    folder = "layer_1/width_256/average_l0_20"
    assert (
        by_name[first].export_id == folder and by_name[middle].export_id == "layer_1/width_256/average_l0_31"
    )
    assert by_name[last].export_id is None and by_name[last].release is None
    assert by_name[last].note is not None and first in by_name[last].note and folder in by_name[last].note
    assert any(m.startswith("warning:") and last in m and folder in m for m in messages), messages
    assert f"{last}: L0 19.8" in result.summary() and "not exported" in result.summary()
    summary = assert_summary_equals_disk(root)
    assert len(summary) == len(LADDER)

    # --resume re-exports the run's own SAEs in place (the finished passes are not retrained).
    resumed = _run(
        root, tiny, token_data, steps=COLLISION_STEPS, lambdas=LADDER, n_checkpoints=0, resume=True,
        memory_budget=budget, wrap=forcing_l0(FORCED_L0),
    )  # fmt: skip
    assert [(s.name, s.export_id) for s in resumed.saes] == [(s.name, s.export_id) for s in result.saes]
    assert assert_summary_equals_disk(root) == summary


def test_a_later_run_into_the_same_output_does_not_overwrite_an_earlier_export(
    tiny: TinyGemma2, token_data: datasets.Dataset, tmp_path: Path
) -> None:
    root = tmp_path / "two-runs"
    earlier = _run(
        root, tiny, token_data, steps=COLLISION_STEPS, lambdas=LADDER[:1], n_checkpoints=0,
        wrap=forcing_l0(FORCED_L0),
    )  # fmt: skip
    (earlier_sae,) = earlier.saes
    params = root / "release" / "tiny-gemma-2-res" / str(earlier_sae.export_id) / "params.npz"
    before = params.read_bytes()
    # Another λ, trained into the same output, measuring an L0 that rounds to the same folder.
    later = _run(
        root, tiny, token_data, steps=COLLISION_STEPS, lambdas=LADDER[2:], n_checkpoints=0,
        wrap=forcing_l0(FORCED_L0),
    )  # fmt: skip
    (later_sae,) = later.saes
    assert later_sae.export_id is None
    assert (
        later_sae.note is not None and earlier_sae.name in later_sae.note and "earlier run" in later_sae.note
    )
    assert params.read_bytes() == before
    assert [e["sae_name"] for e in _release_entries(root).values()] == [earlier_sae.name]
    assert_summary_equals_disk(root, earlier_runs=[earlier_sae.name])
