"""What the Gemma 2 and Gemma 3 specs share: a model's shape fields and one spec builder.

The two families differ only in their site tables (:func:`~saelens_gemmascope.models.gemma2.gemma2_sites`,
:func:`~saelens_gemmascope.models.gemma3.gemma3_sites`), so each family's ``*_spec`` is this builder
given its own table.
"""

from __future__ import annotations

from dataclasses import dataclass

from saelens_gemmascope.models.spec import ModelSpec, SiteSpec


@dataclass(frozen=True)
class GemmaDims:
    """The dimensions every Gemma-architecture model has; ``Gemma2Dims`` and ``Gemma3Dims`` extend it."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int


def gemma_model_spec(
    name: str, dims: GemmaDims, sites: dict[str, SiteSpec], hf_repo: str, aliases: tuple[str, ...] = ()
) -> ModelSpec:
    """A spec of a Gemma-architecture model: ``dims``'s shape with the family's ``sites``."""
    return ModelSpec(
        name=name,
        hf_repo=hf_repo,
        d_model=dims.d_model,
        n_layers=dims.n_layers,
        n_heads=dims.n_heads,
        n_kv_heads=dims.n_kv_heads,
        d_head=dims.d_head,
        d_mlp=dims.d_mlp,
        d_vocab=dims.d_vocab,
        sites=sites,
        aliases=aliases,
    )
