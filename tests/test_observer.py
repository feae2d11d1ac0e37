"""Observer and swarm_sample: against a real influxd and a real single-node swarm.

The swarm is this module's own dockerd, in a network namespace it creates, with its own data
root, exec root, pid file and socket under a temporary folder, so it touches no other engine.
Its tests need root, ``ip``, ``nsenter`` and ``dockerd``, and skip without them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import docker
import pytest

from swarmlab.metrics import MetricsStore, make_point
from swarmlab.monitoring.credentials import MonitoringCredentials
from swarmlab.monitoring.influx_image import IMPORT_CHANGES, build_influxdb_rootfs_tar
from swarmlab.monitoring.services import (
    DeployError,
    SecretFile,
    ServiceDefinition,
    deploy_service,
    ensure_network,
    grafana_service,
    influxdb_service,
    network_name,
    telegraf_services,
)
from swarmlab.observer import (
    ManagerStats,
    Observer,
    PartialSample,
    describe_swarm,
    manager_points,
    swarm_sample,
)
from swarmlab.spec import MonitoringSpec
from tests.influx_fixture import influx_url  # noqa: F401

DOCKERD_START_TIMEOUT = 60.0
CONVERGE_TIMEOUT = 90.0


def store_for(url: str) -> MetricsStore:
    parts = urlsplit(url)
    store = MetricsStore(parts.hostname, parts.port, database="t_" + uuid.uuid4().hex[:12])
    store.setup()
    return store


def messages(caplog, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


# Observer ----------------------------------------------------------------------------------


class FlakySampler:
    """A sample function that fails for a stretch of calls, as an SSH probe of a busy node does."""

    def __init__(self, failing: range):
        self.failing = failing
        self.calls = 0

    def __call__(self) -> list[dict]:
        self.calls += 1
        if self.calls in self.failing:
            raise ConnectionError("manager m1 did not answer")
        return [make_point("nodes", {"state": "ready"}, {"count": 3})]


def test_observer_logs_state_changes_once(influx_url, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="swarmlab.observer")
    store = store_for(influx_url)
    sampler = FlakySampler(failing=range(3, 7))
    observer = Observer(store, sampler, interval=0.05)

    observer.start()
    deadline = time.monotonic() + 10
    while sampler.calls < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    observer.stop()

    assert not observer.running
    assert observer.stats.failed_samples == 4
    assert observer.stats.samples == sampler.calls
    assert len(messages(caplog, "sample failed")) == 1
    recovered = messages(caplog, "recovered")
    assert recovered == ["observer: sampling recovered after 4 failed samples"]
    # The summary did not change between samples, so it is logged once.
    assert len(messages(caplog, "observer: nodes=1")) == 1
    assert len(messages(caplog, "stopped after")) == 1
    frame = store.query_frame("SELECT count FROM nodes")
    assert len(frame) == sampler.calls - 4


def test_observer_writes_partial_sample(influx_url, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="swarmlab.observer")
    store = store_for(influx_url)

    def sample() -> list[dict]:
        raise PartialSample(
            [make_point("nodes", {"state": "ready"}, {"count": 2})], TimeoutError("ssh m2")
        )

    observer = Observer(store, sample, interval=60)
    written = observer.sample_once()

    assert len(written) == 1
    assert observer.stats.failed_samples == 1
    assert "TimeoutError: ssh m2" in messages(caplog, "sample failed")[0]
    assert list(store.query_frame("SELECT count FROM nodes")["count"]) == [2]


def test_observer_counts_malformed_sample(influx_url, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="swarmlab.observer")
    observer = Observer(store_for(influx_url), lambda: [{"measurement": "nodes"}], interval=60)

    observer.sample_once()

    assert observer.stats.failed_samples == 1
    assert observer.stats.points == 0
    assert "ValueError" in messages(caplog, "sample failed")[0]


def test_observer_rejects_bad_interval(influx_url):  # noqa: F811
    with pytest.raises(ValueError, match="positive"):
        Observer(store_for(influx_url), list, interval=0)


def test_manager_points_accept_tuples_and_mappings():
    points = manager_points(
        {
            "m1": ManagerStats(12.5, 100),
            "m2": (None, 200),
            "m3": {"cpu_percent": 3, "rss_bytes": 300},
            "m4": None,
        },
        taken=1,
    )

    by_node = {point["tags"]["node"]: point["fields"] for point in points}
    assert by_node == {
        "m1": {"cpu_percent": 12.5, "rss_bytes": 100},
        "m2": {"rss_bytes": 200},
        "m3": {"cpu_percent": 3.0, "rss_bytes": 300},
    }
    assert isinstance(by_node["m3"]["cpu_percent"], float)


# A real swarm ------------------------------------------------------------------------------


def _can_run_dockerd() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("dockerd", "ip", "nsenter", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


class IsolatedDockerd:
    """One dockerd in its own network namespace, with every path under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.netns = f"swlmon{os.getpid()}"
        self.socket = root / "docker.sock"
        self.pidfile = root / "dockerd.pid"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> docker.DockerClient:
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        log = (self.root / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                "nsenter", f"--net=/var/run/netns/{self.netns}",
                "dockerd",
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.pidfile),
                "-H", f"unix://{self.socket}",
                # The bridge lives only inside this namespace; no iptables rules on the host.
                "--bip", "172.31.254.1/24",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + DOCKERD_START_TIMEOUT
        while True:
            try:
                # version="auto" queries the engine at once, so this loop waits for the socket.
                client = docker.DockerClient(
                    base_url=f"unix://{self.socket}", version="auto", timeout=60
                )
                break
            except docker.errors.DockerException:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log_path = self.root / "dockerd.log"
                    raise RuntimeError(f"dockerd did not start; see {log_path}") from None
                time.sleep(0.2)
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        return client

    def run_in_netns(self, script: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run a Python script inside the namespace, where the services' host ports are."""
        return subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{self.netns}", sys.executable, "-c", script],
            input=stdin, capture_output=True, text=True, timeout=120, check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # Anything still in the namespace was started by this dockerd (shims, containers).
        pids = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(self.root))
        ]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        subprocess.run(["ip", "netns", "del", self.netns], check=False)


@pytest.fixture(scope="module")
def swarm():
    reason = _can_run_dockerd()
    if reason:
        pytest.skip(f"a test dockerd {reason}")
    root = Path(tempfile.mkdtemp(prefix="swlmon-dockerd-"))
    daemon = IsolatedDockerd(root)
    try:
        client = daemon.start()
        _import_busybox(client, root)
        yield daemon, client
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def _import_busybox(client: docker.DockerClient, root: Path) -> None:
    tar_path = root / "busybox.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(shutil.which("busybox"), arcname="bin/busybox")
        for applet in ("sh", "sleep", "false"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    client.api.import_image_from_file(str(tar_path), repository="swlmon/busybox", tag="1")


def wait_for(condition, timeout: float = CONVERGE_TIMEOUT, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def count_requests(client: docker.DockerClient) -> list[str]:
    seen: list[str] = []
    client.api.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response.url))
    return seen


def tasks_by_service(points: list[dict]) -> dict[str, dict]:
    return {p["tags"]["service"]: p["fields"] for p in points if p["measurement"] == "tasks"}


@pytest.mark.lab
def test_swarm_sample_counts_nodes_and_tasks(swarm):
    _, client = swarm
    web = client.services.create(
        "swlmon/busybox:1", command=["sleep", "3600"], name="web",
        mode=docker.types.ServiceMode("replicated", replicas=3),
    )
    broken = client.services.create(
        "swlmon/busybox:1", command=["false"], name="broken",
        restart_policy=docker.types.RestartPolicy(condition="on-failure", max_attempts=2),
    )
    missing = client.services.create("swlmon/not-imported:1", name="missing")
    try:
        points = wait_for(lambda: _converged(client, web=3))

        tasks = tasks_by_service(points)
        assert tasks["web"] == {"running": 3, "desired": 3, "failed": 0}
        assert tasks["broken"]["failed"] >= 1
        assert tasks["missing"]["running"] == 0
        assert tasks["missing"]["failed"] >= 1  # rejected: the image is on no node
        nodes = [p for p in points if p["measurement"] == "nodes"]
        assert [(n["tags"], n["fields"]) for n in nodes] == [
            ({"state": "ready", "role": "manager", "availability": "active"}, {"count": 1})
        ]
        assert describe_swarm(points).startswith("nodes 1/1 ready; tasks 3/")
    finally:
        for service in (web, broken, missing):
            service.remove()


def _converged(client: docker.DockerClient, web: int) -> list[dict] | None:
    points = swarm_sample(client)
    tasks = tasks_by_service(points)
    failed = [tasks.get(name, {}).get("failed") for name in ("broken", "missing")]
    if tasks.get("web", {}).get("running") == web and all(failed):
        return points
    return None


@pytest.mark.lab
def test_swarm_sample_requests_do_not_grow_with_tasks(swarm):
    _, client = swarm
    service = client.services.create(
        "swlmon/busybox:1", command=["sleep", "3600"], name="scaled",
        mode=docker.types.ServiceMode("replicated", replicas=1),
    )
    try:
        wait_for(lambda: tasks_by_service(swarm_sample(client))["scaled"]["running"] == 1)
        seen = count_requests(client)
        swarm_sample(client)
        few = len(seen)

        service.scale(8)
        wait_for(lambda: tasks_by_service(swarm_sample(client))["scaled"]["running"] == 8)
        seen.clear()
        swarm_sample(client)

        assert few == 3
        assert len(seen) == few
    finally:
        client.api.hooks["response"].clear()
        service.remove()


@pytest.mark.lab
def test_swarm_sample_partial_when_stats_fail(swarm):
    _, client = swarm

    def stats():
        raise TimeoutError("ssh to m1 timed out")

    with pytest.raises(PartialSample) as caught:
        swarm_sample(client, stats)

    assert any(p["measurement"] == "nodes" for p in caught.value.points)
    points = swarm_sample(client, lambda: {"m1": ManagerStats(4.5, 123_456)})
    (manager,) = [p for p in points if p["measurement"] == "manager"]
    assert manager["fields"] == {"cpu_percent": 4.5, "rss_bytes": 123_456}
    assert len({p["time"] for p in points}) == 1


@pytest.mark.lab
def test_observer_samples_swarm_into_influxdb(swarm, influx_url):  # noqa: F811
    _, client = swarm
    store = store_for(influx_url)
    observer = Observer(store, lambda: swarm_sample(client), interval=0.2, describe=describe_swarm)

    observer.start()
    wait_for(lambda: observer.stats.samples >= 3, timeout=30, interval=0.1)
    observer.stop()

    frame = store.query_frame('SELECT "count" FROM nodes GROUP BY "state", "role"')
    assert set(frame["state"]) == {"ready"}
    assert (frame["count"] == 1).all()
    assert len(frame) >= 3


IN_NAMESPACE_CHECK = textwrap.dedent(
    """
    import sys, time
    from swarmlab.metrics import MetricsStore
    user, password, database = (sys.stdin.readline().strip() for _ in range(3))
    store = MetricsStore("127.0.0.1", 18086, user, password, database)
    for _ in range(100):
        if store.ping():
            break
        time.sleep(0.2)
    store.ensure_admin()
    store.setup()
    assert store.write("nodes", {"state": "ready"}, {"count": 5})
    print(list(store.query_frame("SELECT count FROM nodes")["count"]))
    """
)


@pytest.mark.lab
def test_lab_influxdb_image_runs_as_service(swarm, tmp_path):
    daemon, client = swarm
    tar_path = build_influxdb_rootfs_tar(tmp_path / "influxdb.tar")
    client.api.import_image_from_file(
        str(tar_path), repository="swarmlab/influxdb", tag="1.6.7", changes=IMPORT_CHANGES
    )
    spec = MonitoringSpec()
    credentials = MonitoringCredentials.generate()
    prefix = "t" + uuid.uuid4().hex[:6]
    ensure_network(client, network_name(prefix))
    definition = influxdb_service(spec, lab=True, prefix=prefix, published_port=18086)
    service = deploy_service(client, definition)
    try:
        wait_for(lambda: tasks_by_service(swarm_sample(client))[definition.name]["running"] == 1)
        again = deploy_service(client, definition)
        assert again.id == service.id

        # From inside the namespace: create the admin, the database, write and read back.
        # User, password and database go in on stdin, so the password is in no command line.
        user, password = credentials.influxdb_admin_user, credentials.influxdb_admin
        lines = [user, password, spec.influxdb.database]
        result = daemon.run_in_netns(IN_NAMESPACE_CHECK, stdin="\n".join(lines) + "\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[5]"
        assert credentials.influxdb_admin not in result.stderr
    finally:
        service.remove()


@pytest.mark.lab
def test_deploy_grafana_creates_configs_and_secrets(swarm):
    _, client = swarm
    prefix = "g" + uuid.uuid4().hex[:6]
    credentials = MonitoringCredentials.generate()
    ensure_network(client, network_name(prefix))
    definition = grafana_service(MonitoringSpec(), credentials, prefix=prefix)

    # The Grafana image cannot be pulled here: the service is created, its task is not run.
    service = deploy_service(client, definition)
    try:
        container_spec = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
        secret_files = {s["File"]["Name"] for s in container_spec["Secrets"]}
        config_files = {c["File"]["Name"] for c in container_spec["Configs"]}
        assert secret_files == {s.target for s in definition.secrets}
        assert config_files == {c.target for c in definition.configs}
        for config in definition.configs:
            stored = client.configs.get(config.name)
            assert stored.attrs["Spec"]["Data"]  # base64 of the file
        env = " ".join(container_spec["Env"])
        assert credentials.grafana_admin not in env

        changed = ServiceDefinition(
            name=f"{prefix}-other", image="swlmon/busybox:1",
            secrets=[SecretFile(definition.secrets[0].name, "x", b"another value")],
        )
        with pytest.raises(DeployError, match="exists with other content"):
            deploy_service(client, changed)
    finally:
        service.remove()


@pytest.mark.lab
def test_deploy_telegraf_on_host_network(swarm):
    _, client = swarm
    prefix = "h" + uuid.uuid4().hex[:6]
    node_id = client.info()["Swarm"]["NodeID"]
    definitions = telegraf_services(
        MonitoringSpec(), MonitoringCredentials.generate(), manager_node_id=node_id,
        influxdb_url="http://127.0.0.1:18086", prefix=prefix,
    )

    services = [deploy_service(client, definition) for definition in definitions]
    try:
        for service in services:
            template = service.attrs["Spec"]["TaskTemplate"]
            targets = [n["Target"] for n in template["Networks"]]
            # Swarm stores its own id of the host network; the name is what matters.
            assert [client.networks.get(target).name for target in targets] == ["host"]
            assert template["ContainerSpec"]["Hostname"] == "{{.Node.Hostname}}"
        manager_mode = services[0].attrs["Spec"]["Mode"]
        assert manager_mode == {"Replicated": {"Replicas": 1}}
        assert "Global" in services[1].attrs["Spec"]["Mode"]
    finally:
        for service in services:
            service.remove()
