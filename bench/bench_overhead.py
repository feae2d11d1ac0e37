"""Orchestration overhead: the swarm3k flow over 4,700 API-only droplets, with and without Prefect.

    .venv/bin/python bench/bench_overhead.py [--nodes 4700] [--repeat 3] [--write]
    .venv/bin/python bench/bench_overhead.py --quick        # 470 nodes, one repeat

What runs for real:

- the local DigitalOcean-compatible server (``swarmlab.doserver``) on 127.0.0.1, with API-only
  droplets (addresses from 198.18.0.0/15, nothing behind them) on a clock ``--scale`` times
  faster than real time;
- a Prefect server that the bench starts (``prefect server start`` on a free loopback port, with
  its own PREFECT_HOME in a temporary folder) and stops by its process group id at the end;
- the experiment flow ``flows.swarm3k.swarm3k`` with the spec deployments/experiments/swarm3k.yaml,
  resized to ``--nodes`` (3 managers, the rest workers), with monitoring off, one small scale
  phase (steps 100 and 200) and 1 s profiles. It runs provision, managers, workers, tuning, the
  idle profile, the scale phase with its profile, the report and the teardown, each phase's own
  code included.

What is replaced, in this process only, by in-process fakes that return at once and count calls:

- the SSH layer: ``SSHPool.run``, so ``SSHPool.run_many``'s fan-out still runs. The fake runs
  the tuning script's commands (echo, grep, printf into /proc/sys) and the dockerd CPU sample
  on per-node fake files, as a droplet would, and fails the bench on any other command.
  ``swarmlab.ssh.connect`` raises, so no SSH connection can leave the process;
- the Docker engine client: ``swarmlab.cluster.engine_client`` returns a fake engine per node,
  sharing one fake swarm (init, join tokens, node list, services, tasks, pprof). A CPU profile is
  the small Go profile ``pprof/sample.cpu`` from the shared reference data.

The phases nginx_mesh and mysql_wordpress are left out: they probe every node over HTTP directly
(not through SSH or the engine), which would send traffic to the droplets' 198.18.x.x addresses.

The provider builds its API clock with ``Clock()``; the bench points that name at its own clock,
scaled like the server's, so rate-limit windows and poll waits shrink together.

Measured per run, for the flow and for the peer (the same library calls in the same order, with
the same run-record writes, but no Prefect): wall time, and "work", the wall time during which at
least one fake call, DigitalOcean API request or provider wait (API clock sleep) was in progress.
Prefect overhead is the flow's wall time minus its work; the peer's wall minus work is the phase
code's own time, so flow minus peer is Prefect's share alone. CPU seconds of this process and of
the Prefect server's processes are measured too: on a loaded machine they vary far less than wall
time. After each flow run the bench reads the flow run and its task runs back through the
Prefect client and fails if any task run the flow made is missing or not in a final state.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402

SECTION = "Orchestration overhead at 4,700 nodes"
BASE_SPEC = REPO / "deployments" / "experiments" / "swarm3k.yaml"
MANAGERS = 3
TARGET_SECONDS = 60.0
# Task runs the flow makes for the bench's spec (monitoring off, idle profile on, one scale phase).
EXPECTED_TASK_RUNS = ("provision", "managers", "workers", "tuning", "monitoring", "profile-idle",
                      "profile-scale", "workload-scale", "report", "teardown")


# Work meter.


class WorkMeter:
    """Wall time during which at least one call of a kind is in progress, across threads.

    Concurrent calls of one kind count once (the union of their intervals); ``call_seconds``
    sums every call's own duration instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()
        self._since: dict[str, float] = {}
        self.seconds: Counter[str] = Counter()
        self.call_seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    @contextmanager
    def measure(self, kind: str):
        kinds = (kind, "work")
        started = time.monotonic()
        with self._lock:
            self.calls[kind] += 1
            for name in kinds:
                if self._active[name] == 0:
                    self._since[name] = started
                self._active[name] += 1
        try:
            yield
        finally:
            ended = time.monotonic()
            with self._lock:
                self.call_seconds[kind] += ended - started
                for name in kinds:
                    self._active[name] -= 1
                    if self._active[name] == 0:
                        self.seconds[name] += ended - self._since.pop(name)

    def snapshot(self) -> dict:
        with self._lock:
            return {"seconds": dict(self.seconds), "call_seconds": dict(self.call_seconds), "calls": dict(self.calls)}


METER = WorkMeter()


def meter_delta(before: dict, after: dict) -> dict:
    return {part: {k: after[part].get(k, 0) - before[part].get(k, 0) for k in after[part]} for part in after}


# Fake remote side: one swarm shared by every fake engine, reset per run.


class FakeSwarm:
    """Swarm state shared by the fake engines of one run: members, join tokens, services."""

    def __init__(self, profile: bytes):
        self.lock = threading.Lock()
        self.profile = profile
        self.swarm_id: str | None = None
        self.tokens: dict[str, str] = {}
        self.spec: dict = {}
        self.members: dict[str, dict] = {}  # by advertise address
        self.leader: str | None = None
        self.services: dict[str, dict] = {}
        self.ids = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids):08d}{secrets.token_hex(4)}"

    @staticmethod
    def token() -> str:
        """Return a join token shaped like swarmkit's: SWMTKN-1-<50 base36>-<25 base36>."""
        alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
        body = "".join(secrets.choice(alphabet) for _ in range(50))
        tail = "".join(secrets.choice(alphabet) for _ in range(25))
        return f"SWMTKN-1-{body}-{tail}"

    def node_body(self, address: str) -> dict:
        member = self.members[address]
        body = {
            "ID": member["id"],
            "Spec": {"Role": member["role"], "Availability": "active"},
            "Description": {"Hostname": member["hostname"]},
            "Status": {"State": "ready", "Addr": address},
        }
        if member["role"] == "manager":
            body["ManagerStatus"] = {"Leader": address == self.leader, "Reachability": "reachable",
                                     "Addr": f"{address}:2377"}
        return body


class FakeService:
    """The part of docker.models.services.Service the scale phase reads."""

    def __init__(self, attrs: dict):
        self.attrs = attrs
        self.id = attrs["ID"]
        self.name = attrs["Spec"]["Name"]


class FakeServices:
    def __init__(self, engine: FakeEngine):
        self.engine = engine

    def get(self, name: str) -> FakeService:
        import docker

        with self.engine.call("services.get"):
            swarm = self.engine.swarm
            with swarm.lock:
                if name not in swarm.services:
                    raise docker.errors.NotFound(f"service {name} not found")
                return FakeService(deepcopy(swarm.services[name]))

    def create(self, image: str, command=None, **kwargs) -> FakeService:
        import docker

        with self.engine.call("services.create"):
            self.engine.require_manager()
            swarm = self.engine.swarm
            name = kwargs["name"]
            mode = kwargs.get("mode") or {}
            replicas = (mode.get("Replicated") or mode.get("replicated") or {}).get("Replicas", 1)
            with swarm.lock:
                if name in swarm.services:
                    raise docker.errors.APIError(f"rpc error: code = AlreadyExists desc = name conflicts: {name}")
                attrs = {
                    "ID": swarm.new_id("svc"),
                    "Version": {"Index": next(swarm.ids)},
                    "Spec": {
                        "Name": name,
                        "Labels": dict(kwargs.get("labels") or {}),
                        "TaskTemplate": {"ContainerSpec": {"Image": image, "Command": list(command or [])}},
                        "Mode": {"Replicated": {"Replicas": replicas}},
                        "EndpointSpec": dict(kwargs.get("endpoint_spec") or {}),
                    },
                }
                swarm.services[name] = attrs
                return FakeService(deepcopy(attrs))


class FakeAPI:
    """The low-level docker.APIClient calls the phases make."""

    def __init__(self, engine: FakeEngine):
        self.engine = engine

    def nodes(self, filters: dict | None = None) -> list[dict]:
        with self.engine.call("api.nodes"):
            self.engine.require_manager()
            role = (filters or {}).get("role")
            swarm = self.engine.swarm
            with swarm.lock:
                return [swarm.node_body(a) for a, m in swarm.members.items() if role in (None, m["role"])]

    def inspect_swarm(self) -> dict:
        with self.engine.call("api.inspect_swarm"):
            self.engine.require_manager()
            return self.engine.swarm_attrs()

    def services(self, filters: dict | None = None, status: bool = False) -> list[dict]:
        with self.engine.call("api.services"):
            self.engine.require_manager()
            name = (filters or {}).get("name")
            swarm = self.engine.swarm
            with swarm.lock:
                items = [deepcopy(s) for n, s in swarm.services.items() if name in (None, n)]
            for item in items:
                replicas = item["Spec"]["Mode"]["Replicated"]["Replicas"]
                if status:
                    # Every task is running at once: the fake swarm converges instantly.
                    item["ServiceStatus"] = {"RunningTasks": replicas, "DesiredTasks": replicas}
            return items

    def tasks(self, filters: dict | None = None) -> list[dict]:
        with self.engine.call("api.tasks"):
            self.engine.require_manager()
            wanted = (filters or {}).get("service")
            swarm = self.engine.swarm
            with swarm.lock:
                services = [s for n, s in swarm.services.items() if wanted in (None, n, s["ID"])]
                return [
                    {"ID": f"{s['ID']}.{slot}", "ServiceID": s["ID"], "Slot": slot, "DesiredState": "running",
                     "Status": {"State": "running"}}
                    for s in services
                    for slot in range(1, s["Spec"]["Mode"]["Replicated"]["Replicas"] + 1)
                ]

    def inspect_service(self, name: str) -> dict:
        import docker

        with self.engine.call("api.inspect_service"):
            swarm = self.engine.swarm
            with swarm.lock:
                for service in swarm.services.values():
                    if name in (service["ID"], service["Spec"]["Name"]):
                        return deepcopy(service)
            raise docker.errors.NotFound(f"service {name} not found")

    def update_service(self, service: str, version: int, task_template=None, name=None, labels=None, mode=None,
                       endpoint_spec=None, **kwargs) -> dict:
        import docker

        with self.engine.call("api.update_service"):
            swarm = self.engine.swarm
            with swarm.lock:
                current = next((s for s in swarm.services.values() if service in (s["ID"], s["Spec"]["Name"])), None)
                if current is None:
                    raise docker.errors.NotFound(f"service {service} not found")
                if current["Version"]["Index"] != version:
                    raise docker.errors.APIError("rpc error: code = Unknown desc = update out of sequence")
                if mode is not None:
                    current["Spec"]["Mode"] = deepcopy(dict(mode))
                if labels is not None:
                    current["Spec"]["Labels"] = dict(labels)
                current["Version"]["Index"] = next(swarm.ids)
            return {"Warnings": None}

    def remove_service(self, service: str) -> bool:
        import docker

        with self.engine.call("api.remove_service"):
            swarm = self.engine.swarm
            with swarm.lock:
                for name, item in list(swarm.services.items()):
                    if service in (name, item["ID"]):
                        del swarm.services[name]
                        return True
            raise docker.errors.NotFound(f"service {service} not found")

    def _url(self, path: str, versioned_api: bool = True) -> str:
        return f"http+docker://fake{'/v1.41' if versioned_api else ''}{path}"

    def get(self, url: str, params=None, timeout=None) -> FakeResponse:
        with self.engine.call("api.get"):
            if "/debug/pprof/" not in url:
                return FakeResponse(404, b"404 page not found\n")
            return FakeResponse(200, self.engine.swarm.profile)


@dataclass
class FakeResponse:
    status_code: int
    content: bytes

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            import requests

            raise requests.HTTPError(f"{self.status_code} from the fake engine")


class FakeSwarmModel:
    """``client.swarm``: init, join, reload and attrs of the node's engine."""

    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.attrs: dict = {}

    def init(self, advertise_addr: str, listen_addr: str = "0.0.0.0:2377", **options) -> str:
        import docker

        with self.engine.call("swarm.init"):
            swarm = self.engine.swarm
            with swarm.lock:
                if swarm.swarm_id is not None:
                    raise docker.errors.APIError("This node is already part of a swarm")
                swarm.swarm_id = swarm.new_id("swarm")
                swarm.tokens = {"Worker": swarm.token(), "Manager": swarm.token()}
                swarm.spec = {
                    "Raft": {
                        "SnapshotInterval": options.get("snapshot_interval"),
                        "KeepOldSnapshots": options.get("keep_old_snapshots"),
                        "LogEntriesForSlowFollowers": options.get("log_entries_for_slow_followers"),
                        "HeartbeatTick": options.get("heartbeat_tick"),
                        "ElectionTick": options.get("election_tick"),
                    },
                    "Dispatcher": {"HeartbeatPeriod": options.get("dispatcher_heartbeat_period")},
                    "Orchestration": {"TaskHistoryRetentionLimit": options.get("task_history_retention_limit")},
                }
                swarm.members[advertise_addr] = {"id": swarm.new_id("node"), "role": "manager",
                                                 "hostname": self.engine.node.name}
                swarm.leader = advertise_addr
            return swarm.swarm_id

    def join(self, remote_addrs: list[str], join_token: str, advertise_addr: str, listen_addr: str = "",
             **options) -> bool:
        import docker

        with self.engine.call("swarm.join"):
            swarm = self.engine.swarm
            with swarm.lock:
                managers = {f"{a}:2377" for a, m in swarm.members.items() if m["role"] == "manager"}
                if not set(remote_addrs) & managers:
                    raise docker.errors.APIError(f"could not connect to {remote_addrs}: no manager there")
                role = {token: kind.lower() for kind, token in swarm.tokens.items()}.get(join_token)
                if role is None:
                    raise docker.errors.APIError("rpc error: code = InvalidArgument desc = invalid join token")
                if advertise_addr in swarm.members:
                    raise docker.errors.APIError("This node is already part of a swarm")
                swarm.members[advertise_addr] = {"id": swarm.new_id("node"), "role": role,
                                                 "hostname": self.engine.node.name}
            return True

    def reload(self) -> None:
        with self.engine.call("swarm.reload"):
            self.engine.require_manager()
            self.attrs = self.engine.swarm_attrs()


class FakeEngine:
    """Fake docker.DockerClient of one node; every call is counted and timed."""

    def __init__(self, node, swarm: FakeSwarm, counts: Counter):
        self.node = node
        self.swarm = swarm
        self.counts = counts
        self.api = FakeAPI(self)
        self.services = FakeServices(self)
        self.swarm_model = FakeSwarmModel(self)

    @contextmanager
    def call(self, name: str):
        self.counts[name] += 1
        with METER.measure("engine"):
            yield

    def require_manager(self) -> None:
        import docker

        with self.swarm.lock:
            member = self.swarm.members.get(self.node.advertise_address)
        if member is None or member["role"] != "manager":
            raise docker.errors.APIError("This node is not a swarm manager.")

    def swarm_attrs(self) -> dict:
        with self.swarm.lock:
            return {"ID": self.swarm.swarm_id, "JoinTokens": dict(self.swarm.tokens), "Spec": deepcopy(self.swarm.spec)}

    def info(self) -> dict:
        with self.call("info"):
            with self.swarm.lock:
                member = self.swarm.members.get(self.node.advertise_address)
            return {
                "Name": self.node.name,
                "ServerVersion": "20.10.24",
                "Swarm": {
                    "LocalNodeState": "active" if member else "inactive",
                    "ControlAvailable": bool(member and member["role"] == "manager"),
                    "NodeAddr": self.node.advertise_address if member else "",
                },
            }

    def close(self) -> None:
        self.counts["close"] += 1


class FakeRemote:
    """Remote side of one run: the fake swarm, the nodes' files for the fake shell, call counts."""

    def __init__(self, profile: bytes):
        self.swarm = FakeSwarm(profile)
        self.engine_calls: Counter[str] = Counter()
        self.ssh_calls: Counter[str] = Counter()
        self.unknown_commands: list[str] = []
        self._cpu_ticks: Counter[str] = Counter()
        self._files: dict[str, dict[str, str]] = {}  # per node: path -> content written
        self._lock = threading.Lock()

    def engine(self, node, identity, timeout: float = 60.0, max_pool_size: int = 8):
        self.engine_calls["engine_client"] += 1
        return EngineFacade(FakeEngine(node, self.swarm, self.engine_calls))

    def ssh(self, node, command: str):
        """Return (exit status, stdout, stderr) as a droplet would for the commands the phases send."""
        from swarmlab.cluster import CPU_SAMPLE

        if command == CPU_SAMPLE:
            self.ssh_calls["dockerd_cpu"] += 1
            with self._lock:
                self._cpu_ticks[node.name] += 2
                ticks = self._cpu_ticks[node.name]
            fields = ["S", "1", "1", "1", "0", "-1", "1077952832", "100", "0", "0", "0", str(ticks), str(ticks // 3),
                      "0", "0", "20", "0", "40", "0", "1200", "1500000000", "30000"]
            uptime = time.monotonic()
            return 0, f"811 (dockerd) {' '.join(fields)}\n100\n{uptime:.2f} {uptime * 1.8:.2f}\n", ""
        parts = shlex.split(command)
        if parts[:2] == ["sh", "-c"] and len(parts) == 3:
            self.ssh_calls["sh -c"] += 1
            with self._lock:
                files = self._files.setdefault(node.name, {})
            shell = FakeShell(files)
            status = shell.run(parts[2])
            if shell.unknown:
                with self._lock:
                    self.unknown_commands.extend(shell.unknown)
            return status, "".join(shell.stdout), "".join(shell.stderr)
        self.ssh_calls["unknown"] += 1
        with self._lock:
            self.unknown_commands.append(command[:120])
        return 127, "", f"sh: 1: {parts[0] if parts else command}: not found\n"


class EngineFacade:
    """docker.DockerClient's shape over a FakeEngine: ``.api``, ``.swarm``, ``.services``, ``.info()``."""

    def __init__(self, engine: FakeEngine):
        self._engine = engine
        self.api = engine.api
        self.services = engine.services
        self.swarm = engine.swarm_model

    def info(self) -> dict:
        return self._engine.info()

    def close(self) -> None:
        self._engine.close()


ARP_CACHE = [
    "entries  allocs  destroys  hash_grows  lookups  hits  res_failed  rcv_probes_mcast  rcv_probes_ucast  "
    "periodic_gc_runs  forced_gc_runs  unresolved_discards  table_fulls",
    *["00000005  00000009  00000004  00000000  0000002a  00000020  00000000  00000000  00000000  00000011  "
      "00000000  00000000  00000000"] * 2,
]
# A fresh droplet's values of the sysctls the swarm3k spec sets (Debian 12 defaults).
DROPLET_SYSCTLS = {
    "/proc/sys/net/core/somaxconn": "4096",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1": "128",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2": "512",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3": "1024",
}


class FakeShell:
    """Interpreter of the few shell commands the tuning phase sends (echo, grep -H, printf to a file, exit).

    It reads and writes the node's files in ``files``, falling back to a fresh droplet's values
    for /proc/sys and the ARP cache counters. Anything else exits 127 and is listed in
    ``unknown``, so a phase that starts sending new commands makes the bench fail, not pass.
    """

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.unknown: list[str] = []
        self.status = 0

    def run(self, script: str) -> int:
        for line in script.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";>")
            lexer.whitespace_split = True
            words = list(lexer)
            for command in [list(g) for is_sep, g in itertools.groupby(words, lambda w: w == ";") if not is_sep]:
                if command[0] == "exit":
                    return int(command[1]) if len(command) > 1 else self.status
                self.status = self.command(command)
        return self.status

    def read(self, path: str) -> str | None:
        if path in self.files:
            return self.files[path]
        if path == "/proc/net/stat/arp_cache":
            return "\n".join(ARP_CACHE) + "\n"
        if path.startswith("/proc/sys/"):
            return DROPLET_SYSCTLS.get(path, "0") + "\n"
        return None

    def command(self, words: list[str]) -> int:
        name, args = words[0], words[1:]
        if name == "set":
            return 0
        if name == "echo":
            self.stdout.append(" ".join(str(self.status) if a == "$?" else a for a in args) + "\n")
            return 0
        if name == "grep" and args[:2] == ["-H", "."]:
            status = 1
            for path in args[2:]:
                text = self.read(path)
                if text is None:
                    self.stderr.append(f"grep: {path}: No such file or directory\n")
                    continue
                self.stdout.extend(f"{path}:{line}\n" for line in text.splitlines() if line)
                status = 0
            return status
        if name == "printf" and len(args) >= 3 and args[-2] == ">":
            fmt, values, path = args[0], args[1:-2], args[-1]
            text = (fmt.replace("\\n", "\n") % tuple(values)) if values else fmt.replace("\\n", "\n")
            self.files[path] = text
            return 0
        self.unknown.append(" ".join(words)[:120])
        self.stderr.append(f"sh: 1: {name}: not found\n")
        return 127


REMOTE: FakeRemote | None = None


def install_fakes(clock_scale: float) -> None:
    """Replace the SSH and engine layers, and the provider's default API clock, in this process."""
    import swarmlab.cluster
    import swarmlab.doapi.session
    import swarmlab.providers.digitalocean
    import swarmlab.ssh
    from swarmlab.doapi.clock import Clock
    from swarmlab.ssh import CommandFailed, CommandResult

    def fake_run(pool, node, command: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        started = time.monotonic()
        with METER.measure("ssh"):
            status, out, err = REMOTE.ssh(node, command)
        result = CommandResult(node.name, command, status, out, err, time.monotonic() - started)
        if check and not result.ok:
            raise CommandFailed(f"node {node.name}: `{command}` exited {status}: {err.strip()[:300]}")
        return result

    def no_connect(node, *args, **kwargs):
        raise RuntimeError(f"bench: SSH to {node.name} ({node.address}) is faked; no connection is made")

    def fake_engine_client(node, identity, timeout: float = 60.0, max_pool_size: int = 8):
        return REMOTE.engine(node, identity, timeout, max_pool_size)

    class MeteredClock(Clock):
        def sleep(self, seconds: float) -> None:
            with METER.measure("do_wait"):
                super().sleep(seconds)

    clock = MeteredClock(clock_scale)
    original_request = swarmlab.doapi.session.ApiSession.request

    def metered_request(session, method, url, *args, **kwargs):
        with METER.measure("do_api"):
            return original_request(session, method, url, *args, **kwargs)

    swarmlab.ssh.SSHPool.run = fake_run
    swarmlab.ssh.connect = no_connect
    swarmlab.cluster.engine_client = fake_engine_client
    swarmlab.providers.digitalocean.Clock = lambda: clock
    swarmlab.doapi.session.ApiSession.request = metered_request


# Servers the bench starts.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrefectServer:
    """``prefect server start`` on loopback with its own PREFECT_HOME; stopped by its process group."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                   PREFECT_UI_ENABLED="false")
        prefect = Path(sys.executable).with_name("prefect")
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.process.returncode}; see {self.log}")
            try:
                # An http:// URL on loopback that the bench built itself.
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"prefect server did not respond on {self.api_url} within {timeout:.0f}s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # start_new_session made the server lead its own process group, so the signal also reaches
        # any process it started.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


# The experiment, with and without Prefect.


def write_spec(folder: Path, nodes: int, ssh_key_fingerprint: str) -> Path:
    """Write the swarm3k spec resized to ``nodes`` with monitoring off and a small workload."""
    data = yaml.safe_load(BASE_SPEC.read_text())
    data["name"] = "overhead"
    data["provider"]["digitalocean"]["ssh_keys"] = [ssh_key_fingerprint]
    data["provider"]["digitalocean"]["ssh_private_key"] = str(folder / "unused-identity")
    data["workers"]["count"] = nodes - MANAGERS
    data["monitoring"]["enabled"] = False
    data["phases"] = [{"kind": "scale", "name": "scale", "image": "busybox:1.36", "steps": [100, 200],
                       "sample_interval": 0.05, "step_deadline": 60}]
    data["profiling"] = {"enabled": True, "cpu_seconds": 1, "idle": True}
    data["teardown"] = "always"
    path = folder / f"overhead-{nodes}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_flow(spec_path: Path, runs_dir: Path) -> tuple[str, str]:
    """Run the experiment flow; return its flow run id and the final state's name."""
    from flows.swarm3k import swarm3k

    state = swarm3k(spec_path=str(spec_path), new_run=True, runs_dir=str(runs_dir), return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"the flow ended {state.name}: {state.message}")
    return str(state.state_details.flow_run_id), state.name


def run_without_prefect(spec_path: Path, runs_dir: Path) -> str:
    """Run the flow's phases as plain library calls, with the same run-record writes; return the report path."""
    from analysis.report import build_report
    from swarmlab.cluster import Cluster
    from swarmlab.phases.managers import init_managers
    from swarmlab.phases.profiles import capture_profiles
    from swarmlab.phases.scale import run_scale
    from swarmlab.phases.tuning import apply_tuning
    from swarmlab.phases.workers import join_workers
    from swarmlab.providers import get_provider
    from swarmlab.runs import open_run

    record, spec = open_run(spec_path, None, True, runs_dir)
    provider = get_provider(spec)
    provisioned = provider.provision(record.run_id)
    inventory = provisioned.inventory
    record.save_inventory(inventory)
    record.save_phase("provision", {"status": "completed", "seconds": round(provisioned.seconds, 3),
                                    "created": list(provisioned.created), "reused": list(provisioned.reused),
                                    "nodes": len(inventory.nodes), "provider": provider.kind})

    # The flow opens one Cluster (and one provider) per task; so does this.
    with Cluster(inventory, get_provider(spec).ssh_identity) as cluster:
        record.save_phase("managers", init_managers(cluster, spec.managers))
    with Cluster(inventory, get_provider(spec).ssh_identity) as cluster:
        record.save_phase("workers", join_workers(cluster, spec.workers))
    with Cluster(inventory, get_provider(spec).ssh_identity) as cluster:
        record.save_phase("tuning", apply_tuning(cluster, spec.tuning))
    with Cluster(inventory, get_provider(spec).ssh_identity) as cluster:
        record.save_phase("profile-idle", capture_profiles(cluster, spec.profiling, "idle", record.path / "profiles"))
    for phase in spec.phases:
        with Cluster(inventory, get_provider(spec).ssh_identity) as cluster:
            profile = capture_profiles(cluster, spec.profiling, phase.name, record.path / "profiles")
        record.save_phase(f"profile-{phase.name}", profile)
        with Cluster(inventory, get_provider(spec).ssh_identity) as cluster:
            record.save_phase(phase.name, run_scale(cluster, phase, record.run_id, record.path / "data"))

    markdown, summary = build_report(record.path, record.meta(), record.phases(), record.read_json("inventory.json"))
    (record.path / "report.md").write_text(markdown)
    record.write_json("summary.json", summary)
    record.update_meta(status="completed", finished_at=time.time(), failed_phases=[])
    removed = get_provider(spec).teardown(record.run_id)
    record.save_phase("teardown", {"status": "completed", "removed": removed})
    record.update_meta(status="torn_down", torn_down_at=time.time())
    return str(record.path / "report.md")


@dataclass
class RecordCheck:
    flow_run_state: str
    task_runs: Counter
    not_final: list[str]
    settle_seconds: float
    artifacts: int
    logs: int

    @property
    def missing(self) -> list[str]:
        expected = Counter(EXPECTED_TASK_RUNS)
        return sorted((expected - self.task_runs).elements())

    @property
    def unexpected(self) -> list[str]:
        return sorted((self.task_runs - Counter(EXPECTED_TASK_RUNS)).elements())


def task_label(name: str) -> str:
    """Return the task run's name without the random suffix Prefect adds to unnamed runs."""
    return name if name in EXPECTED_TASK_RUNS else name.rsplit("-", 1)[0]


def check_records(flow_run_id: str, timeout: float = 60.0) -> RecordCheck:
    """Read the flow run and its task runs back; wait up to ``timeout`` s for events still queued."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    started = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            labels = Counter(task_label(t.name) for t in task_runs)
            not_final = sorted(f"{t.name} ({t.state.name if t.state else 'no state'})" for t in task_runs
                               if t.state is None or not t.state.is_final())
            done = labels == Counter(EXPECTED_TASK_RUNS) and not not_final and flow_run.state.is_final()
            if done or time.monotonic() - started > timeout:
                break
            time.sleep(0.5)
        settle = time.monotonic() - started
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return RecordCheck(flow_run.state.name, labels, not_final, settle, len(artifacts), len(logs))


def count_all_runs() -> tuple[int, int]:
    """Return the flow runs and task runs in the Prefect database."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        task_runs, page = 0, 200
        while batch := client.read_task_runs(limit=page, offset=task_runs):
            task_runs += len(batch)
        return client.count_flow_runs(), task_runs


@dataclass
class Measurement:
    mode: str  # "prefect" or "plain"
    wall: float
    meter: dict
    engine_calls: int
    ssh_calls: int
    do_requests: int
    cpu: float  # this process: flow or peer, fakes and the DigitalOcean server's threads
    server_cpu: float  # the Prefect server's processes, in the same interval
    records: RecordCheck | None = None

    @property
    def work(self) -> float:
        return self.meter["seconds"].get("work", 0.0)

    @property
    def rest(self) -> float:
        return self.wall - self.work


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def session_cpu(session_id: int) -> float:
    """Return the CPU seconds of the live processes in session ``session_id``, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while the folder was being listed
        # After the command name: state ppid pgrp session ... utime (12th) stime (13th).
        if int(fields[3]) == session_id:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def measure(mode: str, spec_path: Path, runs_dir: Path, server, profile: bytes, prefect_session: int) -> Measurement:
    global REMOTE
    REMOTE = FakeRemote(profile)
    requests_before = server.stats.counted
    before = METER.snapshot()
    cpu_before, server_cpu_before = process_cpu(), session_cpu(prefect_session)
    started = time.monotonic()
    if mode == "prefect":
        flow_run_id, _ = run_flow(spec_path, runs_dir)
    else:
        run_without_prefect(spec_path, runs_dir)
    wall = time.monotonic() - started
    cpu, server_cpu = process_cpu() - cpu_before, session_cpu(prefect_session) - server_cpu_before
    meter = meter_delta(before, METER.snapshot())
    remote = REMOTE
    if remote.unknown_commands:
        raise RuntimeError(f"the fake SSH layer got commands it cannot handle: {remote.unknown_commands[:3]}")
    if server.state.droplet_records():
        raise RuntimeError(f"{len(server.state.droplet_records())} droplets left after the teardown")
    result = Measurement(mode, wall, meter, sum(remote.engine_calls.values()), sum(remote.ssh_calls.values()),
                         server.stats.counted - requests_before, cpu, server_cpu)
    if mode == "prefect":
        result.records = check_records(flow_run_id)
    return result


# Output.


def describe(m: Measurement) -> str:
    seconds = m.meter["seconds"]
    line = (f"{m.mode:7s} wall {m.wall:6.1f}s  work {m.work:6.1f}s (DO API {seconds.get('do_api', 0):.1f}s, "
            f"DO waits {seconds.get('do_wait', 0):.1f}s, SSH fakes {seconds.get('ssh', 0):.2f}s, engine fakes "
            f"{seconds.get('engine', 0):.2f}s)  wall-work {m.rest:6.1f}s  CPU {m.cpu:.1f}s + Prefect server "
            f"{m.server_cpu:.1f}s | {m.do_requests} API requests, {m.ssh_calls} SSH calls, "
            f"{m.engine_calls} engine calls")
    if m.records is not None:
        r = m.records
        line += (f"\n        records: flow run {r.flow_run_state}, "
                 f"{sum(r.task_runs.values())}/{len(EXPECTED_TASK_RUNS)} task runs, "
                 f"missing {r.missing or 'none'}, not final {r.not_final or 'none'}, settled in "
                 f"{r.settle_seconds:.1f}s; {r.artifacts} artifacts, {r.logs} logs")
    return line


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def median_of(values) -> float:
    return statistics.median(list(values))


def summarise(args, flows: list[Measurement], plains: list[Measurement], totals: tuple[int, int],
              loads: list[tuple[float, float, float]]) -> str:
    def row(label: str, runs: list[Measurement]) -> str:
        return (f"| {label} | {median_of(m.wall for m in runs):.1f} s | {median_of(m.work for m in runs):.1f} s "
                f"| {median_of(m.rest for m in runs):.1f} s | {median_of(m.cpu for m in runs):.1f} s "
                f"| {median_of(m.server_cpu for m in runs):.1f} s |")

    flow_rest = median_of(m.rest for m in flows)
    plain_rest = median_of(m.rest for m in plains)
    wall_ratio = median_of(m.wall for m in flows) / median_of(m.wall for m in plains)
    rest_ratio = flow_rest / plain_rest
    prefect_wall = median_of(f.wall - p.wall for f, p in zip(flows, plains, strict=True))
    prefect_cpu = median_of((f.cpu + f.server_cpu) - (p.cpu + p.server_cpu) for f, p in zip(flows, plains, strict=True))
    cpu_ratio = median_of(m.cpu + m.server_cpu for m in flows) / median_of(m.cpu + m.server_cpu for m in plains)
    records_ok = all(not m.records.missing and not m.records.not_final for m in flows)
    settle = max(m.records.settle_seconds for m in flows)
    met = flow_rest < TARGET_SECONDS and records_ok
    options = "--quick" if args.quick else f"--nodes {args.nodes} --repeat {args.repeat}"
    load_range = (f"{min(load[0] for load in loads):.0f} to {max(load[0] for load in loads):.0f} "
                  f"(1-minute load average, sampled before and after each run)")
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{platform.machine()}), Python {platform.python_version()}, Prefect {prefect_version()}, while other "
        f"jobs shared the machine: load {load_range}; `bench/bench_overhead.py {options}`.",
        "",
        f"{args.nodes:,} API-only droplets ({MANAGERS} managers, {args.nodes - MANAGERS:,} workers) on the local "
        f"DigitalOcean-compatible server at {args.scale:g} API seconds per real second, with the swarm3k spec "
        "(monitoring off, one scale phase of 100 and 200 replicas, 1 s profiles, teardown). SSH and the Docker "
        "engine are in-process fakes that answer at once; provisioning and teardown go through the real "
        "provider and API server. Work is the wall time during which a fake call, an API request or a "
        "provider wait was in progress. "
        + (f"Medians of {len(flows)} interleaved runs each way; the first flow run also pays for the "
           "process's first flow call (client setup, block registration):" if len(flows) > 1 else
           "One run each way; the flow run also pays for the process's first flow call:"),
        "",
        "| | wall | work | wall − work | CPU, bench process | CPU, Prefect server |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        row("flow with Prefect", flows),
        row("same phases, no Prefect", plains),
        "",
        f"Prefect overhead (flow wall − work): **{flow_rest:.1f} s**, target under {TARGET_SECONDS:.0f} s: "
        f"{'met' if met else 'NOT met'}. It includes the phase code's own time, which the run without "
        f"Prefect shows ({plain_rest:.1f} s). Prefect's share alone, per run flow minus no-Prefect: "
        f"{prefect_wall:.1f} s of wall time and {prefect_cpu:.1f} s of CPU (bench process and Prefect server). "
        f"Ratio flow / no Prefect: {wall_ratio:.2f} on wall time, {rest_ratio:.2f} on wall − work, "
        f"{cpu_ratio:.2f} on CPU. On a loaded machine the wall figures grow with the run queue, not with "
        "Prefect, and differ from run to run; the CPU figures hardly move with load.",
        "",
        f"Records: {'every' if records_ok else 'NOT every'} flow run had its {len(EXPECTED_TASK_RUNS)} task runs "
        f"in the Prefect database in a final state, all there at most {settle:.1f} s after the flow returned. "
        f"The database holds {plural(totals[0], 'flow run')} and {plural(totals[1], 'task run')} after "
        f"{plural(len(flows), 'flow call')}.",
        "",
        "Per run (flow / no Prefect):",
        "",
        "| run | wall | work | CPU, both processes | API requests | SSH calls | engine calls |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for number, (f, p) in enumerate(zip(flows, plains, strict=True), 1):
        lines.append(f"| {number} | {f.wall:.1f} s / {p.wall:.1f} s | {f.work:.1f} s / {p.work:.1f} s "
                     f"| {f.cpu + f.server_cpu:.1f} s / {p.cpu + p.server_cpu:.1f} s "
                     f"| {f.do_requests} / {p.do_requests} | {f.ssh_calls} / {p.ssh_calls} "
                     f"| {f.engine_calls} / {p.engine_calls} |")
    # Wrap prose like the rest of docs/benchmarks.md; tables stay one row per line.
    return "\n".join(line if line.startswith("|") else textwrap.fill(line, 96) for line in lines)


QUICK_HEADING = "### Quick run (470 nodes, `--quick`)"


def write_section(path: Path, heading: str | None, text: str) -> None:
    """Replace the section's lead text (``heading`` None) or one of its ``### `` parts, keeping the rest.

    A full-size run rewrites the lead text and a ``--quick`` run its own part, so neither
    erases the other; parts written by hand (e.g. a before/after comparison) stay as they are.
    """
    lines = path.read_text().splitlines() if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line.strip() == f"## {SECTION}"), None)
    lead: list[str] = []
    parts: dict[str, list[str]] = {}
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        current = None
        for line in lines[start + 1 : end]:
            if line.startswith("### "):
                current = line.strip()
                parts[current] = []
            elif current is None:
                lead.append(line)
            else:
                parts[current].append(line)
    if heading is None:
        lead = text.splitlines()
    else:
        parts[heading] = ["", *text.splitlines()]
    body = ["\n".join(lead).strip()]
    body += [f"{title}\n\n" + "\n".join(part).strip() for title, part in parts.items()]
    update_section(path, SECTION, "\n\n".join(body) + "\n")


def prefect_version() -> str:
    import prefect

    return prefect.__version__


def shared_profile() -> bytes:
    from tests.shared_data import shared_data

    return shared_data("pprof", "sample.cpu").read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4700,
                        help="droplets in the run, 3 of them managers (default 4700)")
    parser.add_argument("--repeat", type=int, default=3, help="runs with and without Prefect, interleaved (default 3)")
    parser.add_argument("--scale", type=float, default=20.0,
                        help="API seconds per real second on the server and the provider's clock (default 20)")
    parser.add_argument("--quick", action="store_true", help="470 nodes, one run each way")
    parser.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.repeat = 470, 1
    if args.nodes <= MANAGERS:
        parser.error(f"--nodes must be more than {MANAGERS}")

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        folder = Path(tmp)
        runs_dir = folder / "runs"
        home = folder / "prefect-home"
        # Set before swarmlab or Prefect is imported: both read these once, at import time.
        os.environ["SWARMLAB_RUNS"] = str(runs_dir)
        os.environ["PREFECT_HOME"] = str(home)
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        os.environ["DO_NOT_TRACK"] = "1"
        prefect_server = PrefectServer(home)
        started = time.monotonic()
        try:
            prefect_server.start()
            print(f"prefect server on {prefect_server.api_url} (PID {prefect_server.process.pid}) "
                  f"after {time.monotonic() - started:.1f}s")
            os.environ["PREFECT_API_URL"] = prefect_server.api_url
            return run_bench(args, folder, runs_dir, prefect_server.process.pid)
        finally:
            prefect_server.stop()


def run_bench(args, folder: Path, runs_dir: Path, prefect_session: int) -> int:
    from swarmlab.doserver import DOServer
    from swarmlab.doserver.testing import api_endpoint, operator_key_fingerprint, test_config

    profile = shared_profile()
    install_fakes(args.scale)
    # Import what either way runs before the clock starts, so neither pays for the imports
    # (pandas, matplotlib, Prefect's own) that the other made first.
    import analysis.report  # noqa: F401
    import flows.swarm3k  # noqa: F401
    import swarmlab.phases.scale  # noqa: F401
    config = test_config(droplet_limit=args.nodes + 10, time_scale=args.scale, active_delay=45, active_jitter=15,
                         delete_delay=3)
    flows: list[Measurement] = []
    plains: list[Measurement] = []
    loads = [os.getloadavg()]
    with DOServer(config) as server, api_endpoint(server):
        os.environ["DIGITALOCEAN_ACCESS_TOKEN"] = server.token
        spec_path = write_spec(folder, args.nodes, operator_key_fingerprint(server))
        for number in range(1, args.repeat + 1):
            # Alternate the order, so a change in the machine's load hits both ways alike.
            order = ("prefect", "plain") if number % 2 else ("plain", "prefect")
            for mode in order:
                result = measure(mode, spec_path, runs_dir, server, profile, prefect_session)
                loads.append(os.getloadavg())
                (flows if mode == "prefect" else plains).append(result)
                print(f"run {number}: {describe(result)}", flush=True)
    totals = count_all_runs()
    summary = summarise(args, flows, plains, totals, loads)
    print()
    print(summary)
    if totals != (len(flows), len(flows) * len(EXPECTED_TASK_RUNS)):
        print(f"\nerror: the Prefect database holds {totals[0]} flow runs and {totals[1]} task runs; expected "
              f"{len(flows)} and {len(flows) * len(EXPECTED_TASK_RUNS)}", file=sys.stderr)
        return 1
    if args.write:
        write_section(REPO / "docs" / "benchmarks.md", QUICK_HEADING if args.quick else None, summary)
        print(f"\nwrote the '{SECTION}' section of docs/benchmarks.md")
    failed = [m for m in flows if m.records.missing or m.records.not_final]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
