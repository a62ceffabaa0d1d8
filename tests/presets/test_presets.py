"""Presets derived from the suite manifest, their conversion to SAELens configs, and the CLI listing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

from saelens_gemmascope.directory.manifest import load_manifest
from saelens_gemmascope.host import load_plugins
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.configs import match_presets, parse_assignments, training_config
from saelens_gemmascope.suite.plan import plan_suite
from saelens_gemmascope.suite.preset import TrainingPreset


def _presets() -> dict[str, TrainingPreset]:
    return load_plugins().presets


def test_every_released_model_site_layer_width_has_a_preset_with_the_released_ladder() -> None:
    released: dict[str, list[float]] = defaultdict(list)
    per_release: dict[str, set[str]] = defaultdict(set)
    for v in load_manifest().variants():
        where = "" if v.layer is None else f"/layer_{v.layer}"
        name = f"{v.model}/{v.site}{where}/width_{v.width}"
        released[name].append(float(v.l0))
        per_release[v.release].add(name)
    presets = _presets()
    for name, l0s in released.items():
        assert presets[name].l0_targets == tuple(sorted(l0s)), name
    for release, names in per_release.items():
        assert sum(p.release == release for p in presets.values()) == len(names), release
    gemma = [p for p in presets.values() if p.release is not None]
    assert len(gemma) == len(released) == 459


def test_names_hooks_widths_and_token_budgets() -> None:
    presets = _presets()
    res = presets["gemma-2-2b/res/layer_12/width_16k"]
    assert (res.hook_name, res.d_in, res.d_sae, res.training_tokens) == (
        "blocks.12.hook_resid_post",
        2304,
        2**14,
        4 * 10**9,
    )
    assert presets["gemma-2-2b/res/layer_12/width_1m"].training_tokens == 16 * 10**9
    assert presets["gemma-2-2b/res/layer_12/width_65k"].training_tokens == 8 * 10**9
    assert presets["gemma-2-9b/mlp/layer_20/width_131k"].training_tokens == 8 * 10**9
    att = presets["gemma-2-2b/att/layer_3/width_16k"]
    assert (att.hook_name, att.d_in) == ("blocks.3.attn.hook_z", 2048)
    assert presets["gemma-2-9b/att/layer_3/width_16k"].d_in == 4096
    embedding = presets["gemma-2-2b/embedding/width_4k"]
    assert (embedding.hook_name, embedding.layer, embedding.d_sae, embedding.trainable) == (
        "hook_embed",
        None,
        4096,
        True,
    )
    assert presets["gemma-2-9b-it/res/layer_20/width_131k"].model_name == "gemma-2-9b-it"


def test_transcoder_presets_are_trainable_on_their_paired_hook() -> None:
    transcoder = _presets()["gemma-2-2b/transcoder/layer_5/width_16k"]
    assert transcoder.hook_name == "blocks.5.ln2.hook_normalized"
    assert transcoder.output_hook_name == "blocks.5.hook_mlp_out"
    assert transcoder.trainable and transcoder.architecture == "jumprelu_gemmascope_transcoder"
    cfg = training_config(transcoder, 1e-3)
    assert cfg.hook_name == "blocks.5.ln2.hook_normalized->blocks.5.hook_mlp_out"
    assert cfg.sae.architecture() == "jumprelu_gemmascope_transcoder" and cfg.sae.d_out == 2304
    plan = plan_suite(match_presets(["tiny-gemma-2/transcoder/layer_0/*"]))
    assert [p.name for g in plan.groups for p in g.presets] == [
        "tiny-gemma-2/transcoder/layer_0/width_256", "tiny-gemma-2/transcoder/layer_0/width_512",
    ]  # fmt: skip


def test_tiny_presets_cover_every_site_and_layer() -> None:
    tiny = match_presets(["tiny-gemma-2/*"])
    assert len(tiny) == (4 * 4 + 1) * 2  # res, mlp, att, transcoder x 4 layers, + embedding; 2 widths
    att = _presets()["tiny-gemma-2/att/layer_2/width_512"]
    assert (att.d_in, att.d_sae) == (32, 512)  # 4 heads x d_head 8


def test_one_preset_and_one_lambda_give_a_runner_config_with_overrides() -> None:
    cfg = training_config("gemma-2-2b/res/layer_12/width_16k", 6e-4, lr=1e-4, l0_warm_up_steps=500)
    assert isinstance(cfg, LanguageModelSAERunnerConfig)
    assert (cfg.hook_name, cfg.training_tokens, cfg.context_size, cfg.adam_beta1) == (
        "blocks.12.hook_resid_post", 4 * 10**9, 1024, 0.0,
    )  # fmt: skip
    assert cfg.lr == 1e-4 and cfg.exclude_special_tokens is True
    assert (cfg.sae.d_in, cfg.sae.d_sae, cfg.sae.l0_coefficient, cfg.sae.l0_warm_up_steps) == (
        2304,
        16384,
        6e-4,
        500,
    )


def test_a_ladder_or_several_presets_give_one_multi_sae_config() -> None:
    names = ["tiny-gemma-2/res/layer_1/width_256", "tiny-gemma-2/mlp/layer_2/width_256"]
    cfg = training_config(names, [1e-3, 1e-2], lr=5e-3)
    assert isinstance(cfg, MultiSAETrainingRunnerConfig)
    assert len(cfg.saes) == 4 and cfg.lr == 5e-3 and cfg.train_batch_size_tokens == 256
    assert set(cfg.hook_names_per_sae.values()) == {"blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"}
    assert {s.l0_coefficient for s in cfg.saes.values()} == {1e-3, 1e-2}
    with pytest.raises(ValueError, match="different runner settings"):
        training_config(["tiny-gemma-2/res/layer_1/width_256", "tiny-gemma-2/res/layer_1/width_512"], [1e-3])


@pytest.mark.parametrize(
    ("text", "value"),
    [("lr=1e-4", 1e-4), ("exclude_special_tokens=false", False), ("dtype=float32", "float32"),
     ("seqpos_slice=(1, None)", (1, None)), ("model_kwargs={\"a\": 1}", {"a": 1})],
)  # fmt: skip
def test_set_values_are_python_or_json_literals(text: str, value: Any) -> None:
    assert parse_assignments([text]) == {text.split("=")[0]: value}


def test_cli_set_reaches_the_plan_and_dry_run_prints_it(
    cli: Callable[[list[str]], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "tiny-gemma-2/res/layer_1/width_256", "tiny-gemma-2/mlp/layer_2/width_256", "--dry-run",
            "--set", "train_batch_size_tokens=128", "--set", "lr=0.01", "--memory-budget", "2MiB"]  # fmt: skip
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "6 SAEs from 2 presets in 1 group(s)" in out
    assert "51,200 tokens per SAE" in out and "memory budget 2.0 MiB (given)" in out
    assert "group0_pass0: 1 SAEs on 1 hook(s)" in out and "do not fit at once: 6 passes" in out
    plan = plan_suite(match_presets(argv[1:3]), RunSpec.from_overrides(parse_assignments(["lr=0.01"])))
    assert plan.groups[0].runner_settings["lr"] == 0.01


def test_cli_lists_presets_with_counts(
    cli: Callable[[list[str]], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["presets", "gemma-2-2b/res/layer_12/*"]) == 0
    out = capsys.readouterr().out
    assert "blocks.12.hook_resid_post" in out and "22, 41, 82, 176, 445" in out and "16B" in out
    assert "7 presets: gemma-scope-2b-pt-res 7" in out


def test_every_trainable_preset_gives_a_config_sae_lens_accepts() -> None:
    """SAELens validates its configs on construction (buffer vs batch, dtypes, ...): every preset passes."""
    from sae_lens.config import LanguageModelSAERunnerConfig

    from saelens_gemmascope.host import load_plugins
    from saelens_gemmascope.suite.catalog import stream_key
    from saelens_gemmascope.suite.configs import training_config

    presets = [p for p in load_plugins().presets.values() if p.trainable and not p.fixed_lambda]
    assert len(presets) > 400
    for preset in presets:
        cfg = training_config(preset, 1e-3)
        assert isinstance(cfg, LanguageModelSAERunnerConfig)
        # A transcoder trains on its paired key: input and output hooks of one forward pass.
        hook = stream_key(preset)
        assert (cfg.hook_name, cfg.sae.d_in, cfg.sae.d_sae) == (hook, preset.d_in, preset.d_sae)
        assert cfg.n_batches_in_buffer * cfg.context_size >= cfg.train_batch_size_tokens
