"""Lesson rules: each fires on measurements that support it and stays silent on those that do not.

The base phases are the results of a real lab run (3 managers, 4 workers, scale to 300 tasks),
trimmed to the keys the rules read; each case changes one measurement.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from analysis import lessons
from analysis.lessons import CpuSummary, Lesson, find_lessons, lessons_section, untested_swarm3k_lessons
from analysis.report import build_report
from tests.shared_data import shared_data


def step(number, started, target, seconds, throughput, cpu_max, aborted_by=None):
    return {"number": number, "started_running": started, "target": target, "running": target,
            "tasks_started": target - started, "seconds": seconds, "throughput": throughput,
            "converged": aborted_by is None, "failed_tasks": 0, "failure_rate": 0.0,
            "interval_rates": {"p50": 1.0, "p90": 9.0, "max": 10.0, "count": 5},
            "manager_cpu": {"p50": 3.0, "p90": cpu_max, "max": cpu_max, "count": 5}, "aborted_by": aborted_by}


REAL_PHASES = {
    "managers": {"leader": "lab-m1", "managers": [{"name": f"lab-m{i}", "leader": i == 1} for i in (1, 2, 3)],
                 "raft": {"SnapshotInterval": 10000}, "seconds": 8.309, "status": "completed"},
    "workers": {"expected": 4, "ready": 4, "failed": {}, "not_ready": [], "join_rate_per_second": 0.87,
                "seconds": 6.033, "status": "completed",
                "time_to_ready_summary": {"count": 4, "p50": 4.193, "p90": 4.2, "max": 4.2}},
    "tuning": {"kernel_wide_on_host": True, "status": "completed", "seconds": 2.173,
               "host": {"arp_cache_before": {"entries": 120, "table_fulls": 0},
                        "arp_cache_after": {"entries": 120, "table_fulls": 0},
                        "values": {"net.ipv4.neigh.default.gc_thresh3": {"before": "1024", "after": "32768"}}},
               "nodes": {f"lab-w{i}": {"arp_cache": None, "values": {}} for i in range(1, 5)}},
    "scale": {"kind": "scale", "phase": "scale", "leader": "lab-m1", "status": "completed", "aborted_by": None,
              "max_running": 300, "throughput_p50_over_steps": 3.234757740222455,
              "projected_hours_to_million": 85.87, "seconds": 142.028,
              "steps": [step(1, 0, 50, 12.365, 4.044, 10.73), step(2, 50, 100, 15.457, 3.235, 8.96),
                        step(3, 100, 200, 28.966, 3.452, 15.16), step(4, 200, 300, 32.501, 3.077, 20.51)]},
    "profile-scale": {"label": "scale", "node": "lab-m1", "was_leader": True, "cpu_seconds": 30,
                      "files": {"cpu": "profiles/scale-lab-m1.cpu.pb.gz"}},
}
REAL_CPU = {"scale": {"scheduler": 0.0, "store": 4.0, "grpc": 36.0, "engine_api": 16.0, "syscalls": 16.0,
                      "other": 24.0, "agent_executor": 4.0}}


def phases_with(change) -> dict:
    phases = copy.deepcopy(REAL_PHASES)
    change(phases)
    return phases


def set_path(*path_and_value):
    *path, key, value = path_and_value

    def change(phases):
        target = phases
        for part in path:
            target = target[part]
        target[key] = value

    return change


def unchanged(phases):
    pass


def drop(name):
    return lambda phases: phases.pop(name)


def nginx_without_ipvs(phases):
    phases["mesh"] = {"kind": "nginx_mesh", "status": "completed", "publish_mode": "host",
                      "routing_mesh": {"available": False, "nodes_with_ipvs": [],
                                       "nodes_without_ipvs": ["lab-m1", "lab-w1"]},
                      "limitation": "routing mesh unavailable: 2 of 2 nodes have no IPVS"}


def nginx_with_ipvs(phases):
    phases["mesh"] = {"kind": "nginx_mesh", "status": "completed", "publish_mode": "ingress",
                      "routing_mesh": {"available": True, "nodes_with_ipvs": ["lab-m1", "lab-w1"],
                                       "nodes_without_ipvs": []}, "limitation": None}


def scale_aborted(phases):
    scale = phases["scale"]
    scale["aborted_by"] = "leader dockerd CPU 95% over scale.abort.max_manager_cpu 90% at 180/200 running"
    scale["status"] = "failed"
    scale["steps"][-1]["aborted_by"] = scale["aborted_by"]


def flat_cpu(phases):
    for s in phases["scale"]["steps"]:
        s["manager_cpu"]["max"] = 12.0


def two_steps_only(phases):
    phases["scale"]["steps"] = phases["scale"]["steps"][:2]


def overflow_before(phases):
    phases["tuning"]["host"]["arp_cache_before"]["table_fulls"] = 57
    phases["tuning"]["host"]["arp_cache_after"]["table_fulls"] = 57


def node_overflow(phases):
    phases["tuning"] = {"kernel_wide_on_host": False, "host": {},
                        "nodes": {"do-w1": {"arp_cache": {"table_fulls": 3}, "values": {}},
                                  "do-w2": {"arp_cache": {"table_fulls": 0}, "values": {}}}}


def profile_lost_leader(phases):
    phases["profile-scale"]["was_leader"] = False


def scale_on_other_leader(phases):
    phases["scale"]["leader"] = "lab-m2"


def failed_joins(phases):
    phases["workers"].update(ready=2, failed={"lab-w3": "join timed out after 60s"}, not_ready=["lab-w4"])


# (rule, change, cpu categories, cpu samples, expected: None / True (lesson) / False (note), text in title)
CASES = [
    ("scheduling_throughput", unchanged, {}, {}, True, "3.23 tasks/s"),
    ("scheduling_throughput", drop("scale"), {}, {}, None, None),
    ("scheduling_throughput", set_path("scale", "throughput_p50_over_steps", None), {}, {}, None, None),
    ("stop_criteria", scale_aborted, {}, {}, True, "stop criterion"),
    ("stop_criteria", unchanged, {}, {}, None, None),
    ("worker_joins", unchanged, {}, {}, True, "All 4 workers joined, at 0.87 nodes/s"),
    ("worker_joins", failed_joins, {}, {}, True, "2 of 4 workers did not join"),
    ("worker_joins", drop("workers"), {}, {}, None, None),
    ("worker_joins", set_path("workers", "expected", 1), {}, {}, True, "The only worker joined"),
    # Resumed after a kill: the joins happened in the killed attempt, so there is no rate to show.
    ("worker_joins", set_path("workers", "join_rate_per_second", None), {}, {}, True,
     "All 4 workers joined, at a rate not measured (joined before this attempt)"),
    ("arp_overflow", unchanged, {}, {}, False, "No ARP neighbour-table overflow"),
    ("arp_overflow", overflow_before, {}, {}, True, "overflowed on 1 kernel"),
    ("arp_overflow", node_overflow, {}, {}, True, "overflowed on 1 kernel"),
    ("arp_overflow", drop("tuning"), {}, {}, None, None),
    ("routing_mesh", nginx_without_ipvs, {}, {}, True, "no IPVS"),
    ("routing_mesh", nginx_with_ipvs, {}, {}, None, None),
    ("routing_mesh", unchanged, {}, {}, None, None),
    ("leader_change", profile_lost_leader, {}, {}, True, "peaked at 21%"),
    ("leader_change", scale_on_other_leader, {}, {}, True, "leader changed during `scale`"),
    ("leader_change", unchanged, {}, {}, None, None),
    ("cluster_size_estimate", unchanged, {}, {}, True, "Estimate: one leader reaches 80% CPU near 1,667"),
    ("cluster_size_estimate", flat_cpu, {}, {}, None, None),
    ("cluster_size_estimate", two_steps_only, {}, {}, None, None),
    ("cpu_breakdown", unchanged, REAL_CPU, {"scale": 25}, False, "Too few CPU samples"),
    ("cpu_breakdown", unchanged, REAL_CPU, {"scale": 2900}, True, "mostly to grpc (36.0%)"),
    ("cpu_breakdown", unchanged, {"idle": REAL_CPU["scale"]}, {"idle": 2900}, None, None),
    ("cpu_breakdown", unchanged, {}, {}, None, None),
]


@pytest.mark.parametrize(("rule", "change", "categories", "samples", "expected", "title"), CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)])
def test_rule_cases(rule, change, categories, samples, expected, title):
    result = getattr(lessons, rule)(phases_with(change), CpuSummary(categories, samples))
    if expected is None:
        assert result is None
        return
    assert isinstance(result, Lesson)
    assert result.triggered is expected
    assert title in result.title
    assert result.evidence
    assert result.figure


def test_every_rule_has_cases():
    assert {rule.__name__ for rule in lessons.RULES} == {case[0] for case in CASES}


def test_lesson_plots_name_report_plots():
    found = find_lessons(phases_with(scale_aborted), CpuSummary(REAL_CPU, {"scale": 2900}))
    plots = {lesson.plot for lesson in found if lesson.plot}
    assert plots == {"plots/scale-throughput.png", "plots/scale-running.png", "plots/cpu-categories.png"}


def test_untested_lists_swarm3k_claims():
    untested = untested_swarm3k_lessons(REAL_PHASES, CpuSummary(REAL_CPU, {"scale": 25}))
    assert len(untested) == 3
    assert any("70,000 replicas" in item and "added 100 replicas" in item for item in untested)
    assert any("0.42%" in item and "too few samples" in item for item in untested)
    assert any("gc_thresh" in item for item in untested)


def test_untested_without_arp_counters():
    untested = untested_swarm3k_lessons(phases_with(drop("tuning")))
    assert any("recorded no neighbour-table counters" in item for item in untested)


def test_untested_drops_what_run_tested():
    phases = phases_with(overflow_before)
    untested = untested_swarm3k_lessons(phases, CpuSummary(REAL_CPU, {"scale": 2900}))
    assert untested == [item for item in untested if "70,000" in item]
    assert len(untested) == 1


def test_section_separates_notes_and_untested():
    found = find_lessons(REAL_PHASES, CpuSummary(REAL_CPU, {"scale": 25}))
    text = "\n".join(lessons_section(found, untested_swarm3k_lessons(REAL_PHASES)))
    lessons_part, rest = text.split("Checked, nothing found:")
    notes_part, untested_part = rest.split("Not tested in this run")
    assert "3.23 tasks/s" in lessons_part
    assert "No ARP neighbour-table overflow" in notes_part
    assert "No ARP" not in lessons_part
    assert "70,000" in untested_part


def test_report_puts_lessons_near_top(tmp_path):
    """The real report builder, with real plots and a real Go CPU profile."""
    profile = tmp_path / "profiles" / "scale-lab-m1.cpu.pb.gz"
    profile.parent.mkdir()
    shutil.copyfile(shared_data("pprof", "sample.cpu"), profile)
    samples = tmp_path / "data" / "scale-samples.csv"
    samples.parent.mkdir()
    samples.write_text("step,target,elapsed_s,running,desired,rate_per_s,leader_cpu_percent\n"
                       "1,50,1.0,0,50,0.0,10.7\n1,50,6.4,50,50,7.7,4.3\n")
    phases = copy.deepcopy(REAL_PHASES)
    phases["scale"]["samples_file"] = "data/scale-samples.csv"
    meta = {"experiment": "lab", "run_id": "r1", "provider": "lab", "elapsed_seconds": 97.4}
    inventory = {"nodes": [{"name": "lab-m1", "role": "manager"}, {"name": "lab-w1", "role": "worker"}]}

    markdown, summary = build_report(tmp_path, meta, phases, inventory)

    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Lessons"
    assert summary["lessons"][0]["figure"].startswith("3.23 tasks/s")
    assert all(set(item) == {"title", "evidence", "figure", "plot", "triggered"} for item in summary["lessons"])
    json.dumps(summary)
    for lesson in summary["lessons"]:
        if lesson["plot"]:
            assert (tmp_path / lesson["plot"]).is_file(), lesson["plot"]


def test_report_workers_resumed_join(tmp_path):
    """A resumed workers phase with no join: the report says the rate was not measured, not 0.00."""
    phases = copy.deepcopy(REAL_PHASES)
    phases["workers"].update(join_rate_per_second=None, time_to_ready_summary={})
    meta = {"experiment": "lab", "run_id": "r1", "provider": "lab", "elapsed_seconds": 97.4}
    markdown, _ = build_report(tmp_path, meta, phases, {"nodes": []})
    assert "Join rate and time to Ready not measured: the workers had joined before this attempt." in markdown
    assert "Join rate 0.00" not in markdown
