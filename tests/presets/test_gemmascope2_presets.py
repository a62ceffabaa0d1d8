"""Gemma Scope 2 presets: one per (model, site, layer, width) of the manifest (skip transcoders apart),
their ladders = the released L0 labels' targets, configs SAELens accepts, no calibration, and a CPU
run of the tiny Gemma 3 presets that lands on its targets, exports in Gemma Scope 2's layout, loads
back through a local release and resumes from a checkpoint to the same weights.

Stated tolerance (the issue's acceptance): each trained SAE's L0 (SAELens's mean over the last
40-step window) within a factor 1.5 of its target L0, with the quadratic penalty and no calibration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from sae_lens import SAE
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig
from safetensors.torch import load_file

from saelens_gemmascope.demo.presets import TINY_L0_TARGETS, TINY_SCOPE2_L0_COEFFICIENT
from saelens_gemmascope.demo.tiny_gemma3 import TinyGemma3, build_tiny_gemma3
from saelens_gemmascope.directory.scope2_manifest import load_scope2_manifest
from saelens_gemmascope.host import load_plugins
from saelens_gemmascope.recipe.transcoder import SKIP_TRANSCODER_ARCHITECTURE, TRANSCODER_ARCHITECTURE
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.calibration import CalibrationError, calibrate
from saelens_gemmascope.suite.configs import (
    PresetSAE,
    match_presets,
    multi_config_for,
    sae_config_for,
    single_config_for,
)
from saelens_gemmascope.suite.passes import latest_checkpoint, pass_training
from saelens_gemmascope.suite.plan import Rung, plan_suite
from saelens_gemmascope.suite.preset import TrainingPreset
from saelens_gemmascope.suite.results import SuiteResult
from saelens_gemmascope.suite.run import run_suite
from saelens_gemmascope.suite.scope2_catalog import SCOPE2_L0_COEFFICIENT, SCOPE2_TRAINING_TOKENS

L0_TOLERANCE = 1.5
TINY = "tiny-gemma-3"
#: Both transcoder kinds and two SAE sites, at a middle layer: 12 SAEs in two passes (skip
#: transcoders train twice as long), about 40 s on two CPU cores.
TRAINED = [f"{TINY}/{site}/layer_2/width_256" for site in ("res", "att", "transcoder", "skip_transcoder")]


def scope2_presets() -> dict[str, TrainingPreset]:
    return {name: p for name, p in load_plugins().presets.items() if p.fixed_lambda and p.model_name != TINY}


def preset_key(model: str, site: str, layer: int, width: str, affine: bool) -> str:
    from saelens_gemmascope.models.lookup import model_spec

    kind = "skip_transcoder" if affine else site
    return f"{model_spec(model).name}/{kind}/layer_{layer}/width_{width}"


def test_one_preset_per_model_site_layer_width_and_kind_with_the_released_targets() -> None:
    released: dict[str, set[float]] = defaultdict(set)
    labels: dict[str, set[tuple[float, str, bool]]] = defaultdict(set)
    for sae in load_scope2_manifest().saes():
        key = preset_key(sae.model, sae.site, sae.layer, sae.width, sae.affine)
        released[key].add(float(sae.l0))
        labels[key].add((float(sae.l0), sae.l0_label, sae.every_layer))
    presets = scope2_presets()
    assert set(presets) == set(released) and len(presets) == 3732
    for name, preset in presets.items():
        assert preset.l0_targets == tuple(sorted(released[name])), name
        assert {(x.target_l0, x.l0_label, x.all_layers) for x in preset.scope2_labels} == labels[name]
        assert preset.training_tokens == SCOPE2_TRAINING_TOKENS[preset.width]
        assert preset.l0_coefficient == SCOPE2_L0_COEFFICIENT and preset.calibration_tokens is None
    # Sweep and every-layer releases merge: 1b layer 13 at 16k has both bigs (150 sweep, 120 all).
    merged = presets["gemma-3-1b-pt/res/layer_13/width_16k"]
    assert merged.l0_targets == (20.0, 60.0, 120.0, 150.0)
    assert [(x.l0_label, x.all_layers) for x in merged.labels_of(20.0)] == [("small", False), ("small", True)]
    skip = presets["gemma-3-1b-pt/skip_transcoder/layer_13/width_16k"]
    plain = presets["gemma-3-1b-pt/transcoder/layer_13/width_16k"]
    assert (skip.architecture, plain.architecture) == (SKIP_TRANSCODER_ARCHITECTURE, TRANSCODER_ARCHITECTURE)
    assert skip.site == plain.site == "transcoder"
    assert (skip.hook_name, skip.output_hook_name) == ("blocks.13.mlp.hook_in", "blocks.13.hook_mlp_out")


def _rung_configs(presets: Sequence[TrainingPreset]) -> list[tuple[PresetSAE, Any]]:
    spec = RunSpec()
    saes = [Rung(p, t, p.l0_coefficient).sae(0.0) for p in presets for t in p.l0_targets]
    return [(sae, sae_config_for(sae, spec)) for sae in saes]


def test_every_rung_of_every_preset_gives_an_sae_config_sae_lens_accepts() -> None:
    """Each rung's SAE config is built (SAELens's ``TrainingSAEConfig`` validates on construction):
    Gemma Scope 2's recipe, the rung's target as L0*; the runner config (SAELens's validation of
    buffer, batch and dtypes) of every preset's ladder."""
    presets = list(scope2_presets().values())
    configs = _rung_configs(presets)
    assert len(configs) == sum(len(p.l0_targets) for p in presets) == 8391
    for sae, cfg in configs:
        assert (cfg.l0_penalty, cfg.target_l0) == ("quadratic", sae.target_l0)
        assert cfg.l0_coefficient == sae.l0_coefficient == SCOPE2_L0_COEFFICIENT
        assert cfg.l0_warm_up_steps == 50_000 and cfg.frequency_penalty > 0
        assert (cfg.d_in, cfg.d_sae, cfg.architecture()) == (
            sae.preset.d_in,
            sae.preset.d_sae,
            sae.preset.architecture,
        )
    # The runner configs `gemmascope train` builds: one multi-SAE config per preset's ladder (SAELens
    # validates buffer, batch and dtypes), and the single-SAE config of its first rung.
    for preset in presets:
        ladder = [Rung(preset, t, preset.l0_coefficient).sae(0.0) for t in preset.l0_targets]
        multi = multi_config_for(ladder, RunSpec())
        assert isinstance(multi, MultiSAETrainingRunnerConfig)
        assert multi.training_tokens == preset.training_tokens
        assert [c.target_l0 for c in multi.saes.values()] == list(preset.l0_targets)
        runner = single_config_for(ladder[0], RunSpec())
        assert isinstance(runner, LanguageModelSAERunnerConfig)
        assert runner.training_tokens == preset.training_tokens and runner.sae.l0_penalty == "quadratic"


def test_the_plan_never_calibrates_a_gemma_scope_2_preset() -> None:
    presets = match_presets(["gemma-3-270m/*/layer_5/*", f"{TINY}/*/layer_1/*"])
    plan = plan_suite(presets)
    rungs = [r for p in plan.passes for r in p.rungs]
    assert len(rungs) == sum(len(p.l0_targets) for p in presets)
    assert not any(r.calibrated for r in rungs)
    assert {r.name for r in rungs} == {f"{p.name}/target_l0_{t:g}" for p in presets for t in p.l0_targets}
    assert "target L0 18 (λ 0.03)" in plan.describe()
    # One λ may replace the fixed one; a ladder of λs is refused, as is calibrating.
    one = plan_suite(presets[:1], l0_coefficients=[0.5])
    assert {r.l0_coefficient for p in one.passes for r in p.rungs} == {0.5}
    with pytest.raises(ValueError, match="one λ"):
        plan_suite(presets[:1], l0_coefficients=[0.5, 1.0])
    with pytest.raises(CalibrationError, match="not calibrated"):
        calibrate(presets[:1], lambda saes, tokens: {}, output_root=Path("unused"), probe_tokens={})


# -- the tiny Gemma 3, trained on CPU -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny3() -> TinyGemma3:
    return build_tiny_gemma3(seed=0)


@pytest.fixture(scope="module")
def tiny3_data(tiny3: TinyGemma3) -> datasets.Dataset:
    from saelens_gemmascope.data import stdlib_token_dataset

    return stdlib_token_dataset(tiny3.tokenizer, 128)


class RecordingTraining:
    """``pass_training`` that records the pass id of every run (a calibration probe has none)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pass_ids: list[str | None] = []

    def preflight(self, plan: Any) -> None:
        self.inner.preflight(plan)

    def __call__(self, group: Any) -> Any:
        train = self.inner(group)

        def recorded(saes: Any, tokens: int, pass_id: str | None) -> Mapping[str, Any]:
            self.pass_ids.append(pass_id)
            return train(saes, tokens, pass_id)  # type: ignore[no-any-return]

        return recorded


@dataclasses.dataclass
class TinyRun:
    root: Path
    result: SuiteResult
    pass_ids: list[str | None]


@pytest.fixture(scope="module")
def tiny_run(
    tiny3: TinyGemma3, tiny3_data: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory
) -> TinyRun:
    presets = match_presets(TRAINED)
    assert all(p.l0_targets == TINY_L0_TARGETS and p.fixed_lambda for p in presets)
    root = tmp_path_factory.mktemp("scope2")
    training = RecordingTraining(pass_training(root, model=tiny3.tl_model, dataset=tiny3_data))
    result = run_suite(plan_suite(presets), root, training, progress=lambda _: None)
    return TinyRun(root, result, training.pass_ids)


def test_the_quadratic_penalty_lands_every_sae_near_its_target_without_calibration(tiny_run: TinyRun) -> None:
    # No probe run: nothing was calibrated (skip transcoders train longer: a group of their own).
    assert tiny_run.pass_ids == ["group0_pass0", "group1_pass0"]
    assert not (tiny_run.root / "calibration").exists()
    saes = tiny_run.result.saes
    assert len(saes) == len(TRAINED) * len(TINY_L0_TARGETS)
    for sae in saes:
        assert sae.target_l0 is not None and sae.l0_coefficient == TINY_SCOPE2_L0_COEFFICIENT
        assert 1 / L0_TOLERANCE <= sae.l0 / sae.target_l0 <= L0_TOLERANCE, (sae.name, sae.l0)


def test_exports_in_the_gemma_scope_2_layout_and_loads_as_trained(tiny_run: TinyRun) -> None:
    release_root = tiny_run.root / "release" / TINY
    by_name = {s.name: s for s in tiny_run.result.saes}
    small = by_name[f"{TINY}/res/layer_2/width_256/target_l0_12"]
    assert small.export_id == "resid_post/layer_2_width_256_l0_small"
    assert by_name[f"{TINY}/skip_transcoder/layer_2/width_256/target_l0_48"].export_id == (
        "transcoder/layer_2_width_256_l0_big_affine"
    )
    entries = {e["id"]: e for e in json.loads((release_root / "release.json").read_text())["saes"]}
    assert set(entries) == {s.export_id for s in tiny_run.result.saes}
    for sae in tiny_run.result.saes:
        assert sae.export_id is not None and sae.release is not None
        folder = release_root / sae.export_id
        assert {p.name for p in folder.iterdir()} == {"params.safetensors", "config.json"}
        assert entries[sae.export_id]["average_l0"] == sae.l0
        assert entries[sae.export_id]["sae_name"] == sae.name
        config = json.loads((folder / "config.json").read_text())
        assert config["architecture"] == "jump_relu"
        assert config.get("affine_connection", False) == sae.export_id.endswith("_affine")
        loaded = SAE.from_pretrained(sae.release, sae.export_id)
        trained = SAE.load_from_disk(sae.saelens_path)
        want, got = trained.state_dict(), loaded.state_dict()
        assert want.keys() == got.keys(), sae.name  # a skip transcoder's W_skip included
        for key, tensor in want.items():
            assert torch.allclose(got[key], tensor, atol=1e-6), (sae.name, key)
        if loaded.cfg.reshape_activations == trained.cfg.reshape_activations:  # not hook_z (att)
            batch = torch.randn(64, trained.cfg.d_in)
            with torch.no_grad():
                assert torch.allclose(loaded(batch), trained(batch), atol=1e-5)


def _train_with_checkpoints(
    root: Path, tiny3: TinyGemma3, data: datasets.Dataset, resume: bool = False
) -> SuiteResult:
    (preset,) = match_presets([f"{TINY}/mlp/layer_1/width_256"])
    preset = dataclasses.replace(preset, training_tokens=48 * 256)
    trainers = pass_training(
        RunSpec(output=root, n_checkpoints=2), model=tiny3.tl_model, dataset=data, resume=resume
    )
    return run_suite(plan_suite([preset]), root, trainers, progress=lambda _: None)


def test_a_resumed_gemma_scope_2_pass_ends_with_the_uninterrupted_weights(
    tiny3: TinyGemma3, tiny3_data: datasets.Dataset, tmp_path: Path
) -> None:
    finished = tmp_path / "finished"
    full = _train_with_checkpoints(finished, tiny3, tiny3_data)
    checkpoints = sorted(
        (p for p in (finished / "checkpoints").glob("*/*/*") if p.is_dir()), key=lambda p: int(p.name)
    )
    assert len(checkpoints) == 2
    # A crash after the first checkpoint: the saved SAEs, the exports and the later checkpoint gone.
    resumed = tmp_path / "resumed"
    shutil.copytree(finished, resumed)
    shutil.rmtree(resumed / "saes")
    shutil.rmtree(resumed / "release")
    shutil.rmtree(resumed / checkpoints[1].relative_to(finished))
    assert latest_checkpoint(resumed / "checkpoints" / "group0_pass0") == resumed / checkpoints[
        0
    ].relative_to(finished)
    again = _train_with_checkpoints(resumed, tiny3, tiny3_data, resume=True)
    assert [s.export_id for s in again.saes] == [s.export_id for s in full.saes]
    for before, after in zip(full.saes, again.saes, strict=True):
        assert after.l0 == before.l0
        want = load_file(Path(before.saelens_path) / "sae_weights.safetensors")
        got = load_file(Path(after.saelens_path) / "sae_weights.safetensors")
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        params = [
            load_file(root / "release" / TINY / before.export_id / "params.safetensors")  # type: ignore[operator]
            for root in (finished, resumed)
        ]
        assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])


def test_a_gemma_scope_2_preset_warm_starts_each_rung_from_its_own_earlier_rung(
    tiny_run: TinyRun, tiny3: TinyGemma3, tmp_path: Path
) -> None:
    """PT -> IT as Gemma Scope 2 does it: a new run of a preset (here on held-out text) starts each
    rung from the same rung of an earlier run, given the earlier run's folder of the preset's rungs."""
    from saelens_gemmascope.data import stdlib_token_dataset

    preset = f"{TINY}/res/layer_2/width_256"
    earlier = tiny_run.root / "saes" / "group0_pass0" / preset
    assert sorted(p.name for p in earlier.iterdir()) == [f"target_l0_{t:g}" for t in sorted(TINY_L0_TARGETS)]
    spec = RunSpec(output=tmp_path, init_from=str(earlier))
    heldout = stdlib_token_dataset(tiny3.tokenizer, 128, holdout=True)
    training = pass_training(spec, model=tiny3.tl_model, dataset=heldout)
    result = run_suite(plan_suite(match_presets([preset])), tmp_path, training, progress=lambda _: None)
    assert len(result.saes) == len(TINY_L0_TARGETS)
    for sae in result.saes:
        rung = sae.name.rsplit("/", 1)[-1]
        saved = json.loads((tmp_path / "saes" / "group0_pass0" / sae.name / "cfg.json").read_text())
        assert Path(saved["metadata"]["gemmascope_init_from"]) == earlier / rung
        assert sae.target_l0 is not None
        assert 1 / L0_TOLERANCE <= sae.l0 / sae.target_l0 <= L0_TOLERANCE, (sae.name, sae.l0)


# -- facts of the real presets, from Gemma 3's published dimensions -----------------------------------

#: Gemma 3 1B (``/work/shared/gemma-scope-2.md``): d_model 1152, 26 layers, 4 query heads of 256.
GEMMA3_1B_D_MODEL, GEMMA3_1B_HEADS, GEMMA3_1B_D_HEAD = 1152, 4, 256


def test_gemma_3_1b_presets_read_the_hooks_and_widths_of_gemma_3_1b() -> None:
    presets = scope2_presets()
    att = presets["gemma-3-1b-pt/att/layer_13/width_16k"]
    assert (att.hook_name, att.d_in, att.d_sae) == ("blocks.13.attn.hook_z", 4 * 256, 16_384)
    assert att.d_in == GEMMA3_1B_HEADS * GEMMA3_1B_D_HEAD  # the heads' concatenated outputs
    res = presets["gemma-3-1b-pt/res/layer_13/width_16k"]
    assert (res.hook_name, res.d_in) == ("blocks.13.hook_resid_post", GEMMA3_1B_D_MODEL)
    transcoder = presets["gemma-3-1b-pt/transcoder/layer_13/width_16k"]
    assert transcoder.output_hook_name == "blocks.13.hook_mlp_out" and transcoder.d_in == 1152
    assert presets["gemma-3-1b-it/res/layer_13/width_16k"].model_name == "gemma-3-1b-it"


# -- export_pass with small stand-in SAEs (no training) -----------------------------------------------


def stand_in_sae(preset: TrainingPreset, d_sae: int, l0: float, seed: int = 0) -> Any:
    """A random JumpReLU SAE on ``preset``'s hook with ``d_sae`` latents and measured L0 ``l0``, as
    a pass hands it to the export (thresholds positive, every weight finite)."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=preset.hook_name, model_name=preset.model_name)
    meta.l0 = l0
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=preset.d_in, d_sae=d_sae, metadata=meta))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            values = torch.randn(param.shape, generator=generator) / preset.d_in**0.5
            param.copy_(values.abs() if name == "threshold" else values)
    return sae.eval()


def _export(root: Path, preset: TrainingPreset, d_sae: int, targets: Sequence[float]) -> list[Any]:
    from saelens_gemmascope.suite.export import export_pass

    saes = [PresetSAE(preset, preset.l0_coefficient or 1.0, t) for t in targets]
    trained = {
        s.name: stand_in_sae(preset, d_sae, float(s.target_l0 or 0) + 0.5, seed=i) for i, s in enumerate(saes)
    }
    return export_pass(root, "group0_pass0", saes, trained, progress=lambda _: None)


def _entries(folder: Path) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in json.loads((folder / "release.json").read_text())["saes"]}


def test_an_export_is_named_by_the_width_the_sae_was_trained_at(tmp_path: Path) -> None:
    """``--set d_sae=...`` on a preset: the folder names the trained SAE's width, not the preset's."""
    (tiny,) = match_presets([f"{TINY}/res/layer_1/width_256"])
    narrow = _export(tmp_path / "narrow", tiny, 64, [12.0])
    assert [s.export_id for s in narrow] == ["resid_post/layer_1_width_64_l0_small"]
    assert [s.export_id for s in _export(tmp_path / "same", tiny, 256, [12.0])] == [
        "resid_post/layer_1_width_256_l0_small"
    ]
    release = tmp_path / "narrow" / "release" / TINY
    assert _entries(release)[narrow[0].export_id]["d_sae"] == 64
    # A 16k preset trained at 32 latents: width_32, both of its folders, the IT model's config.
    (it,) = match_presets(["gemma-3-1b-it/res/layer_13/width_16k"])
    exported = _export(tmp_path / "it", it, 32, [20.0])
    assert exported[0].export_id == "resid_post/layer_13_width_32_l0_small"
    it_release = tmp_path / "it" / "release" / "gemma-3-1b-it"
    assert set(_entries(it_release)) == {
        "resid_post/layer_13_width_32_l0_small",
        "resid_post_all/layer_13_width_32_l0_small",
    }
    config = json.loads((it_release / "resid_post/layer_13_width_32_l0_small/config.json").read_text())
    assert config["model_name"] == "google/gemma-3-1b-it"


def test_a_270m_pt_export_names_the_270m_base_model(tmp_path: Path) -> None:
    (preset,) = match_presets(["gemma-3-270m/res/layer_5/width_16k"])
    assert preset.d_in == 640  # Gemma 3 270M's d_model
    (exported,) = _export(tmp_path, preset, 16, [preset.l0_targets[0]])
    folder = tmp_path / "release" / "gemma-3-270m" / str(exported.export_id)
    assert json.loads((folder / "config.json").read_text())["model_name"] == "google/gemma-3-270m"


def _sweep_and_all(preset: TrainingPreset) -> TrainingPreset:
    """``preset`` with target 12 released twice, as 1b layer 13's small: sweep and every-layer."""
    from saelens_gemmascope.suite.preset import Scope2Label

    labels = (Scope2Label(12.0, "small"), Scope2Label(12.0, "small", True), Scope2Label(24.0, "medium"))
    return dataclasses.replace(preset, l0_targets=(12.0, 24.0), scope2_labels=labels)


def test_a_target_released_twice_is_exported_to_both_folders_and_reexported_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saelens_gemmascope.directory.local import register_local_release
    from saelens_gemmascope.suite import export as export_module

    (tiny,) = match_presets([f"{TINY}/res/layer_1/width_256"])
    preset = _sweep_and_all(tiny)
    release = tmp_path / "release" / TINY
    first = _export(tmp_path, preset, 256, [12.0, 24.0])
    small = first[0]
    both = ["resid_post/layer_1_width_256_l0_small", "resid_post_all/layer_1_width_256_l0_small"]
    assert small.export_id == both[0] and small.note == f"also exported as {both[1]}"
    entries = _entries(release)
    assert set(entries) == {*both, "resid_post/layer_1_width_256_l0_medium"}
    name = register_local_release(release, "local/test-scope2-both", persist=False)
    trained = stand_in_sae(preset, 256, 12.5, seed=0)
    x = torch.randn(8, preset.d_in, generator=torch.Generator().manual_seed(1))
    for sae_id in both:
        assert entries[sae_id]["sae_name"] == small.name
        loaded = SAE.from_pretrained(name, sae_id)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), trained(x), rtol=1e-5, atol=1e-5)

    # The same run again: the same entries, both folders in place.
    _export(tmp_path, preset, 256, [12.0, 24.0])
    assert _entries(release) == entries
    # A run that stops after writing the first folder of the target: nothing listed goes missing.
    real_export = export_module.export_gemmascope2_sae
    calls: list[str] = []

    def stop_on_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["l0_label"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_export(*args, **kwargs)

    monkeypatch.setattr(export_module, "export_gemmascope2_sae", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        _export(tmp_path, preset, 256, [12.0])
    assert _entries(release) == entries
    for sae_id in entries:
        assert {p.name for p in (release / sae_id).iterdir()} == {"params.safetensors", "config.json"}


# -- settings a Gemma Scope 2 preset refuses -----------------------------------------------------------


def test_a_linear_l0_penalty_on_a_gemma_scope_2_preset_is_refused() -> None:
    presets = match_presets([f"{TINY}/res/layer_1/width_256"])
    message = "Gemma Scope 2 presets train the quadratic penalty around each target; for a linear λ"
    with pytest.raises(ValueError, match=message):
        plan_suite(presets, RunSpec.from_overrides({"l0_penalty": "linear"}))
    with pytest.raises(ValueError, match=message):
        plan_suite(
            [dataclasses.replace(presets[0], overrides={**presets[0].overrides, "l0_penalty": "linear"})]
        )
    with pytest.raises(ValueError, match=message):
        sae_config_for(PresetSAE(presets[0], 1.0, 12.0), RunSpec.from_overrides({"sae.l0_penalty": "linear"}))
    quadratic = plan_suite(presets, RunSpec.from_overrides({"l0_penalty": "quadratic"}))
    assert len([r for p in quadratic.passes for r in p.rungs]) == len(TINY_L0_TARGETS)


# -- the CLI: presets show their recipe; train says what does not apply -----------------------------


def test_gemmascope_presets_shows_the_recipe_and_the_labels(capsys: pytest.CaptureFixture[str]) -> None:
    from saelens_gemmascope.cli import main

    assert (
        main(
            ["presets", "--json", "gemma-3-1b-pt/res/layer_13/width_16k", "gemma-2-2b/res/layer_12/width_16k"]
        )
        == 0
    )
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    scope2 = rows["gemma-3-1b-pt/res/layer_13/width_16k"]
    assert (scope2["recipe"], scope2["l0_coefficient"]) == ("gemmascope2", SCOPE2_L0_COEFFICIENT)
    assert {"target_l0": 120.0, "l0_label": "big", "all_layers": True} in scope2["labels"]
    assert len(scope2["labels"]) == 5
    scope1 = rows["gemma-2-2b/res/layer_12/width_16k"]
    assert (scope1["recipe"], scope1["l0_coefficient"], scope1["labels"]) == ("gemmascope", None, [])
    assert main(["presets", "gemma-3-1b-pt/res/layer_13/width_16k", "gemma-2-2b/res/layer_12/width_16k"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "λ 0.03 fixed" in next(line for line in lines if line.startswith("gemma-3-1b-pt/res"))
    assert "calibrated" in next(line for line in lines if line.startswith("gemma-2-2b/res"))


def test_train_says_calibration_options_are_unused_on_gemma_scope_2_presets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from saelens_gemmascope.cli import main

    train_help = " ".join(_train_help().split())
    assert "Gemma Scope 2 presets" in train_help and "are not calibrated" in train_help
    preset = f"{TINY}/res/layer_1/width_256"
    out = str(tmp_path / "out")
    assert main(["train", preset, "--dry-run", "--output", out, "--refine-rounds", "2"]) == 0
    said = capsys.readouterr().out
    assert said.count("--refine-rounds unused") == 1 and "--calibration-grid" not in said
    assert main(["train", preset, "--dry-run", "--output", out, "--calibration-grid", "1e-3,1e-2"]) == 0
    assert "--calibration-grid unused" in capsys.readouterr().out
    # Not said when some preset of the run is calibrated, nor without the options.
    assert main(["train", preset, "tiny-gemma-2/res/layer_1/width_256", "--dry-run", "--output", out,
                 "--refine-rounds", "2"]) == 0  # fmt: skip
    assert "unused" not in capsys.readouterr().out
    assert main(["train", preset, "--dry-run", "--output", out]) == 0
    assert "unused" not in capsys.readouterr().out


def _train_help() -> str:
    from saelens_gemmascope.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["train"].format_help()


def test_init_from_refuses_a_missing_relative_path_before_the_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saelens_gemmascope.cli import main
    from saelens_gemmascope.cli.train import check_init_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match=r"runs/ is a folder here"):
        check_init_source("runs/pt/saes/group0_pass0/x")
    with pytest.raises(ValueError, match=r"no release 'rnus' is known"):
        check_init_source("rnus/pt/saes/group0_pass0/x")
    check_init_source("gemma-scope-2-1b-pt-res/layer_12_width_16k_l0_medium")  # a release: the pass loads it
    check_init_source(str(tmp_path / "runs"))
    out = tmp_path / "out"
    argv = ["train", f"{TINY}/res/layer_1/width_256", "--output", str(out), "--init-from", "runs/pt/x"]
    assert main(argv) != 0
    assert not out.exists()
