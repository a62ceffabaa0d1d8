"""Read a Gemma Scope site, or splice an SAE's reconstruction into it, on any of three model kinds.

* ``sae_lens.HookedSAETransformer``: through SAELens's own ``add_sae`` / ``reset_saes``.
* ``SAETransformerBridge`` (TransformerLens 3's ``TransformerBridge``): through SAELens's
  ``add_sae`` too, except where it falls short (see ``_BRIDGE_OWN_HOOK_SITES``).
* a plain Hugging Face ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM``: through module forward hooks
  / pre-hooks.

Every kind of SAE the package loads or trains splices: plain SAEs at ``res``, ``mlp``, ``att`` (in
SAELens's ``hook_z`` reshaping mode or not) and ``embedding``, and transcoders (SAELens's
``jumprelu_transcoder``; ``jumprelu_skip_transcoder`` with its affine skip) at ``transcoder``, which
read the MLP input and replace the MLP output.

Sites come from the registered model spec (:func:`model_spec_of`: the spec named like the model, or
the first one of its dimensions, so a plugin's model gets its own sites), and only when no
registered spec fits from the Gemma 2 or Gemma 3 sites sized by the model's own config
(:func:`inferred_spec_of`), so any Gemma 2 or Gemma 3 (real, random or tiny) still works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from saelens_gemmascope.models.gemma2 import Gemma2Dims, gemma2_spec
from saelens_gemmascope.models.gemma3 import Gemma3Dims, gemma3_spec
from saelens_gemmascope.models.lookup import find_spec_for_model
from saelens_gemmascope.models.spec import HookPoint, ModelSpec
from saelens_gemmascope.registry import registered_models

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE

ModelKind = Literal["hooked", "bridge", "hf"]

#: Hugging Face ``model_type`` of the causal LMs attached to directly.
_HF_MODEL_TYPES = frozenset({"gemma2", "gemma3_text"})


def model_kind(model: Any) -> ModelKind:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        return "bridge"
    if isinstance(model, HookedTransformer):
        return "hooked"
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", None) in _HF_MODEL_TYPES:
        return "hf"
    raise TypeError(
        "Expected a HookedSAETransformer, an SAETransformerBridge or a Hugging Face Gemma2ForCausalLM "
        f"or Gemma3ForCausalLM, got {type(model).__name__}"
    )


def model_spec_of(model: Any) -> ModelSpec:
    """The spec whose sites ``model`` is read and spliced at: the registered one that fits its name
    and dimensions (:func:`~saelens_gemmascope.models.lookup.find_spec_for_model`), else the Gemma 2
    or Gemma 3 layout inferred from its config (:func:`inferred_spec_of`)."""
    inferred = inferred_spec_of(model)
    return find_spec_for_model(registered_models(), inferred) or inferred


def inferred_spec_of(model: Any) -> ModelSpec:
    """The Gemma 3 layout of a Gemma 3 ``model``, else the Gemma 2 one, sized from its own config."""
    return gemma3_spec_of(model) if is_gemma3(model) else gemma2_spec_of(model)


def is_gemma3(model: Any) -> bool:
    """Whether ``model`` (any kind) is a Gemma 3 text model, by its config's architecture."""
    kind = model_kind(model)
    if kind == "hf":
        return bool(model.config.model_type == "gemma3_text")
    field = "architecture" if kind == "bridge" else "original_architecture"
    return str(getattr(model.cfg, field, None) or "").startswith("Gemma3")


def gemma3_spec_of(model: Any) -> ModelSpec:
    """The Gemma 3 site layout of ``model``, sized from its own config as :func:`gemma2_spec_of`
    reads it. No site depends on the sliding window or the query scale, so they are left 0."""
    base = gemma2_spec_of(model)
    dims = Gemma3Dims(
        d_model=base.d_model,
        n_layers=base.n_layers,
        n_heads=base.n_heads,
        n_kv_heads=base.n_kv_heads,
        d_head=base.d_head,
        d_mlp=base.d_mlp,
        d_vocab=base.d_vocab,
        sliding_window=0,
        query_pre_attn_scalar=0,
    )
    return gemma3_spec(base.name, dims, hf_repo="")


def gemma2_spec_of(model: Any) -> ModelSpec:
    """The Gemma 2 site layout of ``model``, sized from its own config (the fallback of
    :func:`model_spec_of` for a model no plugin registered)."""
    if model_kind(model) == "hf":
        c = model.config
        dims = Gemma2Dims(
            d_model=c.hidden_size,
            n_layers=c.num_hidden_layers,
            n_heads=c.num_attention_heads,
            n_kv_heads=c.num_key_value_heads,
            d_head=c.head_dim,
            d_mlp=c.intermediate_size,
            d_vocab=c.vocab_size,
        )
        name = getattr(c, "name_or_path", "") or "gemma-2"
    else:
        c = model.cfg
        dims = Gemma2Dims(
            d_model=c.d_model,
            n_layers=c.n_layers,
            n_heads=c.n_heads,
            n_kv_heads=c.n_key_value_heads or c.n_heads,
            d_head=c.d_head,
            d_mlp=c.d_mlp,
            d_vocab=c.d_vocab,
        )
        name = c.model_name
    return gemma2_spec(name, dims, hf_repo="")


# -- the SAE applied to one site's tensor ---------------------------------------------------------


def reads_heads(hp: HookPoint) -> bool:
    """The site reads attention heads' outputs (``attn.hook_z``: ``(batch, pos, head, d_head)`` in
    TransformerLens): Gemma Scope's ``att``, or a plugin's site of another name at the same hook."""
    return hp.tl_hook.endswith("attn.hook_z")


def is_transcoder(sae: SAE[Any]) -> bool:
    """A transcoder (or skip transcoder): it reads one hook and writes another."""
    from sae_lens.saes.transcoder import Transcoder

    return isinstance(sae, Transcoder) or sae.cfg.metadata.hook_name_out is not None


def _reconstruct(sae: SAE[Any], x: torch.Tensor, use_error_term: bool) -> torch.Tensor:
    # SAELens's own splice wrapper (what add_sae installs), so the error term means the same here
    # as there: computed from a hook-free pass, so edits made through the SAE's hooks still show.
    from saelens_gemmascope.models.splice_wrapper import splice_wrapper

    return splice_wrapper(sae, use_error_term)(x).to(x.dtype)


def _reconstruct_heads(
    sae: SAE[Any], z: torch.Tensor, n_heads: int, split: bool, use_error_term: bool
) -> torch.Tensor:
    """Run ``sae`` on attention outputs ``z``, given split ``(..., head, d_head)`` or flat.

    An SAE in SAELens's hook_z mode wants split heads and returns them split; any other SAE wants
    them flat. The result has ``z``'s layout.
    """
    wants_split = bool(getattr(sae, "hook_z_reshaping_mode", False))
    if split and not wants_split:
        return _reconstruct(sae, z.flatten(-2), use_error_term).unflatten(-1, z.shape[-2:])
    if not split and wants_split:
        return _reconstruct(sae, z.unflatten(-1, (n_heads, -1)), use_error_term).flatten(-2)
    return _reconstruct(sae, z, use_error_term)


# -- Hugging Face: reading and splicing -----------------------------------------------------------


def _module(hf_model: Any, path: str) -> Any:
    return hf_model.get_submodule(path)


def _rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    import torch

    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _output_tensor(output: Any) -> torch.Tensor:
    # transformers 5 decoder layers return the hidden state; 4.x returned a tuple.
    return output if not isinstance(output, tuple) else output[0]


def _site_tensor(hp: HookPoint, module: Any, args: tuple[Any, ...], output: Any) -> torch.Tensor:
    x = args[0] if hp.hf_tensor == "input" else _output_tensor(output)
    if hp.hf_transform == "rms_normalize":
        return _rms_normalize(x, module.eps)
    return x


@contextmanager
def capture_hf(hf_model: Any, hook_points: Iterable[HookPoint]) -> Iterator[dict[HookPoint, torch.Tensor]]:
    """While open, every forward pass of ``hf_model`` stores each site's tensor (detached)."""
    found: dict[HookPoint, torch.Tensor] = {}
    handles = []
    for hp in hook_points:

        def store(module: Any, args: tuple[Any, ...], output: Any, hp: HookPoint = hp) -> None:
            found[hp] = _site_tensor(hp, module, args, output).detach()

        handles.append(_module(hf_model, hp.hf_module).register_forward_hook(store))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def hf_activations(
    hf_model: Any, input_ids: torch.Tensor, hook_points: Iterable[HookPoint], **forward_kwargs: Any
) -> dict[HookPoint, torch.Tensor]:
    """One forward pass of ``hf_model``; each site's tensor, heads flattened at ``att``."""
    import torch

    with capture_hf(hf_model, hook_points) as found, torch.no_grad():
        hf_model(input_ids, **forward_kwargs)
    return dict(found)


def _splice_hf(hf_model: Any, sae: SAE[Any], hp: HookPoint, use_error_term: bool) -> Callable[[], None]:
    n_heads = hf_model.config.num_attention_heads

    def apply(x: torch.Tensor) -> torch.Tensor:
        if reads_heads(hp):
            return _reconstruct_heads(sae, x, n_heads, split=False, use_error_term=use_error_term)
        return _reconstruct(sae, x, use_error_term)

    return _replace_hf_site(hf_model, hp, apply)


def _splice_hf_transcoder(
    hf_model: Any, sae: SAE[Any], hp: HookPoint, use_error_term: bool
) -> Callable[[], None]:
    """Read the transcoder's input at ``hp``, write its output over ``hp.output`` (same layer, later)."""
    from saelens_gemmascope.compat import wrapper_has_input
    from saelens_gemmascope.models.splice_wrapper import splice_wrapper

    assert hp.output is not None
    wrapper = splice_wrapper(sae, use_error_term)

    def capture(module: Any, args: tuple[Any, ...], output: Any) -> None:
        wrapper.capture_input(_site_tensor(hp, module, args, output))

    def apply(x: torch.Tensor) -> torch.Tensor:
        if not wrapper_has_input(wrapper):
            raise RuntimeError(f"the transcoder's input ({hp.hf_module}) did not run before its output")
        return wrapper(x).to(x.dtype)

    read = _module(hf_model, hp.hf_module).register_forward_hook(capture)
    remove_write = _replace_hf_site(hf_model, hp.output, apply)

    def remove() -> None:
        read.remove()
        remove_write()

    return remove


def _replace_hf_site(
    hf_model: Any, hp: HookPoint, apply: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[], None]:
    """Hook ``hp``'s module so that the site's tensor becomes ``apply(tensor)``; returns the remover."""
    module = _module(hf_model, hp.hf_module)
    if hp.hf_transform == "rms_normalize":
        # Replace the gain-free normalised tensor, then apply the module's own (1 + w) gain, as
        # TransformerLens does after its hook_normalized.
        def splice_norm(module: Any, args: tuple[Any, ...], output: Any) -> Any:
            recons = apply(_rms_normalize(args[0], module.eps))
            return (recons * (1.0 + module.weight.float())).type_as(args[0])

        return module.register_forward_hook(splice_norm).remove
    if hp.hf_tensor == "input":

        def splice_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (apply(args[0]), *args[1:])

        return module.register_forward_pre_hook(splice_input).remove

    def splice_output(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, tuple):
            return (apply(output[0]), *output[1:])
        return apply(output)

    return module.register_forward_hook(splice_output).remove


# -- TransformerLens ------------------------------------------------------------------------------


def _claim_hook_name(sae: SAE[Any], field: str, hp: HookPoint, accepted: set[str], site: str) -> None:
    """SAELens attaches by ``cfg.metadata.hook_name`` (and ``hook_name_out``): check that ``field``
    names ``hp``, or set it."""
    current = getattr(sae.cfg.metadata, field)
    if current is None:
        setattr(sae.cfg.metadata, field, hp.tl_hook)
    elif current not in accepted:
        verb = "writes" if field == "hook_name_out" else "reads"
        raise ValueError(
            f"The SAE {verb} {current!r} (cfg.metadata.{field}) but site {site!r} at layer "
            f"{hp.layer} {verb} {hp.tl_hook!r}"
        )


def _require_added(model: Any, input_hook: str) -> None:
    # add_sae skips an SAE whose hook it cannot find with only a log warning.
    if input_hook not in model.acts_to_saes:
        raise RuntimeError(f"SAELens's add_sae did not attach the SAE at {input_hook!r}")


def _add_sae(model: Any, sae: SAE[Any], use_error_term: bool) -> Callable[[], None]:
    """SAELens's own ``add_sae``, completed for skip transcoders; returns the remover."""
    from saelens_gemmascope.models.splice_wrapper import complete_installed_wrapper, is_skip_transcoder

    name = sae.cfg.metadata.hook_name
    model.add_sae(sae, use_error_term=use_error_term)
    _require_added(model, name)
    if is_skip_transcoder(sae):
        complete_installed_wrapper(model, name)
    return lambda: model.reset_saes([name])


def _splice_hooked(model: Any, sae: SAE[Any], hp: HookPoint, use_error_term: bool) -> Callable[[], None]:
    from sae_lens import HookedSAETransformer

    if not isinstance(model, HookedSAETransformer):
        raise TypeError("Attach SAEs to a sae_lens.HookedSAETransformer, not a plain HookedTransformer")
    # hook_z is (batch, pos, head, d_head): an att SAE saved with reshape_activations='none' (a
    # training save, an older export) is switched to SAELens's hook_z mode while attached.
    switch_hook_z = reads_heads(hp) and not getattr(sae, "hook_z_reshaping_mode", False)
    if switch_hook_z:
        sae.turn_on_forward_pass_hook_z_reshaping()
    try:
        remove = _add_sae(model, sae, use_error_term)
    except BaseException:
        if switch_hook_z:
            sae.turn_off_forward_pass_hook_z_reshaping()
        raise
    if not switch_hook_z:
        return remove

    def remove_and_restore() -> None:
        remove()
        sae.turn_off_forward_pass_hook_z_reshaping()

    return remove_and_restore


#: Sites where SAETransformerBridge.add_sae falls short in sae-lens 6.54 / TransformerLens 3.9,
#: which get a plain permanent bridge hook instead:
#: ``embedding``: ``hook_embed`` is a list-valued alias it cannot resolve, so it skips the SAE with
#: only a log warning;
#: ``transcoder`` (a plain SAE there): its wrapper replaces ``ln2.hook_normalized``, which the
#: bridge's RMSNorm then fails on (it reads the hook point's ``bwd_hooks``). A transcoder is fine:
#: add_sae only adds a capturing hook there and replaces the MLP output.
_BRIDGE_OWN_HOOK_SITES = frozenset({"embedding", "transcoder"})


def _splice_bridge(model: Any, sae: SAE[Any], hp: HookPoint, use_error_term: bool) -> Callable[[], None]:
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge

    if not isinstance(model, SAETransformerBridge):
        raise TypeError(
            "Attach SAEs to an SAETransformerBridge (see saelens_gemmascope.models.bridge."
            "transformer_bridge_from_hf), not a plain TransformerBridge"
        )
    if hp.site not in _BRIDGE_OWN_HOOK_SITES or is_transcoder(sae):
        return _add_sae(model, sae, use_error_term)
    hook = model.hook_dict[hp.bridge_hook]

    def splice(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return _reconstruct(sae, x, use_error_term)

    # Permanent, or the bridge's run_with_cache / hooks() clean-up would drop it.
    hook.add_hook(splice, dir="fwd", is_permanent=True)
    ours = hook.fwd_hooks[-1]

    def remove() -> None:
        ours.hook.remove()
        hook.fwd_hooks.remove(ours)

    return remove


# -- the public entry point -----------------------------------------------------------------------


@dataclass
class SAEHandle:
    """An attached SAE. ``detach()`` (or leaving the ``with`` block) restores the model."""

    model: Any
    sae: Any
    hook_point: HookPoint
    _remove: Callable[[], None] = field(repr=False)
    attached: bool = True

    def detach(self) -> None:
        if self.attached:
            self._remove()
            self.attached = False

    def __enter__(self) -> SAEHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


_SPLICERS = {"hooked": _splice_hooked, "bridge": _splice_bridge, "hf": _splice_hf}
# SAELens's add_sae handles transcoders on both TransformerLens models; HF needs its own hooks.
_TRANSCODER_SPLICERS = {"hooked": _splice_hooked, "bridge": _splice_bridge, "hf": _splice_hf_transcoder}


def _check_width(sae: SAE[Any], field: str, hp: HookPoint, site: str) -> None:
    width = getattr(sae.cfg, field)
    if width != hp.d_in:
        raise ValueError(f"The SAE has {field}={width} but site {site!r} of {hp.model!r} has width {hp.d_in}")


def _names(hp: HookPoint, kind: ModelKind) -> set[str]:
    # A HookedSAETransformer only knows TL names; the bridge and the HF path accept either.
    return {hp.tl_hook} if kind == "hooked" else {hp.tl_hook, hp.bridge_hook}


def _prepare_transcoder(sae: SAE[Any], hp: HookPoint, kind: ModelKind, site: str) -> None:
    if hp.output is None:
        raise ValueError(
            f"{type(sae).__name__} is a transcoder (it reads the MLP input and writes the MLP output): "
            f"attach it at site 'transcoder', not {site!r}"
        )
    _check_width(sae, "d_in", hp, site)
    _check_width(sae, "d_out", hp.output, site)
    _claim_hook_name(sae, "hook_name", hp, _names(hp, kind), site)
    _claim_hook_name(sae, "hook_name_out", hp.output, _names(hp.output, kind), site)


def attach_sae(
    model: Any, sae: SAE[Any], site: str, layer: int | None = None, *, use_error_term: bool = False
) -> SAEHandle:
    """Make ``model`` use ``sae``'s reconstruction at ``site`` (and ``layer``) in every forward pass.

    ``model`` is a ``HookedSAETransformer``, an ``SAETransformerBridge`` or a Hugging Face
    ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM``. ``sae`` is any SAE the package loads or trains; a transcoder (SAELens's
    ``Transcoder`` classes, skip transcoders included) goes at site ``transcoder``, where it reads
    the MLP input (``hook_point(...).tl_hook``) and replaces the MLP output (``.output``).
    ``use_error_term=True`` adds back the SAE's error, so the output is unchanged while the SAE's
    hooks still fire. If ``sae.cfg.metadata.hook_name`` (a transcoder's ``hook_name_out`` too) is
    unset it is set to the site's TransformerLens hook name (SAELens attaches by that name); if set,
    it must match. Sites and widths are those of the registered spec of ``model``
    (:func:`model_spec_of`), so a plugin's model is attached at its own sites.
    """
    hp = model_spec_of(model).hook_point(site, layer)
    kind = model_kind(model)
    if is_transcoder(sae):
        _prepare_transcoder(sae, hp, kind, site)
        remove = _TRANSCODER_SPLICERS[kind](model, sae, hp, use_error_term)
    else:
        _check_width(sae, "d_in", hp, site)
        _claim_hook_name(sae, "hook_name", hp, _names(hp, kind), site)
        remove = _SPLICERS[kind](model, sae, hp, use_error_term)
    return SAEHandle(model=model, sae=sae, hook_point=hp, _remove=remove)
