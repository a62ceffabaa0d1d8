"""Export a JumpReLU SAE or transcoder in the Gemma Scope 2 release layout.

    <root>/{folder}/layer_{L}_width_{W}_l0_{small|medium|big}[_affine]/params.safetensors
    <root>/{folder}/layer_{L}_width_{W}_l0_{...}[_affine]/config.json
    <root>/release.json                                   one entry per exported SAE

``folder`` is the hub's: ``resid_post``, ``attn_out``, ``mlp_out``, ``transcoder`` (``..._all`` for
the every-layer releases). ``params.safetensors`` holds the release's lower-case keys (``w_enc [d_in,
d_sae]``, ``w_dec``, ``b_enc``, ``b_dec``, ``threshold`` and, for a skip transcoder,
``affine_skip_connection = W_skip.T [d_in, d_out]``) in the raw-space form (no pre-encoder bias, no
input normalisation), and ``config.json`` the fields the release's configs have (``architecture:
jump_relu``, ``model_name``, ``hf_hook_point_in``, ``hf_hook_point_out`` for transcoders,
``affine_connection`` for transcoders), with the Hugging Face hook points of the registered model
spec. Both are what this package's ``gemmascope2`` converter reads from a hub folder or a mirror, so
``<root>`` can serve as a mirror's ``<repo_id>`` folder; ``release.json`` (the Gemma Scope export's
index, entries marked ``layout: gemma-scope-2``) lets a local release serve the folder through
``SAE.from_pretrained`` (:mod:`saelens_gemmascope.directory.local`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens.saes.sae import SAE

from saelens_gemmascope.directory.layout import (
    checked_export_params,
    exported_reshape_activations,
    layer_of_hook,
    record_export,
    site_of_hook,
    width_name,
    write_json_atomic,
)
from saelens_gemmascope.directory.npz import SKIP_KEY, ParamsFileError
from saelens_gemmascope.directory.safetensors_params import to_scope2_keys, write_params_safetensors
from saelens_gemmascope.directory.scope2_manifest import AFFINE_SUFFIX, L0_LABELS
from saelens_gemmascope.models.lookup import model_spec
from saelens_gemmascope.models.spec import HookPoint, ModelSpec, UnknownNameError

SCOPE2_LAYOUT = "gemma-scope-2"
PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
#: Site -> the hub folder of its 4-layer sweeps (``_all`` is appended for every-layer releases).
SITE_FOLDERS = {"res": "resid_post", "att": "attn_out", "mlp": "mlp_out", "transcoder": "transcoder"}
ALL_LAYERS_SUFFIX = "_all"


def scope2_sae_name(layer: int, width_label: str, l0_label: str, affine: bool = False) -> str:
    """``layer_{L}_width_{W}_l0_{label}[_affine]``, the release's folder name for one SAE."""
    if l0_label not in L0_LABELS:
        raise ValueError(f"l0_label must be one of {', '.join(L0_LABELS)}, got {l0_label!r}")
    # The name is parsed back by splitting on "_" (scope2_manifest): a label may not hold one.
    if not width_label or any(c in width_label for c in "_/\\"):
        raise ValueError(f"width label {width_label!r} must be non-empty without '_', '/' or '\\'")
    return f"layer_{layer}_width_{width_label}_l0_{l0_label}{AFFINE_SUFFIX if affine else ''}"


def hf_hook_point_name(point: HookPoint) -> str:
    """The Hugging Face hook point as Gemma Scope 2's configs write it (``model.layers.3.output``)."""
    return f"{point.hf_module}.{point.hf_tensor}"


def scope2_config(spec: ModelSpec, point: HookPoint, affine: bool) -> dict[str, Any]:
    """The ``config.json`` of one exported SAE (a transcoder when ``point`` has an output)."""
    cfg: dict[str, Any] = {
        "architecture": "jump_relu",
        "model_name": spec.hf_repo or spec.name,
        "hf_hook_point_in": hf_hook_point_name(point),
    }
    if point.output is not None:
        cfg["hf_hook_point_out"] = hf_hook_point_name(point.output)
        cfg["affine_connection"] = affine
    return cfg


def expected_config_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """What a ``config.json`` beside a Gemma Scope 2 export must say, from its release.json entry."""
    expected: dict[str, Any] = {
        "architecture": "jump_relu",
        "hf_hook_point_in": entry.get("hf_hook_point_in"),
    }
    if entry.get("architecture") in ("jumprelu_transcoder", "jumprelu_skip_transcoder"):
        expected["hf_hook_point_out"] = entry.get("hf_hook_point_out")
        expected["affine_connection"] = entry["architecture"] == "jumprelu_skip_transcoder"
    return {key: value for key, value in expected.items() if value is not None}


def read_config_json(path: Path) -> dict[str, Any]:
    """A Gemma Scope 2 ``config.json`` as a dict; :class:`ParamsFileError` unless a JSON object."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ParamsFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ParamsFileError(f"{path}: not a JSON object")
    return raw


def check_exported_config(path: Path, entry: dict[str, Any]) -> None:
    """Refuse a ``config.json`` that is not valid JSON or disagrees with the export's entry (a file
    from another SAE copied into the folder); a missing one is accepted, as on the hub."""
    if not path.is_file():
        return
    raw = read_config_json(path)
    for key, value in expected_config_fields(entry).items():
        if raw.get(key) != value:
            raise ParamsFileError(
                f"{path}: {key} is {raw.get(key)!r}, but release.json's {entry['id']!r} says {value!r}; "
                "the folder holds another SAE's files"
            )


@dataclass(frozen=True)
class ExportedScope2SAE:
    """Where one Gemma Scope 2 export went, its ``config.json`` and its ``release.json`` entry."""

    sae_id: str
    params_path: Path
    config_path: Path
    config: dict[str, Any]
    entry: dict[str, Any]


def _is_transcoder(sae: SAE[Any]) -> bool:
    return getattr(sae.cfg, "d_out", None) is not None


def _resolve_site(sae: SAE[Any], site: str | None, hook_name: str | None) -> str:
    if site is None:
        site = "transcoder" if _is_transcoder(sae) else site_of_hook(hook_name) if hook_name else None
    if site not in SITE_FOLDERS:
        raise ValueError(
            f"cannot export to Gemma Scope 2's layout at site {site!r} (hook {hook_name!r}): "
            f"pass site= one of {', '.join(SITE_FOLDERS)}"
        )
    if (site == "transcoder") != _is_transcoder(sae):
        raise ValueError(f"site {site!r} does not fit a {type(sae).__name__}: transcoders go to 'transcoder'")
    return site


def _resolve_model(model_name: str | None) -> ModelSpec:
    if model_name is None:
        raise ValueError("the model is unknown: pass model_name= (the SAE's metadata has none)")
    try:
        return model_spec(model_name)
    except UnknownNameError as err:
        raise ValueError(
            f"cannot export for {model_name!r}: Gemma Scope 2's config.json names the model's Hugging Face "
            f"hook points, which come from a registered model spec ({err})"
        ) from None


def _check_fits(sae: SAE[Any], point: HookPoint, hook_name: str | None) -> None:
    """The SAE must read (and write) where the spec's site is, at its width."""
    where = f"{point.model} site {point.site!r} layer {point.layer}"
    if hook_name is not None and hook_name not in (point.tl_hook, point.bridge_hook):
        raise ValueError(f"the SAE reads {hook_name!r}, but {where} is {point.tl_hook!r}")
    if sae.cfg.d_in != point.d_in:
        raise ValueError(f"the SAE's d_in is {sae.cfg.d_in}, but {where} is {point.d_in} wide")
    if point.output is not None:
        d_out = sae.cfg.d_out  # type: ignore[attr-defined]
        hook_out = getattr(sae.cfg.metadata, "hook_name_out", None)
        if d_out != point.output.d_in:
            raise ValueError(
                f"the transcoder's d_out is {d_out}, but {where} writes {point.output.d_in} wide"
            )
        if hook_out is not None and hook_out not in (point.output.tl_hook, point.output.bridge_hook):
            raise ValueError(
                f"the transcoder writes {hook_out!r}, but {where} writes {point.output.tl_hook!r}"
            )


def export_gemmascope2_sae(
    sae: SAE[Any],
    root: str | Path,
    *,
    l0_label: str,
    width_label: str | None = None,
    site: str | None = None,
    layer: int | None = None,
    model_name: str | None = None,
    affine: bool | None = None,
    average_l0: float | None = None,
    all_layers: bool = False,
    sae_name: str | None = None,
) -> ExportedScope2SAE:
    """Write ``sae`` (a JumpReLU SAE, ``jumprelu_transcoder`` or ``jumprelu_skip_transcoder``) as
    ``<root>/{folder}/layer_{L}_width_{W}_l0_{l0_label}[_affine]/`` and record it in
    ``<root>/release.json`` (an entry with the same id is replaced). Non-finite weights or L0 and
    negative thresholds are refused before anything is written; each file is written to a temporary
    name and renamed, and release.json last, so a crash never lists a half-written export.

    ``l0_label`` is the release's ``small`` / ``medium`` / ``big``; ``width_label`` defaults to the
    release's width name (``16k``, ``65k``, ``262k``, ``1m``; other widths are their exact count).
    ``site``, ``layer`` and ``model_name`` default to the SAE's metadata (hook name, model); the
    model must be registered, since the Hugging Face hook points come from its spec. ``affine``
    (default: whether the SAE has ``W_skip``) must agree with the SAE: an affine folder holds a skip
    transcoder. ``average_l0`` (default ``metadata.l0``) is recorded in release.json. ``all_layers``
    writes to the every-layer releases' folder (``resid_post_all``...).
    """
    metadata = sae.cfg.metadata
    name = sae_name or "the SAE"
    hook_name = metadata.hook_name
    model_name = model_name or metadata.model_name
    average_l0 = metadata.l0 if average_l0 is None else average_l0
    if average_l0 is None or not math.isfinite(average_l0):
        raise ValueError(f"cannot export {name}: its average L0 is {average_l0} (pass average_l0=)")
    has_skip = hasattr(sae, SKIP_KEY)
    affine = has_skip if affine is None else affine
    if affine != has_skip:
        raise ValueError(
            f"affine={affine} does not fit {name}: an affine folder holds a skip transcoder (W_skip), "
            f"and this one {'has' if has_skip else 'has no'} W_skip"
        )
    site = _resolve_site(sae, site, hook_name)
    layer = layer if layer is not None else layer_of_hook(hook_name) if hook_name else None
    if layer is None:
        raise ValueError(f"cannot tell the layer from hook {hook_name!r}: pass layer=")
    spec = _resolve_model(model_name)
    point = spec.hook_point(site, layer)
    _check_fits(sae, point, hook_name)
    params = checked_export_params(sae, name)

    folder = SITE_FOLDERS[site] + (ALL_LAYERS_SUFFIX if all_layers else "")
    width_label = width_label or width_name(sae.cfg.d_sae)
    sae_id = f"{folder}/{scope2_sae_name(layer, width_label, l0_label, affine)}"
    root = Path(root)
    config = scope2_config(spec, point, affine)
    params_path = write_params_safetensors(root / sae_id / PARAMS_FILE, to_scope2_keys(params))
    config_path = root / sae_id / CONFIG_FILE
    write_json_atomic(config_path, config)
    labels = {"width": width_label, "l0_label": l0_label}
    entry = _entry(sae, sae_id, point, config, labels, float(average_l0), model_name or spec.name)
    if sae_name is not None:
        entry["sae_name"] = sae_name
    record_export(root, entry)
    return ExportedScope2SAE(sae_id, params_path, config_path, config, entry)


def _entry(
    sae: SAE[Any],
    sae_id: str,
    point: HookPoint,
    config: dict[str, Any],
    labels: dict[str, str],
    average_l0: float,
    model_name: str,
) -> dict[str, Any]:
    """The release.json entry: the Gemma Scope export's fields, plus what the layout adds."""
    metadata = sae.cfg.metadata
    entry: dict[str, Any] = {
        "id": sae_id,
        "path": sae_id,
        "layout": SCOPE2_LAYOUT,
        "model_name": model_name,
        "hook_name": point.tl_hook,
        "hook_head_index": metadata.hook_head_index,
        "site": point.site,
        "layer": point.layer,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        **labels,
        "average_l0": average_l0,
        "reshape_activations": exported_reshape_activations(point.tl_hook, sae.cfg.reshape_activations),
        "context_size": metadata.context_size,
        "prepend_bos": metadata.prepend_bos,
        "input_scale": getattr(metadata, "gemmascope_input_scale", None),
        "architecture": "jumprelu",
        "hf_hook_point_in": config["hf_hook_point_in"],
    }
    if point.output is not None:
        entry["architecture"] = (
            "jumprelu_skip_transcoder" if config["affine_connection"] else "jumprelu_transcoder"
        )
        entry["hook_name_out"] = point.output.tl_hook
        entry["d_out"] = int(sae.cfg.d_out)  # type: ignore[attr-defined]
        entry["hf_hook_point_out"] = config["hf_hook_point_out"]
    return entry
