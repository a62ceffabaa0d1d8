"""Exports in the Gemma Scope 2 layout (params.safetensors + config.json) on the tiny Gemma 3: read
back through a local release (SAE.from_pretrained) and through this package's gemmascope2 converter
from a mirror laid out like the hub, outputs equal to the exported SAE; strict refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE
from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.transcoder import (
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
)
from safetensors import safe_open

from saelens_gemmascope.directory.layout import export_gemmascope_sae, read_release_manifest, remove_exports
from saelens_gemmascope.directory.local import register_local_release
from saelens_gemmascope.directory.npz import ParamsFileError
from saelens_gemmascope.directory.scope2_converter import GemmaScope2Converter, check_config_json
from saelens_gemmascope.directory.scope2_layout import ExportedScope2SAE, export_gemmascope2_sae
from saelens_gemmascope.directory.scope2_manifest import parse_scope2_manifest
from saelens_gemmascope.models.lookup import model_spec

MODEL = "tiny-gemma-3"
LAYER = 3
REPO = "google/gemma-scope-2-tiny-pt"
WIDTHS = {"256": 256, "512": 512}  # the tiny models' preset widths

#: kind -> (site, width, l0 label, hub folder written); the four kinds the brief names.
CASES: dict[str, tuple[str, int, str, str]] = {
    "res": ("res", 256, "small", "resid_post/layer_3_width_256_l0_small"),
    "att": ("att", 512, "medium", "attn_out/layer_3_width_512_l0_medium"),
    "transcoder": ("transcoder", 256, "big", "transcoder/layer_3_width_256_l0_big"),
    "affine transcoder": ("transcoder", 256, "big", "transcoder/layer_3_width_256_l0_big_affine"),
}


def tiny_repo_manifest():
    """A Gemma Scope 2 manifest for one repository of the tiny Gemma 3 (the shipped file's layout;
    its hook-point templates are the release's, written out here independently of the model spec)."""
    sweep = {"layers": "sweep", "widths": list(WIDTHS), "l0": ["small", "medium", "big"]}
    return parse_scope2_manifest(
        {
            "format": 1,
            "widths": WIDTHS,
            "hf_hooks": {
                "res": {"in": "model.layers.{layer}.output"},
                "mlp": {"in": "model.layers.{layer}.post_feedforward_layernorm.output"},
                "att": {"in": "model.layers.{layer}.self_attn.o_proj.input"},
                "transcoder": {
                    "in": "model.layers.{layer}.pre_feedforward_layernorm.output",
                    "out": "model.layers.{layer}.post_feedforward_layernorm.output",
                },
            },
            "kinds": {
                "res": {"site": "res", "folder": "resid_post", **sweep},
                "mlp": {"site": "mlp", "folder": "mlp_out", **sweep},
                "att": {"site": "att", "folder": "attn_out", **sweep},
                "transcoders": {
                    "site": "transcoder",
                    "folder": "transcoder",
                    "affine": [False, True],
                    "id_prefix": True,
                    **sweep,
                },
            },
            "sizes": {"tiny": {"n_layers": 7, "sweep_layers": {LAYER: [10, 50, 150]}}},
            "repos": {"gemma-scope-2-tiny-pt": {"size": "tiny", "model": MODEL, "neuronpedia_model": "t"}},
        }
    )


def random_sae(kind: str, seed: int = 0) -> SAE[Any]:
    """A random SAE / transcoder of the tiny Gemma 3 at ``kind``'s site, thresholds > 0, every
    parameter non-zero (the res SAE keeps a pre-encoder bias, which the export folds)."""
    site, d_sae, _, _ = CASES[kind]
    point = model_spec(MODEL).hook_point(site, LAYER)
    meta = SAEMetadata(hook_name=point.tl_hook, model_name=MODEL)
    d = point.d_in
    if site == "transcoder":
        skip = kind == "affine transcoder"
        cls, cfg_cls = (
            (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig)
            if skip
            else (JumpReLUTranscoder, JumpReLUTranscoderConfig)
        )
        meta.hook_name_out = point.output.tl_hook
        sae: SAE[Any] = cls(cfg_cls(d_in=d, d_sae=d_sae, d_out=d, apply_b_dec_to_input=False, metadata=meta))
    else:
        sae = JumpReLUSAE(
            JumpReLUSAEConfig(
                d_in=d,
                d_sae=d_sae,
                apply_b_dec_to_input=site == "res",
                reshape_activations="hook_z" if site == "att" else "none",
                metadata=meta,
            )
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            values = torch.randn(param.shape, generator=generator) / d**0.5
            param.copy_(values.abs() * 0.5 if name == "threshold" else values)
    return sae.eval()


def run(sae: SAE[Any], x: torch.Tensor) -> torch.Tensor:
    """The SAE's output on flattened inputs ``x`` (an SAE in hook_z mode reads heads unflattened)."""
    with torch.no_grad():
        if sae.cfg.reshape_activations == "hook_z":
            heads = model_spec(MODEL).n_heads
            return sae(x.unflatten(-1, (heads, -1))).flatten(-2)
        return sae(x)


def _export(kind: str, root: Path, seed: int = 0) -> tuple[SAE[Any], ExportedScope2SAE]:
    label = CASES[kind][2]
    sae = random_sae(kind, seed)
    return sae, export_gemmascope2_sae(sae, root, l0_label=label, average_l0=12.5, sae_name=kind)


def _inputs(sae: SAE[Any]) -> torch.Tensor:
    return torch.randn(2, 5, sae.cfg.d_in, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("kind", sorted(CASES))
def test_round_trip_through_a_local_release_and_the_gemmascope2_converter(kind, tmp_path) -> None:
    mirror = tmp_path / "mirror"
    sae, exported = _export(kind, mirror / REPO, seed=len(kind))
    assert exported.sae_id == CASES[kind][3]
    x = _inputs(sae)
    expected = run(sae, x)
    assert expected.abs().max() > 0.1  # latents fire: equality below is not 0 == 0

    name = register_local_release(mirror / REPO, "local/test-gs2-export", persist=False)
    local = SAE.from_pretrained(name, exported.sae_id)
    assert type(local) is type(sae)
    torch.testing.assert_close(run(local, x), expected, rtol=1e-5, atol=1e-5)

    converter = GemmaScope2Converter(tiny_repo_manifest(), {MODEL: model_spec(MODEL)}, tmp_path / "cache")
    cfg, state, _ = converter.load(REPO, exported.sae_id, mirror=mirror)
    hub = SAE.from_dict(handle_config_defaulting(cfg))
    hub.load_state_dict(state)
    assert type(hub) is type(sae)
    # The first read came from the mirror (a fresh converter shows it); later ones from the cache.
    fresh = GemmaScope2Converter(tiny_repo_manifest(), {MODEL: model_spec(MODEL)}, tmp_path / "cache2")
    assert fresh.read_params(fresh.target(REPO, exported.sae_id), mirror=mirror).origin == "mirror"
    assert (
        converter.read_params(converter.target(REPO, exported.sae_id), mirror=mirror).origin
        == "conversion-cache"
    )
    torch.testing.assert_close(run(hub, x), expected, rtol=1e-5, atol=1e-5)
    for key, value in state.items():  # the same file read by both: identical weights
        assert torch.equal(value, local.state_dict()[key]), key


def test_written_files_are_the_release_layout_and_pass_the_converters_checks(tmp_path) -> None:
    sae, exported = _export("affine transcoder", tmp_path)
    with safe_open(str(exported.params_path), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        skip = handle.get_tensor("affine_skip_connection")
    assert shapes == {
        "w_enc": (48, 256),
        "w_dec": (256, 48),
        "b_enc": (256,),
        "b_dec": (48,),
        "threshold": (256,),
        "affine_skip_connection": (48, 48),
    }
    assert torch.equal(skip, sae.W_skip.detach().T)  # stored [d_in, d_out], read as x @ A
    config = json.loads(exported.config_path.read_text())
    assert config == {
        "architecture": "jump_relu",
        "model_name": MODEL,
        "hf_hook_point_in": "model.layers.3.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.3.post_feedforward_layernorm.output",
        "affine_connection": True,
    }
    for kind in CASES:  # the converter's config.json check accepts every kind's file
        exported = _export(kind, tmp_path)[1]
        record = tiny_repo_manifest().by_folder[(REPO, exported.sae_id)]
        check_config_json(exported.config_path, record)
        assert json.loads(exported.config_path.read_text())["hf_hook_point_in"] == record.hf_hook_in
    entry = read_release_manifest(tmp_path)["saes"][0]
    assert (entry["layout"], entry["l0_label"], entry["width"]) == ("gemma-scope-2", "medium", "512")


def test_a_corrupt_params_file_is_refused_naming_it(tmp_path) -> None:
    _, exported = _export("res", tmp_path)
    exported.params_path.write_bytes(exported.params_path.read_bytes()[:200])  # truncated
    name = register_local_release(tmp_path, "local/test-gs2-corrupt", persist=False)
    with pytest.raises(ParamsFileError, match=str(exported.params_path)):
        SAE.from_pretrained(name, exported.sae_id)


def test_a_config_of_another_sae_is_refused_naming_it(tmp_path) -> None:
    _, exported = _export("transcoder", tmp_path)
    config = json.loads(exported.config_path.read_text())
    exported.config_path.write_text(json.dumps({**config, "affine_connection": True}))
    name = register_local_release(tmp_path, "local/test-gs2-config", persist=False)
    with pytest.raises(ParamsFileError, match=rf"{exported.config_path}: affine_connection"):
        SAE.from_pretrained(name, exported.sae_id)


def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path) -> None:
    sae = random_sae("res")
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite values in W_dec"):
        export_gemmascope2_sae(sae, tmp_path, l0_label="small", average_l0=10.0)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"l0_label": "huge"}, "l0_label must be one of"),
        ({"l0_label": "small", "affine": True}, "affine folder holds a skip transcoder"),
        ({"l0_label": "small", "site": "mlp", "layer": 3}, "reads 'blocks.3.hook_resid_post'"),
        ({"l0_label": "small", "model_name": "no-such-model"}, "registered model spec"),
    ],
)
def test_exports_that_do_not_fit_are_refused(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        export_gemmascope2_sae(random_sae("res"), tmp_path, average_l0=10.0, **kwargs)
    assert not (tmp_path / "resid_post").exists()


def test_gemma_scope_1_and_2_exports_share_a_release_and_are_removed_alike(tmp_path) -> None:
    sae, exported = _export("res", tmp_path)
    gs1 = export_gemmascope_sae(sae, tmp_path, average_l0=12.5, layer=LAYER, site="res")
    name = register_local_release(tmp_path, "local/test-gs2-mixed", persist=False)
    x = _inputs(sae)
    for sae_id in (exported.sae_id, gs1.sae_id):
        torch.testing.assert_close(
            run(SAE.from_pretrained(name, sae_id), x), run(sae, x), rtol=1e-5, atol=1e-5
        )
    remove_exports(tmp_path, [exported.sae_id])
    assert not (tmp_path / "resid_post").exists()
    assert [e["id"] for e in read_release_manifest(tmp_path)["saes"]] == [gs1.sae_id]
