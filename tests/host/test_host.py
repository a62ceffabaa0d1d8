"""The plugin host: discovery, collection, clash and error reporting, and application to SAELens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAEConfig

import saelens_gemmascope
from saelens_gemmascope import (
    Architecture,
    Converter,
    ModelSpec,
    PluginClashError,
    PluginLoadError,
    Release,
    TrainingPreset,
    hookimpl,
    load_plugins,
)
from saelens_gemmascope.host import DISABLE_ENV_VAR, PluginHost, apply_to_sae_lens

# -- small plugins used by the tests ---------------------------------------------------------------


class ToyConfig(StandardSAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return "toy_plugin_arch"


class ToySAE(StandardSAE):
    pass


class ToyTrainingConfig(StandardTrainingSAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return "toy_plugin_arch"


class ToyTrainingSAE(StandardTrainingSAE):
    pass


TOY_ARCH = Architecture("toy_plugin_arch", ToySAE, ToyConfig, ToyTrainingSAE, ToyTrainingConfig)


def toy_model(name: str = "toy-model") -> ModelSpec:
    return ModelSpec(
        name=name, hf_repo="", d_model=8, n_layers=1, n_heads=1, n_kv_heads=1, d_head=8, d_mlp=16, d_vocab=10
    )


class ArchitecturePlugin:
    @hookimpl
    def register_sae_architectures(self, register: Callable[[Architecture], None]) -> None:
        register(TOY_ARCH)


class ModelPlugin:
    def __init__(self, name: str = "toy-model") -> None:
        self.name = name

    @hookimpl
    def register_models(self, register: Callable[[ModelSpec], None]) -> None:
        register(toy_model(self.name))


def host_with(*plugins: tuple[str, object]) -> PluginHost:
    host = PluginHost(disabled=())
    for name, plugin in plugins:
        host.add(plugin, name)
    return host


# -- in-process plugins ------------------------------------------------------------------------------


def test_in_process_plugin_is_collected_with_its_owner() -> None:
    found = host_with(("toy", ArchitecturePlugin()), ("models", ModelPlugin())).collect()
    assert found.architectures == {"toy_plugin_arch": TOY_ARCH}
    assert found.models["toy-model"].d_model == 8
    assert found.owners[("architectures", "toy_plugin_arch")] == "toy"
    assert found.counts("models") == {"architectures": 0, "models": 1, "releases": 0, "presets": 0}
    assert found.hooks["toy"] == ["register_sae_architectures"]


def test_registered_architecture_is_usable_by_sae_lens(sae_lens_sandbox: None) -> None:
    apply_to_sae_lens(host_with(("toy", ArchitecturePlugin())).collect())
    assert SAE_CLASS_REGISTRY["toy_plugin_arch"] == (ToySAE, ToyConfig)
    assert SAE_TRAINING_CLASS_REGISTRY["toy_plugin_arch"] == (ToyTrainingSAE, ToyTrainingConfig)

    sae = SAE.from_dict({"architecture": "toy_plugin_arch", "d_in": 4, "d_sae": 6, "dtype": "float32"})
    assert type(sae) is ToySAE
    assert sae.encode(torch.randn(2, 4)).shape == (2, 6)
    training_cfg = TrainingSAEConfig.from_dict({"architecture": "toy_plugin_arch", "d_in": 4, "d_sae": 6})
    assert type(training_cfg) is ToyTrainingConfig


def test_two_plugins_registering_one_name_is_one_error_naming_both() -> None:
    host = host_with(
        ("first-plugin", ModelPlugin("shared-name")), ("second-plugin", ModelPlugin("shared-name"))
    )
    with pytest.raises(PluginClashError) as err:
        host.collect()
    message = str(err.value)
    assert "'shared-name'" in message
    assert "first-plugin" in message and "second-plugin" in message


def test_clash_is_found_before_sae_lens_changes(sae_lens_sandbox: None) -> None:
    class Clashing:
        @hookimpl
        def register_sae_architectures(self, register: Callable[[Architecture], None]) -> None:
            register(TOY_ARCH)

    host = host_with(("a", ArchitecturePlugin()), ("b", Clashing()))
    with pytest.raises(PluginClashError):
        apply_to_sae_lens(host.collect())
    assert "toy_plugin_arch" not in SAE_CLASS_REGISTRY


def test_architecture_clashing_with_sae_lens_builtin_is_refused(sae_lens_sandbox: None) -> None:
    class Impostor:
        @hookimpl
        def register_sae_architectures(self, register: Callable[[Architecture], None]) -> None:
            register(Architecture("jumprelu", ToySAE, ToyConfig))

    before = SAE_CLASS_REGISTRY["jumprelu"]
    with pytest.raises(PluginClashError, match=r"'jumprelu'.*already registered in SAELens"):
        apply_to_sae_lens(host_with(("impostor", Impostor())).collect())
    assert SAE_CLASS_REGISTRY["jumprelu"] == before


def test_misspelled_hook_name_is_caught() -> None:
    class Misspelled:
        @hookimpl
        def register_model(self, register: Callable[[Any], None]) -> None:  # missing "s"
            raise AssertionError("never called")

    with pytest.raises(PluginLoadError, match="register_model"):
        host_with(("typo", Misspelled())).collect()


def test_hook_that_raises_names_the_plugin() -> None:
    class Exploding:
        @hookimpl
        def register_models(self, register: Callable[[Any], None]) -> None:
            raise RuntimeError("boom")

    with pytest.raises(PluginLoadError, match=r"'exploding'.*register_models.*boom"):
        host_with(("exploding", Exploding())).collect()


def test_registering_the_wrong_type_is_a_clear_error() -> None:
    class Confused:
        @hookimpl
        def register_training_presets(self, register: Callable[[Any], None]) -> None:
            register({"name": "not-a-preset"})

    with pytest.raises(PluginLoadError, match=r"passed dict.*expected TrainingPreset"):
        host_with(("confused", Confused())).collect()


# -- releases and converters -----------------------------------------------------------------------


def fake_loader(repo_id: str, folder_name: str, device: str, force_download: bool, cfg_overrides: Any) -> Any:
    cfg = fake_config_getter(repo_id, folder_name, device, force_download, cfg_overrides)
    torch.manual_seed(0)
    state = {
        "W_enc": torch.randn(3, 5),
        "W_dec": torch.randn(5, 3),
        "b_enc": torch.zeros(5),
        "b_dec": torch.zeros(3),
        "threshold": torch.full((5,), 0.5),
    }
    return cfg, state, None


def fake_config_getter(
    repo_id: str, folder_name: str, device: str, force_download: bool, cfg_overrides: Any
) -> Any:
    cfg = {"architecture": "jumprelu", "d_in": 3, "d_sae": 5, "dtype": "float32", "device": device}
    cfg["hook_name"] = f"{repo_id}:{folder_name}"
    return {**cfg, **(cfg_overrides or {})}


FAKE_CONVERTER = Converter("toy_converter", fake_loader, fake_config_getter)


def toy_release(
    name: str, converter: Converter | None = FAKE_CONVERTER, func: str = "toy_converter"
) -> Release:
    lookup = PretrainedSAELookup(
        release=name,
        repo_id="toy/repo",
        model="toy-model",
        conversion_func=func,
        saes_map={"sae_a": "folder/a"},
        expected_var_explained={},
        expected_l0={},
        neuronpedia_id={},
        norm_scaling_factor={},
        config_overrides=None,
    )
    return Release(lookup, converter)


class ReleasePlugin:
    def __init__(self, *releases: Release) -> None:
        self.releases = releases

    @hookimpl
    def register_pretrained_saes(self, register: Callable[[Release], None]) -> None:
        for release in self.releases:
            register(release)


def test_release_and_converter_serve_sae_from_pretrained(sae_lens_sandbox: None) -> None:
    plugin = ReleasePlugin(toy_release("toy-release-1"), toy_release("toy-release-2"))
    found = host_with(("rel", plugin)).collect()
    assert set(found.converters) == {"toy_converter"}  # one converter shared by two releases
    apply_to_sae_lens(found)

    assert get_pretrained_saes_directory()["toy-release-1"].repo_id == "toy/repo"
    assert loaders.NAMED_PRETRAINED_SAE_LOADERS["toy_converter"] is fake_loader
    sae = SAE.from_pretrained("toy-release-2", "sae_a")
    assert sae.cfg.metadata.hook_name == "toy/repo:folder/a"
    assert torch.equal(sae.threshold, torch.full((5,), 0.5))


def test_release_overrides_sae_lens_entry_of_the_same_name(sae_lens_sandbox: None) -> None:
    name = next(iter(get_pretrained_saes_directory()))
    apply_to_sae_lens(host_with(("rel", ReleasePlugin(toy_release(name)))).collect())
    assert get_pretrained_saes_directory()[name].conversion_func == "toy_converter"


def test_release_naming_an_unknown_converter_is_refused() -> None:
    host = host_with(("rel", ReleasePlugin(toy_release("toy-release", converter=None, func="nowhere"))))
    with pytest.raises(PluginLoadError, match=r"needs converter 'nowhere'"):
        host.collect()


def test_converter_named_like_a_sae_lens_converter_is_refused(sae_lens_sandbox: None) -> None:
    impostor = Converter("gemma_2", fake_loader, fake_config_getter)
    host = host_with(("rel", ReleasePlugin(toy_release("toy-release", impostor, "gemma_2"))))
    with pytest.raises(PluginClashError, match="gemma_2"):
        apply_to_sae_lens(host.collect())
    assert loaders.NAMED_PRETRAINED_SAE_LOADERS["gemma_2"] is not fake_loader


# -- entry points, blocking, idempotence -----------------------------------------------------------

ENTRY_POINT_PLUGIN = """
from saelens_gemmascope import ModelSpec, TrainingPreset, hookimpl

@hookimpl
def register_models(register):
    register(ModelSpec(name="ep-model", hf_repo="", d_model=8, n_layers=2, n_heads=1, n_kv_heads=1,
                       d_head=8, d_mlp=16, d_vocab=10))

@hookimpl
def register_training_presets(register):
    register(TrainingPreset(name="ep-model/res/layer_0/width_64", model_name="ep-model", site="res",
                            layer=0, hook_name="blocks.0.hook_resid_post", d_in=8, d_sae=64,
                            training_tokens=1000))
"""


def test_entry_point_plugin_is_discovered(make_distribution: Callable[..., Path]) -> None:
    make_distribution("gsplug-good", "gsplug_good", ENTRY_POINT_PLUGIN)
    host = PluginHost(disabled=())
    host.add_entry_points()
    info = host.infos["gsplug-good"]
    assert (info.distribution, info.version, info.entry_point) == (
        "gsplug-good",
        "0.1",
        "gsplug-good = gsplug_good",
    )
    found = host.collect()
    assert "ep-model" in found.models and "ep-model/res/layer_0/width_64" in found.presets


def test_entry_point_plugin_is_listed_by_the_cli(make_distribution: Callable[..., Path]) -> None:
    root = make_distribution("gsplug-listed", "gsplug_listed", ENTRY_POINT_PLUGIN, version="2.3")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env.pop(DISABLE_ENV_VAR, None)
    out = subprocess.run(
        [sys.executable, "-m", "saelens_gemmascope.cli", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    row = rows["gsplug-listed"]
    assert (row["distribution"], row["version"], row["source"]) == ("gsplug-listed", "2.3", "entry point")
    assert row["hooks"] == ["register_models", "register_training_presets"]
    assert (row["models"], row["presets"], row["releases"], row["architectures"]) == (1, 1, 0, 0)
    assert all(name in rows for name in ("gemmascope.architectures", "gemmascope.models"))


def test_broken_entry_point_names_distribution_and_entry_point(
    make_distribution: Callable[..., Path],
) -> None:
    make_distribution("gsplug-broken", "gsplug_broken", "raise ImportError('missing dependency xyz')\n")
    host = PluginHost(disabled=())
    with pytest.raises(PluginLoadError) as err:
        host.add_entry_points()
    message = str(err.value)
    assert "gsplug-broken" in message and "gsplug-broken = gsplug_broken" in message
    assert "missing dependency xyz" in message and DISABLE_ENV_VAR in message


def test_disable_variable_blocks_external_or_named_plugins(
    make_distribution: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_distribution("gsplug-broken", "gsplug_broken", "raise ImportError('never imported')\n")

    monkeypatch.setenv(DISABLE_ENV_VAR, "external")
    host = PluginHost()
    host.add_builtins()
    host.add_entry_points()
    assert "gsplug-broken" not in host.infos and "gemmascope.models" in host.infos

    monkeypatch.setenv(DISABLE_ENV_VAR, "gsplug-broken, gemmascope.presets")
    host = PluginHost()
    host.add_builtins()
    host.add_entry_points()
    assert "gsplug-broken" not in host.infos
    assert "gemmascope.presets" not in host.infos and "gemmascope.releases" in host.infos


def test_load_plugins_is_idempotent() -> None:
    first = load_plugins()
    directory = get_pretrained_saes_directory()
    snapshot = (dict(SAE_CLASS_REGISTRY), dict(loaders.NAMED_PRETRAINED_SAE_LOADERS), dict(directory))
    second = saelens_gemmascope.load_plugins()
    assert second is first
    assert snapshot == (dict(SAE_CLASS_REGISTRY), dict(loaders.NAMED_PRETRAINED_SAE_LOADERS), dict(directory))


def test_builtins_are_plugins_on_the_same_hooks() -> None:
    found = load_plugins()
    builtins = {name for name, info in found.plugins.items() if info.source == "builtin"}
    assert builtins == {
        "gemmascope.architectures",
        "gemmascope.models",
        "gemmascope.releases",
        "gemmascope.presets",
        "gemmascope.demo",
    }
    # The tiny models and their presets come from the demo plugin, not from the Gemma Scope ones.
    owners = {
        kind: found.owners[(kind, name)]
        for kind, name in (("models", "tiny-gemma-2"), ("presets", "tiny-gemma-2/res/layer_0/width_256"))
    }
    assert set(owners.values()) == {"gemmascope.demo"}


def test_training_preset_record_is_plain_data() -> None:
    preset = TrainingPreset("p", "m", "res", 0, "blocks.0.hook_resid_post", 8, 16, 100)
    assert preset.architecture == "jumprelu_gemmascope" and preset.overrides == {}
