"""Built-in plugin: Gemma 2 (2b, 9b, 27b and their -it variants) and Gemma 3 (270m, 1b, 4b, 12b,
27b, PT and IT)."""

from __future__ import annotations

from collections.abc import Callable

from saelens_gemmascope.hookspecs import hookimpl
from saelens_gemmascope.models.gemma2 import gemma2_model_specs
from saelens_gemmascope.models.gemma3 import gemma3_model_specs
from saelens_gemmascope.models.spec import ModelSpec


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    for spec in [*gemma2_model_specs(), *gemma3_model_specs()]:
        register(spec)
