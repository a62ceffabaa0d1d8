"""SAELens's splice wrapper, completed for skip transcoders.

The wrapper SAELens's ``add_sae`` installs (on a ``HookedSAETransformer`` and an
``SAETransformerBridge`` alike) computes ``decode(encode(x))``. A skip transcoder's affine skip term
``x @ W_skip.T`` lives in its ``forward``, so SAELens 6.54 splices a skip transcoder without it.
:class:`SkipTranscoderWrapper` adds it, with the same error-term and token-mask semantics (through
:class:`saelens_gemmascope.compat.ReconstructionWrapper`, which owns SAELens's private wrapper);
:func:`splice_wrapper` picks the wrapper an SAE needs.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import SAE
from sae_lens.saes.transcoder import SkipTranscoder

from saelens_gemmascope.compat import ReconstructionWrapper, SAEWrapper, installed_sae_wrapper, sae_wrapper


def is_skip_transcoder(sae: SAE[Any]) -> bool:
    return isinstance(sae, SkipTranscoder)


class SkipTranscoderWrapper(ReconstructionWrapper):
    """SAELens's splice wrapper whose reconstruction includes the skip transcoder's ``x @ W_skip.T``."""

    def reconstruct(self, sae_input: torch.Tensor) -> torch.Tensor:
        sae: Any = self.sae
        skip = sae_input.to(sae.dtype) @ sae.W_skip.T.to(sae_input.device)
        return sae.decode(sae.encode(sae_input)) + skip  # type: ignore[no-any-return]


def splice_wrapper(sae: SAE[Any], use_error_term: bool) -> SAEWrapper:
    """The module that turns a site's tensor into ``sae``'s reconstruction (SAELens's own, or ours)."""
    if is_skip_transcoder(sae):
        return SkipTranscoderWrapper(sae, use_error_term=use_error_term)
    return sae_wrapper(sae, use_error_term)


def complete_installed_wrapper(model: Any, input_hook: str) -> None:
    """After ``model.add_sae(skip_transcoder)``, give the installed wrapper its skip term.

    ``add_sae`` builds its wrapper internally and wires it in three places (the output hook, the
    input hook's capture closure, the model's table of wrappers); changing the one object's class to
    the subclass, which adds no state, completes it everywhere at once.
    """
    installed_sae_wrapper(model, input_hook).__class__ = SkipTranscoderWrapper
