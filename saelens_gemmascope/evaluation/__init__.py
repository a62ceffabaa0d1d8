"""Evaluate SAEs the way the Gemma Scope paper does: L0, delta LM loss, FVU, KL, latent density,
per position and per domain, several SAEs on the same tokens; writes metrics.json, report.md, plots.

Import-cheap: the evaluation modules (torch, SAELens, matplotlib) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saelens_gemmascope.evaluation.data import EvalTokens, eval_tokens
    from saelens_gemmascope.evaluation.report import write_outputs
    from saelens_gemmascope.evaluation.result import EvalResult, SAEMetrics
    from saelens_gemmascope.evaluation.runner import evaluate_saes
    from saelens_gemmascope.evaluation.sources import EvalSAE, expand_source

#: public name -> module that defines it
_LAZY = {
    "evaluate_saes": "runner",
    "EvalResult": "result",
    "SAEMetrics": "result",
    "EvalSAE": "sources",
    "expand_source": "sources",
    "EvalTokens": "data",
    "eval_tokens": "data",
    "write_outputs": "report",
}

__all__ = [
    "EvalResult",
    "EvalSAE",
    "EvalTokens",
    "SAEMetrics",
    "eval_tokens",
    "evaluate_saes",
    "expand_source",
    "write_outputs",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"saelens_gemmascope.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
