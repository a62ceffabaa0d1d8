"""The root conftest's autouse fixtures put SAELens's tables and the plugin host's state back after each
test: a release, converter or architecture registered by one test is not seen by the next."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup
from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class

from saelens_gemmascope import Converter, Release, registry
from saelens_gemmascope.compat import pretrained_directory
from saelens_gemmascope.host import load_plugins

BOGUS = "bogus-test-release-left-behind"
BOGUS_CONVERTER = "bogus_test_converter"
BOGUS_ARCH = "bogus_test_arch"


class BogusConfig(StandardSAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return BOGUS_ARCH


def _no_loader(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("never called")


def _register_everything_bogus() -> None:
    """One of each thing a test may leave behind, through the package's own paths where it has one."""
    lookup = PretrainedSAELookup(
        release=BOGUS,
        repo_id="nowhere/bogus",
        model="tiny-gemma-2",
        conversion_func=BOGUS_CONVERTER,
        saes_map={"sae": "sae"},
        expected_var_explained={},
        expected_l0={},
        neuronpedia_id={},
        norm_scaling_factor={},
        config_overrides=None,
    )
    registry.register_release(Release(lookup, Converter(BOGUS_CONVERTER, _no_loader, _no_loader)), "test")
    register_sae_class(BOGUS_ARCH, StandardSAE, BogusConfig)
    registry.set_plugin_loader(_no_loader, _no_loader)


def _bogus_things_seen() -> list[str]:
    found = load_plugins()
    seen = {
        "SAELens directory": BOGUS in pretrained_directory(),
        "SAELens loaders": BOGUS_CONVERTER in loaders.NAMED_PRETRAINED_SAE_LOADERS,
        "SAELens config getters": BOGUS_CONVERTER in loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        "SAELens architectures": BOGUS_ARCH in SAE_CLASS_REGISTRY,
        "host releases": BOGUS in found.releases,
        "host converters": BOGUS_CONVERTER in found.converters,
        "host owners": ("releases", BOGUS) in found.owners,
        "host plugins": "test" in found.plugins,
        "registry loader": registry._plugin_loader is _no_loader,
        "registry registrar": registry._release_registrar is _no_loader,
    }
    return sorted(name for name, present in seen.items() if present)


def test_snapshot_restore_undoes_every_registration(global_tables_snapshot: Callable[[], Any]) -> None:
    directory = pretrained_directory()
    saved = global_tables_snapshot()
    _register_everything_bogus()
    assert len(_bogus_things_seen()) == 10  # each table really changed, so the check below can fail
    saved.restore()
    assert _bogus_things_seen() == []
    assert pretrained_directory() is directory  # restored in place: the dict SAE.from_pretrained reads


_REGISTERED_BY_THE_TEST_BEFORE: list[bool] = []


def test_a_test_registers_things_and_leaves_them() -> None:
    _register_everything_bogus()
    assert len(_bogus_things_seen()) == 10
    _REGISTERED_BY_THE_TEST_BEFORE.append(True)


def test_the_next_test_does_not_see_them() -> None:
    # Runs after the test above (pytest keeps a file's order): the autouse fixture undid its changes.
    # The flag makes sure the test above did run in this process (run alone, this one fails).
    assert _REGISTERED_BY_THE_TEST_BEFORE == [True]
    assert _bogus_things_seen() == []
