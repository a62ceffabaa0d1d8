"""Look up a model's spec or one of its hook points by name or alias (e.g. ``google/gemma-2-2b``)."""

from __future__ import annotations

from collections.abc import Mapping

from saelens_gemmascope.models.spec import HookPoint, ModelSpec, UnknownNameError, unknown_name_message
from saelens_gemmascope.registry import registered_models


def find_model_spec(specs: Mapping[str, ModelSpec], model: str) -> ModelSpec:
    """The spec named ``model`` or having it as an alias; raises :class:`UnknownNameError`."""
    if model in specs:
        return specs[model]
    for spec in specs.values():
        if model in spec.aliases:
            return spec
    names = [*specs, *(alias for spec in specs.values() for alias in spec.aliases)]
    raise UnknownNameError(unknown_name_message("model", model, names))


#: The dimensions that fix every site's layers and widths: what a loaded model must share with a spec
#: for the spec to describe it.
SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp")


def same_shape(spec: ModelSpec, other: ModelSpec) -> bool:
    return all(getattr(spec, name) == getattr(other, name) for name in SHAPE_FIELDS)


def find_spec_for_model(specs: Mapping[str, ModelSpec], inferred: ModelSpec) -> ModelSpec | None:
    """The spec among ``specs`` describing a loaded model, given what its own config says
    (``inferred``: its name and dimensions): the spec of that name or alias if the dimensions agree,
    else the first spec (in registration order) of the same dimensions; None when no spec fits.

    A name alone is not trusted: a small model saved as ``gemma-2-2b`` must not get 2b's widths.
    """
    try:
        named: ModelSpec | None = find_model_spec(specs, inferred.name)
    except UnknownNameError:
        named = None
    if named is not None and same_shape(named, inferred):
        return named
    return next((spec for spec in specs.values() if same_shape(spec, inferred)), None)


def find_hook_point(
    specs: Mapping[str, ModelSpec], model: str, site: str, layer: int | None = None
) -> HookPoint:
    return find_model_spec(specs, model).hook_point(site, layer)


def model_spec(model: str) -> ModelSpec:
    """The registered spec of ``model`` (a name such as ``gemma-2-2b`` or an alias)."""
    return find_model_spec(registered_models(), model)


def hook_point(model: str, site: str, layer: int | None = None) -> HookPoint:
    """Where ``site`` of ``model`` at ``layer`` reads, in TransformerLens, bridge and HF naming.

    ``site`` is one of ``res``, ``mlp``, ``att``, ``transcoder``, ``embedding`` (the last takes no
    layer): the suite's own names, as in ``gemmascope ls`` and the presets. ``transcoder`` is where a
    transcoder reads (the MLP input); ``.output`` is where it writes (the MLP output, the ``mlp``
    hook point). The earlier names ``transcoder_in`` / ``transcoder_out`` still work, with a
    deprecation warning (a ``FutureWarning``). Unknown names raise :class:`UnknownNameError` (a ``KeyError``)
    suggesting close matches; a missing or out-of-range layer raises ``ValueError``.
    """
    return model_spec(model).hook_point(site, layer)
