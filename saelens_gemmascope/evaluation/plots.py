"""The report's figures (matplotlib, Agg backend; no display needed).

* :func:`plot_frontier`: delta loss and FVU against L0 (log-x), one line per (site, layer, width,
  source), as in the paper's Figure 2; colour tells the site apart, the marker the source, so a
  trained SAE and the released one at the same site share the plot.
* :func:`plot_by_position`: delta loss and FVU at each sequence position, one row per site.
* :func:`plot_by_domain`: delta loss per dataset domain, one bar per SAE.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saelens_gemmascope.evaluation.result import SAEMetrics

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


def plot_frontier(saes: Sequence[SAEMetrics], path: Path) -> Path:
    plt = _pyplot()
    groups: dict[tuple[str, str], list[SAEMetrics]] = defaultdict(list)
    for sae in saes:
        groups[(site_label(sae), sae.source)].append(sae)
    sites = sorted({site for site, _ in groups})
    # tab10 is the clearest palette; past 10 lines it would repeat colours, so switch to tab20.
    palette, size = ("tab10", 10) if len(sites) <= 10 else ("tab20", 20)
    colours = {site: plt.get_cmap(palette)(i % size) for i, site in enumerate(sites)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for (site, source), members in sorted(groups.items()):
        points = sorted(
            (s for s in members if (s["l0"] or 0) > 0 and s["delta_loss"] is not None),
            key=lambda s: s["l0"],  # type: ignore[arg-type, return-value]
        )
        if not points:
            continue
        l0s = [s["l0"] for s in points]
        style = {
            "color": colours[site],
            "marker": SOURCE_MARKERS.get(source, _OTHER_MARKER),
            "label": f"{site} ({source})",
            "linestyle": "-" if source == "released" else "--",
        }
        axes[0].plot(l0s, [s["delta_loss"] for s in points], **style)
        axes[1].plot(l0s, [s["fvu"] for s in points], **style)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax, name in zip(axes, ("Delta LM loss (nats)", "Fraction of variance unexplained"), strict=True):
        ax.set_xscale("log")
        # Plain numbers at 1-2-5 steps: the default minor labels overlap over a short L0 range.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("Sparsity-fidelity: delta loss")
    axes[1].set_title("Sparsity-fidelity: FVU")
    # Outside the axes: with many SAEs an inside legend hides the points.
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


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
