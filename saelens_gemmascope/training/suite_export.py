"""Export a finished pass to the Gemma Scope layout and register the exports as local releases.

Each (model, site) gets its own release folder, ``<root>/release/<model>-<site>/``, as on the hub
(one repository per site), so that ``layer_{L}/width_{W}/average_l0_{K}`` never collides between
sites. Embedding SAEs go to the residual release, as in Gemma Scope.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from saelens_gemmascope.directory.local import register_local_release
from saelens_gemmascope.directory.manifest import EMBEDDING
from saelens_gemmascope.training.export import RELEASE_FILE, export_gemmascope_sae, sae_folder
from saelens_gemmascope.training.preset import TrainingPreset
from saelens_gemmascope.training.preset_config import PresetSAE
from saelens_gemmascope.training.suite import TrainedSAE

RELEASE_DIR = "release"


def release_dir(root: Path, preset: TrainingPreset) -> Path:
    site = "res" if preset.site == EMBEDDING else preset.site
    return root / RELEASE_DIR / f"{preset.model_name}-{site}"


def local_release_name(root: Path, release_folder: Path) -> str:
    """The name a suite's release folder is registered under: ``local/<root name>/<model>-<site>``."""
    return f"local/{root.name}/{release_folder.name}"


def export_pass(
    root: Path,
    pass_id: str,
    saes: Sequence[PresetSAE],
    trained: Mapping[str, Any],
    progress: Callable[[str], None] = print,
) -> list[TrainedSAE]:
    """Export every SAE of a pass; an SAE whose rounded L0 lands on a folder another SAE of this
    pass already took (same layer and width) is kept in SAELens format only."""
    taken: dict[tuple[Path, str], str] = {}
    results = []
    for sae in saes:
        model = trained[sae.name]
        preset = sae.preset
        l0 = float(model.cfg.metadata.l0)
        target_root = release_dir(root, preset)
        folder = sae_folder(preset.layer, int(model.cfg.d_sae), l0)
        export_id: str | None = None
        if (target_root, folder) in taken:
            progress(
                f"warning: {sae.name} (L0 {l0:.1f}) would overwrite {taken[target_root, folder]} at {folder}; not exported"
            )
        else:
            exported = export_gemmascope_sae(
                model, target_root, average_l0=l0, layer=preset.layer, site=preset.site,
                model_name=preset.model_name, hook_name=preset.hook_name,
            )  # fmt: skip
            export_id = exported.sae_id
            taken[target_root, folder] = sae.name
        results.append(
            TrainedSAE(
                name=sae.name,
                preset=preset.name,
                target_l0=sae.target_l0,
                l0_coefficient=sae.l0_coefficient,
                l0=l0,
                saelens_path=str(root / "saes" / pass_id / sae.name),
                export_id=export_id,
                release=export_id and local_release_name(root, target_root),
            )
        )
    return results


def register_releases(root: Path) -> list[str]:
    """Register every release folder under ``root`` as ``local/<root name>/<model>-<site>``."""
    names = []
    for folder in sorted((root / RELEASE_DIR).glob(f"*/{RELEASE_FILE}")):
        names.append(
            register_local_release(folder.parent, release_name=local_release_name(root, folder.parent))
        )
    return names
