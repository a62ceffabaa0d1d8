"""Load an SAE folder SAELens saved (``cfg.json`` + ``sae_weights.safetensors``), with one clear error.

``SAE.load_from_disk`` reports a damaged or foreign folder by whatever fails first inside it (a bare
``KeyError: 'dtype'`` for an incomplete ``cfg.json``, a safetensors header error for a truncated
weights file). Every command that takes a saved folder (``eval``, ``finetune-kl``, ``train
--init-from``) loads it here instead, so the user reads which folder, which file and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

SAE_CONFIG_FILE = "cfg.json"
SAE_WEIGHTS_FILE = "sae_weights.safetensors"

#: What SAELens raises on a damaged folder: a missing or mistyped config field, unreadable JSON, a
#: truncated or foreign weights file, tensors of the wrong shape.
_LOAD_ERRORS = (KeyError, ValueError, TypeError, OSError, RuntimeError, json.JSONDecodeError, SafetensorError)


class SavedSAEError(ValueError):
    """A folder that does not hold an SAE SAELens can load."""


def load_saved_sae(folder: str | Path, device: str = "cpu") -> Any:
    """``SAE.load_from_disk(folder)``, or :class:`SavedSAEError` naming the folder and the fault."""
    from sae_lens import SAE

    path = Path(folder).expanduser()
    missing = [name for name in (SAE_CONFIG_FILE, SAE_WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise SavedSAEError(
            f"{path} is not an SAE folder saved by SAELens: no {' or '.join(missing)} in it (a training "
            f"run's SAEs are under <output>/saes/<pass>/<preset>/<sae>/)"
        )
    try:
        return SAE.load_from_disk(str(path), device=device)
    except _LOAD_ERRORS as err:
        detail = f"missing field {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise SavedSAEError(
            f"cannot load the SAE saved in {path} ({detail}): its {SAE_CONFIG_FILE} or {SAE_WEIGHTS_FILE} "
            "is damaged or was not written by SAELens; save it again (SAE.save_model) or retrain it"
        ) from err
