"""Model specs, hook points and SAE attachment (the tiny Gemma 2 models are in :mod:`saelens_gemmascope.demo`).

Import-cheap: transformers, TransformerLens and SAELens load only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saelens_gemmascope.models.spec import HookPoint, ModelSpec, SiteSpec, UnknownNameError

if TYPE_CHECKING:
    from saelens_gemmascope.models.attach import SAEHandle, attach_sae
    from saelens_gemmascope.models.lookup import hook_point, model_spec

#: public name -> module that defines it, loaded on first access
_LAZY = {
    "hook_point": "lookup",
    "model_spec": "lookup",
    "attach_sae": "attach",
    "SAEHandle": "attach",
}

__all__ = [
    "HookPoint",
    "ModelSpec",
    "SAEHandle",
    "SiteSpec",
    "UnknownNameError",
    "attach_sae",
    "hook_point",
    "model_spec",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"saelens_gemmascope.models.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
