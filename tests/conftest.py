"""Shared test set-up: never reach the Hugging Face hub or wandb's servers; skip GPU tests without CUDA;
every test starts from, and leaves, the same SAELens and plugin-host tables."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# Set before anything imports huggingface_hub, which reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
# The package's cache (conversions, the registry of local releases) in a throwaway folder: tests never
# read or write the user's, and releases registered by one test session are not seen by the next.
os.environ["SAELENS_GEMMASCOPE_CACHE"] = tempfile.mkdtemp(prefix="gemmascope-test-cache-")

import pytest
import torch

# The tests' tensors are tiny: one thread per process avoids oversubscribing a shared 2-core machine,
# which made small training runs tens of times slower.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# -- SAELens's and the plugin host's process-wide tables -----------------------------------------
# A test that registers a release, converter or architecture changes tables every later test in the
# process reads (SAE.from_pretrained, the clash checks, `gemmascope ls`). Each test's changes are
# undone after it, so no test depends on the order the suite runs in.


@dataclass
class GlobalTables:
    """The contents of every process-wide table at one moment; :meth:`restore` puts them back."""

    #: (live dict, its contents then): restored in place, since other modules hold the dict itself
    tables: list[tuple[dict[Any, Any], dict[Any, Any]]]
    #: the host's Registrations object then (None: plugins not loaded) and its dict attributes
    loaded: Any
    loaded_fields: dict[str, dict[Any, Any]]
    #: what the host installed into the registry module (``_plugin_loader``, ``_release_registrar``, ...)
    registry_hooks: dict[str, Any]

    def restore(self) -> None:
        from saelens_gemmascope import host, registry
        from saelens_gemmascope.compat import pretrained_directory

        directory = self.tables[-1][0]
        # SAE.from_pretrained reads the lru_cache'd dict: a test that replaced it (cache_clear) leaves
        # a directory this fixture cannot put back.
        assert pretrained_directory() is directory, "a test replaced SAELens's cached directory dict"
        for table, contents in self.tables:
            table.clear()
            table.update(contents)
        host._LOADED = self.loaded
        for name, table in self.loaded_fields.items():
            setattr(self.loaded, name, table)
        for name, value in self.registry_hooks.items():
            setattr(registry, name, value)


def snapshot_global_tables() -> GlobalTables:
    """SAELens's architecture registries, converter tables and pretrained directory, the host's
    registrations and what the host installed into the registry module, as they are now."""
    # Read directly from SAELens: a test fixture may (compat.py is the package's only door to
    # SAELens's private tables; it has no accessor returning the whole converter tables).
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    from saelens_gemmascope import host, registry
    from saelens_gemmascope.compat import pretrained_directory

    live: list[dict[Any, Any]] = [
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        loaders.NAMED_PRETRAINED_SAE_LOADERS,
        loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
    ]
    loaded = host._LOADED
    loaded_fields = {}
    if loaded is not None:
        loaded_fields = {
            f.name: getattr(loaded, f.name)
            for f in dataclasses.fields(loaded)
            if isinstance(getattr(loaded, f.name), dict)
        }
        live += loaded_fields.values()
    live.append(pretrained_directory())  # last: restore() checks it is still SAELens's cached dict
    return GlobalTables(
        tables=[(table, dict(table)) for table in live],
        loaded=loaded,
        loaded_fields=loaded_fields,
        registry_hooks=_installed_hooks(registry),
    )


def _installed_hooks(module: ModuleType) -> dict[str, Any]:
    """The module's private globals that hold a function or None: the slots ``set_plugin_loader``
    fills, whichever there are."""
    return {
        name: value
        for name, value in vars(module).items()
        if name.startswith("_") and not name.startswith("__") and (value is None or callable(value))
    }


@pytest.fixture(scope="session", autouse=True)
def plugins_applied() -> None:
    """The state every test starts from is a normal process's: importing SAELens applies the plugins
    (and the recorded local releases) to it, as ``import saelens_gemmascope`` arranges."""
    import sae_lens  # noqa: F401

    import saelens_gemmascope  # noqa: F401


@pytest.fixture(scope="session")
def global_tables_snapshot() -> Callable[[], GlobalTables]:
    """The snapshot function itself, for tests of it."""
    return snapshot_global_tables


@pytest.fixture(scope="module", autouse=True)
def restore_global_tables_per_module() -> Iterator[None]:
    """Undo what a module's shared fixtures (a demo run, a trained suite) registered, after the module
    (autouse: set up before, and torn down after, the module's other module-scoped fixtures)."""
    saved = snapshot_global_tables()
    yield
    saved.restore()


@pytest.fixture(autouse=True)
def restore_global_tables() -> Iterator[None]:
    """Undo, after each test, whatever it registered with SAELens or the plugin host (torn down after
    the test's own fixtures, monkeypatch included)."""
    saved = snapshot_global_tables()
    yield
    saved.restore()
