"""Load the language model an evaluation runs SAEs on, as a ``sae_lens.HookedSAETransformer``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelens_gemmascope.models.pretrained_tiny import PRETRAINED_TINY_NAME
from saelens_gemmascope.models.tiny import TINY_GEMMA2_NAME

if TYPE_CHECKING:
    import torch
    from sae_lens import HookedSAETransformer

    from saelens_gemmascope.models.tiny import TinyGemma2


class ModelUnavailableError(RuntimeError):
    """The model's weights cannot be loaded here (offline and not cached, gated, unknown...)."""


def _embedded_model(name: str) -> TinyGemma2:
    """The random tiny test model, or the tiny model trained on real text (built once, then cached)."""
    if name == PRETRAINED_TINY_NAME:
        from saelens_gemmascope.models.pretrained_tiny import load_pretrained_tiny_gemma2

        return load_pretrained_tiny_gemma2()
    from saelens_gemmascope.models.tiny import build_tiny_gemma2

    return build_tiny_gemma2()


def load_language_model(
    name: str, device: str | None = None, dtype: str | torch.dtype | None = None
) -> HookedSAETransformer:
    """``tiny-gemma-2`` (random, built in memory), ``tiny-gemma-2-stdlib`` (the embedded default,
    trained on first use and cached) or a Gemma 2 model from the hub, e.g. ``gemma-2-2b``.

    Hub models load with ``from_pretrained_no_processing``: Gemma Scope SAEs read the model's own,
    unprocessed activations (no LayerNorm folding, no centring), which the default
    ``from_pretrained`` would change.
    """
    import os

    from sae_lens.util import str_to_dtype

    dtype_ = str_to_dtype(dtype or "float32")
    device = device or "cpu"
    if name in (TINY_GEMMA2_NAME, PRETRAINED_TINY_NAME):
        model = _embedded_model(name).tl_model.to(device, print_details=False)
        return model.to(dtype_, print_details=False)  # type: ignore[no-any-return]

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
