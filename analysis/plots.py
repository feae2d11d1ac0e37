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


def plot_monitoring(nodes: pd.DataFrame, tasks: pd.DataFrame, manager: pd.DataFrame, path: Path,
                    events: pd.DataFrame | None = None) -> Path:
    """Three panels over time from the InfluxDB read-back: Ready nodes, running tasks, manager CPU."""
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), dpi=100, sharex=True)
    if not nodes.empty:
        ready = nodes[nodes["state"] == "ready"].pivot_table(index="time", columns="role", values="count",
                                                             aggfunc="sum")
        for role in ready.columns:
            axes[0].plot(ready.index, ready[role], label=f"{role}s Ready")
        axes[0].legend(loc="lower right")
    axes[0].set_ylabel("nodes")
    if not tasks.empty:
        for service, group in tasks.groupby("service"):
            axes[1].plot(group["time"], group["running"], label=f"{service} running")
            axes[1].plot(group["time"], group["desired"], linestyle=":", color="gray")
        axes[1].legend(loc="upper left", fontsize="small")
    axes[1].set_ylabel("tasks (dotted: desired)")
    if not manager.empty and manager["cpu_percent"].notna().any():
        for node, group in manager.groupby("node"):
            axes[2].plot(group["time"], group["cpu_percent"], label=node)
        axes[2].legend(loc="upper left", fontsize="small")
    axes[2].set_ylabel("dockerd CPU % (100 = one core)")
    axes[2].set_xlabel("time (UTC)")
    if events is not None and not events.empty:
        for _, event in events.iterrows():
            for ax in axes:
                ax.axvline(event["time"], color="tab:purple" if event["kind"] == "start" else "tab:gray",
                           alpha=0.4, linestyle="--")
    fig.suptitle("swarm state over the run, as stored in InfluxDB")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
