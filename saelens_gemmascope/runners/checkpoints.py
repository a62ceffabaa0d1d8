"""Training checkpoints: which are complete and intact, read safely, resumed with the same settings.

* **Complete**: this package's runners write :data:`MANIFEST_FILENAME` last (atomically), listing
  every file of the checkpoint (but the optional stream position) with its size; its presence
  marks a complete checkpoint. Older checkpoints of this package are marked by their stream
  position, SAELens's own by their ``runner_cfg.json``.
* **Intact** (:func:`checkpoint_problem`): every listed file has the size it was written with, and
  every file parses: safetensors headers (which cover the whole file, so a truncation shows),
  ``*.pt`` through ``torch.load(weights_only=True, mmap=True)`` (the pickle only, tensors mapped
  not read; a pickle that would run code is refused, not run), JSON. A flipped byte inside a tensor
  is not looked for (that would mean hashing every checkpoint).
  :func:`scan_checkpoints` keeps the intact ones and says why it set the others aside, so that a
  resume falls back to the newest intact checkpoint; a runner checks the one it resumes from.
* **Read safely**: SAELens reads ``trainer_state.pt`` with ``torch.load``'s default ``weights_only``,
  which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns off; :func:`weights_only_loads` forces it on
  around that read.
* **Same settings** (:func:`refuse_changed_settings`): a resume whose runner config differs from
  the checkpoint's (but for where files go, logging and devices) would mix two trainings. An SAE
  setting added after release and absent from an older checkpoint compares as the value that old
  run trained with (:data:`SAE_SETTINGS_ADDED_AFTER_RELEASE`); the frequency penalty's own settings
  (κ, the cap) are not compared while the penalty is off before and now, as they change nothing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import RUNNER_CFG_FILENAME

from saelens_gemmascope.runners.activation_stream import STREAM_STATE_FILENAME, StreamPosition

#: This package's completeness marker, written last: every other file of the checkpoint with its size.
MANIFEST_FILENAME = "gemmascope_checkpoint.json"
_MANIFEST_FORMAT = "saelens-gemmascope/checkpoint/1"
#: What marks a complete checkpoint, most exact first (see the module docstring).
COMPLETENESS_MARKERS = (MANIFEST_FILENAME, STREAM_STATE_FILENAME, RUNNER_CFG_FILENAME)
_CHECKPOINT_NAME = re.compile(r"^(?:final_)?(\d+)$")

#: Runner settings a resume may change: where files go, logging, devices, compilation, how often
#: checkpoints are taken, prefetching. ``metadata`` (per SAE) repeats runner settings.
RESUMABLE_CHANGES = frozenset(
    {
        "resume_from_checkpoint", "output_path", "checkpoint_path", "cached_activations_path",
        "new_cached_activations_path", "logger", "n_checkpoints", "prefetch_llm_batches",
        "device", "llm_device", "act_store_device", "compile_llm", "llm_compilation_mode",
        "compile_sae", "sae_compilation_mode", "sae_lens_version", "sae_lens_training_version",
        "verbose", "metadata",
    }
)  # fmt: skip


class InvalidCheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: a file missing, truncated or unreadable."""


class ChangedSettingsError(ValueError):
    """A resume whose settings differ from those the checkpoint was trained with."""


# -- writing ------------------------------------------------------------------------------------


def _listed_files(checkpoint: Path) -> dict[str, int]:
    skip = {MANIFEST_FILENAME, STREAM_STATE_FILENAME}
    return {
        path.relative_to(checkpoint).as_posix(): path.stat().st_size
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file() and path.name not in skip and not path.name.endswith(".partial")
    }


def write_manifest(checkpoint: Path) -> None:
    """Mark ``checkpoint`` complete: list its files and sizes, atomically (call it last)."""
    manifest = {"format": _MANIFEST_FORMAT, "files": _listed_files(checkpoint)}
    partial = checkpoint / (MANIFEST_FILENAME + ".partial")
    partial.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(partial, checkpoint / MANIFEST_FILENAME)


# -- checking -----------------------------------------------------------------------------------


def _manifest_files(manifest: Path) -> dict[str, int]:
    content = json.loads(manifest.read_text())
    if not isinstance(content, dict) or content.get("format") != _MANIFEST_FORMAT:
        raise ValueError(f"not a checkpoint manifest of format {_MANIFEST_FORMAT}")
    files = content["files"]
    if not all(isinstance(k, str) and type(v) is int for k, v in files.items()):
        raise ValueError("entries are not file: size")
    return files


def _size_problem(checkpoint: Path, manifest: Path) -> str | None:
    try:
        files = _manifest_files(manifest)
    except (OSError, ValueError, KeyError, AttributeError) as err:
        return f"{manifest}: unreadable ({err})"
    for name, size in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{path}: missing"
        if (actual := path.stat().st_size) != size:
            return f"{path}: {actual:,} bytes, {size:,} when written (truncated or replaced)"
    return None


def _parse(path: Path) -> None:
    """Read ``path`` as its kind of file (cheaply: headers, a pickle of a few objects); raise if broken."""
    if path.name == STREAM_STATE_FILENAME:
        StreamPosition.load(path)
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt"):
            pass
    elif path.suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    elif path.suffix == ".json":
        json.loads(path.read_text())


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, naming the file; None when it is intact."""
    manifest = checkpoint / MANIFEST_FILENAME
    if manifest.is_file() and (problem := _size_problem(checkpoint, manifest)):
        return problem
    for path in sorted(checkpoint.rglob("*")):
        if not path.is_file() or path.name.endswith(".partial"):
            continue
        try:
            _parse(path)
        except Exception as err:  # any failure to parse means the file is broken
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return f"{path}: unreadable ({reason[:200]})"
    return None


def validate_checkpoint(checkpoint: Path) -> None:
    """Raise :class:`InvalidCheckpointError` (one line, naming the file) unless ``checkpoint`` is intact."""
    if not checkpoint.is_dir():
        raise InvalidCheckpointError(f"checkpoint {checkpoint}: no such folder")
    if problem := checkpoint_problem(checkpoint):
        raise InvalidCheckpointError(
            f"checkpoint {checkpoint} cannot be resumed from: {problem}; resume from an earlier checkpoint"
        )


@dataclass
class CheckpointScan:
    """The checkpoints of a folder: the intact, complete ones by training tokens, and those set aside."""

    complete: dict[int, Path] = field(default_factory=dict)
    rejected: dict[Path, str] = field(default_factory=dict)  # path: why


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    return sorted(
        (int(m.group(1)), path)
        for path in folder.glob("*/*")
        if path.is_dir() and (m := _CHECKPOINT_NAME.match(path.name))
    )


def scan_checkpoints(folder: Path) -> CheckpointScan:
    """The complete checkpoints under ``folder`` (any run id below it); this package's must be intact.

    Those with the most exact marker count (:data:`COMPLETENESS_MARKERS`); a folder without one is
    a write that was cut short, skipped without a word. A checkpoint with a manifest that is not
    intact is set aside with its reason; when all of them are, the next marker's count (a
    checkpoint killed between its stream position and its manifest is complete too). Checkpoints
    without a manifest (SAELens's, or this package's before it wrote one) are taken as they are:
    the runner checks the one it resumes from (:func:`validate_checkpoint`).
    """
    scan = CheckpointScan()
    found = _numbered(folder)
    for marker in COMPLETENESS_MARKERS:
        for tokens, path in found:
            if not (path / marker).is_file() or path in scan.rejected:
                continue
            if (path / MANIFEST_FILENAME).is_file() and (problem := checkpoint_problem(path)):
                scan.rejected[path] = problem
            else:
                scan.complete[tokens] = path
        if scan.complete:
            break
    return scan


# -- reading ------------------------------------------------------------------------------------


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside reads with ``weights_only=True``, whatever the environment says.

    For code that is not ours (SAELens's trainer-state load passes no ``weights_only``, so
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` would make it unpickle anything). torch reads these
    variables at each call; they are put back on the way out.
    """
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddedSetting:
    """An SAE setting added after release: what a checkpoint written before it existed trained with."""

    old_value: Any
    #: That value as ``--set sae.KEY=VALUE`` writes it (said when a resume is refused over it).
    as_set: str


#: SAE settings added after release. A checkpoint's saved settings without one trained as this value
#: does, so an absent key compares as it (a resume is refused only when the run now differs from it).
SAE_SETTINGS_ADDED_AFTER_RELEASE: Mapping[str, AddedSetting] = {
    # Gemma Scope 2 knobs, off by default: a config without them trained the Gemma Scope recipe.
    "l0_penalty": AddedSetting("linear", "linear"),
    "target_l0": AddedSetting(None, "None"),
    "frequency_penalty": AddedSetting(0.0, "0"),
    "frequency_cap": AddedSetting(0.1, "0.1"),
    # The frequency penalty's push on active pre-activations: before it, the penalty was θ-only.
    "frequency_input_gradient": AddedSetting(0.0, "0"),
    "matryoshka_widths": AddedSetting(None, "None"),
}

#: SAE settings read only by the frequency penalty: with it off (``frequency_penalty`` 0 before and
#: now) they change nothing, so a resume ignores them (an old run without the penalty resumes
#: whatever the current default of κ).
FREQUENCY_PENALTY_ONLY_SETTINGS = ("frequency_cap", "frequency_input_gradient")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if key in RESUMABLE_CHANGES:
            continue
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _display_key(key: str, sae_names: set[str]) -> str:
    # Per-SAE keys read "saes[*].lr" once, not once per SAE of the ladder.
    for name in sae_names:
        key = key.replace(f"saes.{name}.", "saes[*].")
    return key


def _sae_names(config: Mapping[str, Any]) -> list[str]:
    saes = config.get("saes")
    return sorted(saes) if isinstance(saes, Mapping) else []


def _sae_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The SAE configs in a runner config's dict, by their flattened prefix (``sae``, ``saes.NAME``)."""
    found = {"sae": config["sae"]} if isinstance(config.get("sae"), dict) else {}
    saes = config.get("saes")
    if isinstance(saes, dict):
        found.update({f"saes.{name}": sae for name, sae in saes.items() if isinstance(sae, dict)})
    return found


def _fill_added_settings(saved: dict[str, Any]) -> dict[str, str]:
    """Give each saved SAE config the settings added after it was written, at their old values (in
    place); returns the flattened keys filled in, with the field each is."""
    filled: dict[str, str] = {}
    for prefix, sae in _sae_configs(saved).items():
        for name, added in SAE_SETTINGS_ADDED_AFTER_RELEASE.items():
            if name not in sae:
                sae[name] = added.old_value
                filled[f"{prefix}.{name}"] = name
    return filled


def _drop_inert_settings(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Leave out of the comparison the settings that change nothing in an SAE config of both (in place)."""
    news = _sae_configs(new)
    for prefix, before in _sae_configs(old).items():
        after = news.get(prefix)
        if after is None or before.get("frequency_penalty") != 0 or after.get("frequency_penalty") != 0:
            continue
        for name in FREQUENCY_PENALTY_ONLY_SETTINGS:
            before.pop(name, None)
            after.pop(name, None)


@dataclass
class _SettingsDiff:
    changes: dict[str, str]  # display key: "old -> new"
    unsaved: set[str]  # fields of SAE_SETTINGS_ADDED_AFTER_RELEASE among them that the checkpoint lacks


def _diff_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> _SettingsDiff:
    saved_copy, current_copy = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    filled = _fill_added_settings(saved_copy)
    _drop_inert_settings(saved_copy, current_copy)
    old, new = _flatten(saved_copy), _flatten(current_copy)
    old_names, new_names = _sae_names(saved), _sae_names(current)
    diff = _SettingsDiff({}, set())
    if old_names != new_names:
        diff.changes["saes"] = f"{', '.join(old_names)} -> {', '.join(new_names)}"
    common = set(old_names) & set(new_names)
    apart = [f".{name}." for name in {*old_names, *new_names} - common]  # also in hook_names etc.
    for key in sorted(old.keys() | new.keys()):
        if any(name in f".{key}." for name in apart) or old.get(key, ...) == new.get(key, ...):
            continue
        shown = [json.dumps(v[key]) if key in v else "-" for v in (old, new)]
        if key in filled:
            shown[0] += " (not saved: the checkpoint predates this setting)"
            diff.unsaved.add(filled[key])
        diff.changes.setdefault(_display_key(key, common), " -> ".join(shown))
    return diff


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs (JSON values; ``-`` for absent). Another
    set of SAEs is one entry (their names); the SAEs in both are compared setting by setting. A
    setting added after the checkpoint was written compares as the value it trained with
    (:data:`SAE_SETTINGS_ADDED_AFTER_RELEASE`); the frequency penalty's own settings count only
    while it is on (:data:`FREQUENCY_PENALTY_ONLY_SETTINGS`)."""
    return [f"{key}: {shown}" for key, shown in _diff_settings(saved, current).changes.items()]


def _how_to_resume(unsaved: set[str]) -> str:
    advice = "resume with the settings it was trained with, or train into a new output folder"
    if not unsaved:
        return advice
    sets = " ".join(
        f"--set sae.{name}={SAE_SETTINGS_ADDED_AFTER_RELEASE[name].as_set}" for name in sorted(unsaved)
    )
    return f"it predates {', '.join(sorted(unsaved))}: to resume with the form it was trained with, pass {sets}; or {advice}"


def refuse_changed_settings(checkpoint: Path, current: Mapping[str, Any], shown: int = 8) -> None:
    """Raise :class:`ChangedSettingsError` if ``current`` (a runner config's ``to_dict()``) differs
    from the config ``checkpoint`` was trained with (its ``runner_cfg.json``) in a setting that
    changes training."""
    saved_path = checkpoint / RUNNER_CFG_FILENAME
    if not saved_path.is_file():
        return
    diff = _diff_settings(json.loads(saved_path.read_text()), current)
    changes = [f"{key}: {shown}" for key, shown in diff.changes.items()]
    if not changes:
        return
    more = f" and {len(changes) - shown} more" if len(changes) > shown else ""
    raise ChangedSettingsError(
        f"cannot resume from {checkpoint}: it was trained with other settings ({'; '.join(changes[:shown])}"
        f"{more}); {_how_to_resume(diff.unsaved)}"
    )
