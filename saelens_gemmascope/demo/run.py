"""``gemmascope demo``: the whole product on the embedded default, on a CPU, with no network.

One straight line: the embedded tiny Gemma 2 (trained on Python's help text on first use, then
cached) -> presets -> λ calibration -> one shared training pass of every SAE with the Gemma Scope
recipe -> SAELens format and Gemma Scope layout -> local release -> ``SAE.from_pretrained`` ->
evaluation like the paper, next to a zero-ablation baseline per site -> report and plots.

It also trains one transcoder ladder (the first layer, the narrowest width), in the same forward
pass, and shows it next to the MLP-output SAEs of that layer and the MLP output's zero ablation, as
in the paper's transcoder appendix. Where the model's transcoder preset is missing or cannot be
trained, the demo says so in one line and goes on without it.

``--suite gemma-scope-2`` (:data:`GEMMASCOPE2_SETTINGS`) runs the same line with Gemma Scope 2's
recipe on the tiny Gemma 3 (random weights, fed the same embedded text): the quadratic L0 penalty
around each target with one fixed λ, so no calibration stage; plain and skip transcoders; export in
Gemma Scope 2's layout (``resid_post/layer_1_width_256_l0_small``). Its summary says how close each
SAE's L0 came to its target.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saelens_gemmascope.demo.embedded_model import EMBEDDED_MODEL_NAME
from saelens_gemmascope.suite.preset import TrainingPreset

if TYPE_CHECKING:
    from saelens_gemmascope.progress import ProgressDisplay

#: SAELens warnings that are expected in the demo and say nothing to its reader: the embedded text
#: is small, so the store cycles through it. (Those that say nothing to any user of this package are
#: hidden everywhere: saelens_gemmascope.quiet.)
EXPECTED_WARNINGS = (r"The training dataset contains fewer samples",)

STAGES = ("language model", "train the suite", "load with SAE.from_pretrained", "evaluate", "summary")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains: the three sites on two layers, two widths, a ladder of three targets."""

    model: str = EMBEDDED_MODEL_NAME
    sites: tuple[str, ...] = ("res", "mlp", "att")
    layers: tuple[int, ...] = (1, 2)
    widths: tuple[str, ...] = ("512", "1024")
    #: training steps per SAE of the narrowest width (None: the presets' own budget); calibration
    #: probes run as long
    steps: int | None = 160
    #: a wider SAE trains for proportionally more steps (1024 latents: 2x those of 512), the same
    #: tokens per latent: at equal steps the 1024-wide SAEs measured a worse FVU than the 512-wide
    #: ones at every L0 (undertrained; at 2x the steps they beat them; see WIDTH_CAVEAT)
    scale_steps_with_width: bool = True
    #: one probe round on a grid bracketing this model's λs, no refinement: a CPU-sized calibration
    calibration_grid: tuple[float, ...] = (1e-3, 4e-3, 1.6e-2, 6.4e-2)
    refine_rounds: int = 0
    eval_sequences: int = 64
    eval_context: int = 128
    #: also train one transcoder ladder: the first of ``layers``, the narrowest of ``widths``
    transcoders: bool = True


#: A shortened run (one layer, one width, few steps), for tests and a first look.
#: (steps stay above the presets' λ warm-up of 100 steps, or the ladder cannot separate).
QUICK_SETTINGS = DemoSettings(layers=(1,), widths=("512",), steps=160, eval_sequences=16)

#: The demo's suites: Gemma Scope (the default) and Gemma Scope 2.
GEMMASCOPE_SUITE = "gemma-scope"
GEMMASCOPE2_SUITE = "gemma-scope-2"
DEMO_SUITES = (GEMMASCOPE_SUITE, GEMMASCOPE2_SUITE)

#: ``--suite gemma-scope-2``: the tiny Gemma 3's Gemma Scope 2 presets (their own 300 steps, no
#: calibration) at a local and the global layer, with plain and skip transcoders at the first.
GEMMASCOPE2_SETTINGS = DemoSettings(
    model="tiny-gemma-3",
    sites=("res", "mlp", "att", "skip_transcoder"),
    layers=(1, 5),
    widths=("256",),
    steps=None,
)
GEMMASCOPE2_QUICK_SETTINGS = dataclasses.replace(
    GEMMASCOPE2_SETTINGS, sites=("res", "mlp", "att"), layers=(1,), eval_sequences=16
)


def suite_settings(suite: str, quick: bool = False) -> DemoSettings:
    """The demo settings of ``suite`` (one of :data:`DEMO_SUITES`), shortened when ``quick``."""
    if suite == GEMMASCOPE_SUITE:
        return QUICK_SETTINGS if quick else DemoSettings()
    if suite == GEMMASCOPE2_SUITE:
        return GEMMASCOPE2_QUICK_SETTINGS if quick else GEMMASCOPE2_SETTINGS
    raise ValueError(f"unknown demo suite {suite!r}; one of {', '.join(DEMO_SUITES)}")


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
    dead_fraction: float | None = None
    dense_fraction: float | None = None
    #: the folder in the local release (``layer_1/width_512/average_l0_24``: named by the target L0)
    export_id: str | None = None

    @property
    def latent_flags(self) -> list[str]:
        """Too many dead or dense latents (the report's thresholds), described; empty when fine."""
        from saelens_gemmascope.evaluation.result import latent_flags

        return latent_flags(self.dead_fraction, self.dense_fraction)


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    rows: tuple[DemoRow, ...]
    model_metrics: dict[str, Any]
    report: Path
    summary: Path
    #: what the demo left out and why (one line each): e.g. a transcoder preset it cannot train
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TranscoderChoice:
    """The demo's transcoder ladder: its preset, or None with the one-line reason it is left out."""

    preset: TrainingPreset | None
    note: str | None = None


def demo_transcoder(settings: DemoSettings) -> TranscoderChoice:
    """The transcoder preset at the first layer and narrowest width, if the demo trains one."""
    from saelens_gemmascope.registry import registered_presets
    from saelens_gemmascope.suite.catalog import TRANSCODER, preset_name

    if not settings.transcoders or not settings.layers:
        return TranscoderChoice(None)
    presets = registered_presets()
    layer = settings.layers[0]
    candidates = [presets.get(preset_name(settings.model, TRANSCODER, layer, w)) for w in settings.widths]
    found = [p for p in candidates if p is not None]
    if not found:
        return TranscoderChoice(
            None, f"No transcoder ladder: {settings.model} has no transcoder preset at layer {layer}."
        )
    preset = min(found, key=lambda p: p.d_sae)
    if not preset.trainable:
        # Shown to the reader, so the first clause of the reason is enough.
        reason = (preset.not_trainable_reason or "").split(":")[0]
        return TranscoderChoice(None, f"No transcoder ladder: {preset.name} cannot be trained ({reason}).")
    return TranscoderChoice(preset)


def demo_presets(settings: DemoSettings) -> list[TrainingPreset]:
    """The presets the demo trains (the transcoder's too, when :func:`demo_transcoder` has one),
    shortened to ``settings.steps`` if given."""
    from saelens_gemmascope.registry import registered_presets
    from saelens_gemmascope.suite.catalog import preset_name

    presets = registered_presets()
    chosen = [
        presets[preset_name(settings.model, site, layer, width)]
        for site in settings.sites
        for layer in _site_layers(settings, site)
        for width in settings.widths
    ]
    transcoder = demo_transcoder(settings).preset
    if transcoder is not None:
        chosen.append(transcoder)
    if settings.steps is None:
        return chosen
    narrowest = min(preset.d_sae for preset in chosen)
    shortened = []
    for preset in chosen:
        steps = (
            round(settings.steps * preset.d_sae / narrowest)
            if settings.scale_steps_with_width
            else settings.steps
        )
        tokens = steps * int(preset.overrides["train_batch_size_tokens"])
        shortened.append(dataclasses.replace(preset, training_tokens=tokens, calibration_tokens=tokens))
    return shortened


def _site_layers(settings: DemoSettings, site: str) -> tuple[int, ...]:
    """Skip transcoders, like the transcoder ladder, at the first layer only, and none without
    transcoders (``--no-transcoders``)."""
    from saelens_gemmascope.suite.catalog import SKIP_TRANSCODER

    if site != SKIP_TRANSCODER:
        return settings.layers
    return settings.layers[:1] if settings.transcoders else ()


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
def _stages(show: bool) -> Iterator[ProgressDisplay]:
    """The demo's one progress display (stages, then each long step's tokens, rate and ETA), active
    for the run so that training and evaluation report to it (see training.progress)."""
    from saelens_gemmascope.progress import ProgressDisplay

    display = ProgressDisplay(enabled=show, stages=STAGES)
    with display.activate():
        display.stage(STAGES[0])
        yield display


def _load_model(settings: DemoSettings, progress: bool) -> tuple[Any, dict[str, Any]]:
    if settings.model == EMBEDDED_MODEL_NAME:
        from saelens_gemmascope.demo.embedded_model import load_embedded_model

        tiny = load_embedded_model(progress=progress)
        return tiny.tl_model, dict(tiny.metrics)
    from saelens_gemmascope.models.loading import load_language_model

    return load_language_model(settings.model), {}


def run_demo(
    out_dir: str | Path, settings: DemoSettings = DemoSettings(), *, progress: bool = True
) -> DemoResult:
    """Train, save, reload and evaluate a small Gemma Scope-style suite; write everything to ``out_dir``."""
    from sae_lens import SAE

    from saelens_gemmascope.evaluation import EvalSAE, evaluate_saes
    from saelens_gemmascope.quiet import quiet_saelens
    from saelens_gemmascope.runners.run_spec import RunSpec
    from saelens_gemmascope.suite.passes import pass_training
    from saelens_gemmascope.suite.plan import plan_suite
    from saelens_gemmascope.suite.run import run_suite

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _stages(progress) as display, quiet_saelens(hide=EXPECTED_WARNINGS):
        advance, say = display.stage, display.write
        model, model_metrics = _load_model(settings, progress)
        advance(STAGES[1])

        notes = tuple(note for note in [demo_transcoder(settings).note] if note)
        for note in notes:
            say(note)
        presets = demo_presets(settings)
        plan = plan_suite(presets)
        say(plan.describe())
        suite_root = out / "suite"
        suite = run_suite(
            plan,
            suite_root,
            pass_training(RunSpec(output=suite_root), model=model),
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
        baselines = zero_ablation_baselines(items)
        advance(STAGES[3])

        # dataset=None: the embedded held-out text, distinct sequences only (never cycled).
        result = evaluate_saes(
            [*items, *baselines.values()],
            model=model,
            dataset=None,
            n_sequences=settings.eval_sequences,
            context_size=settings.eval_context,
            out_dir=out / "eval",
            progress=progress,
        )
        advance(STAGES[4])

        rows = _rows(trained, result, baselines)
        # Gemma Scope 2's recipe is the presets' (each says so), not a guess from the trained λs.
        scope2 = all(p.fixed_lambda for p in presets)
        summary = _write_summary(out, rows, model_metrics, settings, result.settings, notes, scope2=scope2)
    report = result.files.get("report", out / "eval")
    return DemoResult(out, tuple(rows), model_metrics, report, summary, notes)


def _write_hook(sae: Any) -> str:
    """Where an SAE's reconstruction goes: a transcoder's output hook (the MLP output), else its hook."""
    meta = sae.cfg.metadata
    return str(meta.hook_name_out or meta.hook_name)


def zero_ablation_baselines(items: Sequence[Any]) -> dict[str, Any]:
    """One zero-ablation baseline per write hook. A transcoder writes the MLP output, so it shares
    the baseline of the MLP-output SAE of its layer (shaped after that SAE when there is one)."""
    from saelens_gemmascope.evaluation import EvalSAE

    baselines: dict[str, Any] = {}
    plain_first = sorted(items, key=lambda item: item.sae.cfg.metadata.hook_name_out is not None)
    for item in plain_first:
        hook = _write_hook(item.sae)
        if hook not in baselines:
            baselines[hook] = EvalSAE(
                zero_ablation(item.sae), label=f"zero-ablation {hook}", source="baseline"
            )
    return baselines


def _rows(trained: Sequence[Any], result: Any, baselines: dict[str, Any]) -> list[DemoRow]:
    rows = []
    for t in trained:
        metrics = result.by_label(t.name)
        zero = result.by_label(baselines[metrics.hook_name_out or metrics.hook_name].label)
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
                dead_fraction=_finite_or_none(metrics["dead_fraction"]),
                dense_fraction=_finite_or_none(metrics["dense_fraction"]),
                export_id=t.export_id,
            )
        )
    return rows


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _flag_cell(fraction: float | None, kind: str, row: DemoRow) -> str:
    if fraction is None:
        return "-"
    cell = f"{100 * fraction:.1f}%"
    return f"**{cell} ⚠**" if any(f.startswith(kind) for f in row.latent_flags) else cell


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


#: Said under the width comparison when a wider SAE is not better at equal L0: what was measured.
WIDTH_CAVEAT = (
    "Measured on this model (layer 1, all sites): trained for the same 200 steps, every 1024-wide SAE had "
    "a worse FVU than the 512-wide one at equal L0 (undertrained: more latents, each updated less "
    "often); with twice the steps (the default, scale_steps_with_width) every one had the better FVU. "
    "A wider SAE still behind needs more steps."
)


@dataclass(frozen=True)
class WidthComparison:
    """A wider SAE against the narrower one of its (site, layer) at the wider one's L0."""

    site: str
    layer: int
    narrow: int
    wide: int
    l0: float
    narrow_fvu: float  # interpolated along the narrower ladder, linear in log L0
    wide_fvu: float

    @property
    def wider_is_better(self) -> bool:
        return self.wide_fvu < self.narrow_fvu


def _interpolated(ladder: Sequence[DemoRow], l0: float, metric: str = "fvu") -> float | None:
    """``metric`` of ``ladder`` at ``l0``, linear in log L0 between its two nearest rungs; None outside it."""
    points = sorted((r.l0, float(getattr(r, metric))) for r in ladder if r.l0 > 0)
    for (l0_a, fvu_a), (l0_b, fvu_b) in itertools.pairwise(points):
        if l0_a <= l0 <= l0_b:
            share = 0.0 if l0_b == l0_a else math.log(l0 / l0_a) / math.log(l0_b / l0_a)
            return fvu_a + share * (fvu_b - fvu_a)
    return None


def width_comparisons(rows: Sequence[DemoRow]) -> list[WidthComparison]:
    """Each SAE of a wider width against the next narrower width of its (site, layer), at equal L0
    (the narrower FVU interpolated at the wider SAE's L0); SAEs outside the narrower ladder's L0
    range are left out."""
    ladders: dict[tuple[str, int], dict[int, list[DemoRow]]] = {}
    for row in rows:
        ladders.setdefault((row.site, row.layer), {}).setdefault(row.d_sae, []).append(row)
    comparisons = []
    for (site, layer), by_width in sorted(ladders.items()):
        for narrow, wide in itertools.pairwise(sorted(by_width)):
            for row in sorted(by_width[wide], key=lambda r: r.l0):
                fvu = _interpolated(by_width[narrow], row.l0)
                if fvu is not None:
                    comparisons.append(WidthComparison(site, layer, narrow, wide, row.l0, fvu, row.fvu))
    return comparisons


def _width_lines(rows: Sequence[DemoRow]) -> list[str]:
    comparisons = width_comparisons(rows)
    if not comparisons:
        return []
    better = [c for c in comparisons if c.wider_is_better]
    lines = [
        f"Width at equal L0 (FVU of the narrower SAE interpolated at the wider one's L0): the wider SAE "
        f"has the lower FVU in {len(better)} of {len(comparisons)} comparisons."
    ]
    worse = [c for c in comparisons if not c.wider_is_better]
    if worse:
        cases = ", ".join(
            f"{c.site} L{c.layer} {c.wide} vs {c.narrow} at L0 {c.l0:.0f} ({c.wide_fvu:.3f} vs {c.narrow_fvu:.3f})"
            for c in worse
        )
        lines.append(f"Not in: {cases}. {WIDTH_CAVEAT}")
    return lines


TRANSCODER_SITE = "transcoder"


def transcoder_lines(rows: Sequence[DemoRow]) -> list[str]:
    """Each transcoder against the MLP-output SAEs of its layer (their delta LM loss interpolated at
    the transcoder's L0) and the MLP output's zero ablation: the paper's transcoder appendix."""
    lines = []
    for tc in sorted((r for r in rows if r.site == TRANSCODER_SITE), key=lambda r: (r.layer, r.label, r.l0)):
        mlp = [r for r in rows if r.site == "mlp" and r.layer == tc.layer]
        sae_loss = _interpolated(mlp, tc.l0, "delta_loss")
        versus = f"MLP-output SAEs {sae_loss:.3f} at that L0, " if sae_loss is not None else ""
        lines.append(
            f"Transcoder {tc.label} at L0 {tc.l0:.1f}: delta LM loss {tc.delta_loss:.3f} ({versus}"
            f"zero ablation of the MLP output {tc.zero_ablation_delta_loss:.3f})."
        )
    return lines


def _flag_lines(rows: Sequence[DemoRow]) -> list[str]:
    from saelens_gemmascope.evaluation.result import DEAD_FLAG_FRACTION, DENSE_FLAG_FRACTION

    flagged = [r for r in rows if r.latent_flags]
    rule = (
        f"more than {100 * DEAD_FLAG_FRACTION:g}% dead latents or more than {100 * DENSE_FLAG_FRACTION:g}% "
        "dense ones (firing on over 10% of tokens)"
    )
    if not flagged:
        return [f"No SAE has {rule}."]
    listed = "; ".join(f"{r.label} ({', '.join(r.latent_flags)})" for r in flagged)
    return [f"⚠ {len(flagged)} of {len(rows)} SAEs have {rule}: {listed}."]


def _data_line(eval_settings: dict[str, Any], scope2: bool = False) -> str:
    n, distinct = eval_settings["n_sequences"], eval_settings.get("n_distinct_sequences", "?")
    naming = (
        "release ids name the target's L0 label, as Gemma Scope 2 does (`..._l0_small` for the smallest)"
        if scope2
        else "release ids name the target L0 (`average_l0_24` for a target of 24)"
    )
    return (
        f"Evaluated on {n} held-out sequences ({distinct} distinct) of {eval_settings['context_size']} "
        f"tokens; L0 is measured there, {naming}."
    )


#: How far from its target an SAE's L0 may land and still count as on target (the acceptance bound).
TARGET_TOLERANCE = 1.5


def target_ratios(rows: Sequence[DemoRow]) -> list[float]:
    """Each SAE's measured L0 over its target L0."""
    return [r.l0 / r.target_l0 for r in rows if r.target_l0]


def _target_lines(rows: Sequence[DemoRow]) -> list[str]:
    ratios = target_ratios(rows)
    if not ratios:
        return []
    within = [q for q in ratios if 1 / TARGET_TOLERANCE <= q <= TARGET_TOLERANCE]
    return [
        f"L0 within x{TARGET_TOLERANCE:g} of its target: {len(within)} of {len(ratios)} SAEs "
        f"(L0 / target from {min(ratios):.2f} to {max(ratios):.2f})."
    ]


def _write_summary(
    out: Path,
    rows: Sequence[DemoRow],
    model_metrics: dict[str, Any],
    settings: DemoSettings,
    eval_settings: dict[str, Any],
    notes: Sequence[str] = (),
    *,
    scope2: bool = False,
) -> Path:
    """``summary.md`` and ``summary.json``; ``scope2``: the presets follow Gemma Scope 2's recipe
    (one fixed λ, no calibration, its export layout)."""
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
        "| SAE | release id | target L0 | λ | L0 | FVU | delta LM loss | zero-ablation delta LM loss | "
        "dead latents | dense latents |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.export_id or '-'} | {r.target_l0:g} | {r.l0_coefficient:.3g} | {r.l0:.1f} | "
            f"{r.fvu:.3f} | {r.delta_loss:.3f} | {r.zero_ablation_delta_loss:.3f} | "
            f"{_flag_cell(r.dead_fraction, 'dead', r)} | {_flag_cell(r.dense_fraction, 'dense', r)} |"
        )
    ladder_line = (
        "Gemma Scope 2's recipe: one λ for every SAE, the quadratic L0 penalty aiming at each target "
        "(no calibration)."
        if scope2
        else f"L0 decreases with λ on every ladder: {'yes' if ladder_is_monotone(rows) else 'NO'}."
    )
    lines += [
        "",
        "FVU is the fraction of variance unexplained (explained variance = 1 - FVU); delta LM loss is "
        "the spliced minus the clean next-token loss (nats).",
        _data_line(eval_settings, scope2),
        ladder_line,
        *_target_lines(rows),
        *_width_lines(rows),
        *transcoder_lines(rows),
        *notes,
        *_flag_lines(rows),
        "Full report with plots: `eval/report.md`; SAEs: `suite/saes/` (SAELens format) and "
        f"`suite/release/` (Gemma Scope{' 2' if scope2 else ''} layout).",
    ]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            {"model": model_metrics, "rows": [dataclasses.asdict(r) for r in rows], "notes": list(notes)},
            indent=2,
        )
        + "\n"
    )
    return summary
