"""Load the language model an evaluation or a training runs SAEs on, as a ``sae_lens.HookedSAETransformer``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelens_gemmascope.models.lookup import find_model_spec
from saelens_gemmascope.models.spec import UnknownNameError
from saelens_gemmascope.registry import registered_models

if TYPE_CHECKING:
    import torch
    from sae_lens import HookedSAETransformer


class ModelUnavailableError(RuntimeError):
    """The model's weights cannot be loaded here (offline and not cached, gated, unknown...)."""


def load_language_model(
    name: str, device: str | None = None, dtype: str | torch.dtype | None = None
) -> HookedSAETransformer:
    """A registered model that builds itself (its spec's ``load``: the embedded default
    ``tiny-gemma-2-stdlib``, trained on first use and cached, or the random ``tiny-gemma-2``), or a
    model from the hub, e.g. ``gemma-2-2b``.

    Hub models load with ``from_pretrained_no_processing``: Gemma Scope SAEs read the model's own,
    unprocessed activations (no LayerNorm folding, no centring), which the default
    ``from_pretrained`` would change.
    """
    import os

    from sae_lens.util import str_to_dtype

    dtype_ = str_to_dtype(dtype or "float32")
    device = device or "cpu"
    try:
        spec = find_model_spec(registered_models(), name)
    except UnknownNameError:
        spec = None  # any TransformerLens model name still loads from the hub
    if spec is not None and spec.load is not None:
        return spec.load(device, dtype_)  # type: ignore[no-any-return]

    from sae_lens import HookedSAETransformer

    try:
        return HookedSAETransformer.from_pretrained_no_processing(name, device=device, dtype=dtype_)  # type: ignore[no-any-return]
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        hint = (
            " HF_HUB_OFFLINE is set and the weights are not in the local Hugging Face cache"
            if offline
            else " (is it gated? log in with `huggingface-cli login` after accepting its licence)"
        )
        raise ModelUnavailableError(f"cannot load model {name!r}:{hint}. Cause: {err}") from err
