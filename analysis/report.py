"""The run report: markdown with the run's own figures and plots, plus a compact JSON summary.

Every figure in the report is read from the run record (phase results, samples, profiles);
nothing is quoted from 2016 except where it is labelled as the Swarm3k reference.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.lessons import (
    CpuSummary,
    find_lessons,
    lessons_section,
    profile_sample_counts,
    untested_swarm3k_lessons,
)
from analysis.profile_report import profile_section

PHASE_ORDER = ["provision", "managers", "workers", "tuning"]
NOT_TIMED = ("monitoring", "teardown")


def _seconds(value) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.1f} s"


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def phase_timings(phases: dict[str, dict]) -> dict[str, float]:
    ordered = [p for p in PHASE_ORDER if p in phases] + sorted(p for p in phases if p not in PHASE_ORDER)
    return {name: float(phases[name].get("seconds") or 0) for name in ordered}


def build_report(run_dir: Path, meta: dict, phases: dict[str, dict], inventory: dict,
                 extra_sections: list[str] | None = None) -> tuple[str, dict]:
    """Write the plots into ``run_dir/plots`` and return the markdown report and the JSON summary."""
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    nodes = inventory.get("nodes", [])
    managers = [n for n in nodes if n["role"] == "manager"]
    workers = [n for n in nodes if n["role"] == "worker"]
    timings = phase_timings({k: v for k, v in phases.items()
                             if not k.startswith("profile-") and k not in NOT_TIMED})
    attempts = meta.get("attempts") or [{}]
    total = meta.get("elapsed_seconds")
    if total is None and attempts[0].get("started_at"):
        total = round(time.time() - attempts[0]["started_at"], 1)
    out = [f"# {meta.get('experiment')}: run {meta.get('run_id')}", ""]
    out.append(
        f"Provider **{meta.get('provider')}**, **{len(nodes)} nodes** ({len(managers)} managers, "
        f"{len(workers)} workers), spec `{meta.get('spec_digest')}`. "
        f"The run took **{_seconds(total)}** in all"
        + (f" over {len(attempts)} attempts (resumed)" if len(attempts) > 1 else "") + "."
    )
    out.append("")
    summary: dict = {
        "experiment": meta.get("experiment"), "run_id": meta.get("run_id"), "provider": meta.get("provider"),
        "nodes": len(nodes), "managers": len(managers), "workers": len(workers),
        "elapsed_seconds": total, "phase_seconds": timings, "phases": {},
    }

    out += ["## Time per phase", "", _table(["phase", "time", "status"],
            [[name, _seconds(sec), phases[name].get("status", "completed")] for name, sec in timings.items()]), ""]
    if timings:
        plots.plot_phase_durations(timings, plots_dir / "phase-durations.png")
        out += ["![time per phase](plots/phase-durations.png)", ""]

    if "managers" in phases:
        m = phases["managers"]
        raft = m.get("raft", {})
        out += ["## Managers", "",
                f"{len(m['managers'])} managers, leader **{m['leader']}**; Raft snapshot interval "
                f"{raft.get('SnapshotInterval')}, keep old snapshots {raft.get('KeepOldSnapshots')}, "
                f"election tick {raft.get('ElectionTick')}, heartbeat tick {raft.get('HeartbeatTick')}; "
                f"formed in {_seconds(m['seconds'])}.", ""]
        summary["phases"]["managers"] = {"leader": m["leader"], "count": len(m["managers"])}
    if "workers" in phases:
        w = phases["workers"]
        ttr = w.get("time_to_ready_summary", {})
        if w.get("join_rate_per_second") is None:
            # No join in this phase's attempt: the workers joined in an attempt that was killed.
            timing = "Join rate and time to Ready not measured: the workers had joined before this attempt."
        else:
            timing = (f"Join rate {w['join_rate_per_second']:.2f} nodes/s; time to Ready "
                      f"p50 {ttr.get('p50') or 0:.1f} s, p90 {ttr.get('p90') or 0:.1f} s, "
                      f"max {ttr.get('max') or 0:.1f} s.")
        out += ["## Workers", "",
                f"{w['ready']}/{w['expected']} workers Ready, {len(w.get('failed', {}))} failed to join"
                + (f", not Ready by the deadline: {', '.join(w['not_ready'])}" if w.get("not_ready") else "")
                + f". {timing}", ""]
        summary["phases"]["workers"] = {k: w.get(k) for k in ("ready", "expected", "join_rate_per_second")}
    if "tuning" in phases:
        out += tuning_section(phases["tuning"])

    failed = {name: r for name, r in phases.items() if r.get("status") == "failed" and r.get("error")}
    if failed:
        out += ["## Failed phases", ""]
        out += [f"- **{name}**: {r['error']}" for name, r in failed.items()]
        out += [""]

    for name, result in phases.items():
        if result.get("kind") == "scale" and "steps" in result:
            out += scale_section(run_dir, name, result)
            summary["phases"][name] = {
                "max_running": result.get("max_running"),
                "throughput_p50_over_steps": result.get("throughput_p50_over_steps"),
                "projected_hours_to_million": result.get("projected_hours_to_million"),
                "steps": [{"target": s["target"], "throughput": s["throughput"], "seconds": s["seconds"]}
                          for s in result.get("steps", [])],
                "status": result.get("status"),
            }
        elif result.get("kind") in ("nginx_mesh", "mysql_wordpress") and result.get("report_markdown"):
            out += [result["report_markdown"], ""]
            summary["phases"][name] = result.get("summary_figures", {"status": result.get("status")})

    if "monitoring" in phases:
        out += monitoring_section(run_dir, phases["monitoring"])
        summary["monitoring"] = {k: phases["monitoring"].get(k) for k in ("deployed", "skipped", "gaps")}

    profiles = {k: v for k, v in phases.items() if k.startswith("profile-")}
    if profiles:
        out += ["## Manager CPU profiles", "",
                _table(["captured during", "node", "leader", "CPU seconds", "file"],
                       [[p["label"], p["node"], "yes" if p["was_leader"] else "no (labelled)", p["cpu_seconds"],
                         f"`{p['files']['cpu']}`"] for p in profiles.values()]), "",
                "Open a profile with `go tool pprof -top FILE` or `go tool pprof -http=: FILE`.", ""]
        summary["profiles"] = {p["label"]: p["files"]["cpu"] for p in profiles.values()}
        section, figures = profile_section(run_dir, profiles)
        out += section
        summary["cpu_categories"] = figures
    # The lessons go near the top but need the CPU categories, which are computed last.
    cpu = CpuSummary(summary.get("cpu_categories") or {}, profile_sample_counts(run_dir, phases))
    lessons = find_lessons(phases, cpu)
    summary["lessons"] = [lesson.to_dict() for lesson in lessons]
    out[4:4] = lessons_section(lessons, untested_swarm3k_lessons(phases, cpu))
    for section in extra_sections or []:
        out += [section, ""]
    return "\n".join(out).rstrip() + "\n", summary


def tuning_section(result: dict) -> list[str]:
    rows = [["host kernel (shared by all lab nodes)", key, v["before"], v["after"]]
            for key, v in result.get("host", {}).get("values", {}).items()]
    per_key: dict[tuple, list[str]] = {}
    for node, data in result.get("nodes", {}).items():
        for key, v in data.get("values", {}).items():
            per_key.setdefault((key, v["before"], v["after"]), []).append(node)
    rows += [[f"{len(names)} nodes", key, before, after] for (key, before, after), names in sorted(per_key.items())]
    lines = ["## Kernel tuning", "", _table(["where", "sysctl", "before", "after"], rows), ""]
    if result.get("kernel_wide_on_host"):
        host = result["host"]
        before = (host.get("arp_cache_before") or {}).get("table_fulls")
        after = (host.get("arp_cache_after") or {}).get("table_fulls")
        lines += ["All lab nodes share this machine's kernel, which has one neighbour (ARP) table: the "
                  "gc_thresh values were set once on the host, and are restored at teardown. "
                  f"ARP table overflows (`table_fulls`) on the host: {before} before tuning, {after} after.", ""]
    return lines


def scale_section(run_dir: Path, name: str, result: dict) -> list[str]:
    steps = result.get("steps", [])
    rows = []
    for i, s in enumerate(steps, 1):
        i = s.get("number", i)
        rates = s.get("interval_rates", {})
        cpu = s.get("manager_cpu", {})
        rows.append([i, f"{s['started_running']}→{s['target']}", s["running"], _seconds(s["seconds"]),
                     f"{s['throughput']:.2f}", f"{rates.get('p50') or 0:.1f} / {rates.get('p90') or 0:.1f} / "
                     f"{rates.get('max') or 0:.1f}", s["failed_tasks"],
                     "n/a" if cpu.get("max") is None else f"{cpu['max']:.0f}%", s.get("aborted_by") or ""])
    lines = [f"## Scale phase `{name}`", "",
             _table(["step", "replicas", "running", "time", "tasks/s", "interval p50 / p90 / max", "failed",
                     "leader CPU max", "stopped by"], rows), ""]
    hours = result.get("projected_hours_to_million")
    lines += [f"Sustained scheduling throughput (median over steps): "
              f"**{result.get('throughput_p50_over_steps') or 0:.2f} tasks/s**, so a million containers would take "
              f"about **{hours if hours is not None else 'n/a'} h** at this rate (a linear projection from this run "
              f"only). Swarm3k scheduled 47,000 containers in about 30 minutes "
              f"({result.get('swarm3k_tasks_per_second')} tasks/s, "
              f"{result.get('swarm3k_projected_hours_to_million')} h to a million).", ""]
    samples_path = run_dir / result.get("samples_file", "")
    if samples_path.is_file():
        samples = pd.read_csv(samples_path)
        if not samples.empty:
            plots.plot_scale_samples(samples, run_dir / "plots" / f"{name}-running.png", f"{name}: running tasks")
            lines += [f"![{name} running tasks](plots/{name}-running.png)", ""]
    if steps:
        plots.plot_step_throughput(steps, run_dir / "plots" / f"{name}-throughput.png",
                                   f"{name}: throughput per step", result.get("swarm3k_tasks_per_second"))
        lines += [f"![{name} throughput](plots/{name}-throughput.png)", ""]
    if result.get("aborted_by"):
        lines += [f"The phase stopped: {result['aborted_by']}.", ""]
    return lines


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    frame = pd.read_csv(path)
    if "time" in frame:
        frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame


def monitoring_section(run_dir: Path, result: dict) -> list[str]:
    lines = ["## Monitoring", ""]
    for name, what in (result.get("deployed") or {}).items():
        lines.append(f"- {name}: {what}")
    for name, why in (result.get("skipped") or {}).items():
        lines.append(f"- {name}: **not deployed**: {why}")
    rows = result.get("exported_rows") or {}
    lines += ["", f"The observer wrote {result.get('points_written')} points "
              f"({result.get('points_dropped') or 0} dropped); read back with InfluxQL: "
              + ", ".join(f"{k} {v}" for k, v in rows.items()) + "."]
    gaps = result.get("gaps") or []
    if gaps:
        lines.append(f"InfluxDB was unreachable {len(gaps)} time(s): "
                     + "; ".join(f"from {g['start']} to {g['end'] or 'the end of the run'}" for g in gaps)
                     + ". Points were buffered and written after it came back, so these gaps are in the "
                     "plots only where the buffer overflowed.")
    data = run_dir / "data"
    nodes, tasks, manager = (_read_csv(data / f"influx-{m}.csv") for m in ("nodes", "tasks", "manager"))
    if not (nodes.empty and tasks.empty and manager.empty):
        plots.plot_monitoring(nodes, tasks, manager, run_dir / "plots" / "monitoring.png",
                              _read_csv(data / "influx-events.csv"))
        lines += ["", "![swarm state over time](plots/monitoring.png)"]
    return [*lines, ""]
