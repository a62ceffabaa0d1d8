"""Write an evaluation's outputs: ``metrics.json``, ``report.md`` and the PNG plots it embeds."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from saelens_gemmascope.evaluation.plots import (
    TranscoderComparison,
    interpolate_at_l0,
    plot_by_domain,
    plot_by_position,
    plot_frontier,
    plot_transcoders,
    site_label,
    transcoder_comparisons,
)
from saelens_gemmascope.evaluation.result import (
    DEAD_FLAG_FRACTION,
    DENSE_FLAG_FRACTION,
    METRIC_NAMES,
    EvalResult,
    SAEMetrics,
)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
FRONTIER_PLOT = "frontier.png"
POSITION_PLOT = "by_position.png"
DOMAIN_PLOT = "delta_loss_by_domain.png"
TRANSCODER_PLOT = "transcoders.png"


def _json_safe(value: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.1f}%"


def _flagged(cell: str, flagged: bool) -> str:
    """A table cell marked when its value is above a flag threshold."""
    return f"**{cell} ⚠**" if flagged else cell


def _latent_cells(sae: SAEMetrics) -> tuple[str, str]:
    dead, dense = sae.metrics["dead_fraction"], sae.metrics["dense_fraction"]
    flags = sae.latent_flags()
    return (
        _flagged(_percent(dead), any(f.startswith("dead") for f in flags)),
        _flagged(_percent(dense), any(f.startswith("dense") for f in flags)),
    )


def _column_names(dense_threshold: float) -> list[str]:
    names = dict(METRIC_NAMES)
    names["dense_fraction"] += f" (>{100 * dense_threshold:g}% of tokens)"
    return list(names.values())


def _site_tables(saes: list[SAEMetrics], dense_threshold: float) -> list[str]:
    by_site: dict[str, list[SAEMetrics]] = defaultdict(list)
    for sae in saes:
        by_site[sae.site if sae.layer is None else f"{sae.site}, layer {sae.layer}"].append(sae)
    lines: list[str] = []
    for site, members in sorted(by_site.items()):
        lines += [
            f"### {site}",
            "",
            "| SAE | source | width | " + " | ".join(_column_names(dense_threshold)) + " |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for sae in sorted(members, key=lambda s: (s.d_sae, s["l0"] or 0)):
            m = sae.metrics
            dead, dense = _latent_cells(sae)
            lines.append(
                f"| {sae.label} | {sae.source} | {site_label(sae).split()[-1]} | {format_number(m['l0'])} | "
                f"{format_number(m['delta_loss'])} | {format_number(m['fvu'])} | {format_number(m['kl'])} | "
                f"{dead} | {dense} |"
            )
        lines.append("")
    return lines


def _flag_section(saes: list[SAEMetrics], dense_threshold: float) -> list[str]:
    """Every SAE with too many dead or dense latents, named with its figures (⚠ in the tables)."""
    flagged = [(sae, sae.latent_flags()) for sae in saes]
    flagged = [(sae, flags) for sae, flags in flagged if flags]
    rule = (
        f"more than {100 * DEAD_FLAG_FRACTION:g}% of latents dead, or more than "
        f"{100 * DENSE_FLAG_FRACTION:g}% dense (firing on over {100 * dense_threshold:g}% of tokens)"
    )
    if not flagged:
        return ["## Latent flags", "", f"No SAE has {rule}.", ""]
    lines = ["## ⚠ Latent flags", "", f"{len(flagged)} of {len(saes)} SAEs have {rule}:", ""]
    lines += [f"- **{sae.label}**: {'; '.join(flags)}" for sae, flags in flagged]
    return [*lines, ""]


def _data_line(s: dict[str, Any]) -> str:
    """The evaluation data, with how many sequences are distinct (flagged when some repeat)."""
    n, distinct = s["n_sequences"], s.get("n_distinct_sequences")
    line = f"Model `{s['model']}`; dataset {s['dataset']}; {n} sequences"
    if distinct is not None:
        line += f" ({distinct} distinct)" if distinct == n else f" (**⚠ only {distinct} distinct**)"
    return line + f" x {s['context_size']} tokens (seed {s['seed']})."


def _capitalised(name: str) -> str:
    """The first letter upper case, the rest as given (``str.capitalize`` would turn LM into lm)."""
    return name[:1].upper() + name[1:]


def _domain_table(saes: list[SAEMetrics]) -> list[str]:
    domains = sorted({d for sae in saes for d in sae.by_domain})
    if not domains:
        return []
    lines = [
        f"## {_capitalised(METRIC_NAMES['delta_loss'])} per domain",
        "",
        "| domain | " + " | ".join(s.label for s in saes) + " |",
        "|---|" + "---:|" * len(saes),
    ]
    for domain in domains:
        cells = [format_number((s.by_domain.get(domain) or {}).get("delta_loss")) for s in saes]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    return [*lines, ""]


#: The paper's transcoder appendix compares these, so the report does too (on the MLP output).
TRANSCODER_INTRO = (
    "A transcoder reads the MLP input (just after the pre-MLP RMSNorm) and reconstructs the MLP output; "
    "an MLP-output SAE reads and reconstructs the MLP output itself. Spliced, both replace the MLP output, "
    "so their delta LM loss and FVU (both measured on the MLP output) compare directly, as in the Gemma "
    "Scope paper's transcoder appendix; the zero ablation sets the MLP output to zero."
)


def _comparison_rows(comparison: TranscoderComparison) -> list[str]:
    kinds = [("transcoder", comparison.transcoders), ("MLP-output SAE", comparison.mlp_saes)]
    kinds.append(("zero ablation", comparison.zero_ablations[:1]))  # all of them measure the same thing
    lines = []
    for kind, members in kinds:
        for sae in sorted(members, key=lambda s: (s.d_sae, s["l0"] or 0)):
            m = sae.metrics
            lines.append(
                f"| {kind} | {sae.label} | {sae.source} | {site_label(sae).split()[-1]} | {format_number(m['l0'])} "
                f"| {format_number(m['delta_loss'])} | {format_number(m['fvu'])} |"
            )
    return lines


def transcoder_vs_sae_lines(comparison: TranscoderComparison) -> list[str]:
    """Each transcoder against the MLP-output SAEs of its layer at the transcoder's L0 (their delta
    LM loss interpolated linear in log L0), as bullet lines; none where the ladders do not overlap."""
    lines = []
    for tc in sorted(comparison.transcoders, key=lambda s: s["l0"] or 0):
        l0 = float(tc["l0"] or 0)
        sae_loss = interpolate_at_l0(comparison.mlp_saes, l0, "delta_loss")
        if sae_loss is None or tc["delta_loss"] is None:
            continue
        loss = float(tc["delta_loss"])
        verdict = "lower" if loss < sae_loss else "higher"
        lines.append(
            f"- {tc.label} (L0 {l0:.3g}): {METRIC_NAMES['delta_loss']} {loss:.4g}, {verdict} than the "
            f"MLP-output SAEs' {sae_loss:.4g} at that L0"
        )
    return lines


def _transcoder_section(saes: list[SAEMetrics]) -> list[str]:
    comparisons = transcoder_comparisons(saes)
    if not comparisons:
        return []
    lines = ["## Transcoders against MLP-output SAEs", "", TRANSCODER_INTRO, ""]
    for comparison in comparisons:
        where = "embedding" if comparison.layer is None else f"layer {comparison.layer}"
        lines += [
            f"### MLP output, {where} (`{comparison.mlp_out_hook}`)",
            "",
            f"| kind | SAE | source | width | {METRIC_NAMES['l0']} | {METRIC_NAMES['delta_loss']} | "
            f"{METRIC_NAMES['fvu']} |",
            "|---|---|---|---|---:|---:|---:|",
            *_comparison_rows(comparison),
            "",
        ]
        at_equal_l0 = transcoder_vs_sae_lines(comparison)
        if at_equal_l0:
            lines += [
                "At equal L0 (the MLP-output SAEs interpolated linear in log L0):",
                "",
                *at_equal_l0,
                "",
            ]
    return [*lines, f"Plot: `{TRANSCODER_PLOT}`.", ""]


def render_report(result: EvalResult, plots: dict[str, Path]) -> str:
    s = result.settings
    dense_threshold = float(s.get("dense_threshold", 0.1))
    lines = [
        "# SAE evaluation",
        "",
        _data_line(s),
        "",
        f"Masking: activations {s['masking']['activations']}; loss {s['masking']['loss']}.",
        "Delta LM loss is the spliced minus the clean next-token cross-entropy (nats); FVU, the "
        "fraction of variance unexplained, is E‖x - x̂‖² / E‖x - E x‖² (explained variance = 1 - FVU); "
        "KL is KL(clean ‖ spliced); dead latents never fired on the counted tokens, dense ones fired "
        f"on more than {100 * dense_threshold:g}% of them. L0 is measured here, on these tokens.",
        "",
        *_flag_section(result.saes, dense_threshold),
        *_site_tables(result.saes, dense_threshold),
        *_domain_table(result.saes),
        *_transcoder_section(result.saes),
        "## Plots",
        "",
    ]
    lines += [f"![{kind}]({path.name})\n" for kind, path in plots.items()]
    return "\n".join(lines)


def write_outputs(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Write every output under ``out_dir`` (created); returns the paths by kind (also in ``result.files``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "frontier": plot_frontier(result.saes, out / FRONTIER_PLOT),
        "by_position": plot_by_position(result.saes, out / POSITION_PLOT),
    }
    domain_plot = plot_by_domain(result.saes, out / DOMAIN_PLOT)
    if domain_plot is not None:
        plots["by_domain"] = domain_plot
    transcoder_plot = plot_transcoders(result.saes, out / TRANSCODER_PLOT)
    if transcoder_plot is not None:
        plots["transcoders"] = transcoder_plot
    metrics_path = out / METRICS_FILE
    metrics_path.write_text(json.dumps(_json_safe(result.to_dict()), indent=1, allow_nan=False) + "\n")
    report_path = out / REPORT_FILE
    report_path.write_text(render_report(result, plots))
    result.files = {"metrics": metrics_path, "report": report_path, **plots}
    return result.files
