"""Compare runs side by side from their ``summary.json`` files and flag regressions.

The first run given is the baseline. Every later run is compared with it on the figures that have
a better direction (scheduling throughput, join rate, share of workers Ready); a change in the
worse direction larger than the threshold (a fraction, 0.2 = 20%) is a regression. The CPU
breakdown is shown side by side but not flagged, because a category's share has no better
direction on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_THRESHOLD = 0.2
# Categories below this share (percent) in every run are left out of the table.
MIN_CATEGORY_SHARE = 1.0


@dataclass(frozen=True)
class Metric:
    """A figure read from a run summary, and whether a higher value is better."""

    name: str
    unit: str
    higher_is_better: bool | None


METRICS = [
    Metric("throughput", "tasks/s", True),
    Metric("projected_hours_to_million", "h", None),
    Metric("max_running", "tasks", None),
    Metric("join_rate", "nodes/s", True),
    Metric("workers_ready", "fraction", True),
    Metric("elapsed", "s", None),
]


@dataclass(frozen=True)
class Regression:
    """A figure of one run that is worse than the baseline's by more than the threshold."""

    metric: str
    run_id: str
    baseline_run_id: str
    baseline: float
    value: float
    change: float

    def describe(self) -> str:
        return (f"{self.metric}: {self.value:.4g} in {self.run_id} vs {self.baseline:.4g} in {self.baseline_run_id} "
                f"({100 * self.change:+.0f}%)")


@dataclass(frozen=True)
class RunFigures:
    """The comparable figures of one run."""

    run_id: str
    figures: dict[str, float | None]
    cpu: dict[str, float]
    cpu_label: str | None


def load_summary(run_dir: Path) -> dict:
    """Read ``summary.json`` of a run folder.

    Raises:
        FileNotFoundError: the folder has no summary (the run has not reached its report).
    """
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has no report yet, or {run_dir} is not a run folder")
    return json.loads(path.read_text())


def latest_runs(runs_root: Path, experiment: str, last: int) -> list[Path]:
    """The newest ``last`` run folders of an experiment that have a summary, oldest first.

    Run ids start with a UTC timestamp, so sorting by name sorts by start time.

    Raises:
        FileNotFoundError: the experiment has no run with a summary under ``runs_root``.
    """
    folder = Path(runs_root) / experiment
    runs = sorted(p for p in folder.iterdir() if (p / "summary.json").is_file()) if folder.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"no run of experiment {experiment!r} with a summary.json under {folder}")
    return runs[-last:]


def _scale_phase(summary: dict) -> dict:
    scale = [p for p in summary.get("phases", {}).values() if "throughput_p50_over_steps" in p]
    return max(scale, key=lambda p: p.get("max_running") or 0) if scale else {}


def run_figures(summary: dict) -> RunFigures:
    """Pick the comparable figures out of one run summary; missing figures are None."""
    scale = _scale_phase(summary)
    workers = summary.get("phases", {}).get("workers", {})
    expected = workers.get("expected")
    ready = workers.get("ready")
    figures = {
        "throughput": scale.get("throughput_p50_over_steps"),
        "projected_hours_to_million": scale.get("projected_hours_to_million"),
        "max_running": scale.get("max_running"),
        "join_rate": workers.get("join_rate_per_second"),
        "workers_ready": ready / expected if expected else None,
        "elapsed": summary.get("elapsed_seconds"),
    }
    categories = summary.get("cpu_categories") or {}
    loaded = [label for label in categories if not label.startswith("idle")]
    label = loaded[0] if loaded else None
    return RunFigures(str(summary.get("run_id")), figures, categories.get(label, {}) if label else {}, label)


def find_regressions(runs: list[RunFigures], threshold: float = DEFAULT_THRESHOLD) -> list[Regression]:
    """Compare every run after the first with the first; return the figures worse by more than ``threshold``."""
    if threshold < 0:
        raise ValueError(f"threshold must be 0 or more, got {threshold}")
    if len(runs) < 2:
        return []
    baseline, found = runs[0], []
    for run in runs[1:]:
        for metric in METRICS:
            if metric.higher_is_better is None:
                continue
            before, after = baseline.figures.get(metric.name), run.figures.get(metric.name)
            if before is None or after is None or before == 0:
                continue
            change = (after - before) / abs(before)
            worse = -change if metric.higher_is_better else change
            if worse > threshold:
                found.append(Regression(metric.name, run.run_id, baseline.run_id, before, after, change))
    return found


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def comparison_table(runs: list[RunFigures], regressions: list[Regression]) -> str:
    """A markdown table: one row per figure, one column per run; flagged cells end in ``(!)``."""
    flagged = {(r.metric, r.run_id) for r in regressions}
    headers = ["figure", *[run.run_id + (" (baseline)" if i == 0 else "") for i, run in enumerate(runs)]]
    rows = []
    for metric in METRICS:
        cells = [_cell(run.figures.get(metric.name)) + (" (!)" if (metric.name, run.run_id) in flagged else "")
                 for run in runs]
        rows.append([f"{metric.name} ({metric.unit})", *cells])
    categories = sorted({c for run in runs for c, share in run.cpu.items() if share >= MIN_CATEGORY_SHARE})
    if categories:
        rows.append(["leader CPU profile", *[run.cpu_label or "n/a" for run in runs]])
    for category in categories:
        rows.append([f"leader CPU {category} (%)", *[_cell(run.cpu.get(category)) for run in runs]])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def compare_runs(run_dirs: list[Path], threshold: float = DEFAULT_THRESHOLD) -> tuple[str, list[Regression]]:
    """Compare run folders (baseline first); return the markdown report and the regressions."""
    runs = [run_figures(load_summary(path)) for path in run_dirs]
    regressions = find_regressions(runs, threshold)
    lines = [f"Baseline: {runs[0].run_id}; regression threshold {100 * threshold:.0f}%.", "",
             comparison_table(runs, regressions), ""]
    if regressions:
        lines += [f"{len(regressions)} regression(s):", *[f"- {r.describe()}" for r in regressions]]
    else:
        lines.append("No regressions over the threshold.")
    return "\n".join(lines) + "\n", regressions
