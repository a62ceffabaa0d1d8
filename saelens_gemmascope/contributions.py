"""What a plugin can hand to the host: small frozen records, one per kind of contribution.

Models (:class:`saelens_gemmascope.models.spec.ModelSpec`) and training presets
(:class:`saelens_gemmascope.suite.preset.TrainingPreset`) live next to the code that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Names for the annotations only: importing SAELens (and torch) is what this module avoids, so that
    # a plugin's records, and ``import saelens_gemmascope``, cost nothing until SAELens is needed.
    from sae_lens.loading.pretrained_sae_loaders import (
        PretrainedSaeConfigHuggingfaceLoader,
        PretrainedSaeHuggingfaceLoader,
    )
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup


@dataclass(frozen=True)
class Architecture:
    """An SAE architecture for ``sae_lens.registry``.

    ``training_class``/``training_config_class`` are optional; SAELens requires a training
    architecture's name to exist in the inference registry as well, so both share ``name``.
    """

    name: str
    sae_class: type[Any]
    config_class: type[Any]
    training_class: type[Any] | None = None
    training_config_class: type[Any] | None = None

    def __post_init__(self) -> None:
        if (self.training_class is None) != (self.training_config_class is None):
            raise ValueError(
                f"Architecture {self.name!r}: give both training_class and training_config_class, or neither."
            )


@dataclass(frozen=True)
class Converter:
    """A named converter for SAELens's ``NAMED_PRETRAINED_SAE_LOADERS`` / ``..._CONFIG_GETTERS``."""

    name: str
    loader: PretrainedSaeHuggingfaceLoader
    config_getter: PretrainedSaeConfigHuggingfaceLoader


@dataclass(frozen=True)
class Release:
    """One pretrained-SAE release: a SAELens directory entry plus the converter that serves it.

    If ``converter`` is given, the entry's ``conversion_func`` must name it (the host checks). A
    release may instead name a converter another plugin (or SAELens itself) provides.
    """

    lookup: PretrainedSAELookup
    converter: Converter | None = None

    @property
    def name(self) -> str:
        return self.lookup.release
