"""mysql_wordpress: etcd for discovery, a MariaDB Galera cluster bootstrapped through it, WordPress.

Everything runs on one attachable overlay network:

- ``<phase>-etcd``: one etcd member, the discovery service.
- ``<phase>-galera``: ``phase.galera_size`` MariaDB Galera nodes, at most one per swarm node where
  the swarm has enough nodes. Each task's entrypoint (``swarmlab-galera`` in the mariadb-galera
  image) registers its address in etcd. The first task to take the etcd lock bootstraps a new
  cluster. The others join ``gcomm://`` of the members that announced themselves synced.
- ``<phase>-wordpress``: ``phase.wordpress_replicas`` WordPress tasks connected to the Galera
  service. With the routing mesh (IPVS on every node) they publish ``phase.published_port`` in
  ingress mode; without it, in host mode on the nodes that run them.

The internal services use DNS round-robin (``endpoint_mode: dnsrr``), which needs no IPVS.
Passwords (MariaDB root, the WordPress database user, the WordPress admin) are generated with
:mod:`secrets` and exist only as Docker secrets. Containers read them as mounted files whose
paths come in ``*_FILE`` variables. No password goes into an environment variable, a log line, a
file of the run or the result. The phase is healthy when every Galera node reports ``wsrep_cluster_size ==
galera_size`` and is Synced, and WordPress answers HTTP 200 on its published port on every node
that publishes it. It measures the time to each of those milestones and removes what it created
unless ``phase.keep``.
"""

from __future__ import annotations

import csv
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.types import EndpointSpec, Healthcheck, RestartPolicy, SecretReference, ServiceMode

from swarmlab import failpoints
from swarmlab.cluster import Cluster
from swarmlab.inventory import Node
from swarmlab.phases import PhaseFailed, percentiles
from swarmlab.phases.nginx_mesh import (
    HttpAnswer,
    RoutingMesh,
    answer_label,
    http_get,
    probe_routing_mesh,
    remove_labelled,
    running_tasks,
)
from swarmlab.spec import MysqlWordpressPhase

log = logging.getLogger(__name__)

SECONDS = 1_000_000_000  # Docker API durations are nanoseconds
ETCD_PORT = 2379
DATABASE = "wordpress"
DATABASE_USER = "wordpress"
WSREP_QUERY = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN "
    "('wsrep_cluster_size', 'wsrep_local_state_comment', 'wsrep_cluster_status', 'wsrep_ready')"
)
WORDPRESS_SAMPLES = 5
PHASE_LABEL = "swarmlab.phase"


@dataclass(frozen=True)
class SecretFile:
    """A generated password: its Docker secret name suffix and its file name in containers."""

    key: str
    filename: str


SECRET_FILES = (
    SecretFile("mariadb-root", "mariadb_root_password"),
    SecretFile("wordpress-db", "wordpress_db_password"),
    SecretFile("wordpress-admin", "wordpress_admin_password"),
)


@dataclass(frozen=True)
class StackNames:
    """Names of the phase's swarm objects, all derived from the phase name."""

    phase: str

    @property
    def network(self) -> str:
        return f"{self.phase}-net"

    @property
    def etcd(self) -> str:
        return f"{self.phase}-etcd"

    @property
    def galera(self) -> str:
        return f"{self.phase}-galera"

    @property
    def wordpress(self) -> str:
        return f"{self.phase}-wordpress"


@dataclass
class GaleraNode:
    """Cluster status as one Galera task reported it."""

    task_slot: int | None
    node: str
    status: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def cluster_size(self) -> int | None:
        value = self.status.get("wsrep_cluster_size")
        return int(value) if value and value.isdigit() else None

    @property
    def synced(self) -> bool:
        return self.status.get("wsrep_local_state_comment") == "Synced"

    def to_dict(self) -> dict:
        return {
            "task_slot": self.task_slot,
            "node": self.node,
            "wsrep_cluster_size": self.cluster_size,
            "wsrep_local_state_comment": self.status.get("wsrep_local_state_comment"),
            "wsrep_cluster_status": self.status.get("wsrep_cluster_status"),
            "wsrep_ready": self.status.get("wsrep_ready"),
            "error": self.error,
        }


@dataclass
class Progress:
    """Milestones in seconds since the first service was created, and the latest observation."""

    etcd_running: float | None = None
    galera_first_running: float | None = None
    galera_all_synced: float | None = None
    wordpress_answering: float | None = None
    galera: list[GaleraNode] = field(default_factory=list)
    galera_running: int = 0
    wordpress_targets: list[str] = field(default_factory=list)
    wordpress_answers: dict[str, HttpAnswer] = field(default_factory=dict)
    samples: list[tuple] = field(default_factory=list)

    @property
    def healthy(self) -> float | None:
        marks = (self.etcd_running, self.galera_all_synced, self.wordpress_answering)
        return None if any(m is None for m in marks) else max(marks)


def run_mysql_wordpress(cluster: Cluster, phase: MysqlWordpressPhase, run_id: str, data_dir: Path) -> dict:
    """Run the mysql_wordpress phase; see the module docstring. Returns a JSON-ready result.

    Raises:
        PhaseFailed: the stack was not healthy within ``phase.deadline``; what it created is
            removed first unless ``phase.keep``.
    """
    started = time.monotonic()
    mesh = probe_routing_mesh(cluster)
    publish_mode = "ingress" if mesh.available else "host"
    if not mesh.available:
        log.warning(
            "mysql_wordpress: %s; WordPress publishes port %d in host mode on the nodes that run it",
            mesh.limitation(),
            phase.published_port,
        )

    leader = cluster.leader()
    client = cluster.engine(leader)
    leftovers = remove_labelled(client, PHASE_LABEL, phase.name)
    if leftovers:
        log.info(
            "mysql_wordpress: removed %d objects left by an earlier attempt: %s", len(leftovers), ", ".join(leftovers)
        )

    names = StackNames(phase.name)
    labels = {"swarmlab.run": run_id, PHASE_LABEL: phase.name}
    try:
        client.networks.create(names.network, driver="overlay", attachable=True, labels=labels)
        secret_ids = create_secrets(client, phase.name, labels)
        created = time.monotonic()
        node_count = len(cluster.inventory.nodes)
        create_services(client, phase, names, labels, secret_ids, publish_mode, node_count=node_count)
        failpoints.reach(f"during:{phase.name}")
        log.info(
            "mysql_wordpress: services %s, %s (%d) and %s (%d) created on network %s; waiting up to %.0fs",
            names.etcd,
            names.galera,
            phase.galera_size,
            names.wordpress,
            phase.wordpress_replicas,
            names.network,
            phase.deadline,
        )
        progress = wait_until_healthy(cluster, phase, names, publish_mode, created)
    except Exception as error:
        remove_after_error(cluster, phase, error)
        raise
    latencies = sample_wordpress(cluster, phase, progress) if progress.healthy is not None else []
    write_timeline(data_dir / f"{phase.name}-timeline.csv", progress.samples)
    result = build_result(phase, mesh, publish_mode, progress, latencies, task_errors(client.api, names))
    if not phase.keep:
        removed = remove_mysql_wordpress(cluster, phase)
        log.info("mysql_wordpress: removed %d objects (services, secrets, network)", len(removed))
    result["seconds"] = round(time.monotonic() - started, 3)
    if progress.healthy is None:
        result["status"] = "failed"
        raise PhaseFailed(
            f"mysql_wordpress: not healthy within {phase.deadline:.0f}s "
            f"(phases[{phase.name}].deadline): {describe_unhealthy(phase, progress)}",
            result,
        )
    return result


def remove_mysql_wordpress(cluster: Cluster, phase: MysqlWordpressPhase) -> list[str]:
    """Remove every service, secret and network the phase created; return their names."""
    return remove_labelled(cluster.engine(cluster.leader()), PHASE_LABEL, phase.name)


def remove_after_error(cluster: Cluster, phase: MysqlWordpressPhase, error: Exception) -> None:
    """Remove what the phase created after ``error`` stopped it, unless ``phase.keep``; never raise."""
    if phase.keep:
        return
    log.warning("mysql_wordpress: stopped by %s: %s; removing what the phase created", type(error).__name__, error)
    try:
        remove_mysql_wordpress(cluster, phase)
    except Exception as cleanup_error:  # noqa: BLE001 - the caller re-raises the first error
        log.warning("mysql_wordpress: removal after the error failed too: %s", cleanup_error)


# -- creating the stack ----------------------------------------------------------------------


def create_secrets(client: docker.DockerClient, phase_name: str, labels: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Generate one password per :data:`SECRET_FILES` entry and store each only as a Docker secret.

    Returns the secret id and name by file name. The password strings go out of scope here.
    """
    created: dict[str, tuple[str, str]] = {}
    for secret_file in SECRET_FILES:
        name = f"{phase_name}-{secret_file.key}-{secrets.token_hex(3)}"
        secret = client.secrets.create(name=name, data=secrets.token_urlsafe(24).encode(), labels=labels)
        created[secret_file.filename] = (secret.id, name)
    return created


def create_services(
    client: docker.DockerClient,
    phase: MysqlWordpressPhase,
    names: StackNames,
    labels: dict[str, str],
    secret_ids: dict[str, tuple[str, str]],
    publish_mode: str,
    node_count: int,
) -> None:
    """Create the etcd, Galera and WordPress services (see the module docstring)."""

    def secret(filename: str, uid: str = "0", gid: str = "0", mode: int = 0o400) -> SecretReference:
        secret_id, secret_name = secret_ids[filename]
        return SecretReference(secret_id, secret_name, filename=filename, uid=uid, gid=gid, mode=mode)

    run_files = {f.filename: f"/run/secrets/{f.filename}" for f in SECRET_FILES}
    restart = RestartPolicy(condition="any", delay=5 * SECONDS)
    start_period = int(phase.deadline * SECONDS)

    client.services.create(
        phase.etcd_image,
        name=names.etcd,
        command=[
            "etcd",
            "--name",
            "discovery",
            "--data-dir",
            "/var/lib/etcd/swarmlab",
            "--listen-client-urls",
            f"http://0.0.0.0:{ETCD_PORT}",
            "--advertise-client-urls",
            f"http://{names.etcd}:{ETCD_PORT}",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "discovery=http://127.0.0.1:2380",
        ],
        networks=[names.network],
        endpoint_spec=EndpointSpec(mode="dnsrr"),
        healthcheck=Healthcheck(
            test=["CMD", "etcdctl", f"--endpoints=http://127.0.0.1:{ETCD_PORT}", "endpoint", "health"],
            interval=2 * SECONDS,
            timeout=5 * SECONDS,
            retries=3,
            start_period=60 * SECONDS,
        ),
        restart_policy=restart,
        labels=labels,
    )

    client.services.create(
        phase.mariadb_image,
        name=names.galera,
        command=["swarmlab-galera"],
        hostname="{{.Service.Name}}-{{.Task.Slot}}",
        mode=ServiceMode("replicated", replicas=phase.galera_size),
        # One Galera node per swarm node where there are enough nodes; the scheduler spreads anyway.
        maxreplicas=1 if phase.galera_size <= node_count else None,
        env=[
            f"ETCD_ENDPOINTS=http://{names.etcd}:{ETCD_PORT}",
            f"GALERA_CLUSTER={phase.name}",
            f"GALERA_JOIN_WAIT={int(phase.deadline)}",
            f"MARIADB_ROOT_PASSWORD_FILE={run_files['mariadb_root_password']}",
            f"WORDPRESS_DB_PASSWORD_FILE={run_files['wordpress_db_password']}",
            f"WORDPRESS_DB_NAME={DATABASE}",
            f"WORDPRESS_DB_USER={DATABASE_USER}",
        ],
        secrets=[secret("mariadb_root_password"), secret("wordpress_db_password")],
        networks=[names.network],
        endpoint_spec=EndpointSpec(mode="dnsrr"),
        healthcheck=Healthcheck(
            test=[
                "CMD-SHELL",
                "mariadb -uroot -N -B -e \"SHOW STATUS LIKE 'wsrep_local_state_comment'\" | grep -qw Synced",
            ],
            interval=3 * SECONDS,
            timeout=5 * SECONDS,
            retries=5,
            start_period=start_period,
        ),
        restart_policy=restart,
        stop_grace_period=20 * SECONDS,
        labels=labels,
    )

    client.services.create(
        phase.wordpress_image,
        name=names.wordpress,
        command=["swarmlab-wordpress"],
        hostname="{{.Service.Name}}-{{.Task.Slot}}",
        mode=ServiceMode("replicated", replicas=phase.wordpress_replicas),
        env=[
            f"WORDPRESS_DB_HOST={names.galera}",
            f"WORDPRESS_DB_NAME={DATABASE}",
            f"WORDPRESS_DB_USER={DATABASE_USER}",
            f"WORDPRESS_DB_PASSWORD_FILE={run_files['wordpress_db_password']}",
            f"WORDPRESS_ADMIN_PASSWORD_FILE={run_files['wordpress_admin_password']}",
            "SWARMLAB_TASK_SLOT={{.Task.Slot}}",
        ],
        # php-fpm's workers run as www-data (gid 33 in Debian) and read the database password.
        secrets=[secret("wordpress_db_password", gid="33", mode=0o440), secret("wordpress_admin_password")],
        networks=[names.network],
        endpoint_spec=EndpointSpec(
            mode="vip" if publish_mode == "ingress" else "dnsrr",
            ports={phase.published_port: (80, "tcp", publish_mode)},
        ),
        healthcheck=Healthcheck(
            # install.php returns 200 once the database accepts the WordPress user, installed or not.
            test=["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1/wp-admin/install.php"],
            interval=3 * SECONDS,
            timeout=5 * SECONDS,
            retries=3,
            start_period=start_period,
        ),
        restart_policy=restart,
        labels=labels,
    )


# -- watching it come up ---------------------------------------------------------------------


def wait_until_healthy(
    cluster: Cluster, phase: MysqlWordpressPhase, names: StackNames, publish_mode: str, created: float
) -> Progress:
    """Poll the stack every 2 seconds until it is healthy or ``phase.deadline`` passes."""
    progress = Progress()
    deadline = created + phase.deadline
    api = cluster.engine(cluster.leader()).api
    node_by_id: dict[str, Node] = {}
    last = ""
    while True:
        now = time.monotonic()
        elapsed = now - created
        try:
            observe(cluster, api, phase, names, publish_mode, progress, node_by_id, elapsed)
        except (docker.errors.APIError, docker.errors.DockerException, OSError) as error:
            # A manager busy electing a leader, or an SSH channel reset: ask again next tick.
            log.warning("mysql_wordpress: status poll failed (%s); retrying", error)
            api = cluster.engine(cluster.leader(), fresh=True).api
        summary = describe_progress(phase, progress)
        if summary != last:
            log.info(
                "mysql_wordpress: %s; %.0fs since creation, deadline in %.0fs",
                summary,
                elapsed,
                max(0.0, deadline - now),
            )
            last = summary
        if progress.healthy is not None or now > deadline:
            return progress
        time.sleep(2)


def observe(
    cluster: Cluster,
    api,
    phase: MysqlWordpressPhase,
    names: StackNames,
    publish_mode: str,
    progress: Progress,
    node_by_id: dict[str, Node],
    elapsed: float,
) -> None:
    """Take one look at the three services and update ``progress``."""
    if not node_by_id or len(node_by_id) < len(cluster.inventory.nodes):
        for item in api.nodes():
            try:
                node_by_id[item["ID"]] = cluster.node_for(item)
            except KeyError:
                continue

    etcd = running_tasks(api, names.etcd)
    if etcd and progress.etcd_running is None:
        progress.etcd_running = elapsed

    galera = running_tasks(api, names.galera)
    progress.galera_running = len(galera)
    if galera and progress.galera_first_running is None:
        progress.galera_first_running = elapsed
    if len(galera) >= phase.galera_size:
        progress.galera = [galera_status(cluster, task, node_by_id) for task in galera]
        if progress.galera_all_synced is None and all(
            g.synced and g.cluster_size == phase.galera_size for g in progress.galera
        ):
            progress.galera_all_synced = elapsed

    wordpress = running_tasks(api, names.wordpress)
    if publish_mode == "ingress":
        targets = list(cluster.inventory.nodes)
    else:
        targets = [node_by_id[t["NodeID"]] for t in wordpress if t.get("NodeID") in node_by_id]
    progress.wordpress_targets = sorted(n.name for n in targets)
    if len(wordpress) >= phase.wordpress_replicas and progress.galera_all_synced is not None:
        progress.wordpress_answers = {n.name: http_get(n.address, phase.published_port) for n in targets}
        answering = sum(1 for a in progress.wordpress_answers.values() if a.status == 200)
        if progress.wordpress_answering is None and targets and answering == len(targets):
            progress.wordpress_answering = elapsed

    synced = sum(1 for g in progress.galera if g.synced and g.cluster_size == phase.galera_size)
    answering = sum(1 for a in progress.wordpress_answers.values() if a.status == 200)
    progress.samples.append((round(elapsed, 3), len(etcd), len(galera), synced, len(wordpress), answering))


def galera_status(cluster: Cluster, task: dict, node_by_id: dict[str, Node]) -> GaleraNode:
    """Ask the MariaDB of one task for its wsrep status, through ``docker exec`` on its node."""
    node = node_by_id.get(task.get("NodeID", ""))
    slot = task.get("Slot")
    if node is None:
        return GaleraNode(slot, task.get("NodeID", "?"), error="node not in the inventory")
    container = task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
    if not container:
        return GaleraNode(slot, node.name, error="task has no container yet")
    try:
        api = cluster.engine(node).api
        # root@localhost authenticates through the unix socket: the check needs no password.
        exec_id = api.exec_create(container, ["mariadb", "-uroot", "-N", "-B", "-e", WSREP_QUERY])["Id"]
        output = api.exec_start(exec_id).decode(errors="replace")
        code = api.exec_inspect(exec_id).get("ExitCode")
    except (docker.errors.APIError, docker.errors.DockerException, OSError) as error:
        cluster.drop_engine(node.name)
        return GaleraNode(slot, node.name, error=f"{type(error).__name__}: {error}")
    if code != 0:
        return GaleraNode(slot, node.name, error=f"mariadb exited {code}: {output.strip()[:200]}")
    status = dict(line.split("\t", 1) for line in output.strip().splitlines() if "\t" in line)
    return GaleraNode(slot, node.name, status)


def sample_wordpress(cluster: Cluster, phase: MysqlWordpressPhase, progress: Progress) -> list[tuple[str, HttpAnswer]]:
    """Send a few requests to each node publishing WordPress, for the latency figures."""
    samples = []
    for name in progress.wordpress_targets:
        node = cluster.inventory.by_name(name)
        for _ in range(WORDPRESS_SAMPLES):
            samples.append((name, http_get(node.address, phase.published_port)))
    return samples


def task_errors(api, names: StackNames) -> dict[str, list[str]]:
    """Return up to three distinct errors of failed or rejected tasks, per service."""
    errors: dict[str, list[str]] = {}
    for service in (names.etcd, names.galera, names.wordpress):
        try:
            tasks = api.tasks(filters={"service": service})
        except docker.errors.APIError:
            continue
        found = sorted(
            {
                t["Status"].get("Err", "") or t["Status"].get("Message", "")
                for t in tasks
                if t.get("Status", {}).get("State") in ("failed", "rejected")
            }
        )
        if found:
            errors[service] = found[:3]
    return errors


def describe_progress(phase: MysqlWordpressPhase, progress: Progress) -> str:
    sizes = sorted({g.cluster_size for g in progress.galera if g.cluster_size is not None})
    synced = sum(1 for g in progress.galera if g.synced and g.cluster_size == phase.galera_size)
    answering = sum(1 for a in progress.wordpress_answers.values() if a.status == 200)
    return (
        f"etcd {'running' if progress.etcd_running is not None else 'starting'}, "
        f"galera {progress.galera_running}/{phase.galera_size} running, {synced} synced at full size"
        f"{' (cluster sizes ' + ', '.join(map(str, sizes)) + ')' if sizes else ''}, "
        f"wordpress {answering}/{len(progress.wordpress_targets) or phase.wordpress_replicas} answering"
    )


def describe_unhealthy(phase: MysqlWordpressPhase, progress: Progress) -> str:
    problems = []
    if progress.etcd_running is None:
        problems.append("etcd never ran")
    if progress.galera_all_synced is None:
        sizes = [g.cluster_size for g in progress.galera]
        problems.append(
            f"galera: {progress.galera_running}/{phase.galera_size} tasks running, cluster sizes "
            f"{sizes or 'unknown'} (phases[{phase.name}].galera_size {phase.galera_size})"
        )
        problems += [f"galera on {g.node}: {g.error}" for g in progress.galera if g.error][:3]
    if progress.wordpress_answering is None:
        answers = {n: answer_label(a) for n, a in progress.wordpress_answers.items()}
        problems.append(f"wordpress did not answer 200 on port {phase.published_port}: {answers or 'not asked yet'}")
    return "; ".join(problems)


# -- the result ------------------------------------------------------------------------------


def write_timeline(path: Path, samples: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "elapsed_s",
                "etcd_running",
                "galera_running",
                "galera_synced_full_size",
                "wordpress_running",
                "wordpress_answering",
            ]
        )
        writer.writerows(samples)


def build_result(
    phase: MysqlWordpressPhase,
    mesh: RoutingMesh,
    publish_mode: str,
    progress: Progress,
    latencies: list[tuple[str, HttpAnswer]],
    errors: dict[str, list[str]],
) -> dict:
    latency = percentiles([a.seconds * 1000 for _, a in latencies if a.status == 200])
    latency = {k: round(v, 3) if isinstance(v, float) else v for k, v in latency.items()}
    sizes = [g.cluster_size for g in progress.galera]
    timeline = {
        "etcd_running": _round(progress.etcd_running),
        "galera_first_running": _round(progress.galera_first_running),
        "galera_all_synced": _round(progress.galera_all_synced),
        "wordpress_answering": _round(progress.wordpress_answering),
        "healthy": _round(progress.healthy),
    }
    limitation = mesh.limitation()
    figures = {
        "galera_size": phase.galera_size,
        "galera_cluster_size_min": min((s for s in sizes if s is not None), default=None),
        "seconds_to_healthy": timeline["healthy"],
        "seconds_to_galera_synced": timeline["galera_all_synced"],
        "publish_mode": publish_mode,
        "wordpress_nodes_answering": sum(1 for a in progress.wordpress_answers.values() if a.status == 200),
        "wordpress_latency_ms_p50": latency["p50"],
    }
    healthy = progress.healthy is not None
    if healthy:
        summary = (
            f"{phase.name}: Galera cluster of {phase.galera_size} synced {progress.galera_all_synced:.1f}s and "
            f"WordPress answering HTTP 200 ({publish_mode} mode) {progress.healthy:.1f}s after creation"
        )
    else:
        summary = f"{phase.name}: not healthy within {phase.deadline:.0f}s: {describe_unhealthy(phase, progress)}"
    return {
        "kind": "mysql_wordpress",
        "phase": phase.name,
        "status": "completed" if healthy else "failed",
        "seconds": None,
        "summary": summary,
        "publish_mode": publish_mode,
        "routing_mesh": mesh.to_dict(),
        "limitation": limitation,
        "images": {"etcd": phase.etcd_image, "mariadb": phase.mariadb_image, "wordpress": phase.wordpress_image},
        "timeline_seconds": timeline,
        "galera": [g.to_dict() for g in sorted(progress.galera, key=lambda g: g.task_slot or 0)],
        "wordpress": {
            "published_port": phase.published_port,
            "nodes": progress.wordpress_targets,
            "answers": {n: answer_label(a) for n, a in progress.wordpress_answers.items()},
            "latency_ms": latency,
        },
        "task_errors": errors,
        "timeline_file": f"data/{phase.name}-timeline.csv",
        "summary_figures": figures,
        "report_markdown": report_markdown(phase, publish_mode, limitation, progress, timeline, latency),
    }


def report_markdown(
    phase: MysqlWordpressPhase,
    publish_mode: str,
    limitation: str | None,
    progress: Progress,
    timeline: dict,
    latency: dict,
) -> str:
    lines = [
        f"## mysql_wordpress: {phase.name}",
        "",
        f"etcd (discovery), a MariaDB Galera cluster of {phase.galera_size} bootstrapped through it, and "
        f"{phase.wordpress_replicas} WordPress replica(s) on one overlay network; passwords generated and "
        "handed over as Docker secrets only.",
        "",
    ]
    if limitation:
        lines += [
            f"**Limitation:** {limitation}. WordPress published port {phase.published_port} in host mode, "
            "so only the nodes running a WordPress task answer; ingress load balancing was not tested.",
            "",
        ]
    lines += ["| milestone | seconds after creation |", "| --- | ---: |"]
    for label, key in (
        ("etcd running", "etcd_running"),
        ("first Galera node running", "galera_first_running"),
        (f"all {phase.galera_size} Galera nodes synced at full size", "galera_all_synced"),
        ("WordPress answering HTTP 200", "wordpress_answering"),
        ("healthy", "healthy"),
    ):
        lines.append(f"| {label} | {_fmt(timeline[key])} |")
    lines += [
        "",
        "| Galera task | node | wsrep_cluster_size | state | cluster status |",
        "| ---: | --- | ---: | --- | --- |",
    ]
    for g in sorted(progress.galera, key=lambda g: g.task_slot or 0):
        lines.append(
            f"| {g.task_slot} | {g.node} | {g.cluster_size if g.cluster_size is not None else 'n/a'} | "
            f"{g.status.get('wsrep_local_state_comment', g.error or 'n/a')} | "
            f"{g.status.get('wsrep_cluster_status', 'n/a')} |"
        )
    answers = ", ".join(f"{n}: {answer_label(a)}" for n, a in sorted(progress.wordpress_answers.items())) or "none"
    lines += [
        "",
        f"WordPress on port {phase.published_port} ({publish_mode} mode): {answers}; latency over "
        f"{latency['count']} requests p50 {_fmt(latency['p50'])} ms, max {_fmt(latency['max'])} ms.",
    ]
    return "\n".join(lines) + "\n"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
