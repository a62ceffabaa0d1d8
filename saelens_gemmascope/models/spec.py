"""A language model's dimensions and where each SAE site reads, in every library's naming."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

HFTensor = Literal["input", "output"]
#: What to apply to the HF module's tensor to get the site's tensor. ``rms_normalize`` is the
#: module's RMSNorm without its gain, ``x / sqrt(mean(x**2) + eps)`` in float32 (what
#: TransformerLens's ``hook_normalized`` holds), using the module's own ``eps``.
HFTransform = Literal["none", "rms_normalize"]


class UnknownNameError(KeyError):
    """An unknown model or site name; the message lists the close matches."""

    def __str__(self) -> str:
        # KeyError's own __str__ quotes the message as if it were a key.
        return str(self.args[0]) if self.args else ""


#: Beyond this many known names an error names how to list them instead of listing them all.
MAX_LISTED_NAMES = 30


def unknown_name_message(
    kind: str, name: str, known: Iterable[str], context: str = "", list_command: str | None = None
) -> str:
    """``Unknown <kind> <name>``, the closest known names, and the known names (or how to list them)."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if len(known) <= MAX_LISTED_NAMES or list_command is None:
        return f"Unknown {kind} {name!r}{context}.{hint} Known {kind}s: {', '.join(known)}"
    return f"Unknown {kind} {name!r}{context}.{hint} {len(known):,} {kind}s are known; list them with: {list_command}"


@dataclass(frozen=True)
class SiteSpec:
    """Where one SAE site reads, as templates over ``{layer}``.

    ``d_in`` is the SAE input width at this site (for attention: ``n_heads * d_head``, heads
    flattened). ``hf_module`` is a dotted path relative to the ``...ForCausalLM`` model;
    ``hf_tensor`` says whether the site is that module's input or output, and ``hf_transform``
    what to apply to it first. ``bridge_hook`` is the TransformerBridge's own (canonical) hook
    name; the bridge also answers to ``tl_hook`` as an alias. ``output_site`` names the site whose
    tensor this site's SAEs write when that is not the one they read (transcoders read the MLP
    input and write the ``mlp`` site's tensor); None means they write where they read.
    """

    name: str
    tl_hook: str
    bridge_hook: str
    hf_module: str
    hf_tensor: HFTensor
    d_in: int
    layered: bool = True
    hf_transform: HFTransform = "none"
    description: str = ""
    output_site: str | None = None


@dataclass(frozen=True)
class HookPoint:
    """One site at one layer, resolved.

    ``output`` is where the site's SAEs write, when not here: for ``transcoder``, the MLP output
    (the ``mlp`` hook point of the same layer) that a transcoder's reconstruction replaces.
    """

    model: str
    site: str
    layer: int | None
    tl_hook: str
    bridge_hook: str
    hf_module: str
    hf_tensor: HFTensor
    d_in: int
    hf_transform: HFTransform = "none"
    output: HookPoint | None = None


#: Site names of earlier versions -> (the site now, whether they named its output hook point).
DEPRECATED_SITES: dict[str, tuple[str, bool]] = {
    "transcoder_in": ("transcoder", False),
    "transcoder_out": ("transcoder", True),
}


@dataclass(frozen=True)
class ModelSpec:
    """A model's dimensions and its site -> hook-point mapping.

    ``load`` builds the model in memory (a ``HookedSAETransformer``), given a device and a torch
    dtype, for models that are not on the hub (the embedded default); None loads ``name`` from the
    hub with TransformerLens (:func:`saelens_gemmascope.models.loading.load_language_model`).
    """

    name: str
    hf_repo: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    sites: dict[str, SiteSpec] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    load: Callable[[str, Any], Any] | None = field(default=None, compare=False, repr=False)

    def hook_point(self, site: str, layer: int | None = None) -> HookPoint:
        """Where ``site`` at ``layer`` reads; ``.output`` says where it writes if elsewhere."""
        if site not in self.sites and site in DEPRECATED_SITES:
            return self._deprecated_hook_point(site, layer)
        if site not in self.sites:
            raise UnknownNameError(
                unknown_name_message("site", site, self.sites, f" for model {self.name!r}")
            )
        spec = self.sites[site]
        if spec.layered:
            if layer is None or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
                raise ValueError(
                    f"Site {site!r} of {self.name!r} needs a layer in 0..{self.n_layers - 1}, got {layer!r}"
                )
        elif layer is not None:
            raise ValueError(f"Site {site!r} of {self.name!r} has no layers; pass layer=None, got {layer!r}")
        fmt = {"layer": layer}
        output = self.hook_point(spec.output_site, layer) if spec.output_site is not None else None
        return HookPoint(
            model=self.name,
            site=site,
            layer=layer,
            tl_hook=spec.tl_hook.format(**fmt),
            bridge_hook=spec.bridge_hook.format(**fmt),
            hf_module=spec.hf_module.format(**fmt),
            hf_tensor=spec.hf_tensor,
            d_in=spec.d_in,
            hf_transform=spec.hf_transform,
            output=output,
        )

    def _deprecated_hook_point(self, site: str, layer: int | None) -> HookPoint:
        new_site, is_output = DEPRECATED_SITES[site]
        how = f"hook_point(..., {new_site!r}, layer)" + (".output" if is_output else "")
        # FutureWarning, not DeprecationWarning: shown by default, as it is meant for users' scripts.
        warnings.warn(f"Site {site!r} is deprecated: use {how}", FutureWarning, stacklevel=3)
        point = self.hook_point(new_site, layer)
        if is_output:
            if point.output is None:
                raise ValueError(f"Site {new_site!r} of {self.name!r} writes where it reads")
            return point.output
        return point
