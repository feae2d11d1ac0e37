"""The report's profile section: each captured CPU profile by category, next to Swarm3k's."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from analysis.categories import CATEGORY_ORDER, categorize, swarm3k_baseline
from analysis.pprof import ProfileError, read_profile, top_table
from analysis.profile_plots import plot_breakdown, plot_top_functions

log = logging.getLogger(__name__)

# Below this many samples (3 s of one busy core at 100 Hz) a share moves by whole percents per sample.
MIN_SAMPLES = 300


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def breakdowns(run_dir: Path, profiles: dict[str, dict]) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame],
                                                                 dict[str, str]]:
    """Categorise every captured CPU profile; returns breakdowns, top tables and read errors by label."""
    found, tops, errors = {}, {}, {}
    for result in profiles.values():
        label = result["label"] + ("" if result.get("was_leader", True) else " (not leader)")
        try:
            profile = read_profile(run_dir / result["files"]["cpu"])
        except (ProfileError, OSError) as error:
            errors[label] = str(error)
            continue
        column = "samples" if "samples" in profile.stacks.columns else profile.stacks.columns[-1]
        found[label] = categorize(profile.stacks, column)
        tops[label] = top_table(profile)
    return found, tops, errors


def profile_section(run_dir: Path, profiles: dict[str, dict]) -> tuple[list[str], dict]:
    """Markdown lines and summary figures for the profiles captured in this run."""
    found, tops, errors = breakdowns(run_dir, profiles)
    baseline = swarm3k_baseline()
    lines = ["## Where the leader's CPU went", ""]
    summary: dict = {}
    if found:
        headers = ["category", *[f"{label} %" for label in found], "Swarm3k %"]
        base = baseline.set_index("category")["exclusive_pct"]
        rows = []
        for category in CATEGORY_ORDER:
            values = [frame.set_index("category").loc[category, "exclusive_pct"] for frame in found.values()]
            if max([*values, base.get(category, 0)]) < 0.05:
                continue
            rows.append([category, *[f"{v:.1f}" for v in values], f"{base.get(category, 0):.1f}"])
        lines += [_table(headers, rows), ""]
        totals = ", ".join(f"{label}: {int(frame.attrs.get('total', 0))} samples" for label, frame in found.items())
        lines += [f"Exclusive shares: each sample counts once, for the swarm component nearest the leaf of its "
                  f"stack (Go GC work first); see docs/profiles.md. Samples at 100 Hz: {totals}. The Swarm3k "
                  f"column is derived from the three published flame graphs of a Swarm3k manager (Docker 1.12.3, "
                  f"Nov 2016; {int(baseline.attrs.get('total', 0))} samples).", ""]
        few = [label for label, frame in found.items() if frame.attrs.get("total", 0) < MIN_SAMPLES]
        if few:
            lines += [f"Few samples in {', '.join(few)} (under {MIN_SAMPLES}): the manager was nearly idle, so "
                      "treat those shares as rough; a longer capture (profiling.cpu_seconds) or a heavier phase "
                      "gives firmer figures.", ""]
        plot_breakdown(found, baseline, run_dir / "plots" / "cpu-categories.png")
        lines += ["![CPU by category](plots/cpu-categories.png)", ""]
        for label, top in tops.items():
            if top.empty:
                continue
            slug = label.split()[0]
            plot_top_functions(top, run_dir / "plots" / f"cpu-top-{slug}.png")
            head = top.head(8)
            lines += [f"Top functions during **{label}** (flat):", "",
                      _table(["function", "flat %", "cum %"],
                             [[f"`{r.function}`", f"{r.flat_pct:.1f}", f"{r.cum_pct:.1f}"] for r in head.itertuples()]),
                      "", f"![top functions during {label}](plots/cpu-top-{slug}.png)", ""]
        summary = {label: {row.category: round(row.exclusive_pct, 2) for row in frame.itertuples()}
                   for label, frame in found.items()}
    for label, error in errors.items():
        lines += [f"The {label} profile could not be read: {error}", ""]
    return lines, summary
