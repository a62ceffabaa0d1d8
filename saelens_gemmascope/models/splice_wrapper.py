"""SAELens's splice wrapper, completed for skip transcoders.

``sae_lens.analysis.hooked_sae_transformer._SAEWrapper`` (what ``add_sae`` installs, on a
``HookedSAETransformer`` and an ``SAETransformerBridge`` alike) computes ``decode(encode(x))``. A skip
transcoder's affine skip term ``x @ W_skip.T`` lives in its ``forward``, so SAELens 6.54 splices a
skip transcoder without it. :class:`SkipTranscoderWrapper` adds it, with the same error-term and
token-mask semantics; :func:`splice_wrapper` picks the wrapper an SAE needs.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import SAE
from sae_lens.analysis.hooked_sae_transformer import _disable_hooks, _SAEWrapper
from sae_lens.saes.transcoder import SkipTranscoder


def is_skip_transcoder(sae: SAE[Any]) -> bool:
    return isinstance(sae, SkipTranscoder)


class SkipTranscoderWrapper(_SAEWrapper):
    """``_SAEWrapper`` whose reconstruction includes the skip transcoder's ``x @ W_skip.T``."""

    def _transcode(self, sae_input: torch.Tensor) -> torch.Tensor:
        sae: Any = self.sae
        skip = sae_input.to(sae.dtype) @ sae.W_skip.T.to(sae_input.device)
        return sae.decode(sae.encode(sae_input)) + skip  # type: ignore[no-any-return]

    def forward(self, original_output: torch.Tensor) -> torch.Tensor:
        sae_input = self._captured_input if self._captured_input is not None else original_output
        mask = self._token_mask
        if mask is not None:
            for _ in range(original_output.dim() - mask.dim()):
                mask = mask.unsqueeze(-1)
        try:
            sae_out = self._transcode(sae_input)
            if self.use_error_term:
                # As SAELens: the error comes from a hook-free pass, so edits made through the
                # SAE's hooks still show in the output.
                with torch.no_grad(), _disable_hooks(self.sae):
                    sae_error = original_output - self._transcode(sae_input)
                    if mask is not None:
                        sae_error = torch.where(mask, torch.zeros_like(sae_error), sae_error)
                    sae_error = self.hook_sae_error(sae_error)
                sae_out = sae_out + sae_error
            if mask is not None:
                sae_out = torch.where(mask, original_output, sae_out)
            return self.hook_sae_output(sae_out)  # type: ignore[no-any-return]
        finally:
            self._captured_input = None


def splice_wrapper(sae: SAE[Any], use_error_term: bool) -> _SAEWrapper:
    """The module that turns a site's tensor into ``sae``'s reconstruction (SAELens's own, or ours)."""
    if is_skip_transcoder(sae):
        return SkipTranscoderWrapper(sae, use_error_term=use_error_term)
    return _SAEWrapper(sae, use_error_term=use_error_term)


def complete_installed_wrapper(model: Any, input_hook: str) -> None:
    """After ``model.add_sae(skip_transcoder)``, give the installed wrapper its skip term.

    ``add_sae`` builds its ``_SAEWrapper`` internally and wires it in three places (the output hook,
    the input hook's capture closure, ``_acts_to_saes``); changing the one object's class to the
    subclass, which adds no state, completes it everywhere at once.
    """
    wrapper = model._acts_to_saes[input_hook]
    if not isinstance(wrapper, _SAEWrapper):
        raise TypeError(f"unexpected SAE wrapper {type(wrapper).__name__} at {input_hook!r}")
    wrapper.__class__ = SkipTranscoderWrapper
