"""``gemmascope demo``: the whole product on the embedded default, on a CPU, with no network.

One straight line: the embedded tiny Gemma 2 (trained on Python's help text on first use, then
cached) -> presets -> λ calibration -> one shared training pass of every SAE with the Gemma Scope
recipe -> SAELens format and Gemma Scope layout -> local release -> ``SAE.from_pretrained`` ->
evaluation like the paper, next to a zero-ablation baseline per site -> report and plots.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelens_gemmascope.models.pretrained_tiny import PRETRAINED_TINY_NAME
from saelens_gemmascope.training.preset import TrainingPreset

#: SAELens warnings that are expected in the demo and say nothing to its reader: the embedded text
#: is small, so the store cycles through it; the model and dataset are passed in memory on purpose.
EXPECTED_WARNINGS = (
    r"The training dataset contains fewer samples",
    r"To copy construct from a tensor",
)

STAGES = ("language model", "train the suite", "load with SAE.from_pretrained", "evaluate", "summary")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains: the three sites on two layers, two widths, a ladder of three targets."""

    model: str = PRETRAINED_TINY_NAME
    sites: tuple[str, ...] = ("res", "mlp", "att")
    layers: tuple[int, ...] = (1, 2)
    widths: tuple[str, ...] = ("512", "1024")
    #: training steps per SAE (None: the presets' own budget); calibration probes run as long
    steps: int | None = 200
    #: one probe round on a grid bracketing this model's λs, no refinement: a CPU-sized calibration
    calibration_grid: tuple[float, ...] = (1e-3, 4e-3, 1.6e-2, 6.4e-2)
    refine_rounds: int = 0
    eval_sequences: int = 64
    eval_context: int = 128


#: A shortened run (one layer, one width, few steps), for tests and a first look.
#: (steps stay above the presets' λ warm-up of 100 steps, or the ladder cannot separate).
QUICK_SETTINGS = DemoSettings(layers=(1,), widths=("512",), steps=160, eval_sequences=16)


@dataclass(frozen=True)
class DemoRow:
    """One trained SAE next to its site's zero-ablation baseline."""

    label: str
    site: str
    layer: int
    d_sae: int
    target_l0: float
    l0_coefficient: float
    l0: float
    fvu: float
    delta_loss: float
    zero_ablation_delta_loss: float


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    rows: tuple[DemoRow, ...]
    model_metrics: dict[str, Any]
    report: Path
    summary: Path


def demo_presets(settings: DemoSettings) -> list[TrainingPreset]:
    """The presets the demo trains, shortened to ``settings.steps`` if given."""
    from saelens_gemmascope.host import load_plugins
    from saelens_gemmascope.training.presets import preset_name

    presets = load_plugins().presets
    chosen = []
    for site in settings.sites:
        for layer in settings.layers:
            for width in settings.widths:
                preset = presets[preset_name(settings.model, site, layer, width)]
                if settings.steps is not None:
                    batch = int(preset.overrides["train_batch_size_tokens"])
                    tokens = settings.steps * batch
                    preset = dataclasses.replace(preset, training_tokens=tokens, calibration_tokens=tokens)
                chosen.append(preset)
    return chosen


def zero_ablation(sae: Any) -> Any:
    """An SAE of the same shape and hook whose reconstruction is always zero (the baseline)."""
    import torch
    from sae_lens import SAE

    zero = SAE.from_dict(sae.cfg.to_dict())
    with torch.no_grad():
        for name, parameter in zero.named_parameters():
            parameter.fill_(torch.inf if name == "threshold" else 0.0)
    return zero


@contextmanager
def _expected_warnings_hidden() -> Iterator[None]:
    """Hide :data:`EXPECTED_WARNINGS`, and SAELens's log warning that the model and data were passed
    in memory (they are, on purpose), for the demo's duration only."""
    sae_lens_logger = logging.getLogger("sae_lens")
    level = sae_lens_logger.level
    sae_lens_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for message in EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        sae_lens_logger.setLevel(level)


@contextmanager
def _stages(show: bool) -> Iterator[Callable[[str], None]]:
    from tqdm.auto import tqdm

    with tqdm(total=len(STAGES), desc="gemmascope demo", unit="stage", disable=not show) as bar:

        def advance(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        bar.set_postfix_str(STAGES[0])
        yield advance


def _load_model(settings: DemoSettings, progress: bool) -> tuple[Any, dict[str, Any]]:
    if settings.model == PRETRAINED_TINY_NAME:
        from saelens_gemmascope.models.pretrained_tiny import load_pretrained_tiny_gemma2

        tiny = load_pretrained_tiny_gemma2(progress=progress)
        return tiny.tl_model, dict(tiny.metrics)
    from saelens_gemmascope.models.loading import load_language_model

    return load_language_model(settings.model), {}


def run_demo(
    out_dir: str | Path, settings: DemoSettings = DemoSettings(), *, progress: bool = True
) -> DemoResult:
    """Train, save, reload and evaluate a small Gemma Scope-style suite; write everything to ``out_dir``."""
    from sae_lens import SAE
    from tqdm.auto import tqdm

    from saelens_gemmascope.data import stdlib_token_dataset
    from saelens_gemmascope.evaluation import EvalSAE, evaluate_saes
    from saelens_gemmascope.training.run_spec import RunSpec
    from saelens_gemmascope.training.suite import plan_suite, run_suite
    from saelens_gemmascope.training.suite_training import group_trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = tqdm.write if progress else (lambda _: None)
    with _stages(progress) as advance, _expected_warnings_hidden():
        model, model_metrics = _load_model(settings, progress)
        advance(STAGES[1])

        plan = plan_suite(demo_presets(settings))
        say(plan.describe())
        suite_root = out / "suite"
        suite = run_suite(
            plan,
            suite_root,
            group_trainers(RunSpec(output=suite_root), model=model),
            calibration_grid=settings.calibration_grid,
            refine_rounds=settings.refine_rounds,
            progress=say,
        )
        advance(STAGES[2])

        # Reload through SAELens's own API, from the local releases the suite registered.
        trained = [t for t in suite.saes if t.release and t.export_id]
        items: list[EvalSAE] = []
        for t in trained:
            sae = SAE.from_pretrained(t.release, t.export_id)
            items.append(EvalSAE(sae, label=t.name, source="trained", release=t.release, sae_id=t.export_id))
        baselines = {}
        for item in items:
            hook = item.sae.cfg.metadata.hook_name
            if hook not in baselines:
                baselines[hook] = EvalSAE(
                    zero_ablation(item.sae), label=f"zero-ablation {hook}", source="baseline"
                )
        advance(STAGES[3])

        heldout = stdlib_token_dataset(
            model.tokenizer, settings.eval_context, n_sequences=settings.eval_sequences, holdout=True
        )
        result = evaluate_saes(
            [*items, *baselines.values()],
            model=model,
            dataset=heldout,
            n_sequences=settings.eval_sequences,
            context_size=settings.eval_context,
            out_dir=out / "eval",
            progress=progress,
        )
        advance(STAGES[4])

        rows = _rows(trained, result, baselines)
        summary = _write_summary(out, rows, model_metrics, settings)
    return DemoResult(out, tuple(rows), model_metrics, result.files.get("report", out / "eval"), summary)


def _rows(trained: Sequence[Any], result: Any, baselines: dict[str, Any]) -> list[DemoRow]:
    rows = []
    for t in trained:
        metrics = result.by_label(t.name)
        zero = result.by_label(baselines[metrics.hook_name].label)
        rows.append(
            DemoRow(
                label=t.name,
                site=metrics.site,
                layer=int(metrics.layer),
                d_sae=metrics.d_sae,
                target_l0=t.target_l0,
                l0_coefficient=t.l0_coefficient,
                l0=float(metrics["l0"]),
                fvu=float(metrics["fvu"]),
                delta_loss=float(metrics["delta_loss"]),
                zero_ablation_delta_loss=float(zero["delta_loss"]),
            )
        )
    return rows


def ladder_is_monotone(rows: Sequence[DemoRow]) -> bool:
    """Within every (site, layer, width), a larger λ gives a smaller L0."""
    ladders: dict[tuple[str, int, int], list[DemoRow]] = {}
    for row in rows:
        ladders.setdefault((row.site, row.layer, row.d_sae), []).append(row)
    for ladder in ladders.values():
        l0s = [r.l0 for r in sorted(ladder, key=lambda r: r.l0_coefficient)]
        if any(later >= earlier for earlier, later in itertools.pairwise(l0s)):
            return False
    return True


def _write_summary(
    out: Path, rows: Sequence[DemoRow], model_metrics: dict[str, Any], settings: DemoSettings
) -> Path:
    lines = [
        "# gemmascope demo",
        "",
        f"Model: `{settings.model}`"
        + (
            f" (held-out cross-entropy {model_metrics['heldout_ce_nats']:.2f} nats/token; "
            f"unigram baseline {model_metrics['unigram_ce_nats']:.2f})"
            if "heldout_ce_nats" in model_metrics
            else ""
        ),
        "",
        "| SAE | target L0 | λ | L0 | explained variance | delta loss | zero-ablation delta loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.target_l0:g} | {r.l0_coefficient:.3g} | {r.l0:.1f} | {1 - r.fvu:.3f} | "
            f"{r.delta_loss:.3f} | {r.zero_ablation_delta_loss:.3f} |"
        )
    lines += [
        "",
        f"L0 decreases with λ on every ladder: {'yes' if ladder_is_monotone(rows) else 'NO'}.",
        "Full report with plots: `eval/report.md`; SAEs: `suite/saes/` (SAELens format) and "
        "`suite/release/` (Gemma Scope layout).",
    ]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(
        json.dumps({"model": model_metrics, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2) + "\n"
    )
    return summary
