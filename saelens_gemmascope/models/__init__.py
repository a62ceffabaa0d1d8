"""Model specs, hook points, the tiny Gemma 2 test model and SAE attachment.

Import-cheap: transformers, TransformerLens and SAELens load only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saelens_gemmascope.models.spec import HookPoint, ModelSpec, SiteSpec, UnknownNameError

if TYPE_CHECKING:
    from saelens_gemmascope.models.attach import SAEHandle, attach_sae
    from saelens_gemmascope.models.lookup import hook_point, model_spec
    from saelens_gemmascope.models.pretrained_tiny import PretrainedTinyGemma2, load_pretrained_tiny_gemma2
    from saelens_gemmascope.models.tiny import TinyGemma2, build_tiny_gemma2

#: public name -> module that defines it, loaded on first access
_LAZY = {
    "hook_point": "lookup",
    "model_spec": "lookup",
    "attach_sae": "attach",
    "SAEHandle": "attach",
    "build_tiny_gemma2": "tiny",
    "TinyGemma2": "tiny",
    "load_pretrained_tiny_gemma2": "pretrained_tiny",
    "PretrainedTinyGemma2": "pretrained_tiny",
}

__all__ = [
    "HookPoint",
    "ModelSpec",
    "PretrainedTinyGemma2",
    "SAEHandle",
    "SiteSpec",
    "TinyGemma2",
    "UnknownNameError",
    "attach_sae",
    "build_tiny_gemma2",
    "hook_point",
    "load_pretrained_tiny_gemma2",
    "model_spec",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"saelens_gemmascope.models.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
