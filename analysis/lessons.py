"""Lessons of a run: rules that state a lesson only where the run's own figures support it.

Each rule takes the run record's phase results (``phases``, as :func:`analysis.report.build_report`
gets them) and a :class:`CpuSummary` (the CPU category shares that
:func:`analysis.profile_report.profile_section` returns, with each profile's sample count) and returns
a :class:`Lesson` or None.
A lesson with ``triggered=False`` is a check that ran and found nothing, for example no ARP table
overflow at this scale; the report lists those apart from the lessons.

The 2016 Swarm3k lessons that this run did not test are listed by :func:`untested_swarm3k_lessons`
as published claims, never as this run's findings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from analysis.pprof import ProfileError, read_profile
from analysis.profile_report import MIN_SAMPLES

log = logging.getLogger(__name__)

# Swarm3k (October 2016): 47,000 containers scheduled in about 30 minutes.
SWARM3K_TASKS_PER_SECOND = 47_000 / 1800
MILLION = 1_000_000
# The cluster-size estimate sizes a leader for this share of one core, leaving room for elections
# and bursts; 100 is one core, as the scale phase measures dockerd CPU.
LEADER_CPU_BUDGET = 80.0
# Fewer steps than this cannot separate a trend from noise in the leader's CPU.
MIN_STEPS_FOR_ESTIMATE = 3


@dataclass(frozen=True)
class Lesson:
    """One finding of the run.

    Attributes:
        title: the finding in one line.
        evidence: the measurements behind it, with their source in the run.
        figure: the key figure, with its unit.
        plot: the report plot that shows it, relative to the run folder, or None.
        triggered: False for a check that ran and found nothing to report as a lesson.
    """

    title: str
    evidence: str
    figure: str
    plot: str | None = None
    triggered: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CpuSummary:
    """The leader's CPU profiles of a run, by profile label (``scale``, ``idle``, ``x (not leader)``).

    Attributes:
        categories: exclusive share in percent per category, ``{label: {category: percent}}``.
        samples: sample count per label; a label missing here has an unknown count.
    """

    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)


Rule = Callable[[dict, CpuSummary], "Lesson | None"]


def profile_sample_counts(run_dir: Path, phases: dict) -> dict[str, int]:
    """Count the samples of each CPU profile in the run, labelled as the report's profile section labels them."""
    counts = {}
    for name, result in phases.items():
        if not name.startswith("profile-") or "cpu" not in (result.get("files") or {}):
            continue
        label = result["label"] + ("" if result.get("was_leader", True) else " (not leader)")
        try:
            profile = read_profile(run_dir / result["files"]["cpu"])
        except (ProfileError, OSError) as error:
            log.warning("lessons: cannot read the %s CPU profile: %s", label, error)
            continue
        column = "samples" if "samples" in profile.stacks.columns else profile.stacks.columns[-1]
        counts[label] = int(profile.stacks[column].sum())
    return counts


def _scale_phases(phases: dict) -> list[tuple[str, dict]]:
    return [(name, r) for name, r in phases.items() if r.get("kind") == "scale"]


def _fmt_hours(hours: float) -> str:
    return f"{hours:,.1f} h" if hours < 1000 else f"{hours:,.0f} h"


def scheduling_throughput(phases: dict, cpu: CpuSummary) -> Lesson | None:
    """Sustained scheduling throughput of the largest scale phase and its million-container projection."""
    measured = [(name, r) for name, r in _scale_phases(phases) if r.get("throughput_p50_over_steps")]
    if not measured:
        return None
    name, result = max(measured, key=lambda item: item[1].get("max_running") or 0)
    rate = float(result["throughput_p50_over_steps"])
    hours = result.get("projected_hours_to_million") or MILLION / rate / 3600
    swarm3k_hours = MILLION / SWARM3K_TASKS_PER_SECOND / 3600
    steps = [s for s in result.get("steps", []) if s.get("tasks_started", 1) > 0]
    trend = ""
    if len(steps) >= 2 and steps[0]["throughput"] > 0:
        first, last = steps[0]["throughput"], steps[-1]["throughput"]
        change = 100.0 * (last - first) / first
        trend = (f" Throughput went from {first:.2f} tasks/s in the first step to {last:.2f} tasks/s in the "
                 f"last ({change:+.0f}%), as running tasks grew to {steps[-1]['running']}.")
    return Lesson(
        title=(f"Scheduling ran at {rate:.2f} tasks/s: a million containers would take about "
               f"{_fmt_hours(hours)} at this rate"),
        evidence=(f"Median throughput over {len(steps)} step{'s' if len(steps) != 1 else ''} of phase `{name}` (up to "
                  f"{result.get('max_running')} running tasks).{trend} The projection is linear and assumes the "
                  f"rate holds far beyond the measured range. Swarm3k scheduled 47,000 containers in about 30 "
                  f"minutes ({SWARM3K_TASKS_PER_SECOND:.1f} tasks/s, {swarm3k_hours:.1f} h to a million): "
                  f"this run reached {rate / SWARM3K_TASKS_PER_SECOND:.2f}x that rate."),
        figure=f"{rate:.2f} tasks/s; {_fmt_hours(hours)} to 1,000,000",
        plot=f"plots/{name}-throughput.png",
    )


def stop_criteria(phases: dict, cpu: CpuSummary) -> Lesson | None:
    """Phases that a stop criterion (``aborted_by``) ended early."""
    stopped = [(name, r) for name, r in phases.items() if r.get("aborted_by")]
    if not stopped:
        return None
    name, result = stopped[0]
    reached = result.get("max_running")
    evidence = "; ".join(f"`{n}`: {r['aborted_by']}" for n, r in stopped)
    return Lesson(
        title=f"Phase `{name}` hit a stop criterion" + (f" at {reached} running tasks" if reached else ""),
        evidence=(f"{evidence}. The phase scaled back down in steps and failed on purpose; the limit it names "
                  "is the first thing that gave way at this scale."),
        figure=result["aborted_by"],
        plot=f"plots/{name}-running.png" if result.get("kind") == "scale" else None,
    )


def worker_joins(phases: dict, cpu: CpuSummary) -> Lesson | None:
    """Join rate of the workers phase, and the workers that failed to join or were not Ready in time."""
    result = phases.get("workers")
    if not result or result.get("expected") is None:
        return None
    expected, ready = result["expected"], result.get("ready", 0)
    failed = result.get("failed") or {}
    not_ready = result.get("not_ready") or []
    rate = result.get("join_rate_per_second")
    ttr = result.get("time_to_ready_summary") or {}
    if rate is None:
        # Nothing joined in this attempt: the joins happened in an attempt that was killed.
        rate_text = "a rate not measured (joined before this attempt)"
        timing = "time to Ready not measured"
    else:
        rate_text = f"{rate:.2f} nodes/s"
        timing = (f"time to Ready p50 {ttr.get('p50') or 0:.1f} s, p90 {ttr.get('p90') or 0:.1f} s, "
                  f"max {ttr.get('max') or 0:.1f} s")
    if failed or not_ready:
        examples = "; ".join(f"{node}: {error}" for node, error in list(failed.items())[:3])
        return Lesson(
            title=f"{len(failed) + len(not_ready)} of {expected} workers did not join or were not Ready in time",
            evidence=(f"{ready}/{expected} Ready, {len(failed)} failed to join"
                      + (f" ({examples})" if examples else "")
                      + (f", not Ready by the deadline: {', '.join(not_ready[:5])}" if not_ready else "")
                      + f". Join rate {rate_text}, {timing}."),
            figure=f"{ready}/{expected} Ready; {rate_text}",
        )
    everyone = "The only worker" if expected == 1 else f"All {expected} workers"
    return Lesson(
        title=f"{everyone} joined, at {rate_text}",
        evidence=f"{ready}/{expected} Ready, none failed; {timing}.",
        figure=rate_text,
    )


def _arp_counts(result: dict) -> list[tuple[str, int, int]]:
    """(where, table_fulls before, after) for the host kernel and each node that reported them."""
    counts = []
    host = result.get("host") or {}
    before, after = host.get("arp_cache_before") or {}, host.get("arp_cache_after") or {}
    if "table_fulls" in before:
        counts.append(("host kernel", int(before["table_fulls"]), int(after.get("table_fulls", 0))))
    for node, data in (result.get("nodes") or {}).items():
        node_before = data.get("arp_cache_before") or data.get("arp_cache") or {}
        node_after = data.get("arp_cache_after") or node_before
        if "table_fulls" in node_before:
            counts.append((node, int(node_before["table_fulls"]), int(node_after.get("table_fulls", 0))))
    return counts


def arp_overflow(phases: dict, cpu: CpuSummary) -> Lesson | None:
    """Neighbour (ARP) table overflows (``table_fulls``) before and after the gc_thresh tuning."""
    result = phases.get("tuning")
    if not result:
        return None
    counts = _arp_counts(result)
    if not counts:
        return None
    overflowed = [(where, before, after) for where, before, after in counts if before > 0]
    shared = " (one neighbour table shared by all lab nodes)" if result.get("kernel_wide_on_host") else ""
    if not overflowed:
        return Lesson(
            title="No ARP neighbour-table overflow at this scale",
            evidence=(f"`table_fulls` was 0 before tuning on {len(counts)} kernel(s){shared}, so this run "
                      "does not show whether the gc_thresh tuning was needed."),
            figure="table_fulls 0",
            triggered=False,
        )
    worst = max(overflowed, key=lambda item: item[1])
    grew = [where for where, before, after in overflowed if after > before]
    return Lesson(
        title=f"The ARP neighbour table overflowed on {len(overflowed)} kernel(s) before tuning",
        evidence=(f"`table_fulls` counts neighbour entries the kernel could not add; {worst[0]}{shared} had "
                  f"{worst[1]} before the gc_thresh tuning and {worst[2]} after it"
                  + (f". Still growing after tuning on: {', '.join(grew[:5])}" if grew else
                     ". It did not grow while the tuning was applied") + "."),
        figure=f"table_fulls {worst[1]} before, {worst[2]} after ({worst[0]})",
    )


def routing_mesh(phases: dict, cpu: CpuSummary) -> Lesson | None:
    """Workload phases that found no IPVS and published in host mode instead of the routing mesh."""
    fallbacks = []
    for name, result in phases.items():
        mesh = result.get("routing_mesh")
        if isinstance(mesh, dict) and mesh.get("available") is False:
            fallbacks.append((name, result, mesh))
    if not fallbacks:
        return None
    name, result, mesh = fallbacks[0]
    missing = len(mesh.get("nodes_without_ipvs", []))
    total = missing + len(mesh.get("nodes_with_ipvs", []))
    return Lesson(
        title="Routing mesh not tested: no IPVS, so published ports used host mode",
        evidence=(f"{', '.join(f'`{n}`' for n, _, _ in fallbacks)}: {result.get('limitation') or 'no IPVS'}. "
                  f"The phase published in {result.get('publish_mode', 'host')} mode, so its figures say "
                  "nothing about ingress load balancing."),
        figure=f"{missing}/{total} nodes without IPVS",
    )


def _peak_cpu(result: dict) -> float | None:
    peaks = [s["manager_cpu"]["max"] for s in result.get("steps", [])
             if (s.get("manager_cpu") or {}).get("max") is not None]
    return max(peaks) if peaks else None


def leader_change(phases: dict, cpu: CpuSummary) -> Lesson | None:
    """A leader change recorded by a phase, and the leader's CPU peak during that phase."""
    first_leader = (phases.get("managers") or {}).get("leader")
    changes = []
    for name, result in phases.items():
        if result.get("leader_changes"):
            changes.append((name, f"{len(result['leader_changes'])} leader change(s) recorded"))
        elif name.startswith("profile-") and result.get("was_leader") is False:
            changes.append((result.get("label", name[8:]),
                            f"{result.get('node')} was no longer the leader at the end of the CPU profile"))
        elif first_leader and result.get("kind") and result.get("leader") not in (None, first_leader):
            changes.append((name, f"leader {result['leader']} instead of {first_leader} from the managers phase"))
    if not changes:
        return None
    peaks = [(name, _peak_cpu(phases[name])) for name, _ in changes if name in phases]
    peaks = [(name, peak) for name, peak in peaks if peak is not None]
    evidence = "; ".join(f"`{name}`: {what}" for name, what in changes)
    if peaks:
        name, peak = max(peaks, key=lambda item: item[1])
        return Lesson(
            title=f"The leader changed during `{changes[0][0]}`; leader dockerd CPU peaked at {peak:.0f}%",
            evidence=(f"{evidence}. Peak of the leader's dockerd CPU (100% = one core) over the steps of "
                      f"`{name}`; an election while managers are loaded can stall scheduling."),
            figure=f"{peak:.0f}% peak leader CPU",
            plot=f"plots/{name}-running.png" if phases[name].get("kind") == "scale" else None,
        )
    return Lesson(
        title=f"The leader changed during `{changes[0][0]}`",
        evidence=f"{evidence}. No leader CPU samples cover that phase, so the peak is unknown.",
        figure=f"{len(changes)} change(s)",
    )


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


def cluster_size_estimate(phases: dict, cpu: CpuSummary) -> Lesson | None:
    """Tasks (and workers) one leader could carry, from its CPU at each scale step: an estimate."""
    for name, result in _scale_phases(phases):
        points = [(float(s["running"]), float(s["manager_cpu"]["max"])) for s in result.get("steps", [])
                  if (s.get("manager_cpu") or {}).get("max") is not None and s.get("running")]
        if len({x for x, _ in points}) < MIN_STEPS_FOR_ESTIMATE:
            continue
        intercept, slope = _fit_line(points)
        if slope <= 0:
            continue
        tasks = (LEADER_CPU_BUDGET - intercept) / slope
        measured = max(x for x, _ in points)
        if tasks <= measured:
            continue
        workers = (phases.get("workers") or {}).get("ready") or 0
        density = measured / workers if workers else None
        nodes = ""
        if density:
            nodes = f", about {tasks / density:,.0f} workers at this run's {density:.0f} tasks per worker"
        return Lesson(
            title=(f"Estimate: one leader reaches {LEADER_CPU_BUDGET:.0f}% CPU near {tasks:,.0f} running "
                   f"tasks{nodes}"),
            evidence=(f"Leader dockerd CPU (max per step, 100% = one core) rose {100 * slope:.1f} points per 100 "
                      f"running tasks over {len(points)} steps of `{name}` (fitted line, intercept "
                      f"{intercept:.1f}%). This extrapolates {tasks / measured:.0f}x beyond the {measured:.0f} tasks "
                      "measured and assumes CPU grows linearly with tasks; Swarm3k's managers were also loaded by "
                      "gossip and Raft, which grow with nodes rather than tasks. Treat it as an estimate."),
            figure=f"{100 * slope:.1f} CPU points per 100 tasks; ~{tasks:,.0f} tasks per leader",
            plot=f"plots/{name}-running.png",
        )
    return None


def _workload_profile(cpu: CpuSummary) -> tuple[str, dict] | None:
    loaded = [(label, shares) for label, shares in cpu.categories.items() if not label.startswith("idle") and shares]
    return loaded[0] if loaded else None


def cpu_breakdown(phases: dict, cpu: CpuSummary) -> Lesson | None:
    """Where the leader's CPU went during a workload, next to the published Swarm3k figures."""
    found = _workload_profile(cpu)
    if found is None:
        return None
    label, shares = found
    samples = cpu.samples.get(label)
    if samples is not None and samples < MIN_SAMPLES:
        return Lesson(
            title=f"Too few CPU samples during `{label}` to say where the leader's CPU went",
            evidence=(f"The leader's CPU profile during `{label}` holds {samples} samples (under {MIN_SAMPLES}, "
                      "3 s of one busy core at 100 Hz), so one sample moves a share by "
                      f"{100 / max(samples, 1):.1f} points; the leader was nearly idle. A longer capture "
                      "(profiling.cpu_seconds) or a heavier phase gives firmer shares."),
            figure=f"{samples} samples",
            plot="plots/cpu-categories.png",
            triggered=False,
        )
    top = sorted(shares.items(), key=lambda item: item[1], reverse=True)[:3]
    scheduler = shares.get("scheduler", 0.0)
    return Lesson(
        title=(f"During `{label}` the leader's CPU went mostly to {top[0][0]} ({top[0][1]:.1f}%); "
               f"the scheduler took {scheduler:.1f}%"),
        evidence=(f"Exclusive shares of the leader's CPU profile ({samples if samples is not None else 'unknown'} "
                  "samples): "
                  + ", ".join(f"{category} {share:.1f}%" for category, share in top)
                  + ". Swarm3k's published figures: scheduler about 0.42% of a manager's CPU, memberlist about "
                    "12%, Raft with the Go GC about 30%."),
        figure=f"scheduler {scheduler:.1f}%, {top[0][0]} {top[0][1]:.1f}%",
        plot="plots/cpu-categories.png",
    )


RULES: list[Rule] = [
    scheduling_throughput,
    stop_criteria,
    worker_joins,
    arp_overflow,
    routing_mesh,
    leader_change,
    cluster_size_estimate,
    cpu_breakdown,
]


def find_lessons(phases: dict, cpu: CpuSummary | None = None) -> list[Lesson]:
    """Apply every rule to one run; return the lessons (and not-triggered checks) in rule order."""
    cpu = cpu or CpuSummary()
    return [lesson for rule in RULES if (lesson := rule(phases, cpu)) is not None]


def untested_swarm3k_lessons(phases: dict, cpu: CpuSummary | None = None) -> list[str]:
    """The 2016 Swarm3k lessons this run did not test, worded as published claims."""
    cpu = cpu or CpuSummary()
    untested = []
    breakdown = cpu_breakdown(phases, cpu)
    if breakdown is None or not breakdown.triggered:
        reason = ("no CPU profile of a workload was categorised in this run" if breakdown is None
                  else "the workload's CPU profile had too few samples")
        untested.append("Swarm3k's manager CPU split (published: scheduler about 0.42%, memberlist about 12%, "
                        f"Raft with the Go GC about 30%): {reason}.")
    largest = max((s["target"] - s.get("started_running", 0) for _, r in _scale_phases(phases)
                   for s in r.get("steps", [])), default=None)
    jump = f"this run's largest step added {largest} replicas" if largest is not None else "this run had no scale phase"
    untested.append(f"One jump of 70,000 replicas overloaded the Swarm3k managers: {jump}, so it did not test "
                    "a jump of that size.")
    arp = arp_overflow(phases, cpu)
    if arp is None or not arp.triggered:
        reason = ("recorded no neighbour-table counters" if arp is None
                  else "saw no overflow before tuning, so it cannot show that the tuning was needed")
        untested.append("Raising gc_thresh1/2/3 avoided neighbour-table overflows on Swarm3k's nodes: "
                        f"this run {reason}.")
    return untested


def lessons_section(lessons: list[Lesson], untested: list[str]) -> list[str]:
    """Markdown lines of the report's lessons section."""
    lines = ["## Lessons", ""]
    found = [lesson for lesson in lessons if lesson.triggered]
    if not found:
        lines += ["No rule found a lesson in this run's figures.", ""]
    for lesson in found:
        plot = f" Plot: [{lesson.plot}]({lesson.plot})." if lesson.plot else ""
        lines.append(f"- **{lesson.title}** ({lesson.figure}). {lesson.evidence}{plot}")
    checked = [lesson for lesson in lessons if not lesson.triggered]
    if checked:
        lines += ["", "Checked, nothing found:", ""]
        lines += [f"- {lesson.title}. {lesson.evidence}" for lesson in checked]
    if untested:
        lines += ["", "Not tested in this run (Swarm3k, 2016):", ""]
        lines += [f"- {item}" for item in untested]
    return [*lines, ""]
