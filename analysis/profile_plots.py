"""Plot manager CPU profiles: category breakdowns per phase and top functions.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so that plotting
neither needs a display nor changes the process-wide backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.categories import CATEGORY_ORDER

__all__ = ["plot_breakdown", "plot_top_functions"]

BASELINE_LABEL = "Swarm3k baseline (2016)"


def plot_breakdown(
    breakdowns: dict[str, pd.DataFrame],
    baseline: pd.DataFrame | None,
    path: str | Path,
    share: str = "exclusive",
) -> Path:
    """Draw horizontal grouped bars: one group per category, one bar per phase.

    Args:
        breakdowns: phase name to a `categorize` table (needs columns category and
            `{share}_pct`). Categories missing from a table count as 0.
        baseline: a `swarm3k_baseline()` table drawn as the last bar of each group, or
            None to leave it out.
        path: the PNG file to write; its folder must exist.
        share: "exclusive" (bars of a phase add up to 100%) or "inclusive".

    Returns:
        The path written.

    Raises:
        ValueError: nothing to plot, or `share` is neither "exclusive" nor "inclusive".
    """
    if share not in ("exclusive", "inclusive"):
        raise ValueError(f"share must be 'exclusive' or 'inclusive', not {share!r}")
    series = dict(breakdowns)
    if baseline is not None:
        series[BASELINE_LABEL] = baseline
    if not series:
        raise ValueError("no breakdowns and no baseline to plot")

    column = f"{share}_pct"
    values = {
        label: table.set_index("category")[column].reindex(CATEGORY_ORDER).fillna(0.0)
        for label, table in series.items()
    }

    bar_height = 0.8 / len(series)
    positions = np.arange(len(CATEGORY_ORDER))
    figure = Figure(figsize=(9, 1.2 + 0.22 * len(CATEGORY_ORDER) * max(2, len(series))))
    axes = figure.add_subplot()
    for index, (label, shares) in enumerate(values.items()):
        offsets = positions - 0.4 + bar_height * (index + 0.5)
        hatch = "//" if label == BASELINE_LABEL else None
        bars = axes.barh(offsets, shares.to_numpy(), height=bar_height, label=label, hatch=hatch)
        axes.bar_label(bars, fmt="%.1f", padding=2, fontsize=7)

    axes.set_yticks(positions, CATEGORY_ORDER)
    axes.invert_yaxis()
    axes.set_xlabel(f"{share} share of manager CPU samples (%)")
    axes.set_title(f"Manager CPU by category ({share})")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_top_functions(top: pd.DataFrame, path: str | Path, n: int = 15) -> Path:
    """Draw the `n` functions with the most flat time as horizontal bars (flat and cum).

    Args:
        top: a `top_table` result (columns function, flat_pct, cum_pct).
        path: the PNG file to write; its folder must exist.
        n: how many functions to show.

    Returns:
        The path written. An empty table gives a figure that says "no samples".
    """
    figure = Figure(figsize=(9, 1.5 + 0.35 * max(1, min(n, len(top)))))
    axes = figure.add_subplot()
    if top.empty:
        axes.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return _save(figure, path)

    shown = top.sort_values(["flat_pct", "cum_pct"], ascending=False).head(n)
    positions = np.arange(len(shown))
    axes.barh(positions - 0.2, shown["flat_pct"], height=0.4, label="flat %")
    axes.barh(positions + 0.2, shown["cum_pct"], height=0.4, label="cum %", alpha=0.6)
    axes.set_yticks(positions, [_short_name(name) for name in shown["function"]], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("share of samples (%)")
    axes.set_title(f"Top {len(shown)} functions by flat time")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def _short_name(function: str, limit: int = 70) -> str:
    """Drop the import path before the package name, then cut to `limit` characters."""
    cut = min((index for index in (function.find("("), function.find("[")) if index >= 0),
              default=len(function))
    short = function[function.rfind("/", 0, cut) + 1 :]
    return short if len(short) <= limit else short[: limit - 1] + "…"


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(path))
    return path
