"""The experiment flow end to end on a real lab: killed during the scale phase, resumed, torn down."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest
import yaml

from analysis.pprof import read_profile
from swarmlab.lab import Lab
from swarmlab.spec import parse_spec
from tests.conftest import PYTHON, REPO, lab_spec_data
from tests.test_pprof import go_top, our_top

pytestmark = [pytest.mark.lab, pytest.mark.slow]

PREFIX = "swf"


def spec_data() -> dict:
    return lab_spec_data(
        PREFIX, "10.213.5.0/24", managers=1, workers=2,
        phases=[{"kind": "scale", "name": "scale", "steps": [10, 20, 40], "step_deadline": 120,
                 "sample_interval": 0.5}],
        profiling={"enabled": True, "cpu_seconds": 3, "idle": False},
        teardown="on_success",
    )


def flow_command(spec_file: Path, runs: Path) -> list[str]:
    return [PYTHON, "-m", "flows.swarm3k", "--spec", str(spec_file), "--runs-dir", str(runs)]


def running_tasks(lab: Lab, node: str, service: str) -> int:
    client = docker.APIClient(base_url=f"unix://{lab.node(node).docker_socket}", version="1.41", timeout=5)
    try:
        for item in client.services(filters={"name": service}, status=True):
            return int(item.get("ServiceStatus", {}).get("RunningTasks", 0))
    except (docker.errors.DockerException, OSError):
        return 0
    finally:
        client.close()
    return 0


def test_killed_run_resumes_and_tears_down(tmp_path):
    data = spec_data()
    spec_file = tmp_path / "flow.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    lab = Lab(parse_spec(data).provider.lab)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(flow_command(spec_file, runs), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while running_tasks(lab, "tswf-m1", "scale") < 5:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the scale phase did not start within 300s"
            time.sleep(0.5)
        # The whole process group: the flow and the temporary Prefect server it started.
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        assert len(lab.states()) == 3

        second = subprocess.run(flow_command(spec_file, runs), cwd=REPO, capture_output=True, text=True,
                                timeout=600, start_new_session=True)
        output = second.stdout + second.stderr
        assert second.returncode == 0, output[-4000:]
        for phase in ("managers", "workers", "tuning"):
            assert any(f"Task run '{phase}-" in line and "Cached" in line for line in output.splitlines()), phase
        assert "0 created, 3 already running" in output
        assert "of a killed attempt marked Crashed" in output

        [run_dir] = list((runs / data["name"]).iterdir())
        meta = yaml.safe_load((run_dir / "run.json").read_text())
        assert meta["status"] == "torn_down"
        assert len(meta["attempts"]) == 2
        report = (run_dir / "report.md").read_text()
        assert "**3 nodes** (1 managers, 2 workers)" in report
        assert "over 2 attempts (resumed)" in report
        for phase in ("provision", "managers", "workers", "tuning", "scale"):
            assert f"| {phase} |" in report
        assert "| 3 | 20→40 | 40 |" in report
        assert "profiles/scale-tswf-m1.cpu.pb.gz" in report
        captured = run_dir / "profiles" / "scale-tswf-m1.cpu.pb.gz"
        assert captured.stat().st_size > 100
        # The decoder agrees with go tool pprof on a profile of this run's own leader dockerd.
        for sample_index in ("samples", "cpu"):
            assert our_top(read_profile(captured), sample_index) == {
                name: values[:2] for name, values in go_top(captured, sample_index).items()
            }
        assert "## Where the leader's CPU went" in report
        assert (run_dir / "plots" / "scale-running.png").exists()
        secrets_seen = [p for p in run_dir.rglob("*") if p.is_file() and b"SWMTKN-1-" in p.read_bytes()]
        assert secrets_seen == []
        assert "SWMTKN-1-" not in output
        assert lab.leftovers().empty(), lab.leftovers().describe()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        lab.down()
