"""A third-party model plugin gets everything a built-in model gets (issue 18): the registry is the
source of truth for every consumer of model specs.

The plugin below is the README's plugin example extended to a model that builds in memory: a tiny
Gemma-2-architecture model, ``my-tiny-gemma``, with a ``load``, a preset and a release. Two things
make each assertion fail if its consumer went back to the Gemma 2 table (or to inferring a Gemma 2
layout from the model's config): the model's dimensions are those of no Gemma 2 or demo model, and
its spec has a site Gemma Scope does not have, ``resid_pre`` (the residual stream entering a
block), which only its registered spec can tell about.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

from saelens_gemmascope import (
    Converter,
    ModelSpec,
    PluginClashError,
    Release,
    SiteSpec,
    TrainingPreset,
    hookimpl,
    registry,
)
from saelens_gemmascope.compat import pretrained_directory
from saelens_gemmascope.demo.presets import TINY_OVERRIDES
from saelens_gemmascope.demo.tokenizer import BOS_ID, BYTE_VOCAB_SIZE, FIRST_BYTE_ID
from saelens_gemmascope.directory.converter import GemmaScopeConverter
from saelens_gemmascope.directory.layout import export_gemmascope_sae
from saelens_gemmascope.directory.local import LocalReleaseClashError, register_local_release
from saelens_gemmascope.directory.manifest import parse_manifest
from saelens_gemmascope.evaluation.runner import evaluate_saes
from saelens_gemmascope.host import PluginHost, Registrations, apply_to_sae_lens, register_runtime_release
from saelens_gemmascope.models import hook_point
from saelens_gemmascope.models.attach import attach_sae
from saelens_gemmascope.models.gemma2 import Gemma2Dims, gemma2_sites
from saelens_gemmascope.models.loading import load_language_model
from saelens_gemmascope.models.splice_plan import plan_splice, spliced_logits
from saelens_gemmascope.runners.run_spec import RunSpec
from saelens_gemmascope.suite.configs import training_config
from saelens_gemmascope.suite.plan import plan_suite

MODEL = "my-tiny-gemma"
PLUGIN = "my-plugin"
#: d_model 48 and attention width 2 x 16 = 32: no Gemma 2 spec, nor the demo's tiny models, has them.
DIMS = Gemma2Dims(
    d_model=48, n_layers=3, n_heads=2, n_kv_heads=1, d_head=16, d_mlp=96, d_vocab=BYTE_VOCAB_SIZE
)
RESID_PRE = SiteSpec(
    name="resid_pre",
    tl_hook="blocks.{layer}.hook_resid_pre",
    bridge_hook="blocks.{layer}.hook_in",
    hf_module="model.layers.{layer}",
    hf_tensor="input",
    d_in=DIMS.d_model,
    description="residual stream entering the block",
)
PRESET = f"{MODEL}/resid_pre/layer_1/width_64"
#: A hub-layout release of the plugin's model, served by this package's converter over the
#: plugin's own manifest (its params.npz come from a mirror folder in the tests).
RELEASE, REPO, CONVERTER = "my-tiny-scope", "me/my-tiny-scope", "my_tiny_scope"
RELEASE_ID = "layer_1/width_64/average_l0_9"
loads: list[str] = []


def load_my_tiny_gemma(device: str, dtype: Any) -> Any:
    """Build the model in memory (random weights, seed 7) as a ``HookedSAETransformer``."""
    from saelens_gemmascope.demo.tiny_model import build_tiny_hf, small_gemma2_config
    from saelens_gemmascope.demo.tokenizer import build_byte_tokenizer
    from saelens_gemmascope.models.bridge import hooked_transformer_from_hf

    loads.append(device)
    config = small_gemma2_config(
        DIMS, name=MODEL, max_positions=128, sliding_window=8, initializer_range=0.02
    )
    model = hooked_transformer_from_hf(build_tiny_hf(7, config), build_byte_tokenizer(), model_name=MODEL)
    return model.to(device, print_details=False).to(dtype, print_details=False)


def my_tiny_gemma() -> ModelSpec:
    return ModelSpec(
        name=MODEL,
        hf_repo="",  # not on the hub: `load` builds it
        d_model=DIMS.d_model,
        n_layers=DIMS.n_layers,
        n_heads=DIMS.n_heads,
        n_kv_heads=DIMS.n_kv_heads,
        d_head=DIMS.d_head,
        d_mlp=DIMS.d_mlp,
        d_vocab=DIMS.d_vocab,
        sites={**gemma2_sites(DIMS), "resid_pre": RESID_PRE},
        load=load_my_tiny_gemma,
    )


def my_release() -> Release:
    manifest = parse_manifest(
        {
            "format": 1,
            "canonical_target_l0": 10,
            "widths": {"64": 64},
            "training_tokens": {"default": 1024},
            "releases": {
                RELEASE: {
                    "repo_id": REPO,
                    "model": MODEL,
                    "site": "resid_pre",
                    "canonical_release": None,
                    "widths": {"64": {"l0s": {1: [9]}}},
                }
            },
        }
    )
    # No `models`: the converter reads the registered specs, so it finds the plugin's model.
    converter = GemmaScopeConverter(manifest)
    lookup = PretrainedSAELookup(
        release=RELEASE,
        repo_id=REPO,
        model=MODEL,
        conversion_func=CONVERTER,
        saes_map={RELEASE_ID: RELEASE_ID},
        expected_var_explained={},
        expected_l0={RELEASE_ID: 9.0},
        neuronpedia_id={},
        norm_scaling_factor={},
        config_overrides=None,
    )
    return Release(lookup=lookup, converter=Converter(CONVERTER, converter.load, converter.config))


class MyTinyGemmaPlugin:
    """What a third party writes (an object here; a module with an entry point when installed)."""

    @hookimpl
    def register_models(self, register: Callable[[ModelSpec], None]) -> None:
        register(my_tiny_gemma())

    @hookimpl
    def register_training_presets(
        self, register: Callable[[TrainingPreset], None], models: Mapping[str, ModelSpec]
    ) -> None:
        spec = models[MODEL]  # the registered spec: hook and width come from it
        point = spec.hook_point("resid_pre", 1)
        register(
            TrainingPreset(
                name=PRESET,
                model_name=spec.name,
                site="resid_pre",
                layer=1,
                hook_name=point.tl_hook,
                d_in=point.d_in,
                d_sae=64,
                training_tokens=20 * 256,
                l0_targets=(8.0, 16.0),
                overrides=dict(TINY_OVERRIDES),
            )
        )

    @hookimpl
    def register_pretrained_saes(self, register: Callable[[Release], None]) -> None:
        register(my_release())


@pytest.fixture
def plugin_world(
    sae_lens_sandbox: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Registrations]:
    """A fresh host with the built-ins and the plugin, applied to SAELens, and the registry pointed at
    it (every layer below the host reads it); SAELens's tables and the registry restored after."""
    monkeypatch.setenv("SAELENS_GEMMASCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAELENS_GEMMASCOPE_MIRROR", raising=False)
    host = PluginHost(disabled=set())
    host.add_builtins()
    host.add(MyTinyGemmaPlugin(), PLUGIN)
    found = host.collect()
    apply_to_sae_lens(found)
    monkeypatch.setattr(registry, "_plugin_loader", lambda: found)
    monkeypatch.setattr(
        registry, "_release_registrar", lambda release, owner: register_runtime_release(release, owner, found)
    )
    loads.clear()
    yield found


def jumprelu(d_in: int, seed: int = 0) -> JumpReLUSAE:
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=64))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, 64, generator=generator) / d_in**0.5)
        sae.W_dec.copy_(sae.W_enc.T)
        sae.threshold.fill_(0.05)
    return sae


def tokens(n: int = 2, length: int = 16) -> torch.Tensor:
    ids = torch.randint(
        FIRST_BYTE_ID, BYTE_VOCAB_SIZE, (n, length), generator=torch.Generator().manual_seed(1)
    )
    ids[:, 0] = BOS_ID
    return ids


def test_hook_point_and_load_read_the_plugins_model(plugin_world: Registrations) -> None:
    assert plugin_world.owners[("models", MODEL)] == PLUGIN
    res = hook_point(MODEL, "res", 1)
    assert (res.model, res.tl_hook, res.d_in) == (MODEL, "blocks.1.hook_resid_post", 48)
    assert hook_point(MODEL, "att", 2).d_in == 32
    assert hook_point(MODEL, "resid_pre", 1).tl_hook == "blocks.1.hook_resid_pre"

    model = load_language_model(MODEL)  # the spec's `load`: nothing from the hub
    assert loads == ["cpu"]
    assert (model.cfg.model_name, model.cfg.d_model, model.cfg.n_layers) == (MODEL, 48, 3)


def test_attach_sae_uses_the_plugins_sites_and_widths(plugin_world: Registrations) -> None:
    model = load_language_model(MODEL)
    ids = tokens()
    clean = model(ids, return_type="logits")
    sae = jumprelu(48)
    with attach_sae(model, sae, "resid_pre", 1) as handle:
        assert handle.hook_point.model == MODEL
        assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
        spliced = model(ids, return_type="logits")
    assert not torch.allclose(spliced, clean)
    assert torch.allclose(model(ids, return_type="logits"), clean)  # detached: the model is clean again

    with pytest.raises(ValueError, match="d_in=32 but site 'resid_pre' of 'my-tiny-gemma' has width 48"):
        attach_sae(model, jumprelu(32), "resid_pre", 1)
    with pytest.raises(ValueError, match="d_in=48 but site 'att' of 'my-tiny-gemma' has width 32"):
        attach_sae(model, jumprelu(48), "att", 1)


def test_the_converter_serves_the_plugins_release(
    plugin_world: Registrations, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = jumprelu(48, seed=3)
    npz = tmp_path / "mirror" / REPO / RELEASE_ID / "params.npz"
    npz.parent.mkdir(parents=True)
    np.savez(npz, **{key: value.detach().numpy() for key, value in source.state_dict().items()})
    monkeypatch.setenv("SAELENS_GEMMASCOPE_MIRROR", str(tmp_path / "mirror"))

    # SAELens's own loading, through the converter the plugin registered.
    sae = SAE.from_pretrained(RELEASE, RELEASE_ID)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert (sae.cfg.metadata.model_name, sae.cfg.d_in, sae.cfg.d_sae) == (MODEL, 48, 64)
    assert torch.equal(sae.W_enc, source.W_enc)


def test_a_local_release_of_the_plugins_model_is_checked_against_its_spec(
    plugin_world: Registrations, tmp_path: Path
) -> None:
    folder = tmp_path / "exports"
    # No hook name recorded: the registered spec knows where `resid_pre` of layer 1 reads.
    exported = export_gemmascope_sae(
        jumprelu(48), folder, average_l0=9.0, layer=1, site="resid_pre", model_name=MODEL
    )
    assert exported.entry["hook_name"] is None
    name = register_local_release(folder)
    assert plugin_world.owners[("releases", name)] == "gemmascope.local"
    sae = SAE.from_pretrained(name, exported.sae_id)
    assert (sae.cfg.metadata.hook_name, sae.cfg.d_in) == ("blocks.1.hook_resid_pre", 48)

    # An export whose width is not the site's is refused at load, naming both widths.
    wrong = tmp_path / "wrong"
    bad = export_gemmascope_sae(
        jumprelu(32), wrong, average_l0=9.0, layer=1, site="resid_pre", model_name=MODEL
    )
    with pytest.raises(ValueError, match="its d_in is 32 and that site is 48 wide"):
        SAE.from_pretrained(register_local_release(wrong), bad.sae_id)


def test_the_preset_trains_and_plans_on_the_plugins_model(plugin_world: Registrations) -> None:
    preset = plugin_world.presets[PRESET]
    assert (preset.hook_name, preset.d_in) == ("blocks.1.hook_resid_pre", 48)

    cfg = training_config(PRESET, 1e-3)
    assert (cfg.model_name, cfg.hook_name, cfg.sae.d_in, cfg.sae.d_sae) == (
        MODEL,
        "blocks.1.hook_resid_pre",
        48,
        64,
    )

    plan = plan_suite([preset], RunSpec())
    (group,) = plan.groups
    assert group.model_name == MODEL
    assert [hook for p in group.passes for hook in p.hooks] == ["blocks.1.hook_resid_pre"]
    assert sorted(rung.target_l0 for p in group.passes for rung in p.rungs) == [8.0, 16.0]


def test_the_evaluation_splices_at_the_plugins_site(plugin_world: Registrations, tmp_path: Path) -> None:
    model = load_language_model(MODEL)
    sae = jumprelu(48)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    plan = plan_splice(model, sae)
    assert (plan.site, plan.layer, plan.start_layer) == ("resid_pre", 1, 1)
    assert plan.hook_name_out is None

    # The spliced pass starts at block 1 from the cached residual stream: writing the clean tensor
    # back gives the clean logits, so the start and the write hook are the right ones.
    ids = tokens()
    clean, cache = model.run_with_cache(ids, names_filter=sorted(plan.cache_hooks), return_type="logits")
    keep_all = torch.ones(ids.shape, dtype=torch.bool)
    same = spliced_logits(model, plan, ids, cache, cache[plan.write_hook], keep_all)
    assert torch.allclose(same, clean, atol=1e-5)

    # End to end: an export of the plugin's model, evaluated on the model its SAE names (loaded
    # through the registered `load`).
    folder = tmp_path / "exports"
    export_gemmascope_sae(sae, folder, average_l0=9.0, layer=1, site="resid_pre", model_name=MODEL)
    sae_id = "layer_1/width_64/average_l0_9"
    loads_before = len(loads)
    result = evaluate_saes([(str(folder), sae_id)], dataset=ids, batch_size=2)
    (metrics,) = result.saes
    assert (metrics.site, metrics.layer, metrics.hook_name) == ("resid_pre", 1, "blocks.1.hook_resid_pre")
    assert result.settings["model"] == MODEL
    assert len(loads) == loads_before + 1  # the model came from the plugin's own `load`
    numbers = metrics.metrics
    assert math.isfinite(numbers["delta_loss"]) and numbers["ce_spliced"] != numbers["ce_clean"]


def test_a_local_release_may_not_take_a_name_another_plugin_registered(
    plugin_world: Registrations, tmp_path: Path
) -> None:
    folder = tmp_path / "exports"
    export_gemmascope_sae(jumprelu(48), folder, average_l0=9.0, layer=1, site="resid_pre", model_name=MODEL)
    with pytest.raises(LocalReleaseClashError) as err:
        register_local_release(folder, RELEASE)
    assert f"plugin {PLUGIN!r}" in str(err.value) and str(folder.resolve()) in str(err.value)
    # The host's own check, which every run-time release goes through, refuses it too, naming both.
    taken = dataclasses.replace(pretrained_directory()[RELEASE], repo_id=str(folder))
    with pytest.raises(PluginClashError, match=f"by plugin {PLUGIN!r}.* and by plugin 'gemmascope.local'"):
        registry.register_release(Release(lookup=taken), owner="gemmascope.local")
    assert pretrained_directory()[RELEASE].repo_id == REPO
    assert plugin_world.owners[("releases", RELEASE)] == PLUGIN
