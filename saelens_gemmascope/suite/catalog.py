"""Training presets derived from the suite manifest.

One preset per (model, site, layer, width) of Gemma Scope: its hook and input width come from the
model specs, its token budget from the manifest (4B at 16k, 16B at 1m, 8B otherwise) and its
sparsity ladder from the released average L0s. Nothing here is written out by hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from saelens_gemmascope.directory.manifest import EMBEDDING, SuiteManifest, load_manifest
from saelens_gemmascope.models.spec import ModelSpec
from saelens_gemmascope.recipe.transcoder import (
    SKIP_TRANSCODER_ARCHITECTURE,
    TRANSCODER_ARCHITECTURE,
    paired_hook,
)
from saelens_gemmascope.suite.preset import TrainingPreset

TRANSCODER = "transcoder"
#: The preset-name segment of skip transcoders (site ``transcoder``, affine skip connection): Gemma
#: Scope 2 releases both kinds at every transcoder's layer and width.
SKIP_TRANSCODER = "skip_transcoder"

#: Per-width share of the training budget spent on each calibration probe run (real presets).
CALIBRATION_FRACTION = 20


def preset_name(model: str, site: str, layer: int | None, width: str) -> str:
    """``gemma-2-2b/res/layer_12/width_16k``; ``gemma-2-2b/embedding/width_4k`` for embeddings."""
    where = "" if layer is None else f"/layer_{layer}"
    return f"{model}/{site}{where}/width_{width}"


def _hooks(spec: ModelSpec, site: str, layer: int | None) -> tuple[str, int, str | None]:
    # The manifest's site names are the model spec's; a transcoder also writes (point.output).
    point = spec.hook_point(site, layer)
    output = point.output.tl_hook if point.output is not None else None
    return point.tl_hook, point.d_in, output


def build_preset(
    spec: ModelSpec,
    site: str,
    layer: int | None,
    width: str,
    d_sae: int,
    training_tokens: int,
    l0_targets: Iterable[float],
    *,
    name_site: str | None = None,
    **fields: Any,
) -> TrainingPreset:
    """One preset; ``site`` is a manifest site (``res``, ``mlp``, ``att``, ``transcoder``, ``embedding``).
    ``name_site`` replaces the site in the name (``skip_transcoder``); ``fields`` may set the
    architecture (default: a transcoder's for site ``transcoder``, else the SAE's)."""
    hook_name, d_in, output_hook = _hooks(spec, site, layer)
    if site == TRANSCODER:
        fields.setdefault("architecture", TRANSCODER_ARCHITECTURE)
    return TrainingPreset(
        name=preset_name(spec.name, name_site or site, layer, width),
        model_name=spec.name,
        site=site,
        layer=layer,
        hook_name=hook_name,
        d_in=d_in,
        d_sae=d_sae,
        training_tokens=training_tokens,
        l0_targets=tuple(sorted(float(t) for t in l0_targets)),
        width=width,
        output_hook_name=output_hook,
        **fields,
    )


def is_transcoder_preset(preset: TrainingPreset) -> bool:
    """A preset whose SAEs read one hook and reconstruct another (``output_hook_name``)."""
    return preset.output_hook_name is not None


def stream_key(preset: TrainingPreset) -> str:
    """The key the preset's SAEs train on: its hook, or for a transcoder the paired key of its input
    and output hooks (both read from one forward pass; ``recipe.transcoder.paired_hook``)."""
    if preset.output_hook_name is None:
        return preset.hook_name
    return paired_hook(preset.hook_name, preset.output_hook_name)


def stream_width(preset: TrainingPreset) -> int:
    """Width of one row the preset's SAEs train on (a transcoder's: input and target side by side)."""
    return preset.d_in * 2 if is_transcoder_preset(preset) else preset.d_in


def model_hooks(preset: TrainingPreset) -> dict[str, int]:
    """The model hooks the preset reads, with their widths (a transcoder's: input and output)."""
    hooks = {preset.hook_name: preset.d_in}
    if preset.output_hook_name is not None:
        hooks[preset.output_hook_name] = preset.d_in  # Gemma Scope transcoders: d_out = d_in = d_model
    return hooks


def gemmascope_presets(
    specs: Mapping[str, ModelSpec], manifest: SuiteManifest | None = None
) -> list[TrainingPreset]:
    """One preset per (model, site, layer, width) of the suite, ladders = the released L0s."""
    manifest = manifest or load_manifest()
    ladders: dict[tuple[str, str, str, int | None, str], list[float]] = defaultdict(list)
    info: dict[tuple[str, str, str, int | None, str], tuple[int, int]] = {}
    for variant in manifest.variants():
        key = (variant.release, variant.model, variant.site, variant.layer, variant.width)
        ladders[key].append(float(variant.l0))
        info[key] = (variant.d_sae, variant.training_tokens)
    presets = []
    for key, l0s in ladders.items():
        release, model, site, layer, width = key
        d_sae, tokens = info[key]
        presets.append(
            build_preset(
                specs[model],
                site,
                layer,
                width,
                d_sae,
                tokens,
                l0s,
                release=release,
                calibration_tokens=tokens // CALIBRATION_FRACTION,
                description=f"{release} {width} ({len(l0s)} sparsity variants)",
            )
        )
    return sorted(presets, key=sort_key)


_SITE_ORDER = {site: i for i, site in enumerate(("res", "mlp", "att", TRANSCODER, EMBEDDING))}


def sort_key(preset: TrainingPreset) -> tuple[Any, ...]:
    layer = -1 if preset.layer is None else preset.layer
    # A skip transcoder after the plain one of its layer and width.
    skip = preset.architecture == SKIP_TRANSCODER_ARCHITECTURE
    return (preset.model_name, _SITE_ORDER.get(preset.site, 99), layer, preset.d_sae, skip)
