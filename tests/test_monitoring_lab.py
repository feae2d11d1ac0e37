"""Monitoring on a real lab: InfluxDB as a swarm service, the observer's points against the swarm's real
state, and an InfluxDB outage in the middle of a run."""

from __future__ import annotations

import logging
import time

import pytest
from docker.types import ServiceMode

from swarmlab.cluster import Cluster
from swarmlab.monitoring.credentials import MonitoringCredentials
from swarmlab.monitoring.session import start_monitoring
from swarmlab.phases.managers import init_managers
from swarmlab.phases.scale import service_counts
from swarmlab.phases.workers import join_workers
from swarmlab.providers.lab import LabProvider
from swarmlab.spec import parse_spec
from tests.conftest import lab_spec_data

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def wait(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {seconds}s")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    data = lab_spec_data("swm", "10.213.8.0/24", managers=1, workers=2,
                         monitoring={"enabled": True, "interval_seconds": 1})
    spec = parse_spec(data)
    provider = LabProvider(spec)
    credentials = MonitoringCredentials.generate()
    try:
        result = provider.provision("r1")
        cluster = Cluster(result.inventory, provider.ssh_identity)
        init_managers(cluster, spec.managers)
        join_workers(cluster, spec.workers)
        session = start_monitoring(Cluster(result.inventory, provider.ssh_identity), spec.monitoring, "r1",
                                   tmp_path_factory.mktemp("record"), lab=True, credentials=credentials)
        yield cluster, session, credentials
        if session.observer.running:
            session.stop()
        cluster.close()
    finally:
        leftovers = provider.lab.down()
        assert leftovers.empty(), leftovers.describe()


def test_points_match_swarm_state(monitored):
    cluster, session, _ = monitored
    client = cluster.engine(cluster.leader())
    client.services.create("swarmlab/tiny:latest", command=["sleep", "1000000"], name="probe",
                           mode=ServiceMode("replicated", replicas=6), constraints=["node.role==worker"],
                           stop_grace_period=1_000_000_000)
    wait(lambda: service_counts(client.api, "probe")[0] == 6, 120, "6 probe tasks running")
    time.sleep(3)  # a few samples after convergence
    real_nodes = client.api.nodes()
    real_running, real_desired = service_counts(client.api, "probe")

    tasks = session.store.query_frame("SELECT last(running) AS running, last(desired) AS desired FROM tasks "
                                      "WHERE service = 'probe'")
    nodes = session.store.query_frame("SELECT last(count) AS count FROM nodes WHERE state = 'ready' GROUP BY role")
    managers = session.store.query_frame("SELECT count(rss_bytes) AS samples FROM manager GROUP BY node")

    assert int(tasks["running"].iloc[0]) == real_running == 6
    assert int(tasks["desired"].iloc[0]) == real_desired == 6
    ready = {row.role: int(row.count) for row in nodes.itertuples()}
    assert ready == {
        "manager": sum(1 for n in real_nodes if n["Spec"]["Role"] == "manager" and n["Status"]["State"] == "ready"),
        "worker": sum(1 for n in real_nodes if n["Spec"]["Role"] == "worker" and n["Status"]["State"] == "ready"),
    }
    assert ready == {"manager": 1, "worker": 2}
    assert set(managers["node"]) == {"tswm-m1"}
    assert int(managers["samples"].iloc[0]) >= 3
    client.api.remove_service("probe")


def test_influxdb_outage_is_buffered_and_noted(monitored, caplog):
    cluster, session, credentials = monitored
    client = cluster.engine(cluster.leader())
    influx = next(s for s in client.services.list() if s.name.endswith("-influxdb"))
    caplog.set_level(logging.INFO, logger="swarmlab")
    written_before = session.store.written

    influx.scale(0)
    wait(lambda: not session.store.ping(), 60, "InfluxDB down")
    time.sleep(5)  # the observer keeps sampling into its buffer
    assert session.observer.running
    assert session.store.buffered > 0
    influx.reload()
    influx.scale(1)
    wait(session.store.ping, 120, "InfluxDB back")
    wait(lambda: len(session.store.gaps) == 1 and session.store.gaps[0][1] is not None, 60, "gap closed")

    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    recovered_lines = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(outage_lines) == 1
    assert len(recovered_lines) == 1
    start, end = session.store.gaps[0]
    assert (end - start).total_seconds() >= 5
    assert session.store.buffered == 0
    assert session.store.written > written_before
    # The buffered points reached InfluxDB: samples exist inside the outage window.
    window = f"time >= '{start.isoformat()}' AND time <= '{end.isoformat()}'"
    inside = session.store.query_frame(f"SELECT count(count) FROM nodes WHERE {window}")  # noqa: S608
    assert int(inside.iloc[0, -1]) >= 3

    summary = session.stop()
    assert len(summary["gaps"]) == 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    for password in credentials.secrets().values():
        assert password not in text
    for service in client.services.list():
        env = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env", [])
        assert not any(password in item for item in env for password in credentials.secrets().values())


def test_default_passwords_absent(monitored):
    _, _, credentials = monitored
    for password in credentials.secrets().values():
        assert password not in ("admin", "root", "password", "")
        assert len(password) >= 24
    assert len(set(credentials.secrets().values())) == 4
