"""Plugin ``gemmascope.demo``: the tiny models and their CPU-sized presets, registered through the
same hooks a third party uses (and blockable like any plugin).

* ``tiny-gemma-2``: random weights, built in memory in a second (the tests' model);
* ``tiny-gemma-2-stdlib``: the embedded default, trained on Python's documentation text on first
  use and cached (:mod:`saelens_gemmascope.demo.embedded_model`);
* ``tiny-gemma-3``: a random Gemma 3 (:mod:`saelens_gemmascope.demo.tiny_gemma3`), the Gemma Scope 2
  stand-in, with Gemma Scope 2 presets (the quadratic L0 penalty, no calibration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from saelens_gemmascope.demo.embedded_model import embedded_model_spec
from saelens_gemmascope.demo.presets import (
    EMBEDDED_TRAINING_STEPS,
    EMBEDDED_WIDTHS,
    tiny_gemmascope2_presets,
    tiny_presets,
)
from saelens_gemmascope.demo.tiny_gemma3 import tiny_gemma3_spec
from saelens_gemmascope.demo.tiny_model import tiny_gemma2_spec
from saelens_gemmascope.hookspecs import hookimpl
from saelens_gemmascope.models.spec import ModelSpec
from saelens_gemmascope.suite.preset import TrainingPreset


def _load_tiny(device: str, dtype: Any) -> Any:
    from saelens_gemmascope.demo.tiny_model import build_tiny_gemma2

    model = build_tiny_gemma2().tl_model.to(device, print_details=False)
    return model.to(dtype, print_details=False)


def _load_tiny_gemma3(device: str, dtype: Any) -> Any:
    from saelens_gemmascope.demo.tiny_gemma3 import build_tiny_gemma3

    model = build_tiny_gemma3().tl_model.to(device, print_details=False)
    return model.to(dtype, print_details=False)


def _load_embedded(device: str, dtype: Any) -> Any:
    from saelens_gemmascope.demo.embedded_model import load_embedded_model

    model = load_embedded_model().tl_model.to(device, print_details=False)
    return model.to(dtype, print_details=False)


def demo_model_specs() -> list[ModelSpec]:
    """The tiny models' specs (tiny Gemma 2, the embedded default, tiny Gemma 3), each with the
    function that builds it."""
    return [
        dataclasses.replace(tiny_gemma2_spec(), load=_load_tiny),
        dataclasses.replace(embedded_model_spec(), load=_load_embedded),
        dataclasses.replace(tiny_gemma3_spec(), load=_load_tiny_gemma3),
    ]


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    for spec in demo_model_specs():
        register(spec)


@hookimpl
def register_training_presets(register: Callable[[TrainingPreset], None]) -> None:
    tiny, embedded, tiny3 = demo_model_specs()
    for preset in tiny_presets(tiny):
        register(preset)
    for preset in tiny_presets(embedded, EMBEDDED_WIDTHS, EMBEDDED_TRAINING_STEPS):
        register(preset)
    for preset in tiny_gemmascope2_presets(tiny3):
        register(preset)
