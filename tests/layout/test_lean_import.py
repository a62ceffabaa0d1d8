"""``import saelens_gemmascope`` imports neither torch nor SAELens, and SAELens still finds everything.

The package registers its plugins and the recorded local releases when SAELens is imported (the
post-import hook of :mod:`saelens_gemmascope.post_import`), whichever of the two is imported first.
Each promise about a fresh process is checked in one (``HF_HUB_OFFLINE=1``): the package, its light
modules, the registration in three import orders, a broken third-party plugin, ``--help`` and
``--version``. The hook itself is also checked in this process, on small throwaway modules.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from saelens_gemmascope import post_import

HEAVY = ("torch", "sae_lens", "transformer_lens", "transformers")
RELEASE = "gemma-scope-2b-pt-res"
DISABLE_ENV_VAR = "SAELENS_GEMMASCOPE_DISABLE_PLUGINS"


def run_python(
    *args: str, cache: Path | None = None, site: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh process, offline, with its own cache folder and extra ``site``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (DISABLE_ENV_VAR, "GEMMASCOPE_TRACEBACK")
    }
    env["HF_HUB_OFFLINE"] = "1"
    if cache is not None:
        env["SAELENS_GEMMASCOPE_CACHE"] = str(cache)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=180)


def heavy_modules_after(statement: str) -> list[str]:
    script = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = run_python("-c", script)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- what importing costs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "saelens_gemmascope",
        "saelens_gemmascope.contributions",
        "saelens_gemmascope.hookspecs",
        "saelens_gemmascope.models.spec",
        "saelens_gemmascope.suite.preset",
    ],
)
def test_the_package_and_its_light_modules_import_no_heavy_module(module: str) -> None:
    assert heavy_modules_after(f"import {module}") == []


def test_the_public_names_still_resolve_without_importing_sae_lens() -> None:
    statement = (
        "from saelens_gemmascope import Architecture, Converter, Release, ModelSpec, SiteSpec, HookPoint, "
        "TrainingPreset, hookimpl, PROJECT_NAME, PluginError, PluginLoadError, PluginClashError, Registrations"
    )
    assert heavy_modules_after(statement) == []


# -- registering with SAELens ----------------------------------------------------------------------

#: Reads SAELens's tables first (before anything of ours could load the plugins on demand), then
#: compares them with what the plugins registered.
REGISTRATION_REPORT = """
import json, sys
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
import sae_lens
directory = dict(get_pretrained_saes_directory())
trained = set(SAE_TRAINING_CLASS_REGISTRY)
loaders = dict(NAMED_PRETRAINED_SAE_LOADERS)
from saelens_gemmascope import post_import
from saelens_gemmascope.registry import registered_releases
ours = registered_releases()[{release!r}]
print(json.dumps({{
    "entry_is_ours": directory[{release!r}] is ours.lookup,
    "converter_is_ours": loaders.get(ours.lookup.conversion_func) is ours.converter.loader,
    "training_architecture": "jumprelu_gemmascope" in trained,
    "local": {local!r} in directory,
    "hook_gone": not post_import.pending("sae_lens"),
    "loader_restored": type(sae_lens.__loader__).__module__ != "saelens_gemmascope.post_import",
}}))
"""


@pytest.fixture(scope="module")
def recorded_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A cache folder whose registry records one local release (what an earlier process leaves)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    from saelens_gemmascope.directory.layout import export_gemmascope_sae
    from saelens_gemmascope.directory.local import local_release_name
    from saelens_gemmascope.directory.local_registry import record_release

    root = tmp_path_factory.mktemp("lean")
    cache, folder = root / "cache", root / "my-export"
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=32))
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = "blocks.1.hook_resid_post", "tiny-gemma-2"
    export_gemmascope_sae(sae, folder, average_l0=4.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAELENS_GEMMASCOPE_CACHE", str(cache))
        name = local_release_name(folder)
        record_release(name, folder.resolve())
    return cache, name


@pytest.mark.parametrize(
    "imports",
    [
        "import saelens_gemmascope\nimport sae_lens",
        "import sae_lens\nimport saelens_gemmascope",
        # SAELens imported halfway through a module of ours: the registration waits for it to finish.
        "import saelens_gemmascope.directory",
    ],
    ids=["ours-first", "sae-lens-first", "through-a-submodule"],
)
def test_sae_lens_finds_every_registration_whatever_the_import_order(
    imports: str, recorded_release: tuple[Path, str]
) -> None:
    cache, local_name = recorded_release
    script = imports + "\n" + REGISTRATION_REPORT.format(release=RELEASE, local=local_name)
    done = run_python("-c", script, cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == dict.fromkeys(report, True) and len(report) == 6, report
    assert "Warning: " not in done.stderr.replace("DeprecationWarning: ", ""), done.stderr[-3000:]


# -- a broken third-party plugin -------------------------------------------------------------------


@pytest.fixture
def broken_plugin_site(tmp_path: Path) -> Path:
    """A distribution on a path of its own whose ``saelens_gemmascope`` entry point fails to import."""
    site = tmp_path / "site"
    info = site / "gsplug_lean_broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gsplug-lean-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[saelens_gemmascope]\nbroken = gsplug_lean_broken\n")
    (site / "gsplug_lean_broken.py").write_text("raise ImportError('missing dependency xyz')\n")
    return site


def test_a_broken_plugin_does_not_break_the_sae_lens_import(
    broken_plugin_site: Path, recorded_release: tuple[Path, str]
) -> None:
    """One warning line, also with a recorded local release (registered through the same host)."""
    done = run_python(
        "-c",
        "import saelens_gemmascope\nimport sae_lens\nprint('imported')",
        site=broken_plugin_site,
        cache=recorded_release[0],
    )
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-3000:]
    (warning,) = [
        line for line in done.stderr.splitlines() if "Warning: " in line and "Deprecation" not in line
    ]
    assert "PluginLoadWarning: no plugin was applied to SAELens: plugin 'broken'" in warning
    assert "Traceback" not in done.stderr


def test_a_broken_plugin_is_one_error_line_of_the_command(broken_plugin_site: Path, tmp_path: Path) -> None:
    done = run_python("-m", "saelens_gemmascope.cli", "plugins", site=broken_plugin_site, cache=tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    assert "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("gemmascope plugins: error:")]
    assert "plugin 'broken'" in error and "distribution gsplug-lean-broken" in error
    assert "missing dependency xyz" in error and f"{DISABLE_ENV_VAR}=broken" in error


@pytest.mark.parametrize("option", ["--help", "--version"])
def test_help_and_version_need_neither_plugins_nor_sae_lens(
    option: str, broken_plugin_site: Path, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from saelens_gemmascope.cli import main
        try:
            main([{option!r}])
        except SystemExit as exit:
            print("exit", exit.code, sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    done = run_python("-c", script, site=broken_plugin_site, cache=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "exit 0 []"
    assert done.stderr == ""
    assert ("usage: gemmascope" if option == "--help" else "saelens-gemmascope ") in done.stdout


# -- the post-import hook itself -------------------------------------------------------------------


@pytest.fixture
def throwaway_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on ``sys.path`` for modules named ``lean_probe*``, forgotten after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("lean_probe")]:
        del sys.modules[name]
    # Only this test's hooks: the package's own, for sae_lens, may be pending in this process.
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "name", "").startswith("lean_probe")]


def test_the_callback_runs_once_right_after_the_import(throwaway_modules: Path) -> None:
    (throwaway_modules / "lean_probe_a.py").write_text("import sys\nVALUE = 1\n")
    seen: list[object] = []

    def callback() -> None:
        seen.append(sys.modules["lean_probe_a"].VALUE)  # the module has finished executing

    post_import.call_when_imported("lean_probe_a", callback)
    post_import.call_when_imported("lean_probe_a", callback)  # asked twice: still once
    assert seen == [] and post_import.pending("lean_probe_a")
    import lean_probe_a  # type: ignore[import-not-found]

    assert seen == [1] and not post_import.pending("lean_probe_a")
    assert type(lean_probe_a.__loader__).__module__ != post_import.__name__  # the real loader is back
    importlib.reload(lean_probe_a)
    post_import.call_when_imported("lean_probe_a", callback)  # already run: not again
    assert seen == [1]


def test_a_module_already_imported_runs_the_callback_at_once(throwaway_modules: Path) -> None:
    (throwaway_modules / "lean_probe_b.py").write_text("")
    import lean_probe_b  # type: ignore[import-not-found]  # noqa: F401

    seen: list[str] = []
    post_import.call_when_imported("lean_probe_b", lambda: seen.append("ran"))
    assert seen == ["ran"] and not post_import.pending("lean_probe_b")


def test_a_failing_callback_warns_in_one_line_and_the_import_goes_on(throwaway_modules: Path) -> None:
    (throwaway_modules / "lean_probe_c.py").write_text("VALUE = 3\n")

    def broken() -> None:
        raise RuntimeError("plugin exploded")

    post_import.call_when_imported("lean_probe_c", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import lean_probe_c  # type: ignore[import-not-found]
    assert lean_probe_c.VALUE == 3
    (warning,) = caught
    assert issubclass(warning.category, post_import.PostImportWarning)
    assert "RuntimeError: plugin exploded" in str(warning.message) and "\n" not in str(warning.message)


def test_the_callback_waits_for_the_held_package_to_finish_importing(throwaway_modules: Path) -> None:
    """The watched module imported halfway through a module of the held package: the callback runs
    after that module (and the outermost import of the package) has finished."""
    package = throwaway_modules / "lean_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (throwaway_modules / "lean_probe_watched.py").write_text("")
    (package / "outer.py").write_text("from lean_probe_pkg import inner\nDONE = True\n")
    (package / "inner.py").write_text("import lean_probe_watched\nDONE = True\n")
    import lean_probe_pkg  # type: ignore[import-not-found]

    seen: list[bool] = []
    post_import.call_when_imported(
        "lean_probe_watched",
        lambda: seen.append(getattr(sys.modules.get("lean_probe_pkg.outer"), "DONE", False)),
        hold_package="lean_probe_pkg",
    )
    import lean_probe_pkg.outer  # type: ignore[import-not-found]  # noqa: F401

    assert seen == [True]
