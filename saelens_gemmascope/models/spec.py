"""A language model's dimensions and where each SAE site reads, in every library's naming."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HFTensor = Literal["input", "output"]


@dataclass(frozen=True)
class SiteSpec:
    """Where one SAE site reads, as templates over ``{layer}``.

    ``d_in`` is the SAE input width at this site (for attention: ``n_heads * d_head``, heads
    flattened). ``hf_tensor`` says whether the tensor is the Hugging Face module's input or output.
    """

    name: str
    tl_hook: str
    bridge_hook: str
    hf_module: str
    hf_tensor: HFTensor
    d_in: int
    layered: bool = True


@dataclass(frozen=True)
class HookPoint:
    """One site at one layer, resolved."""

    model: str
    site: str
    layer: int | None
    tl_hook: str
    bridge_hook: str
    hf_module: str
    hf_tensor: HFTensor
    d_in: int


@dataclass(frozen=True)
class ModelSpec:
    """A model's dimensions and its site -> hook-point mapping."""

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

    def hook_point(self, site: str, layer: int | None = None) -> HookPoint:
        if site not in self.sites:
            raise KeyError(
                f"Model {self.name!r} has no site {site!r}; known sites: {', '.join(sorted(self.sites))}"
            )
        spec = self.sites[site]
        if spec.layered:
            if layer is None or not 0 <= layer < self.n_layers:
                raise ValueError(
                    f"Site {site!r} of {self.name!r} needs a layer in 0..{self.n_layers - 1}, got {layer!r}"
                )
        else:
            layer = None
        fmt = {"layer": layer}
        return HookPoint(
            model=self.name,
            site=site,
            layer=layer,
            tl_hook=spec.tl_hook.format(**fmt),
            bridge_hook=spec.bridge_hook.format(**fmt),
            hf_module=spec.hf_module.format(**fmt),
            hf_tensor=spec.hf_tensor,
            d_in=spec.d_in,
        )
