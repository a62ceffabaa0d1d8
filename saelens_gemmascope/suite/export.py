"""Export a finished pass to the Gemma Scope (or Gemma Scope 2) layout and register the exports as
local releases.

Each (model, site) gets its own release folder, ``<root>/release/<model>-<site>/``, as on the hub
(one repository per site), so that ``layer_{L}/width_{W}/average_l0_{K}`` never collides between
sites. Embedding SAEs go to the residual release, as in Gemma Scope.

``K`` is the SAE's target L0 (``average_l0_24`` for a target of 24, whatever L0 training reached),
so a folder's name says which rung of the ladder it holds and stays put between runs; the measured
L0 is recorded in ``release.json`` (``average_l0``). An SAE trained with an explicit λ has no
target and is named by its measured L0, as the release names its SAEs.

Two SAEs of one layer and width whose naming L0s round to the same integer would share a folder.
The rule, over every pass of a run and the exports already in the output folder: the first SAE
to take a folder keeps it; a later one is not exported (it stays in SAELens format under
``saes/``), a warning says so and the summary records why. Each ``release.json`` entry records
the SAE it holds (``sae_name``), so a resumed run re-exports its own SAEs in place. (A suffixed
folder, ``average_l0_12_b``, would keep both, but no longer be laid out as the release is.)

Gemma Scope 2 presets export in Gemma Scope 2's layout instead, one release folder per model as on
the hub (one repository per model): ``<root>/release/<model>/resid_post/layer_13_width_16k_l0_small/``
(``params.safetensors`` + ``config.json``), the L0 label being the one the release gives the SAE's
target (:attr:`TrainingPreset.scope2_labels`). A target released in both the 4-layer sweep and the
every-layer release is exported to both folders (``resid_post/`` and ``resid_post_all/``), the same
SAE twice, as the hub holds it; ``release.json`` records the measured L0. The same ledger rules hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelens_gemmascope.directory.layout import (
    RELEASE_FILE,
    export_gemmascope_sae,
    read_release_manifest,
    remove_exports,
    sae_folder,
    width_name,
)
from saelens_gemmascope.directory.local import local_release_name, register_local_release
from saelens_gemmascope.directory.manifest import EMBEDDING
from saelens_gemmascope.directory.scope2_layout import (
    ALL_LAYERS_SUFFIX,
    SITE_FOLDERS,
    export_gemmascope2_sae,
    scope2_sae_name,
)
from saelens_gemmascope.recipe.finite_guard import NonFiniteTrainingError, nonfinite_tensors
from saelens_gemmascope.recipe.transcoder import SKIP_TRANSCODER_ARCHITECTURE
from saelens_gemmascope.suite.configs import PresetSAE
from saelens_gemmascope.suite.preset import Scope2Label, TrainingPreset
from saelens_gemmascope.suite.results import TrainedSAE

RELEASE_DIR = "release"


def release_dir(root: Path, preset: TrainingPreset) -> Path:
    if preset.fixed_lambda:  # Gemma Scope 2's recipe: its layout, one release folder per model
        return root / RELEASE_DIR / preset.model_name
    site = "res" if preset.site == EMBEDDING else preset.site
    return root / RELEASE_DIR / f"{preset.model_name}-{site}"


def scope2_width_label(preset: TrainingPreset, d_sae: int) -> str:
    """The width an export of ``preset``'s SAE of ``d_sae`` latents is named by: the preset's label
    when the SAE has the preset's width, else the width it was trained at (``--set d_sae=4096`` on a
    16k preset gives ``width_4096``: the folder says what it holds, as a Gemma Scope export does)."""
    return preset.width if d_sae == preset.d_sae and preset.width else width_name(d_sae)


def scope2_export_id(preset: TrainingPreset, label: Scope2Label, d_sae: int) -> str:
    """The folder (and local-release id) a Gemma Scope 2 preset's SAE of ``label`` and ``d_sae``
    latents goes to, e.g. ``resid_post/layer_1_width_256_l0_small`` (what ``export_gemmascope2_sae``
    names it given :func:`scope2_width_label`)."""
    if preset.layer is None or preset.site not in SITE_FOLDERS:
        raise ValueError(f"{preset.name}: Gemma Scope 2's layout has no folder for site {preset.site!r}")
    folder = SITE_FOLDERS[preset.site] + (ALL_LAYERS_SUFFIX if label.all_layers else "")
    affine = preset.architecture == SKIP_TRANSCODER_ARCHITECTURE
    width = scope2_width_label(preset, d_sae)
    return f"{folder}/{scope2_sae_name(preset.layer, width, label.l0_label, affine)}"


@dataclass
class ExportLedger:
    """Which SAE holds each export folder, over every pass of one run.

    ``planned``: the names of every SAE the run trains; an export an earlier run made of one of them
    is stale (this run trains it again) and gives way. ``claimed``: (release folder, SAE id) -> the
    SAE of this run exported there.
    """

    root: Path
    planned: frozenset[str]
    claimed: dict[tuple[Path, str], str] = field(default_factory=dict)

    def holder(self, release_folder: Path, sae_id: str, name: str) -> str | None:
        """The SAE that keeps the folder ``sae_id`` from the SAE ``name``, described; None when
        ``name`` may export there (free, its own, or a stale export of this run's SAEs)."""
        claimant = self.claimed.get((release_folder, sae_id))
        if claimant is not None:
            return None if claimant == name else f"{claimant} (exported before it in this run)"
        entry = _entries_by_id(release_folder).get(sae_id)
        if entry is None or entry.get("sae_name") == name or entry.get("sae_name") in self.planned:
            return None
        earlier = entry.get("sae_name") or "an SAE that did not record its name"
        return f"{earlier} (exported by an earlier run into this output folder)"

    def claim(self, release_folder: Path, sae_ids: Collection[str], name: str) -> None:
        """Record ``name``'s exports at ``sae_ids`` (every folder it holds: a Gemma Scope 2 target
        released in two releases has two) and drop its stale exports elsewhere. All of an SAE's
        folders are claimed together, after all are written: claiming one at a time would drop
        the others' earlier exports as stale, and a run stopped in between would leave them missing."""
        for sae_id in sae_ids:
            self.claimed[release_folder, sae_id] = name
        stale = [
            i
            for i, e in _entries_by_id(release_folder).items()
            if e.get("sae_name") == name and self.claimed.get((release_folder, i)) != name
        ]
        if stale:
            remove_exports(release_folder, stale)

    def drop_stale(self, progress: Callable[[str], None]) -> None:
        """Remove what earlier runs exported of this run's SAEs and this run did not export again
        (so that the release holds what the summary lists)."""
        for manifest in sorted((self.root / RELEASE_DIR).glob(f"*/{RELEASE_FILE}")):
            folder = manifest.parent
            stale = [
                sae_id
                for sae_id, entry in _entries_by_id(folder).items()
                if entry.get("sae_name") in self.planned and (folder, sae_id) not in self.claimed
            ]
            if stale:
                listed = ", ".join(stale)
                progress(f"removing {len(stale)} stale export(s) of an earlier run from {folder}: {listed}")
                remove_exports(folder, stale)


def _entries_by_id(release_folder: Path) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in read_release_manifest(release_folder)["saes"]}


def export_folder_l0(sae: PresetSAE, measured_l0: float) -> float:
    """The L0 an export folder is named by: the target when the SAE has one, else the measured L0."""
    return measured_l0 if sae.target_l0 is None else float(sae.target_l0)


def check_finite(pass_id: str, saes: Sequence[PresetSAE], trained: Mapping[str, Any], root: Path) -> None:
    """Refuses a pass with an SAE whose weights or L0 are not finite, before anything is exported."""
    bad = []
    for sae in saes:
        model = trained[sae.name]
        tensors = nonfinite_tensors(model.state_dict().items())
        l0 = float(model.cfg.metadata.l0)
        problems = tensors + ([f"L0 {l0}"] if not math.isfinite(l0) else [])
        if problems:
            bad.append(f"{sae.name} ({', '.join(problems)})")
    if bad:
        raise NonFiniteTrainingError(
            f"refusing to export {pass_id}: non-finite values in SAE(s) {'; '.join(bad)} (saved under "
            f"{root / 'saes' / pass_id}); nothing of the pass exported or registered: retrain it"
        )


def export_pass(
    root: Path,
    pass_id: str,
    saes: Sequence[PresetSAE],
    trained: Mapping[str, Any],
    progress: Callable[[str], None] = print,
    ledger: ExportLedger | None = None,
) -> list[TrainedSAE]:
    """Export every SAE of a pass (none if any is not finite), named by target L0 (measured L0
    without a target; see the module docstring); an SAE whose rounded L0 lands on a folder another SAE holds (same layer and width; see :class:`ExportLedger`) is kept in SAELens
    format only. ``ledger`` carries the folders taken over a run's passes (default: this pass's)."""
    check_finite(pass_id, saes, trained, root)
    ledger = ledger or ExportLedger(root, frozenset(s.name for s in saes))
    results = []
    for sae in saes:
        model = trained[sae.name]
        preset = sae.preset
        l0 = float(model.cfg.metadata.l0)
        target_root = release_dir(root, preset)
        if preset.fixed_lambda:
            results.append(_export_scope2(root, pass_id, sae, model, l0, ledger, progress))
            continue
        folder_l0 = export_folder_l0(sae, l0)
        folder = sae_folder(preset.layer, int(model.cfg.d_sae), folder_l0)
        export_id: str | None = None
        note: str | None = None
        holder = ledger.holder(target_root, folder, sae.name)
        if holder is not None:
            note = f"{folder} holds {holder}; kept in SAELens format only"
            progress(f"warning: {sae.name} (L0 {l0:.1f}) not exported: {note}")
        else:
            exported = export_gemmascope_sae(
                model, target_root, average_l0=l0, layer=preset.layer, site=preset.site,
                model_name=preset.model_name, hook_name=preset.hook_name, sae_name=sae.name,
                folder_l0=folder_l0,
            )  # fmt: skip
            export_id = exported.sae_id
            ledger.claim(target_root, [export_id], sae.name)
        results.append(_trained_sae(root, pass_id, sae, l0, export_id, note))
    return results


def _trained_sae(
    root: Path, pass_id: str, sae: PresetSAE, l0: float, export_id: str | None, note: str | None
) -> TrainedSAE:
    """What the run's summary records of one SAE (its release: the preset's folder, if exported)."""
    return TrainedSAE(
        name=sae.name,
        preset=sae.preset.name,
        target_l0=sae.target_l0,
        l0_coefficient=sae.l0_coefficient,
        l0=l0,
        saelens_path=str(root / "saes" / pass_id / sae.name),
        export_id=export_id,
        release=export_id and local_release_name(release_dir(root, sae.preset)),
        note=note,
    )


def _export_scope2(
    root: Path,
    pass_id: str,
    sae: PresetSAE,
    model: Any,
    l0: float,
    ledger: ExportLedger,
    progress: Callable[[str], None],
) -> TrainedSAE:
    """Export one Gemma Scope 2 preset's SAE to every folder its target was released in."""
    preset = sae.preset
    target_root = release_dir(root, preset)
    labels = preset.labels_of(sae.target_l0) if sae.target_l0 is not None else ()
    d_sae = int(model.cfg.d_sae)
    width = scope2_width_label(preset, d_sae)
    exported_ids: list[str] = []
    notes: list[str] = []
    if not labels:
        notes.append(f"target L0 {sae.target_l0} has no Gemma Scope 2 label in {preset.name}")
    for label in labels:
        sae_id = scope2_export_id(preset, label, d_sae)
        holder = ledger.holder(target_root, sae_id, sae.name)
        if holder is not None:
            notes.append(f"{sae_id} holds {holder}")
            continue
        exported = export_gemmascope2_sae(
            model, target_root, l0_label=label.l0_label, width_label=width, site=preset.site,
            layer=preset.layer, model_name=preset.model_name, average_l0=l0,
            all_layers=label.all_layers, sae_name=sae.name,
        )  # fmt: skip
        exported_ids.append(exported.sae_id)
    if exported_ids:
        ledger.claim(target_root, exported_ids, sae.name)
    note = None
    if notes:
        note = "; ".join(notes) + ("; kept in SAELens format only" if not exported_ids else "")
        progress(f"warning: {sae.name} (L0 {l0:.1f}): {note}")
    elif len(exported_ids) > 1:
        note = f"also exported as {', '.join(exported_ids[1:])}"
    return _trained_sae(root, pass_id, sae, l0, exported_ids[0] if exported_ids else None, note)


def register_releases(root: Path) -> list[str]:
    """Register every release folder under ``root`` (``local/<root name>/<model>-<site>``, a short
    hash of the path added when another folder holds that name) and record it in the persistent
    registry, so that the printed name loads in any later process."""
    return [
        register_local_release(folder.parent)
        for folder in sorted((root / RELEASE_DIR).glob(f"*/{RELEASE_FILE}"))
    ]
