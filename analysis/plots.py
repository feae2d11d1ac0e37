"""Plots of one run's measurements (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_scale_samples(samples: pd.DataFrame, path: Path, title: str) -> Path:
    """Running tasks over time with each step's target, and the leader's CPU on a second axis."""
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    elapsed, offset = [], 0.0
    for _, group in samples.groupby("step", sort=True):
        elapsed.extend(offset + group["elapsed_s"])
        offset += group["elapsed_s"].max()
    frame = samples.assign(t=elapsed)
    ax.plot(frame["t"], frame["running"], label="running tasks", color="tab:blue")
    ax.step(frame["t"], frame["target"], where="post", label="step target", color="tab:gray", linestyle="--")
    ax.set_xlabel("seconds since the first step")
    ax.set_ylabel("tasks")
    if frame["leader_cpu_percent"].notna().any():
        cpu = ax.twinx()
        cpu.plot(frame["t"], frame["leader_cpu_percent"], color="tab:red", alpha=0.6, label="leader dockerd CPU %")
        cpu.set_ylabel("leader dockerd CPU % (100 = one core)")
        cpu.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_step_throughput(steps: list[dict], path: Path, title: str, reference: float | None = None) -> Path:
    """Scheduling throughput per step, with the Swarm3k figure as a reference line."""
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    labels = [f"{s['started_running']}→{s['target']}" for s in steps]
    ax.bar(labels, [s["throughput"] for s in steps], color="tab:blue", label="this run")
    if reference:
        ax.axhline(reference, color="tab:orange", linestyle="--", label=f"Swarm3k {reference:.1f}/s")
    ax.set_ylabel("tasks reaching running per second")
    ax.set_xlabel("step (replicas)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_phase_durations(timings: dict[str, float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(timings) + 1.2), dpi=100)
    names = list(timings)
    ax.barh(names, [timings[n] for n in names], color="tab:green")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("time per phase")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
