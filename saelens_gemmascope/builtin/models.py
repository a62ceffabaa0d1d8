"""Built-in plugin: Gemma 2 (2b, 9b, 27b and their -it variants) the tiny test model, and the embedded default (a tiny Gemma 2 trained on real text)."""

from __future__ import annotations

from collections.abc import Callable

from saelens_gemmascope.hookspecs import hookimpl
from saelens_gemmascope.models.gemma2 import gemma2_model_specs
from saelens_gemmascope.models.pretrained_tiny import pretrained_tiny_gemma2_spec
from saelens_gemmascope.models.spec import ModelSpec
from saelens_gemmascope.models.tiny import tiny_gemma2_spec


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    for spec in gemma2_model_specs():
        register(spec)
    register(tiny_gemma2_spec())
    register(pretrained_tiny_gemma2_spec())
