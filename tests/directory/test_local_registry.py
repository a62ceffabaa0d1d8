"""Local releases outlive the process (item 12 of issue 14) and their release.json is validated (item 8).

The registry lives in the cache directory, which ``tests/directory/conftest.py`` points at a
temporary folder for every test; the SAELens directory is restored after each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

from saelens_gemmascope.cli import TRACEBACK_HINT, main
from saelens_gemmascope.directory.layout import export_gemmascope_sae, read_release_manifest
from saelens_gemmascope.directory.local import (
    LocalReleaseClashError,
    local_release_name,
    recorded_releases,
    register_local_release,
    register_recorded_releases,
)
from saelens_gemmascope.directory.local_registry import (
    RecordedNameTakenError,
    ReleaseRegistryWarning,
    read_registry,
    record_release,
    registry_path,
)
from saelens_gemmascope.directory.release_manifest import ReleaseManifestError

HOOK = "blocks.1.hook_resid_post"
SAE_ID = "layer_1/width_96/average_l0_10"


@pytest.fixture(autouse=True)
def saelens_directory() -> Iterator[None]:
    """Releases registered by a test leave SAELens's directory with it."""
    directory = get_pretrained_saes_directory()
    saved = dict(directory)
    yield
    directory.clear()
    directory.update(saved)


def export_run(run: Path, seed: int = 0) -> Path:
    """A training run's release folder, ``<run>/release/tiny-gemma-2-res``, with one exported SAE."""
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=96))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 96, generator=torch.Generator().manual_seed(seed)))
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = HOOK, "tiny-gemma-2"
    folder = run / "release" / "tiny-gemma-2-res"
    export_gemmascope_sae(sae, folder, average_l0=10.0)
    return folder


def test_a_release_registered_by_one_process_loads_in_the_next(tmp_path: Path) -> None:
    folder = export_run(tmp_path / "my-run", seed=3)
    name = register_local_release(folder)
    assert name == "local/my-run/tiny-gemma-2-res" == local_release_name(folder)
    assert read_registry() == {name: folder.resolve()}
    expected = SAE.from_pretrained(name, SAE_ID).W_enc.sum().item()
    script = textwrap.dedent(
        f"""
        import saelens_gemmascope
        from sae_lens import SAE
        print(SAE.from_pretrained({name!r}, {SAE_ID!r}).W_enc.sum().item())
        """
    )
    # A new process (same cache directory, from the environment) loads it by name, nothing else.
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) == expected


def test_two_runs_with_the_same_folder_name_get_two_names_and_load_side_by_side(tmp_path: Path) -> None:
    first, second = export_run(tmp_path / "a" / "run", seed=1), export_run(tmp_path / "b" / "run", seed=2)
    name_a, name_b = register_local_release(first), register_local_release(second)
    assert name_a == "local/run/tiny-gemma-2-res"
    assert name_b.startswith("local/run-") and name_b.endswith("/tiny-gemma-2-res") and name_b != name_a
    # The same folder always gets its name back (and the prediction agrees).
    assert register_local_release(second) == name_b == local_release_name(second)
    assert register_local_release(first) == name_a == local_release_name(first)
    assert read_registry() == {name_a: first.resolve(), name_b: second.resolve()}
    loaded_a, loaded_b = SAE.from_pretrained(name_a, SAE_ID), SAE.from_pretrained(name_b, SAE_ID)
    assert not torch.equal(loaded_a.W_enc, loaded_b.W_enc)
    # A folder that is not a training run's release folder is named after itself.
    plain = tmp_path / "my-saes"
    export_gemmascope_sae(
        JumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=96)), plain, average_l0=3.0, hook_name=HOOK
    )
    assert register_local_release(plain) == "local/my-saes"


def test_a_name_held_by_another_folder_is_refused_naming_both(tmp_path: Path) -> None:
    first, second = export_run(tmp_path / "a" / "run"), export_run(tmp_path / "b" / "run")
    register_local_release(first, "in-process-name")  # an explicit name is recorded only when asked
    assert read_registry() == {}
    register_local_release(first, "shared-name", persist=True)
    with pytest.raises(LocalReleaseClashError) as err:
        register_local_release(second, "shared-name")
    assert str(first.resolve()) in str(err.value) and str(second.resolve()) in str(err.value)
    # Also across processes: the registry holds the name even when this process has not loaded it.
    del get_pretrained_saes_directory()["shared-name"]
    with pytest.raises(LocalReleaseClashError, match="gemmascope releases --remove shared-name"):
        register_local_release(second, "shared-name")
    with pytest.raises(LocalReleaseClashError, match="released google/gemma-scope-2b-pt-res"):
        register_local_release(second, "gemma-scope-2b-pt-res")
    # Two processes racing for one name: the registry's own check, under its lock, refuses the second.
    with pytest.raises(RecordedNameTakenError, match=str(first.resolve())):
        record_release("shared-name", second.resolve())
    assert read_registry() == {"shared-name": first.resolve()}


def test_a_vanished_folder_is_reported_skipped_and_removable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, gone = export_run(tmp_path / "kept"), export_run(tmp_path / "gone")
    kept_name, gone_name = register_local_release(kept), register_local_release(gone)
    for path in sorted(gone.parent.parent.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    gone.parent.parent.rmdir()
    directory = get_pretrained_saes_directory()
    del directory[kept_name], directory[gone_name]

    assert register_recorded_releases() == [kept_name]  # what an import does: the vanished one skipped
    assert gone_name not in directory and kept_name in directory
    assert main(["releases"]) == 0
    out = capsys.readouterr().out
    assert f"{kept_name}  {kept.resolve()}  1 SAEs" in out
    assert gone_name in out and "NOT LOADABLE: folder not found" in out and "1 not loadable" in out

    assert main(["releases", "--remove", gone_name]) == 0
    assert f"removed {gone_name}" in capsys.readouterr().out
    assert read_registry() == {kept_name: kept.resolve()}
    assert main(["releases", "--remove", kept_name]) == 0
    assert kept_name not in directory and read_registry() == {}


def test_a_corrupt_registry_is_named_and_never_fails_a_registration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True)
    path.write_text('{"format": "saelens-gemmascope/local-releases", "releases": {')
    assert main(["releases"]) == 2
    error, hint = capsys.readouterr().err.strip().splitlines()
    assert (
        str(path) in error and "not valid JSON" in error and "delete it" in error and hint == TRACEBACK_HINT
    )
    folder = export_run(tmp_path / "run")
    with pytest.warns(ReleaseRegistryWarning, match="moved it to .*local_releases.json.corrupt"):
        name = register_local_release(folder)
    assert read_registry() == {name: folder.resolve()}
    assert path.with_name(path.name + ".corrupt").is_file()


def test_a_recorded_release_whose_manifest_broke_is_skipped_with_one_warning(tmp_path: Path) -> None:
    folder = export_run(tmp_path / "run")
    name = register_local_release(folder)
    del get_pretrained_saes_directory()[name]
    (folder / "release.json").write_text("{}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert register_recorded_releases() == []
    (warning,) = caught
    message = str(warning.message)
    assert name in message and str(folder / "release.json") in message and "--remove" in message
    assert "\n" not in message
    (row,) = recorded_releases()
    assert row.name == name and row.problem is not None and "release.json" in row.problem


# -- release.json validation (item 8) ----------------------------------------------------------------


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(entry: dict[str, Any]) -> None:
        entry[field] = value

    return change


def _drop(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda entry: entry.pop(field)


BAD_ENTRIES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("parent-path", _set("path", "../x"), "path", "leaves the release folder"),
    ("deep-parent-path", _set("path", "layer_1/../../x"), "path", "leaves the release folder"),
    ("absolute-path", _set("path", "/etc"), "path", "an absolute path"),
    ("windows-path", _set("path", "C:\\x"), "path", "an absolute path"),
    ("d-in-string", _set("d_in", "64"), "d_in", "expected a positive integer, got '64'"),
    ("d-in-float", _set("d_in", 64.5), "d_in", "expected a positive integer"),
    ("d-sae-negative", _set("d_sae", -96), "d_sae", "expected a positive integer, got -96"),
    ("d-sae-zero", _set("d_sae", 0), "d_sae", "expected a positive integer, got 0"),
    ("d-sae-bool", _set("d_sae", True), "d_sae", "expected a positive integer"),
    ("l0-string", _set("average_l0", "ten"), "average_l0", "expected a finite number"),
    ("l0-negative", _set("average_l0", -1.0), "average_l0", "expected a finite number >= 0"),
    ("layer-string", _set("layer", "1"), "layer", "expected an integer >= 0 (or null)"),
    ("context-zero", _set("context_size", 0), "context_size", "expected a positive integer (or null)"),
    ("id-missing", _drop("id"), "id", "missing"),
    ("d-sae-missing", _drop("d_sae"), "d_sae", "missing"),
    ("id-empty", _set("id", ""), "id", "expected a non-empty string"),
]


@pytest.mark.parametrize(
    ("change", "field", "problem"), [c[1:] for c in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES]
)
def test_a_bad_release_json_entry_is_refused_at_read_time_naming_file_entry_and_field(
    change: Callable[[dict[str, Any]], None], field: str, problem: str, tmp_path: Path
) -> None:
    folder = export_run(tmp_path / "run")
    manifest_file = folder / "release.json"
    manifest = json.loads(manifest_file.read_text())
    change(manifest["saes"][0])
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ReleaseManifestError) as err:
        read_release_manifest(folder)
    message = str(err.value)
    assert message.startswith(f"{manifest_file}: SAE entry 0") and f"field {field!r}: " in message, message
    assert problem in message
    with pytest.raises(ReleaseManifestError):
        register_local_release(folder)
    assert read_registry() == {}


def test_duplicate_ids_a_symlink_out_and_bad_json_are_refused(tmp_path: Path) -> None:
    folder = export_run(tmp_path / "run")
    manifest_file = folder / "release.json"
    good = json.loads(manifest_file.read_text())

    twice = {**good, "saes": good["saes"] * 2}
    manifest_file.write_text(json.dumps(twice))
    with pytest.raises(
        ReleaseManifestError, match=rf"SAE entry 1 \('{SAE_ID}'\): field 'id': .* also the id of entry 0"
    ):
        read_release_manifest(folder)

    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    linked = {**good, "saes": [{**good["saes"][0], "path": "linked"}]}
    manifest_file.write_text(json.dumps(linked))
    with pytest.raises(ReleaseManifestError, match="outside the release folder"):
        read_release_manifest(folder)

    for text, problem in (("[1, 2]", "expected a JSON object"), ('{"format": "saelens', "not valid JSON"),
                          (json.dumps({**good, "saes": {}}), "'saes' must be a list"),
                          (json.dumps({**good, "version": 2}), "version 2")):  # fmt: skip
        manifest_file.write_text(text)
        with pytest.raises(ReleaseManifestError, match=problem) as err:
            read_release_manifest(folder)
        assert str(manifest_file) in str(err.value)
    manifest_file.write_text(json.dumps(good))
    assert read_release_manifest(folder) == good
