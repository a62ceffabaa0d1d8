"""Evaluate several SAEs on the same tokens, sharing one clean forward pass per batch.

Why not SAELens's ``run_evals``: it evaluates one SAE at a time, re-running the clean model for each
(and a zero-ablation pass we do not need); its cross-entropy averages over every position, BOS and
padding included, while the paper masks them; it has no per-position or per-domain breakdown and
cannot splice a transcoder (``hook_name_out``). Every metric here is a few lines over two logit
tensors and two activation tensors, so one clean pass (logits plus the cached activations every SAE
needs) and one spliced pass per SAE, started at the SAE's block (see :mod:`.splice`), compute all of
them.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from saelens_gemmascope.evaluation.data import (
    EvalTokens,
    check_tokens_fit,
    default_eval_tokens,
    distinct_sequences,
    eval_tokens,
    load_named_dataset,
)
from saelens_gemmascope.evaluation.metrics import (
    LatentFiring,
    MetricSums,
    TokenMetrics,
    cross_entropy,
    to_python,
)
from saelens_gemmascope.evaluation.result import EvalResult, SAEMetrics
from saelens_gemmascope.evaluation.sources import EvalSAE, SAESpec, resolve_spec, unique_labels
from saelens_gemmascope.models.next_token import kl_divergence, next_token_log_probs
from saelens_gemmascope.models.splice_plan import (
    SplicePlan,
    encode_decode,
    flat_site_tensor,
    plan_splice,
    spliced_logits,
)
from saelens_gemmascope.models.token_masks import SpecialTokens, activation_mask, loss_mask

#: Paper defaults (§5): 2,048 sequences of 1,024 tokens.
PAPER_N_SEQUENCES = 2048
PAPER_CONTEXT_SIZE = 1024
DENSE_THRESHOLD = 0.1


@dataclass
class _Tracked:
    """One SAE's plan and running sums."""

    item: EvalSAE
    plan: SplicePlan
    overall: MetricSums = field(default_factory=lambda: MetricSums(by_position=True))
    domains: dict[str, MetricSums] = field(default_factory=dict)
    firing: LatentFiring | None = None


def _package_versions() -> dict[str, str]:
    found = {}
    for name in ("saelens-gemmascope", "sae-lens", "transformer-lens", "torch", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = platform.python_version()
    return found


def _resolve_model(model: Any, saes: list[EvalSAE], device: str | None, dtype: Any) -> Any:
    if model is not None and not isinstance(model, str):
        return model
    from saelens_gemmascope.models.loading import load_language_model

    if model is None:
        names = {item.sae.cfg.metadata.model_name for item in saes} - {None}
        if len(names) != 1:
            raise ValueError(f"pass model=: the SAEs name {sorted(names) or 'no'} model(s)")
        model = names.pop()
    return load_language_model(model, device=device, dtype=dtype)


def _resolve_tokens(
    dataset: Any, model: Any, n_sequences: int, context_size: int, seed: int, domain_column: str | None
) -> EvalTokens:
    if isinstance(dataset, EvalTokens):
        return dataset
    if isinstance(dataset, torch.Tensor):
        return EvalTokens(tokens=dataset.long(), domains=None, description="token tensor")
    if dataset is None:
        return default_eval_tokens(model.tokenizer, n_sequences, context_size, seed)
    if isinstance(dataset, str):
        description = dataset
        dataset = load_named_dataset(dataset)
    else:
        name = getattr(getattr(dataset, "info", None), "dataset_name", None)
        description = name or f"in-memory {type(dataset).__name__}"
    return eval_tokens(dataset, model.tokenizer, n_sequences, context_size, seed, domain_column, description)


def _batch_metrics(
    model: Any,
    tracked: _Tracked,
    tokens: torch.Tensor,
    cache: Mapping[str, torch.Tensor],
    act_mask: torch.Tensor,
    clean: tuple[torch.Tensor, torch.Tensor],
    loss_keep: torch.Tensor,
) -> tuple[TokenMetrics, torch.Tensor]:
    plan = tracked.plan
    clean_log_probs, ce_clean = clean
    feature_acts, reconstruction = encode_decode(tracked.item.sae, plan, cache[plan.read_hook])
    target = flat_site_tensor(plan, cache[plan.write_hook]).float()
    logits = spliced_logits(model, plan, tokens, cache, reconstruction, act_mask)
    spliced_log_probs = next_token_log_probs(logits)
    del logits
    recon = reconstruction.to(target.device, target.dtype)
    metrics = TokenMetrics(
        act_mask=act_mask,
        l0=(feature_acts != 0).sum(-1).to(target.device, torch.float32),
        squared_error=(target - recon).pow(2).sum(-1),
        target=target,
        loss_mask=loss_keep,
        ce_clean=ce_clean,
        ce_spliced=cross_entropy(spliced_log_probs, tokens),
        kl=kl_divergence(clean_log_probs, spliced_log_probs),
    )
    return metrics, feature_acts


def _finish(tracked: _Tracked) -> SAEMetrics:
    item, plan = tracked.item, tracked.plan
    assert tracked.firing is not None
    totals = {k: to_python(v) for k, v in tracked.overall.summed_over_positions().results().items()}
    totals["dead_fraction"] = tracked.firing.dead_fraction()
    totals["dense_fraction"] = tracked.firing.dense_fraction(DENSE_THRESHOLD)
    return SAEMetrics(
        label=item.label,
        source=item.source,
        release=item.release,
        sae_id=item.sae_id,
        site=plan.site,
        layer=plan.layer,
        d_sae=int(item.sae.cfg.d_sae),
        hook_name=plan.read_hook,
        hook_name_out=plan.hook_name_out,
        metrics=totals,  # type: ignore[arg-type]
        by_position={k: to_python(v) for k, v in tracked.overall.results().items()},  # type: ignore[misc]
        by_domain={
            domain: {k: to_python(v) for k, v in sums.results().items()}  # type: ignore[misc]
            for domain, sums in sorted(tracked.domains.items())
        },
    )


def _reported(starts: range, shape: torch.Size, label: str, show: bool) -> Iterator[int]:
    """``starts`` (batch starts), reporting the tokens each finished batch evaluated to the
    progress display (see :mod:`saelens_gemmascope.progress`)."""
    from saelens_gemmascope.progress import progress_task

    n_rows, row_tokens = int(shape[0]), int(shape[1])
    with progress_task(label, n_rows * row_tokens, show=show) as task:
        for start in starts:
            yield start
            task.advance(min(starts.step, n_rows - start) * row_tokens)


@torch.no_grad()
def evaluate_saes(
    saes: Sequence[SAESpec],
    model: Any = None,
    dataset: Any = None,
    *,
    n_sequences: int = PAPER_N_SEQUENCES,
    context_size: int = PAPER_CONTEXT_SIZE,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    domain_column: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> EvalResult:
    """Evaluate ``saes`` on the same ``n_sequences x context_size`` tokens, as the paper does (§5).

    ``saes``: SAELens SAEs or transcoders, :class:`EvalSAE`, ``(release, sae_id)`` pairs (a release
    name or a Gemma Scope export folder) or SAELens save folders. ``model``: a
    ``HookedSAETransformer``, a model name, or None for the SAEs' own ``model_name``. ``dataset``:
    None (the embedded default), a ``datasets`` dataset, a dataset name or saved folder, an
    :class:`EvalTokens` or a token tensor (both used as given: ``n_sequences`` and ``context_size``
    only size the others). With ``out_dir``, writes ``metrics.json``, ``report.md``
    and the plots there (see :mod:`.report`).
    """
    items = [resolve_spec(spec, device or "cpu") for spec in saes]
    if not items:
        raise ValueError("no SAE to evaluate")
    unique_labels(items)
    model = _resolve_model(model, items, device, dtype)
    if getattr(model, "acts_to_saes", None):
        raise ValueError("the model has SAEs attached; evaluate on a clean model (model.reset_saes())")
    model_device = next(model.parameters()).device
    for item in items:
        item.sae.eval()
    tracked = [_Tracked(item=item, plan=plan_splice(model, item.sae)) for item in items]
    for entry in tracked:
        entry.firing = LatentFiring.empty(entry.item.sae.cfg.d_sae, entry.item.sae.device)

    data = _resolve_tokens(dataset, model, n_sequences, context_size, seed, domain_column)
    if data.tokens.numel() == 0:
        raise ValueError("the evaluation dataset is empty: no sequences to evaluate on")
    check_tokens_fit(data.tokens, model.cfg.d_vocab, model.cfg.n_ctx, data.description)
    special = SpecialTokens.of(model.tokenizer)
    needed = sorted(set().union(*(entry.plan.cache_hooks for entry in tracked)))
    starts = range(0, len(data.tokens), batch_size)
    for start in _reported(starts, data.tokens.shape, f"evaluating {len(tracked)} SAEs", progress):
        tokens = data.tokens[start : start + batch_size].to(model_device)
        act_mask = activation_mask(tokens, special)
        loss_keep = loss_mask(tokens, special)
        logits, cache = model.run_with_cache(tokens, names_filter=needed, return_type="logits")
        clean_log_probs = next_token_log_probs(logits)
        del logits
        clean = (clean_log_probs, cross_entropy(clean_log_probs, tokens))
        domains = None if data.domains is None else data.domains[start : start + batch_size]
        for entry in tracked:
            metrics, feature_acts = _batch_metrics(model, entry, tokens, cache, act_mask, clean, loss_keep)
            entry.overall.add(metrics)
            assert entry.firing is not None
            entry.firing.add(feature_acts, act_mask)
            for domain in sorted(set(domains or [])):
                rows = torch.tensor([d == domain for d in domains or []], device=tokens.device)
                entry.domains.setdefault(domain, MetricSums()).add(metrics, rows)
        del cache, clean, clean_log_probs

    settings = {
        "model": str(model.cfg.model_name),
        "dataset": data.description,
        "n_sequences": len(data.tokens),
        "n_distinct_sequences": distinct_sequences(data.tokens, data.description),
        "context_size": int(data.tokens.shape[1]),
        "n_tokens_total": int(data.tokens.numel()),
        "batch_size": batch_size,
        "seed": seed,
        "device": str(model_device),
        "dtype": str(model.cfg.dtype),
        "domain_column": domain_column if data.domains is not None else None,
        "masking": {
            "activations": "count where the token is not BOS, EOS or pad; elsewhere the clean activation is kept",
            "loss": "the prediction at t counts where token t is not pad and token t+1 is neither pad nor BOS",
        },
        "dense_threshold": DENSE_THRESHOLD,
        "versions": _package_versions(),
    }
    result = EvalResult(saes=[_finish(entry) for entry in tracked], settings=settings)
    if out_dir is not None:
        from saelens_gemmascope.evaluation.report import write_outputs

        write_outputs(result, out_dir)
    return result
