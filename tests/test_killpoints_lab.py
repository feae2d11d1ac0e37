"""Kill -9 at every failpoint of a run, then the same command again: the run resumes and completes.

For each point of ``swarmlab.failpoints.points(spec)`` (every phase boundary and a point in the
middle of each phase), the flow is started with SWARMLAB_FAILPOINT set. It freezes itself at the
point (SIGSTOP); the test kills its whole process group with SIGKILL and runs the command again
without the failpoint. Checked after each pair:

- the re-run exits 0, the run is torn down and its report is written;
- every phase whose result was stored before the kill was not run again (its record is
  untouched and Prefect reports the task run as Cached);
- no node was created twice: every node that was up at the kill is reused, none re-created;
- the killed attempt's flow run is Crashed on the Prefect server, not left Running;
- no process of the killed attempt is left, and the lab leaves nothing behind;
- no join token or monitoring password is in any process's command line or environment at the
  kill, nor afterwards in the output, the run record, the Prefect server's logs, artifacts and
  runs, or its database file.

The flows use one ``prefect server start`` on loopback for the whole walk, as they would with
the UI. The experiment is small (1 manager, 2 workers) but has every kind of step: monitoring,
an idle profile, the three workload kinds, the report and the teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from swarmlab import failpoints
from swarmlab.lab import Lab
from swarmlab.spec import parse_spec
from tests.conftest import PYTHON, REPO, lab_spec_data
from tests.prefect_server import prefect_server
from tests.secret_scan import JOIN_TOKEN, block_secret, describe, file_hits, prefect_hits, process_hits

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.walk]

# Under pytest-xdist each worker (gw0, gw1, ...) walks its points on a lab of its own.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
assert WORKER < 4, "the walk has lab subnets for four workers"
PREFIX = f"swj{WORKER}"
STOP_DEADLINE = 600
RERUN_DEADLINE = 900


def spec_data() -> dict:
    return lab_spec_data(
        PREFIX, f"10.213.{14 + WORKER}.0/24", managers=1, workers=2,
        monitoring={"enabled": True, "interval_seconds": 2},
        phases=[
            {"kind": "mysql_wordpress", "name": "mysql-wordpress", "galera_size": 1, "deadline": 300},
            {"kind": "nginx_mesh", "name": "nginx-mesh", "replicas": 2, "deadline": 120},
            {"kind": "scale", "name": "scale", "steps": [6, 12], "step_deadline": 120, "sample_interval": 0.5},
        ],
        profiling={"enabled": True, "cpu_seconds": 2, "idle": True},
        teardown="on_success",
    )


SPEC = parse_spec(spec_data())
POINTS = failpoints.points(SPEC)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


def test_walk_covers_every_step():
    """Each step of the flow has its boundary, and each step that works on nodes a point inside it."""
    assert POINTS[0] == "after:start"
    assert POINTS[-1] == "during:teardown"
    for step in ("provision", "managers", "workers", "tuning", "monitoring", "mysql-wordpress", "nginx-mesh",
                 "scale", "report"):
        assert f"during:{step}" in POINTS
        assert f"after:{step}" in POINTS
    assert "after:profile-idle" in POINTS
    assert "after:monitoring-stopped" in POINTS
    assert len(POINTS) == len(set(POINTS)) == 22


def session_processes(session: int) -> list[int]:
    """PIDs of live processes whose session id is `session` (the killed attempt's session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[0]


def run_folder(runs: Path) -> Path:
    [folder] = list((runs / SPEC.name).iterdir())
    return folder


def stored_phases(folder: Path) -> dict[str, int]:
    """Phases whose task result is stored (what a resume restores), with their record's mtime."""
    stored = {}
    for result in (folder / "results").glob("*.json") if (folder / "results").exists() else []:
        task_name = result.name.split(f"-{SPEC.digest()}-")[0]
        phase = task_name.removeprefix("workload-")
        stored[phase] = (folder / "phases" / f"{phase}.json").stat().st_mtime_ns
    return stored


def flow_run_state(env: dict, flow_run_id: str) -> str:
    response = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=30)
    response.raise_for_status()
    return response.json()["state"]["type"]


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_point_then_resume(point, server, tmp_path):
    spec_file = tmp_path / "walk.yaml"
    spec_file.write_text(yaml.safe_dump(spec_data()))
    runs = tmp_path / "runs"
    command = [PYTHON, "-m", "flows.swarm3k", "--spec", str(spec_file), "--runs-dir", str(runs)]
    lab = Lab(SPEC.provider.lab)
    first_log = tmp_path / "first.log"
    with first_log.open("w") as log:
        first = subprocess.Popen(command, cwd=REPO, env={**server, failpoints.ENV: point}, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STOP_DEADLINE
        while process_state(first.pid) != "T":
            assert first.poll() is None, f"exited before {point}:\n{first_log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"{point} not reached within {STOP_DEADLINE}s"
            time.sleep(0.2)

        # What the killed attempt had finished, before the kill.
        folder = run_folder(runs)
        finished = stored_phases(folder)
        up_at_kill = {s.name for s in lab.states() if lab.is_running(s.name)}
        killed_flow_run = json.loads((folder / "run.json").read_text())["attempts"][-1]["flow_run_id"]
        steps_file = folder / "data" / "scale-steps.json"
        steps_at_kill = json.loads(steps_file.read_text()) if steps_file.exists() else []
        # The run's secrets, to look for: join tokens by their prefix, and the monitoring passwords
        # the run keeps in its Prefect Secret block (there once the monitoring step has started).
        needles = [JOIN_TOKEN]
        credentials = block_secret(server["PREFECT_API_URL"], f"swarmlab-{SPEC.name}-{folder.name}-monitoring")
        needles += [value.encode() for key, value in (credentials or {}).items() if not key.endswith("_user")]
        assert process_hits(needles) == []

        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        assert session_processes(first.pid) == []

        second = subprocess.Popen(command, cwd=REPO, env=server, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)
        try:
            output, _ = second.communicate(timeout=RERUN_DEADLINE)
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
                second.wait(timeout=30)
        assert second.returncode == 0, f"re-run after {point} failed:\n{output[-5000:]}"
        assert session_processes(second.pid) == []

        meta = json.loads((folder / "run.json").read_text())
        assert meta["status"] == "torn_down"
        assert meta["outcome"] == "completed"
        assert len(meta["attempts"]) == 2
        if point == "during:teardown":
            # Every phase had finished: the re-run only completes the removal of the nodes.
            assert "finishing the teardown" in output
        else:
            assert "over 2 attempts (resumed)" in (folder / "report.md").read_text()

        # Finished phases were restored, not run again. A workload's profile belongs to its phase:
        # it is taken again when the phase itself had not finished.
        # (Resumed during the teardown, the flow runs no phase task at all.)
        cached_lines = [line for line in output.splitlines() if "Cached" in line]
        for phase, mtime in finished.items():
            if phase.startswith("profile-") and phase != "profile-idle" and phase[8:] not in finished:
                continue
            assert (folder / "phases" / f"{phase}.json").stat().st_mtime_ns == mtime, f"{phase} ran again"
            if point != "during:teardown":
                assert any(f"Task run '{phase}" in line or f"Task run 'workload-{phase}" in line
                           for line in cached_lines), f"{phase} not Cached"
        # Scale steps measured before the kill are kept as they were.
        if steps_at_kill:
            kept = json.loads(steps_file.read_text())
            assert kept[:len(steps_at_kill)] == steps_at_kill

        # No node created twice.
        provision = json.loads((folder / "phases" / "provision.json").read_text())
        assert set(provision["reused"]) == up_at_kill
        assert not set(provision["created"]) & up_at_kill
        assert len(provision["created"]) + len(provision["reused"]) == 3

        assert flow_run_state(server, killed_flow_run) == "CRASHED"

        # No secret in the output, the run record, the Prefect server's records or its database.
        assert file_hits([folder, first_log], needles) == []
        assert [describe(n) for n in needles if n in output.encode()] == []
        assert prefect_hits(server["PREFECT_API_URL"], needles) == []
        assert file_hits(list(Path(server["PREFECT_HOME"]).glob("prefect.db*")), needles) == []
        assert lab.leftovers().empty(), lab.leftovers().describe()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        lab.down()
