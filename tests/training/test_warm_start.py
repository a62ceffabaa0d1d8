"""Warm start (Gemma Scope 2's PT -> IT finetuning): a run starts from a saved SAE of the same site.

The unfold inverts the recipe's fold with the new run's C, so training starts from exactly the
source's function; a short tiny-Gemma-3 run shows a warm start beginning at the source's error on
new text and ending no worse than a cold start; a resumed run continues from its checkpoint; bad
sources are refused with messages that say what is wrong.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from sae_lens import LoggingConfig
from sae_lens.saes.sae import SAE, TrainStepInput, TrainStepOutput
from sae_lens.saes.transcoder import JumpReLUTranscoder, JumpReLUTranscoderConfig
from safetensors.torch import load_file
from training_helpers import BATCH, CONTEXT, SPECIAL_IDS, rows_of

from saelens_gemmascope.cli.train import check_init_source, run_spec_from_args
from saelens_gemmascope.demo.tiny_gemma3 import TINY_GEMMA3_NAME, TinyGemma3, build_tiny_gemma3
from saelens_gemmascope.directory.layout import export_gemmascope_sae
from saelens_gemmascope.directory.local import register_local_release
from saelens_gemmascope.recipe import (
    gemmascope_ladder,
    gemmascope_multi_runner_config,
    gemmascope_runner_config,
)
from saelens_gemmascope.recipe.config import gemmascope_sae_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE, GemmaScopeTrainingSAEConfig
from saelens_gemmascope.recipe.transcoder import GemmaScopeTrainingTranscoderConfig
from saelens_gemmascope.recipe.warm_start import (
    INIT_FROM_METADATA,
    WarmStartError,
    init_source_for,
    is_rung_folder,
    plan_warm_start,
    prepare_warm_start,
    unfold_into,
)
from saelens_gemmascope.runners import GemmaScopeMultiSAETrainingRunner, GemmaScopeTrainingRunner
from saelens_gemmascope.runners.overrides import OverrideError, route_overrides
from saelens_gemmascope.runners.run_spec import RunSpec

HOOK3 = "blocks.3.hook_resid_post"
D3 = 48
D_SAE = 128


# -- the unfold, exactly ---------------------------------------------------------------------------


def _folded_source(
    folder: Path, d_in: int = 16, d_sae: int = 32, scale: float = 3.7, hook: str = "blocks.0.hook_resid_post"
) -> SAE[Any]:
    """A recipe SAE with random (non-trivial) weights, folded with C = ``scale`` and saved as a run
    saves it; returns it loaded back."""
    torch.manual_seed(1)
    sae = GemmaScopeTrainingSAE(gemmascope_sae_config(d_in, d_sae, dtype="float64"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 1.0)
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.5)
        sae.threshold.uniform_(0.05, 0.4)
    sae.cfg.metadata.hook_name = hook
    sae.fold_activation_norm_scaling_factor(1.0 / scale)
    sae.save_inference_model(str(folder))
    return SAE.load_from_disk(str(folder))


def _training_sae(parametrisation: str = "direct", d_in: int = 16, d_sae: int = 32) -> GemmaScopeTrainingSAE:
    torch.manual_seed(2)  # a different init, which the warm start must overwrite entirely
    cfg = gemmascope_sae_config(d_in, d_sae, dtype="float64", threshold_parametrisation=parametrisation)
    return GemmaScopeTrainingSAE(cfg)


@pytest.mark.parametrize("parametrisation", ["direct", "log"])
def test_warm_start_reproduces_the_source_function_exactly(parametrisation: str, tmp_path: Path) -> None:
    source = _folded_source(tmp_path / "pt")
    sae = _training_sae(parametrisation)
    new_scale = 0.42  # the new run's C, unlike the source's 3.7
    unfold_into(sae, prepare_warm_start(str(tmp_path / "pt"), sae.cfg, "blocks.0.hook_resid_post"), new_scale)
    x = torch.randn(512, 16, dtype=torch.float64) * 2.0 + 0.3
    with torch.no_grad():
        source_acts = source.encode(x)
        # In the training space: the input divided by C, latents and output C times smaller.
        acts = sae.encode(x / new_scale) * new_scale
        out = sae.decode(sae.encode(x / new_scale)) * new_scale
        assert 0.05 < float((source_acts > 0).float().mean()) < 0.95  # the thresholds matter here
        # float64 throughout: 1e-10 would catch θ (or any tensor) scaled in float32 on the way.
        torch.testing.assert_close(acts, source_acts, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out, source(x), rtol=1e-10, atol=1e-10)


def test_the_unfold_moves_the_source_onto_the_sae_device(tmp_path: Path) -> None:
    """The source loads on the CPU; an SAE elsewhere (a GPU in a real run; the meta device here, which
    any machine has) gets every parameter on its own device, in its own dtype (θ: float32 or wider)."""
    _folded_source(tmp_path / "pt", d_in=8, d_sae=16)
    for parametrisation in ("direct", "log"):
        cfg = gemmascope_sae_config(
            8, 16, device="meta", dtype="bfloat16", threshold_parametrisation=parametrisation
        )
        sae = GemmaScopeTrainingSAE(cfg)
        unfold_into(sae, prepare_warm_start(str(tmp_path / "pt"), sae.cfg, None), 0.42)
        for name, param in sae.named_parameters():
            assert param.device.type == "meta", name
            expected = torch.float32 if name in ("threshold", "log_threshold") else torch.bfloat16
            assert param.dtype == expected, name


def test_fold_after_unfold_gives_the_source_weights_back(tmp_path: Path) -> None:
    source = _folded_source(tmp_path / "pt")
    sae = _training_sae("log")
    unfold_into(sae, prepare_warm_start(str(tmp_path / "pt"), sae.cfg, None), 0.42)
    sae.fold_activation_norm_scaling_factor(1.0 / 0.42)
    refolded = sae.inference_state_dict()
    for name, value in source.state_dict().items():
        torch.testing.assert_close(refolded[name], value, rtol=1e-12, atol=1e-12, msg=name)


def test_a_source_without_unit_decoder_rows_is_renormalised_keeping_its_function(tmp_path: Path) -> None:
    source = _folded_source(tmp_path / "pt")
    with torch.no_grad():
        source.W_dec.mul_(torch.linspace(0.5, 2.0, 32, dtype=torch.float64).unsqueeze(-1))
    source.save_model(str(tmp_path / "stretched"))
    sae = _training_sae()
    with pytest.warns(UserWarning, match="not unit norm"):
        weights = prepare_warm_start(str(tmp_path / "stretched"), sae.cfg, None)
    unfold_into(sae, weights, 1.5)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32, dtype=torch.float64))
    x = torch.randn(256, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(sae.decode(sae.encode(x / 1.5)) * 1.5, source(x), rtol=1e-5, atol=1e-5)


# -- bad sources -----------------------------------------------------------------------------------


def test_a_missing_folder_says_how_to_give_a_source_offline(tmp_path: Path) -> None:
    cfg = _training_sae().cfg
    with pytest.raises(WarmStartError, match=r"no such folder.*(saved by SAELens).*available offline"):
        prepare_warm_start(str(tmp_path / "missing"), cfg, None)
    # Not a path: read as release/sae_id, which SAELens cannot find (offline): the same advice.
    with pytest.raises(WarmStartError, match=r"release 'no-such-release'.*available offline"):
        prepare_warm_start("no-such-release/layer_0", cfg, None)


def test_a_source_of_another_width_names_both_shapes(tmp_path: Path) -> None:
    _folded_source(tmp_path / "pt", d_sae=32)
    cfg = _training_sae(d_sae=64).cfg
    with pytest.raises(WarmStartError, match=r"d_in=16, d_sae=32, but the SAE has d_in=16, d_sae=64"):
        prepare_warm_start(str(tmp_path / "pt"), cfg, None)


def test_a_source_with_nan_weights_is_refused(tmp_path: Path) -> None:
    source = _folded_source(tmp_path / "pt")
    with torch.no_grad():
        source.W_enc[3, 5] = float("nan")
    source.save_model(str(tmp_path / "corrupt"))
    with pytest.raises(WarmStartError, match=r"non-finite values in W_enc"):
        prepare_warm_start(str(tmp_path / "corrupt"), _training_sae().cfg, None)


def test_transcoders_are_refused_as_source_and_as_target(tmp_path: Path) -> None:
    transcoder = JumpReLUTranscoder(
        JumpReLUTranscoderConfig(d_in=16, d_sae=32, d_out=16, apply_b_dec_to_input=False)
    )
    transcoder.save_model(str(tmp_path / "transcoder"))
    with pytest.raises(WarmStartError, match="a transcoder"):
        prepare_warm_start(str(tmp_path / "transcoder"), _training_sae().cfg, None)
    _folded_source(tmp_path / "pt")
    target = GemmaScopeTrainingTranscoderConfig(d_in=16, d_sae=32, d_out=16)
    with pytest.raises(WarmStartError, match="transcoders are not supported"):
        prepare_warm_start(str(tmp_path / "pt"), target, None)


def test_a_source_of_another_hook_warns(tmp_path: Path) -> None:
    _folded_source(tmp_path / "pt", hook="blocks.0.hook_resid_post")
    with pytest.warns(UserWarning, match=r"records hook 'blocks.0.hook_resid_post'.*same site"):
        prepare_warm_start(str(tmp_path / "pt"), _training_sae().cfg, "blocks.1.hook_resid_post")


def test_a_folder_of_rungs_gives_each_sae_its_own_source(tmp_path: Path) -> None:
    _folded_source(tmp_path / "pt" / "target_l0_20")
    _folded_source(tmp_path / "pt" / "full" / "name" / "target_l0_40")
    rungs = str(tmp_path / "pt")
    assert init_source_for(rungs, "m/res/layer_1/width_32/target_l0_20") == str(tmp_path / "pt/target_l0_20")
    assert init_source_for(rungs, "full/name/target_l0_40") == str(tmp_path / "pt/full/name/target_l0_40")
    one = str(tmp_path / "pt" / "target_l0_20")
    assert init_source_for(one, "anything/target_l0_80") == one  # one SAE serves every rung
    assert is_rung_folder(rungs) and not is_rung_folder(one) and not is_rung_folder("release/sae_id")
    with pytest.raises(WarmStartError, match=r"none for SAE 'x/target_l0_80'.*target_l0_80"):
        init_source_for(rungs, "x/target_l0_80")


def test_init_from_is_a_run_option_not_a_config_setting(tmp_path: Path) -> None:
    with pytest.raises(OverrideError, match="--init-from"):
        route_overrides({"init_from": "pt"})
    with pytest.raises(OverrideError, match="--init-from"):
        route_overrides({"sae.init_from": "pt"})
    args = argparse.Namespace(
        device="cpu", dtype="float32", assignments=[], data="stdlib", output=str(tmp_path / "out"),
        checkpoints=0, checkpoint_every=None, wandb=None, distributed=None, init_from=str(tmp_path),
    )  # fmt: skip
    assert run_spec_from_args(args).init_from == str(tmp_path)
    assert RunSpec(init_from=tmp_path).init_from == str(tmp_path)
    check_init_source(str(tmp_path))
    check_init_source("gemma-scope-2-1b-pt-res/layer_12_width_16k_l0_medium")  # resolved by the pass
    with pytest.raises(ValueError, match="no such folder"):
        check_init_source(str(tmp_path / "missing"))


# -- resuming: the checkpoint's source ----------------------------------------------------------------


def _checkpoint_recording(folder: Path, source: str | None) -> Path:
    """A checkpoint's SAE folder whose cfg.json records ``source`` (as a warm-started run's does)."""
    sae = _training_sae()
    if source is not None:
        sae.cfg.metadata[INIT_FROM_METADATA] = source
    sae.save_model(str(folder))
    return folder


def test_a_resume_keeps_the_source_its_checkpoint_records(tmp_path: Path) -> None:
    _folded_source(tmp_path / "pt")
    checkpoint = _checkpoint_recording(tmp_path / "ckpt", str(tmp_path / "pt"))
    cfg = _training_sae().cfg
    # Not given again: carried over from the checkpoint (SAELens restores weights, not metadata).
    start = plan_warm_start(None, cfg, None, resume_from=checkpoint)
    assert start is not None and start.source == str(tmp_path / "pt") and start.weights is None
    sae = _training_sae()
    start.apply(sae, None, resumed=True)
    assert sae.cfg.metadata[INIT_FROM_METADATA] == str(tmp_path / "pt")
    # Given again, spelled another way: the same folder, the checkpoint's spelling kept.
    respelled = str(tmp_path / "pt" / ".." / "pt")
    start = plan_warm_start(respelled, cfg, None, resume_from=checkpoint)
    assert start is not None and start.source == str(tmp_path / "pt")
    # A cold checkpoint resumed without a source stays cold.
    assert (
        plan_warm_start(None, cfg, None, resume_from=_checkpoint_recording(tmp_path / "cold", None)) is None
    )


def test_a_resume_from_another_source_is_refused(tmp_path: Path) -> None:
    _folded_source(tmp_path / "pt")
    _folded_source(tmp_path / "other")
    checkpoint = _checkpoint_recording(tmp_path / "ckpt", str(tmp_path / "pt"))
    cfg = _training_sae().cfg
    with pytest.raises(WarmStartError, match=r"which was warm-started from .*pt; resume without --init-from"):
        plan_warm_start(str(tmp_path / "other"), cfg, None, resume_from=checkpoint)
    with pytest.raises(WarmStartError, match=r"which was warm-started from"):
        plan_warm_start("some-release/layer_0", cfg, None, resume_from=checkpoint)
    cold = _checkpoint_recording(tmp_path / "cold", None)
    with pytest.raises(WarmStartError, match=r"which started cold.*resume without --init-from"):
        plan_warm_start(str(tmp_path / "pt"), cfg, None, resume_from=cold)
    assert json.loads((cold / "cfg.json").read_text())["metadata"].get(INIT_FROM_METADATA) is None


def test_a_warm_start_applied_wrongly_says_which_part_is_missing(tmp_path: Path) -> None:
    _folded_source(tmp_path / "pt")
    sae = _training_sae()
    planned = plan_warm_start(str(tmp_path / "pt"), sae.cfg, None, resume_from=None)
    assert planned is not None
    with pytest.raises(WarmStartError, match="input scale C is not known yet"):
        planned.apply(sae, None, resumed=False)
    with pytest.raises(WarmStartError, match="the SAE is a JumpReLUTranscoder"):
        planned.apply(
            JumpReLUTranscoder(
                JumpReLUTranscoderConfig(d_in=16, d_sae=32, d_out=16, apply_b_dec_to_input=False)
            ),
            1.0,
            resumed=False,
        )
    resumed_only = plan_warm_start(
        None, sae.cfg, None, resume_from=_checkpoint_recording(tmp_path / "c", str(tmp_path / "pt"))
    )
    assert resumed_only is not None
    with pytest.raises(WarmStartError, match="the source was not loaded"):
        resumed_only.apply(sae, 1.0, resumed=False)


# -- training on the tiny Gemma 3: PT on one text, IT warm-started on another ----------------------


class RecordsSteps(GemmaScopeTrainingSAE):
    """Test double: each step's MSE (training space), and the weights and input of the first step."""

    def __init__(self, cfg: GemmaScopeTrainingSAEConfig, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        self.mse: list[float] = []
        self.first_weights: dict[str, torch.Tensor] | None = None
        self.first_input: torch.Tensor | None = None

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if self.first_weights is None:
            self.first_weights = {k: v.detach().clone() for k, v in self.state_dict().items()}
            self.first_input = step_input.sae_in.detach().clone()
        output = super().training_forward_pass(step_input)
        self.mse.append(float(output.losses["mse_loss"].detach()))
        return output


def _stdlib_ids(tokenizer: Any, pattern: str) -> list[int]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob(pattern))[:40]
    text = "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def tiny3() -> TinyGemma3:
    return build_tiny_gemma3(seed=0)


@pytest.fixture(scope="module")
def splits(tiny3: TinyGemma3) -> dict[str, list[int]]:
    """ "PT" text (stdlib modules a-m) and "IT" text (n-z): two distributions of one model's activations."""
    return {"pt": _stdlib_ids(tiny3.tokenizer, "[a-m]*.py"), "it": _stdlib_ids(tiny3.tokenizer, "[n-z]*.py")}


def _dataset(ids: list[int], rows: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": rows_of(ids, rows)})


@pytest.fixture(scope="module")
def it_heldout(tiny3: TinyGemma3, splits: dict[str, list[int]]) -> torch.Tensor:
    """Raw "IT" activations at the hook, from text no run trains on."""
    ids = splits["it"]
    tokens = torch.tensor(rows_of(ids, 16, offset=len(ids) - 16 * CONTEXT - 1))
    _, cache = tiny3.tl_model.run_with_cache(tokens, names_filter=[HOOK3])
    keep = ~torch.isin(tokens.reshape(-1), torch.tensor(SPECIAL_IDS))
    return cache[HOOK3].reshape(-1, D3)[keep].detach()


def _sae_config(**overrides: Any) -> GemmaScopeTrainingSAEConfig:
    return gemmascope_sae_config(D3, D_SAE, 3e-4, **{"l0_warm_up_steps": 50, **overrides})


def _runner_values(**overrides: Any) -> dict[str, Any]:
    return {
        "context_size": CONTEXT, "train_batch_size_tokens": BATCH, "n_batches_in_buffer": 8,
        "store_batch_size_prompts": 8, "lr": 1e-3, "lr_warm_up_steps": 10, "n_batches_for_norm_estimate": 8,
        "checkpoint_path": None, "output_path": None, "logger": LoggingConfig(log_to_wandb=False),
        **overrides,
    }  # fmt: skip


def _train(
    tiny3: TinyGemma3, data: datasets.Dataset, steps: int, init_from: str | None = None, seed: int = 0,
    **overrides: Any,
) -> tuple[RecordsSteps, GemmaScopeTrainingRunner]:  # fmt: skip
    torch.manual_seed(seed)
    sae = RecordsSteps(_sae_config())
    cfg = gemmascope_runner_config(
        sae.cfg, model_name=TINY_GEMMA3_NAME, hook_name=HOOK3, training_tokens=steps * BATCH,
        **_runner_values(**overrides),
    )  # fmt: skip
    runner = GemmaScopeTrainingRunner(
        cfg, override_dataset=data, override_model=tiny3.tl_model, override_sae=sae, init_from=init_from
    )
    runner.run()
    return sae, runner


def _fvu(sae: SAE[Any], x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def _relative_mse(sae: SAE[Any], x: torch.Tensor) -> float:
    """E‖x - x̂‖² / E‖x‖²: what the first training step's MSE is, in the space where E‖x/C‖² = 1."""
    with torch.no_grad():
        return float((x - sae(x)).pow(2).sum() / x.pow(2).sum())


@pytest.fixture(scope="module")
def pt_folder(
    tiny3: TinyGemma3, splits: dict[str, list[int]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The "PT" SAE: trained on the PT text, saved as a run saves it."""
    folder = tmp_path_factory.mktemp("pt") / "sae"
    _train(tiny3, _dataset(splits["pt"], 400), steps=300, output_path=str(folder))
    return folder


def test_a_warm_start_begins_at_the_source_error_and_ends_no_worse_than_a_cold_start(
    tiny3: TinyGemma3, splits: dict[str, list[int]], pt_folder: Path, it_heldout: torch.Tensor
) -> None:
    it_data = _dataset(splits["it"][: len(splits["it"]) // 2], 200)
    steps = 60
    warm, _ = _train(tiny3, it_data, steps, init_from=str(pt_folder))
    cold, _ = _train(tiny3, it_data, steps)
    source = SAE.load_from_disk(str(pt_folder))
    # The source's own error on the warm run's first batch, in the run's space (x / C): the same number.
    scale = warm.cfg.metadata.gemmascope_input_scale
    assert warm.first_input is not None
    x = warm.first_input * scale
    with torch.no_grad():
        source_first = float((x - source(x)).pow(2).sum(-1).mean()) / scale**2
    print(
        f"first-step MSE (training space): warm {warm.mse[0]:.5f}, cold {cold.mse[0]:.4f}, source on that "
        f"batch {source_first:.5f}; relative MSE of the source on IT held-out {_relative_mse(source, it_heldout):.4f}; "
        f"FVU on IT held-out: warm {_fvu(warm, it_heldout):.4f}, cold {_fvu(cold, it_heldout):.4f}, "
        f"source {_fvu(source, it_heldout):.4f}"
    )
    assert warm.mse[0] == pytest.approx(source_first, rel=1e-4)
    assert warm.mse[0] < 0.1 * cold.mse[0]
    assert _fvu(warm, it_heldout) <= _fvu(cold, it_heldout)
    # The saved SAE is an ordinary one that says where it started from.
    assert warm.cfg.metadata[INIT_FROM_METADATA] == str(pt_folder)
    assert INIT_FROM_METADATA not in cold.cfg.metadata


def test_a_resumed_run_continues_from_its_checkpoint_not_from_the_source(
    tiny3: TinyGemma3, splits: dict[str, list[int]], pt_folder: Path, tmp_path: Path
) -> None:
    it_data = _dataset(splits["it"], 100)
    settings = {"n_checkpoints": 1, "checkpoint_path": str(tmp_path / "ckpt")}
    first, _ = _train(tiny3, it_data, 20, init_from=str(pt_folder), **settings)
    (checkpoint,) = [p for p in (tmp_path / "ckpt").glob("*/*") if p.name.isdigit()]
    saved = {k: v for f in checkpoint.glob("*.safetensors") for k, v in load_file(f).items()}
    # Resumed without --init-from: the checkpoint's source is carried over.
    resumed, _ = _train(
        tiny3, it_data, 20, resume_from_checkpoint=str(checkpoint), output_path=str(tmp_path / "out")
    )
    assert resumed.first_weights is not None and first.first_weights is not None
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        torch.testing.assert_close(resumed.first_weights[name], saved[name], rtol=0, atol=0, msg=name)
    # The warm start's weights are not those of the checkpoint (it trained on), and were not re-applied.
    assert not torch.equal(resumed.first_weights["b_enc"], first.first_weights["b_enc"])
    # Still recorded: the saved SAE started from the source.
    assert SAE.load_from_disk(str(tmp_path / "out")).cfg.metadata[INIT_FROM_METADATA] == str(pt_folder)
    # Another source is refused before the model runs.
    with pytest.raises(WarmStartError, match="which was warm-started from"):
        _train(tiny3, it_data, 20, init_from=str(tmp_path / "out"), resume_from_checkpoint=str(checkpoint))


def test_a_ladder_warm_starts_each_rung_from_its_folder(
    tiny3: TinyGemma3, splits: dict[str, list[int]], pt_folder: Path, tmp_path: Path
) -> None:
    ladder = gemmascope_ladder(D3, D_SAE, (3e-4, 1e-3), l0_warm_up_steps=50)
    rungs = tmp_path / "rungs"
    shutil.copytree(pt_folder, rungs / "l0_coef_0.0003")
    cfg = gemmascope_multi_runner_config(
        ladder, HOOK3, model_name=TINY_GEMMA3_NAME, training_tokens=3 * BATCH, **_runner_values()
    )
    data = _dataset(splits["it"], 100)
    # One rung has no folder: refused before the model runs.
    with pytest.raises(WarmStartError, match=r"none for SAE 'l0_coef_0.001'"):
        GemmaScopeMultiSAETrainingRunner(
            cfg, override_dataset=data, override_model=tiny3.tl_model, init_from=str(rungs)
        )
    # Per SAE, by name: the other rung starts cold.
    torch.manual_seed(0)
    saes = {name: RecordsSteps(c) for name, c in ladder.items()}
    trained = GemmaScopeMultiSAETrainingRunner(
        cfg, override_dataset=data, override_model=tiny3.tl_model, override_saes=dict(saes),
        init_from={"l0_coef_0.0003": str(rungs / "l0_coef_0.0003")},
    ).run()  # fmt: skip
    warm, cold = saes["l0_coef_0.0003"], saes["l0_coef_0.001"]
    print(f"ladder first-step MSE: warm {warm.mse[0]:.4f}, cold {cold.mse[0]:.4f}")
    assert warm.mse[0] < 0.25 * cold.mse[0]
    assert trained["l0_coef_0.0003"].cfg.metadata[INIT_FROM_METADATA] == str(rungs / "l0_coef_0.0003")
    assert INIT_FROM_METADATA not in trained["l0_coef_0.001"].cfg.metadata
    with pytest.raises(WarmStartError, match=r"SAE\(s\) 'nope' that this run does not train"):
        GemmaScopeMultiSAETrainingRunner(
            cfg, override_dataset=data, override_model=tiny3.tl_model, init_from={"nope": "x"}
        )


def test_a_local_release_serves_as_release_slash_id(pt_folder: Path, tmp_path: Path) -> None:
    """An exported Gemma Scope layout, registered as a release whose name holds slashes (as local
    releases' names do): ``release/sae_id`` finds it offline, and it starts the same SAE as the folder."""
    exported = export_gemmascope_sae(SAE.load_from_disk(str(pt_folder)), tmp_path / "export")
    name = register_local_release(tmp_path / "export", release_name="local/warm-start-test/tiny")
    cfg = _sae_config()
    from_release = prepare_warm_start(f"{name}/{exported.sae_id}", cfg, HOOK3)
    from_folder = prepare_warm_start(str(pt_folder), cfg, HOOK3)
    for tensor in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        torch.testing.assert_close(getattr(from_release, tensor), getattr(from_folder, tensor), msg=tensor)
