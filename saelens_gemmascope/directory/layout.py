"""Export a trained JumpReLU SAE in the Gemma Scope release layout.

    <root>/layer_{L}/width_{W}/average_l0_{K}/params.npz     W_enc, W_dec, b_enc, b_dec, threshold
    <root>/release.json                                      one entry per exported SAE

Width names follow the release where the release has a name for the width (powers of two from
2^12: 4k, 16k, 32k, 65k, 131k, 262k, 524k; 2^20 is 1m); any other width is written as its exact
latent count (``width_512``), so two different widths never share a folder. ``K`` is the average
L0 rounded to an integer, as in the release. Embedding SAEs (``hook_embed``) go under
``embedding/width_{W}/...`` as in the release.

The exported weights are the raw-space form the release uses: ``pre = x @ W_enc + b_enc``, no
pre-encoder bias and no input normalisation (an SAE saved with ``apply_b_dec_to_input`` has it
folded into ``b_enc``, which is exact).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import SAE

from saelens_gemmascope.directory.npz import PARAM_KEYS, SKIP_KEY, expected_param_shapes, write_params_npz

RELEASE_FILE = "release.json"
RELEASE_FORMAT = "saelens-gemmascope/local-release"
RELEASE_FORMAT_VERSION = 1
#: The files an export folder holds: Gemma Scope's ``params.npz``; Gemma Scope 2's pair.
EXPORTED_FILES = ("params.npz", "params.safetensors", "config.json")

_RELEASE_WIDTHS = {2**20: "1m", **{2**p: f"{2**p // 1000}k" for p in range(12, 20)}}
_LAYER_IN_HOOK = re.compile(r"^blocks\.(\d+)\.")
_SITE_BY_HOOK_SUFFIX = {
    "hook_resid_post": "res",
    "hook_mlp_out": "mlp",
    "attn.hook_z": "att",
}


def width_name(d_sae: int) -> str:
    """The release's width name for ``d_sae`` (``16k``), or the exact count (``512``)."""
    return _RELEASE_WIDTHS.get(d_sae, str(d_sae))


def site_of_hook(hook_name: str) -> str | None:
    """Gemma Scope's site name for a TransformerLens hook, or None when it is not a release site."""
    if hook_name == "hook_embed":
        return "embedding"
    for suffix, site in _SITE_BY_HOOK_SUFFIX.items():
        if _LAYER_IN_HOOK.match(hook_name) and hook_name.endswith("." + suffix):
            return site
    return None


def layer_of_hook(hook_name: str) -> int | None:
    match = _LAYER_IN_HOOK.match(hook_name)
    return int(match.group(1)) if match else None


def exported_reshape_activations(hook_name: str | None, reshape_activations: str) -> str:
    """``hook_z`` for an SAE on ``attn.hook_z``, whatever it was trained with.

    SAELens trains on hook_z flattened (mode ``none``), but a ``HookedSAETransformer``'s hook_z is
    ``(batch, pos, head, d_head)``: ``hook_z`` mode is what lets ``model.add_sae`` splice the
    exported SAE (SAELens's own loaders set it for hook_z SAEs; the bridge switches it off itself).
    """
    if hook_name is not None and hook_name.endswith("hook_z"):
        return "hook_z"
    return reshape_activations


def sae_folder(layer: int | None, d_sae: int, average_l0: float) -> str:
    """``layer_{L}/width_{W}/average_l0_{K}`` (``embedding/...`` when ``layer`` is None)."""
    top = "embedding" if layer is None else f"layer_{layer}"
    return f"{top}/width_{width_name(d_sae)}/average_l0_{round(average_l0)}"


def gemmascope_params(sae: SAE[Any]) -> dict[str, torch.Tensor]:
    """The five release arrays of a JumpReLU SAE (six for a skip transcoder: ``W_skip``), in the
    raw-space form the release uses."""
    if sae.cfg.normalize_activations != "none":
        raise ValueError(
            f"cannot export an SAE with normalize_activations={sae.cfg.normalize_activations!r}: fold the "
            "normalisation into the weights first (SAELens's trainers do this at the end of training)"
        )
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in sae.state_dict().items()}
    process = getattr(sae, "process_state_dict_for_saving_inference", None)
    if callable(process):
        process(state)  # e.g. a log-parametrised threshold becomes the threshold itself
    keys = (*PARAM_KEYS, SKIP_KEY) if SKIP_KEY in state else PARAM_KEYS
    extra = sorted(set(state) - set(keys))
    missing = sorted(set(keys) - set(state))
    if extra or missing:
        raise ValueError(
            f"not a plain JumpReLU SAE (architecture {sae.cfg.architecture()!r}): "
            f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}"
        )
    if sae.cfg.apply_b_dec_to_input:
        # (x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc)
        state["b_enc"] = state["b_enc"] - state["b_dec"] @ state["W_enc"]
    return {key: state[key] for key in keys}


def checked_export_params(sae: SAE[Any], name: str) -> dict[str, torch.Tensor]:
    """:func:`gemmascope_params`, refused before anything is written if non-finite, a threshold is
    negative, or a shape is not the SAE's (both layouts' exports use it)."""
    params = gemmascope_params(sae)
    not_finite = [key for key, value in params.items() if not bool(torch.isfinite(value).all())]
    if not_finite:
        raise ValueError(f"cannot export {name}: non-finite values in {', '.join(not_finite)}")
    if bool((params["threshold"] < 0).any()):
        raise ValueError(f"cannot export {name}: negative JumpReLU thresholds")
    expected = expected_param_shapes(
        sae.cfg.d_in, sae.cfg.d_sae, getattr(sae.cfg, "d_out", None), skip=SKIP_KEY in params
    )
    for key, shape in expected.items():
        if tuple(params[key].shape) != shape:
            raise ValueError(
                f"cannot export {name}: {key} has shape {tuple(params[key].shape)}, expected {shape}"
            )
    return params


def _transcoder_fields(sae: SAE[Any]) -> dict[str, Any]:
    """A transcoder's own entry fields: it writes ``hook_name_out`` (``d_out`` wide) and loads as
    SAELens's ``jumprelu_transcoder``, as the released Gemma Scope transcoders do, or with a
    ``W_skip`` (written as a sixth array) as ``jumprelu_skip_transcoder``, as Gemma Scope 2's affine
    ones do."""
    hook_name_out = getattr(sae.cfg.metadata, "hook_name_out", None)
    d_out = getattr(sae.cfg, "d_out", None)
    if hook_name_out is None or d_out is None:
        return {}
    architecture = "jumprelu_skip_transcoder" if hasattr(sae, SKIP_KEY) else "jumprelu_transcoder"
    return {"architecture": architecture, "hook_name_out": hook_name_out, "d_out": int(d_out)}


@dataclass(frozen=True)
class ExportedSAE:
    """Where one export went and the ``release.json`` entry describing it."""

    sae_id: str
    params_path: Path
    entry: dict[str, Any]


def read_release_manifest(root: str | Path) -> dict[str, Any]:
    """The ``release.json`` of an export folder (an empty manifest when there is none yet), validated:
    a malformed file or entry (a path leaving the folder, a string for a width, a duplicate id, a
    missing field) raises :class:`~saelens_gemmascope.directory.release_manifest.ReleaseManifestError`
    naming the file, the entry and the field."""
    from saelens_gemmascope.directory.release_manifest import ReleaseManifestError, check_release_manifest

    path = Path(root) / RELEASE_FILE
    if not path.is_file():
        return {"format": RELEASE_FORMAT, "version": RELEASE_FORMAT_VERSION, "saes": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReleaseManifestError(f"{path}: not valid JSON ({err}); fix or delete it") from None
    return check_release_manifest(path, data, expected_format=RELEASE_FORMAT, version=RELEASE_FORMAT_VERSION)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file renamed into place (a crash never
    leaves a half-written file under the real name)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(root / RELEASE_FILE, manifest)


def record_export(root: Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` to ``<root>/release.json``, replacing the entry with the same id."""
    manifest = read_release_manifest(root)
    manifest["saes"] = [e for e in manifest["saes"] if e["id"] != entry["id"]] + [entry]
    manifest["saes"].sort(key=lambda e: e["id"])
    _write_manifest(root, manifest)


def export_gemmascope_sae(
    sae: SAE[Any],
    root: str | Path,
    *,
    average_l0: float | None = None,
    layer: int | None = None,
    site: str | None = None,
    model_name: str | None = None,
    hook_name: str | None = None,
    sae_name: str | None = None,
    folder_l0: float | None = None,
) -> ExportedSAE:
    """Write ``sae`` as ``<root>/layer_{L}/width_{W}/average_l0_{K}/params.npz`` and record it in
    ``<root>/release.json`` (an entry with the same id is replaced; ``sae_name``, the trained SAE's
    name, is recorded with it so that a suite can tell whose export a folder holds). Non-finite
    weights or L0 are refused before anything is written.

    Unset arguments come from the SAE's metadata: ``average_l0`` from ``metadata.l0`` (SAELens's
    mean L0 over the last sparsity window, set at the end of training), ``hook_name`` and
    ``model_name`` from the runner, ``layer`` and ``site`` from the hook name. ``folder_l0`` names the
    folder (``average_l0_{round(folder_l0)}``; a suite passes the target L0) while ``average_l0``, the
    measured one, stays in ``release.json``; default: ``average_l0``.
    """
    metadata = sae.cfg.metadata
    hook_name = hook_name or metadata.hook_name
    model_name = model_name or metadata.model_name
    if average_l0 is None:
        average_l0 = metadata.l0
    if average_l0 is None:
        raise ValueError("average_l0 is unknown: pass it (the SAE's metadata has no l0)")
    if not math.isfinite(average_l0):
        raise ValueError(f"cannot export {sae_name or 'the SAE'}: its average L0 is {average_l0}")
    if layer is None and hook_name is not None:
        layer = layer_of_hook(hook_name)
    if site is None and hook_name is not None:
        site = site_of_hook(hook_name)
    if layer is None and site != "embedding":
        raise ValueError(f"cannot tell the layer from hook {hook_name!r}: pass layer=")

    params = checked_export_params(sae, sae_name or "the SAE")
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae

    root = Path(root)
    sae_id = sae_folder(layer, d_sae, average_l0 if folder_l0 is None else folder_l0)
    params_path = write_params_npz(root / sae_id / "params.npz", params)
    entry: dict[str, Any] = {
        "id": sae_id,
        "path": sae_id,
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_head_index": metadata.hook_head_index,
        "site": site,
        "layer": layer,
        "d_in": d_in,
        "d_sae": d_sae,
        "width": width_name(d_sae),
        "average_l0": float(average_l0),
        "reshape_activations": exported_reshape_activations(hook_name, sae.cfg.reshape_activations),
        "context_size": metadata.context_size,
        "prepend_bos": metadata.prepend_bos,
        "input_scale": metadata.gemmascope_input_scale,
    }
    if sae_name is not None:
        entry["sae_name"] = sae_name
    entry.update(_transcoder_fields(sae))
    record_export(root, entry)
    return ExportedSAE(sae_id=sae_id, params_path=params_path, entry=entry)


def remove_exports(root: str | Path, sae_ids: Collection[str]) -> None:
    """Drop ``sae_ids`` from ``<root>/release.json``, then delete their files (``params.npz``, or a
    Gemma Scope 2 export's ``params.safetensors`` and ``config.json``: a crash in between leaves an
    unlisted file, never a listed one that is missing) and emptied folders."""
    root = Path(root)
    manifest = read_release_manifest(root)
    removed = [e for e in manifest["saes"] if e["id"] in sae_ids]
    manifest["saes"] = [e for e in manifest["saes"] if e["id"] not in sae_ids]
    _write_manifest(root, manifest)
    for entry in removed:
        folder = root / entry["path"]
        for name in EXPORTED_FILES:
            (folder / name).unlink(missing_ok=True)
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
