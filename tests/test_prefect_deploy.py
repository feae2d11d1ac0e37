"""prefect.yaml against a real Prefect server on loopback: deploy everything, then run a flow on a worker.

The server runs from a temporary PREFECT_HOME on a free port and is stopped by its PID at the end.
The flow-run test sends a small lab experiment (prefix ``swp``, bridge ``swp0``, subnet
10.213.9.0/24, one manager and one worker) through a process worker and reads the report
artifact back through the Prefect client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
import yaml

from swarmlab.lab import Lab
from swarmlab.spec import parse_spec
from tests.conftest import REPO, lab_spec_data
from tests.prefect_server import PREFECT, prefect_server

pytestmark = pytest.mark.slow

POOL = "swarmlab"


def prefect(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``prefect server start`` on 127.0.0.1; yields its environment for clients."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


@pytest.fixture(scope="module")
def deployed(server):
    prefect(server, "work-pool", "create", POOL, "--type", "process")
    prefect(server, "--no-prompt", "deploy", "--all", timeout=600)
    return server


def sync_client(env: dict):
    """A Prefect client for the test server (the test process's own settings point elsewhere)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return get_client(sync_client=True)


def test_all_deployments_registered(deployed):
    expected = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    with sync_client(deployed) as client:
        found = {d.name: d for d in client.read_deployments()}
        assert set(found) == {d["name"] for d in expected}
        for spec in expected:
            deployment = found[spec["name"]]
            assert deployment.work_pool_name == POOL
            assert deployment.entrypoint == spec["entrypoint"]
            assert deployment.parameters == spec.get("parameters", {})
        nightly = found["lab-nightly"].schedules
        assert [s.schedule.cron for s in nightly] == ["0 2 * * *"]
        assert nightly[0].schedule.timezone == "UTC"
        assert nightly[0].active


def spec_data() -> dict:
    return lab_spec_data(
        "swp", "10.213.9.0/24", managers=1, workers=1,
        phases=[{"kind": "scale", "name": "scale", "steps": [5], "step_deadline": 120, "sample_interval": 0.5}],
        teardown="always",
    )


def wait_final(client, flow_run_id, deadline: float):
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run
        assert time.monotonic() < deadline, f"flow run still {flow_run.state_name} at the deadline"
        time.sleep(2)


@pytest.mark.lab
def test_worker_runs_lab_experiment(deployed, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    data = spec_data()
    spec_file = tmp_path / "swp.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    # A queue of its own, so the worker takes only this flow run and never a scheduled one.
    queue = f"test-{uuid.uuid4().hex[:8]}"
    prefect(deployed, "work-queue", "create", queue, "--pool", POOL)
    lab = Lab(parse_spec(data).provider.lab)
    worker_log = (tmp_path / "worker.log").open("w")
    worker = None
    try:
        with sync_client(deployed) as client:
            deployment = client.read_deployment_by_name("swarm3k/lab-nightly")
            flow_run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"spec_path": str(spec_file), "runs_dir": str(runs),
                                           "new_run": True, "teardown": "always"},
                work_queue_name=queue)
            worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--work-queue", queue,
                                       "--run-once"], cwd=tmp_path, env=deployed, stdout=worker_log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
            final = wait_final(client, flow_run.id, time.monotonic() + 900)
            log_tail = (tmp_path / "worker.log").read_text()[-4000:]
            assert final.state.is_completed(), f"{final.state_name}: {final.state.message}\n{log_tail}"

            artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        keys = {a.key for a in artifacts if a.key}
        assert "tswp-report" in keys, sorted(keys)
        report = next(a for a in artifacts if a.key == "tswp-report")
        assert report.type == "markdown"
        assert "## Lessons" in report.data
        assert "## Scale phase `scale`" in report.data
        [run_dir] = list((runs / "tswp").iterdir())
        assert (run_dir / "report.md").read_text() == report.data
        assert lab.states() == []
    finally:
        if worker is not None:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(timeout=30)
        worker_log.close()
        lab.down()
