"""Run comparison: the side-by-side table and regressions flagged against a threshold.

The baseline is the summary.json of a real lab run (3 managers, 4 workers, scale to 300 tasks),
with the CPU category shares its report computed; the second run is a copy with the scheduling
throughput 30% lower.
"""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from analysis.compare import compare_runs, find_regressions, latest_runs, run_figures
from flows.compare import main
from tests.conftest import PYTHON, REPO

REAL_SUMMARY = {
    "elapsed_seconds": 97.4, "experiment": "lab", "managers": 3, "nodes": 7, "provider": "lab",
    "run_id": "20261204T204519Z-91cc", "workers": 4,
    "phase_seconds": {"managers": 8.309, "monitoring": 0.0, "provision": 0.039, "scale": 142.028,
                      "tuning": 2.173, "workers": 6.033},
    "phases": {
        "managers": {"count": 3, "leader": "lab-m1"},
        "scale": {"max_running": 300, "projected_hours_to_million": 85.87, "status": "completed",
                  "steps": [{"seconds": 12.365, "target": 50, "throughput": 4.044},
                            {"seconds": 15.457, "target": 100, "throughput": 3.235},
                            {"seconds": 28.966, "target": 200, "throughput": 3.452},
                            {"seconds": 32.501, "target": 300, "throughput": 3.077}],
                  "throughput_p50_over_steps": 3.234757740222455},
        "workers": {"expected": 4, "join_rate_per_second": 0.87, "ready": 4},
    },
    "profiles": {"idle": "profiles/idle-lab-m1.cpu.pb.gz", "scale": "profiles/scale-lab-m1.cpu.pb.gz"},
    "cpu_categories": {
        "scale": {"scheduler": 0.0, "dispatcher": 0.0, "store": 4.0, "grpc": 36.0, "engine_api": 16.0,
                  "agent_executor": 4.0, "syscalls": 16.0, "other": 24.0},
        "idle": {"dispatcher": 3.85, "gossip": 19.23, "grpc": 19.23, "go_gc": 11.54, "other": 7.69},
    },
}


def slower_copy(summary: dict, factor: float, run_id: str) -> dict:
    slower = copy.deepcopy(summary)
    scale = slower["phases"]["scale"]
    scale["throughput_p50_over_steps"] *= factor
    scale["projected_hours_to_million"] = round(scale["projected_hours_to_million"] / factor, 2)
    for step in scale["steps"]:
        step["throughput"] = round(step["throughput"] * factor, 3)
    slower["run_id"] = run_id
    return slower


def write_run(root, summary: dict):
    folder = root / summary["experiment"] / summary["run_id"]
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def two_runs(tmp_path):
    baseline = write_run(tmp_path, REAL_SUMMARY)
    slower = write_run(tmp_path, slower_copy(REAL_SUMMARY, 0.7, "20261205T020000Z-abcd"))
    return baseline, slower


def test_cli_flags_throughput_drop(two_runs):
    baseline, slower = two_runs
    done = subprocess.run([PYTHON, "-m", "flows.compare", str(baseline), str(slower)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| figure | 20261204T204519Z-91cc (baseline) | 20261205T020000Z-abcd |"
    assert "| throughput (tasks/s) | 3.23 | 2.26 (!) |" in table
    assert "| join_rate (nodes/s) | 0.87 | 0.87 |" in table
    assert "| leader CPU grpc (%) | 36 | 36 |" in table
    assert "1 regression(s):" in done.stdout
    assert "throughput: 2.264 in 20261205T020000Z-abcd vs 3.235 in 20261204T204519Z-91cc (-30%)" in done.stdout


def test_cli_threshold_option(two_runs, capsys):
    baseline, slower = two_runs
    assert main(["--threshold", "0.35", str(baseline), str(slower)]) == 0
    output = capsys.readouterr().out
    assert "No regressions over the threshold." in output
    assert "(!)" not in output


def test_cli_experiment_picks_newest(tmp_path, two_runs, capsys):
    older = slower_copy(REAL_SUMMARY, 1.0, "20261203T020000Z-0000")
    write_run(tmp_path, older)
    (tmp_path / "lab" / "20261206T020000Z-nosummary").mkdir()
    assert main(["--experiment", "lab", "--last", "2", "--runs-dir", str(tmp_path)]) == 1
    output = capsys.readouterr().out
    assert "Baseline: 20261204T204519Z-91cc" in output
    assert "20261203T020000Z-0000" not in output


def test_cli_missing_summary(tmp_path, two_runs, capsys):
    baseline, _ = two_runs
    assert main([str(baseline), str(tmp_path / "nowhere")]) == 2
    assert "summary.json not found" in capsys.readouterr().err


def test_latest_runs_sorted_oldest_first(tmp_path, two_runs):
    assert [p.name for p in latest_runs(tmp_path, "lab", 5)] == ["20261204T204519Z-91cc", "20261205T020000Z-abcd"]


def test_join_rate_and_ready_drops_flagged():
    worse = copy.deepcopy(REAL_SUMMARY)
    worse["run_id"] = "worse"
    worse["phases"]["workers"].update(join_rate_per_second=0.5, ready=3)
    found = find_regressions([run_figures(REAL_SUMMARY), run_figures(worse)])
    assert {r.metric for r in found} == {"join_rate", "workers_ready"}


def test_improvement_and_missing_not_flagged():
    faster = slower_copy(REAL_SUMMARY, 2.0, "faster")
    old = copy.deepcopy(REAL_SUMMARY)
    old["phases"]["workers"]["join_rate_per_second"] = None
    old.pop("cpu_categories")
    assert find_regressions([run_figures(REAL_SUMMARY), run_figures(faster), run_figures(old)]) == []


def test_compare_runs_without_cpu(tmp_path):
    summary = copy.deepcopy(REAL_SUMMARY)
    summary.pop("cpu_categories")
    first = write_run(tmp_path, summary)
    second = write_run(tmp_path, slower_copy(summary, 0.9, "second"))
    markdown, regressions = compare_runs([first, second])
    assert regressions == []
    assert "leader CPU" not in markdown
