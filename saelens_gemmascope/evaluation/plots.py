"""The report's figures (matplotlib, Agg backend; no display needed).

* :func:`plot_frontier`: delta LM loss and FVU against L0, as in the paper's Figure 2, one row per
  site, log axes, each layer's zero ablation as a reference; colour tells the layer apart, line
  style the width, the marker the source, so a trained SAE and the released one share a panel.
* :func:`plot_by_position`: delta loss and FVU at each sequence position, one row per site.
* :func:`plot_by_domain`: delta loss per dataset domain, one bar per SAE.
* :func:`plot_transcoders`: each layer's transcoders next to the MLP-output SAEs of that layer and
  the MLP output's zero ablation (delta LM loss and FVU against L0), as in the paper's transcoder
  appendix.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelens_gemmascope.evaluation.result import METRIC_NAMES, SAEMetrics

SOURCE_MARKERS = {"released": "o", "trained": "s", "local": "^"}
_OTHER_MARKER = "D"
_DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # a headless backend unless the caller chose one
    import matplotlib.pyplot as plt

    return plt


def width_label(d_sae: int) -> str:
    if d_sae >= 2**20 and d_sae % 2**20 == 0:
        return f"{d_sae // 2**20}m"
    if d_sae >= 2**12 and d_sae % 2**10 == 0:
        return f"{round(d_sae / 1000)}k"
    return str(d_sae)


def site_label(sae: SAEMetrics) -> str:
    where = sae.site if sae.layer is None else f"{sae.site} L{sae.layer}"
    return f"{where} {width_label(sae.d_sae)}"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    _pyplot().close(fig)
    return path


#: Rows of the frontier plot, in this order (other sites follow, sorted).
_SITE_ORDER = ("embedding", "res", "mlp", "att", "transcoder")
_WIDTH_STYLES = ("-", "--", ":", "-.")
_FRONTIER_METRICS = ("delta_loss", "fvu")


def _site_rows(saes: Sequence[SAEMetrics]) -> dict[str, list[SAEMetrics]]:
    by_site: dict[str, list[SAEMetrics]] = defaultdict(list)
    for sae in saes:
        by_site[sae.site].append(sae)
    rank = {site: i for i, site in enumerate(_SITE_ORDER)}
    return {site: by_site[site] for site in sorted(by_site, key=lambda s: (rank.get(s, len(rank)), s))}


def _layer_name(layer: int | None) -> str:
    return "embedding" if layer is None else f"L{layer}"


def _one_two_five(axis: Any) -> None:
    """Plain numbers at 1-2-5 steps on a log axis: the default minor labels overlap over a short range."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_y(ax: Any, values: Sequence[float]) -> None:
    """A log y axis, or symlog (linear within the smallest non-zero magnitude) when a value is <= 0:
    delta LM losses span decades across sites, and a good SAE's can be ~0 or slightly negative."""
    if not values:
        return
    if min(values) > 0:
        ax.set_yscale("log")
        _one_two_five(ax.yaxis)
        return
    nonzero = [abs(v) for v in values if v != 0]
    ax.set_yscale("symlog", linthresh=min(nonzero) if nonzero else 1e-3)


def _frontier_row(plt: Any, row: Sequence[Any], members: Sequence[SAEMetrics]) -> None:
    """One site: a line per (layer, width, source), coloured by layer, styled by width, marked by
    source; each layer's zero ablation a dotted horizontal line in the layer's colour."""
    layers = sorted({s.layer for s in members}, key=lambda layer: -1 if layer is None else layer)
    colours = {layer: plt.get_cmap("tab10")(i % 10) for i, layer in enumerate(layers)}
    widths = sorted({s.d_sae for s in members if not s.is_zero_ablation})
    styles = {w: _WIDTH_STYLES[i % len(_WIDTH_STYLES)] for i, w in enumerate(widths)}
    lines: dict[tuple[int | None, int, str], list[SAEMetrics]] = defaultdict(list)
    for sae in members:
        if not sae.is_zero_ablation and (sae["l0"] or 0) > 0:
            lines[sae.layer, sae.d_sae, sae.source].append(sae)
    for ax, metric in zip(row, _FRONTIER_METRICS, strict=True):
        drawn: list[float] = []
        for (layer, d_sae, source), line in sorted(lines.items(), key=lambda kv: (str(kv[0][0]), kv[0][1:])):
            points = sorted((s for s in line if s[metric] is not None), key=lambda s: float(s["l0"] or 0))
            ys = [float(s[metric] or 0) for s in points]
            ax.plot(
                [s["l0"] for s in points], ys, color=colours[layer], linestyle=styles[d_sae],
                marker=SOURCE_MARKERS.get(source, _OTHER_MARKER),
                label=f"{_layer_name(layer)} {width_label(d_sae)} ({source})",
            )  # fmt: skip
            drawn += ys
        for sae in members:
            if sae.is_zero_ablation and sae[metric] is not None:
                value = float(sae[metric] or 0)
                ax.axhline(
                    value, color=colours[sae.layer], linestyle=(0, (1, 2)), linewidth=1.5,
                    label=f"{_layer_name(sae.layer)} zero ablation",
                )  # fmt: skip
                drawn.append(value)
        _log_y(ax, drawn)
        ax.set_xscale("log")
        _one_two_five(ax.xaxis)
        ax.grid(True, which="major", alpha=0.3)


def plot_frontier(saes: Sequence[SAEMetrics], path: Path) -> Path:
    """:func:`frontier_figure`, saved to ``path``."""
    return _save(frontier_figure(saes), path)


def frontier_figure(saes: Sequence[SAEMetrics]) -> Any:
    """The paper's Figure 2, one row per site: delta LM loss and FVU against L0, all axes logarithmic
    (delta loss symlog when a value is <= 0), so that sites whose losses differ by decades stay
    readable; each layer's zero-ablation baseline (a zero-L0 SAE among ``saes``) is a dotted line."""
    plt = _pyplot()
    rows = _site_rows(saes)
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 0.6 + 3.2 * len(rows)), squeeze=False)
    for row, (site, members) in zip(axes, rows.items(), strict=True):
        _frontier_row(plt, row, members)
        row[0].set_ylabel(f"{site}\n{METRIC_NAMES['delta_loss']} (nats)")
        row[1].set_ylabel(f"{site}\n{METRIC_NAMES['fvu']}")
        # Outside the axes: with many SAEs an inside legend hides the points.
        row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    axes[0][0].set_title(f"Sparsity-fidelity: {METRIC_NAMES['delta_loss']} (dotted: zero ablation)")
    axes[0][1].set_title(f"Sparsity-fidelity: {METRIC_NAMES['fvu']} (fraction of variance unexplained)")
    for ax in axes[-1]:
        ax.set_xlabel("L0 (active latents per token)")
    return fig


#: Up to this many SAEs on one site get a legend entry each; beyond, lines are coloured by L0.
_LEGEND_LIMIT = 8


def plot_by_position(saes: Sequence[SAEMetrics], path: Path) -> Path:
    """One row per site: delta loss and FVU at each position, one line per SAE.

    With few SAEs on a site, each has a legend entry; with many, the lines are coloured by L0 on a
    colour bar (a legend of dozens of labels would hide the plot). Zero-L0 baselines are grey dashes.
    """
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    by_site: dict[str, list[SAEMetrics]] = defaultdict(list)
    for sae in saes:
        by_site[sae.site if sae.layer is None else f"{sae.site} L{sae.layer}"].append(sae)
    rows = sorted(by_site)
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 2.8 * len(rows)), squeeze=False)
    l0s = [float(s["l0"] or 0) for s in saes if (s["l0"] or 0) > 0]
    norm = LogNorm(vmin=min(l0s), vmax=max(l0s) * 1.0001) if l0s else None
    cmap = plt.get_cmap("viridis")
    for row, site in zip(axes, rows, strict=True):
        members = by_site[site]
        with_legend = len(members) <= _LEGEND_LIMIT
        for sae in members:
            l0 = float(sae["l0"] or 0)
            style: dict[str, Any] = {"linewidth": 1, "label": sae.label}
            if l0 <= 0 or norm is None:
                style.update(color="grey", linestyle="--")
            elif not with_legend:
                style.update(color=cmap(norm(l0)))
            for ax, name in zip(row, ("delta_loss", "fvu"), strict=True):
                values = sae.by_position[name]
                xs = [i for i, v in enumerate(values) if v is not None]
                ax.plot(xs, [values[i] for i in xs], **style)
        row[0].set_ylabel(f"{site}\ndelta LM loss (nats)")
        row[1].set_ylabel("FVU")
        if with_legend:
            row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        elif norm is not None:
            fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=row[1], label="L0")
    axes[0][0].set_title("Delta LM loss by position (of the predicting token)")
    axes[0][1].set_title("FVU by position")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("Sequence position")
    return _save(fig, path)


def plot_by_domain(saes: Sequence[SAEMetrics], path: Path) -> Path | None:
    domains = sorted({d for sae in saes for d in sae.by_domain})
    if not domains:
        return None
    plt = _pyplot()
    height = 0.8 / len(saes)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(domains) * max(1, len(saes) / 2)))
    for i, sae in enumerate(saes):
        values = [(sae.by_domain.get(d) or {}).get("delta_loss") or 0.0 for d in domains]
        ax.barh([j + i * height for j in range(len(domains))], values, height=height, label=sae.label)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(domains))], domains)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("Delta LM loss (nats)")
    ax.set_title("Delta LM loss per domain")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def write_hook(sae: SAEMetrics) -> str:
    """Where ``sae``'s reconstruction is spliced in: a transcoder's output hook, else its own hook."""
    return sae.hook_name_out or sae.hook_name


@dataclass(frozen=True)
class TranscoderComparison:
    """The SAEs that replace one layer's MLP output: transcoders (reading the MLP input), MLP-output
    SAEs (reading the MLP output itself) and zero ablations of it. Delta LM loss and FVU (both
    measured on the MLP output) compare directly across the three."""

    layer: int | None
    mlp_out_hook: str
    transcoders: tuple[SAEMetrics, ...]
    mlp_saes: tuple[SAEMetrics, ...]
    zero_ablations: tuple[SAEMetrics, ...]


def transcoder_comparisons(saes: Sequence[SAEMetrics]) -> list[TranscoderComparison]:
    """One comparison per MLP output that a (non-baseline) transcoder among ``saes`` writes, in
    layer order; empty when there is no transcoder."""
    transcoders: dict[str, list[SAEMetrics]] = defaultdict(list)
    for sae in saes:
        if sae.hook_name_out is not None and not sae.is_zero_ablation:
            transcoders[sae.hook_name_out].append(sae)
    comparisons = []
    for hook, members in transcoders.items():
        others = [s for s in saes if s.hook_name_out is None and s.hook_name == hook]
        comparisons.append(
            TranscoderComparison(
                layer=members[0].layer,
                mlp_out_hook=hook,
                transcoders=tuple(members),
                mlp_saes=tuple(s for s in others if not s.is_zero_ablation),
                # a zero ablation writes zeros over the MLP output whichever SAE it was shaped after
                zero_ablations=tuple(s for s in saes if s.is_zero_ablation and write_hook(s) == hook),
            )
        )
    return sorted(comparisons, key=lambda c: (-1 if c.layer is None else c.layer, c.mlp_out_hook))


def interpolate_at_l0(ladder: Sequence[SAEMetrics], l0: float, metric: str) -> float | None:
    """``metric`` of ``ladder`` at ``l0``, linear in log L0 between its two nearest rungs; None
    outside the ladder's L0 range (no extrapolation)."""
    points = sorted(
        (float(s["l0"] or 0), float(value))
        for s in ladder
        if (s["l0"] or 0) > 0 and (value := s[metric]) is not None
    )
    for (l0_a, value_a), (l0_b, value_b) in itertools.pairwise(points):
        if l0_a <= l0 <= l0_b:
            share = 0.0 if l0_b == l0_a else math.log(l0 / l0_a) / math.log(l0_b / l0_a)
            return value_a + share * (value_b - value_a)
    return None


#: Transcoders and MLP-output SAEs told apart by colour on the transcoder plot.
_KIND_COLOURS = {"transcoder": "tab:red", "MLP-output SAE": "tab:blue"}


def _ladder_lines(ax: Any, kind: str, members: Sequence[SAEMetrics], metric: str) -> list[float]:
    """One line per (width, source) of ``members`` in ``kind``'s colour; returns the values drawn."""
    ladders: dict[tuple[int, str], list[SAEMetrics]] = defaultdict(list)
    for sae in members:
        if (sae["l0"] or 0) > 0 and sae[metric] is not None:
            ladders[sae.d_sae, sae.source].append(sae)
    drawn: list[float] = []
    for index, ((d_sae, source), ladder) in enumerate(sorted(ladders.items())):
        points = sorted(ladder, key=lambda s: float(s["l0"] or 0))
        ys = [float(s[metric] or 0) for s in points]
        ax.plot(
            [float(s["l0"] or 0) for s in points], ys, color=_KIND_COLOURS[kind],
            linestyle=_WIDTH_STYLES[index % len(_WIDTH_STYLES)],
            marker=SOURCE_MARKERS.get(source, _OTHER_MARKER), label=f"{kind} {width_label(d_sae)} ({source})",
        )  # fmt: skip
        drawn += ys
    return drawn


def _transcoder_row(row: Sequence[Any], comparison: TranscoderComparison) -> None:
    for ax, metric in zip(row, _FRONTIER_METRICS, strict=True):
        drawn = _ladder_lines(ax, "transcoder", comparison.transcoders, metric)
        drawn += _ladder_lines(ax, "MLP-output SAE", comparison.mlp_saes, metric)
        # One baseline line: every zero ablation of this MLP output measures the same thing.
        zero = next((s[metric] for s in comparison.zero_ablations if s[metric] is not None), None)
        if zero is not None:
            ax.axhline(float(zero), color="grey", linestyle=(0, (1, 2)), linewidth=1.5, label="zero ablation")
            drawn.append(float(zero))
        _log_y(ax, drawn)
        ax.set_xscale("log")
        _one_two_five(ax.xaxis)
        ax.grid(True, which="major", alpha=0.3)


def plot_transcoders(saes: Sequence[SAEMetrics], path: Path) -> Path | None:
    """One row per layer with a transcoder: delta LM loss and FVU against L0 for its transcoders
    and the MLP-output SAEs of that layer, the MLP output's zero ablation dotted; None (nothing
    written) when ``saes`` hold no transcoder."""
    comparisons = transcoder_comparisons(saes)
    if not comparisons:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(comparisons), 2, figsize=(12, 0.6 + 3.2 * len(comparisons)), squeeze=False)
    for row, comparison in zip(axes, comparisons, strict=True):
        _transcoder_row(row, comparison)
        where = _layer_name(comparison.layer)
        row[0].set_ylabel(f"MLP output {where}\n{METRIC_NAMES['delta_loss']} (nats)")
        row[1].set_ylabel(f"MLP output {where}\n{METRIC_NAMES['fvu']}")
        row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    axes[0][0].set_title(f"Transcoders vs MLP-output SAEs: {METRIC_NAMES['delta_loss']}")
    axes[0][1].set_title(f"Transcoders vs MLP-output SAEs: {METRIC_NAMES['fvu']} of the MLP output")
    for ax in axes[-1]:
        ax.set_xlabel("L0 (active latents per token)")
    return _save(fig, path)
