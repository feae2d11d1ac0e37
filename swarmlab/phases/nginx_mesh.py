"""nginx_mesh: nginx behind a published port, and every node answering on it.

The routing mesh needs IPVS in each node's kernel: an ingress-mode published port is an IPVS
virtual server. The phase first checks every node over SSH: ``/proc/sys/net/ipv4/vs`` present,
``ip_vs`` in ``/proc/modules``, or ``modprobe -n ip_vs`` finding the module.

- With IPVS everywhere, ``phase.replicas`` replicas run behind an ingress port, and an HTTP
  request to that port on every node must answer, whichever replica serves it.
- Without it (for example a lab on a kernel without ``ip_vs``), an ingress port would accept no
  connection. The phase says so in one log line, runs a global service publishing in host mode
  instead (one task per node, each node answering with its own task), and the result and report
  record that the routing mesh was not tested.

It measures the time from service creation until every node has answered, and the latency of
``phase.requests_per_node`` requests per node afterwards.
"""

from __future__ import annotations

import csv
import http.client
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.types import ConfigReference, EndpointSpec, RestartPolicy, ServiceMode

from swarmlab import failpoints
from swarmlab.cluster import Cluster
from swarmlab.inventory import Node
from swarmlab.phases import PhaseFailed, percentiles
from swarmlab.spec import NginxMeshPhase

log = logging.getLogger(__name__)

IMAGE_FILES = Path(__file__).resolve().parents[2] / "deployments" / "images"
NGINX_CONFIG = IMAGE_FILES / "nginx" / "mesh.conf"
NGINX_CONFIG_TARGET = "/etc/swarmlab/nginx-mesh.conf"
CONTAINER_PORT = 80
# Prints "present" when the node's kernel has IPVS: loaded, or loadable as a module. A fresh node
# may not have loaded ip_vs yet, and the kernel loads it when Docker first configures IPVS.
IPVS_PROBE = (
    "if [ -d /proc/sys/net/ipv4/vs ] || grep -q '^ip_vs ' /proc/modules 2>/dev/null "
    "|| modprobe -n -q ip_vs 2>/dev/null; then echo present; else echo absent; fi"
)
LIMITATION = (
    "routing mesh unavailable: {missing} of {total} nodes have no IPVS (/proc/sys/net/ipv4/vs missing, "
    "ip_vs neither loaded nor loadable), so ingress-published ports accept no connections there"
)


# -- routing mesh ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingMesh:
    """IPVS presence per node: the routing mesh's load balancer lives in the kernel."""

    with_ipvs: tuple[str, ...]
    without_ipvs: tuple[str, ...]

    @property
    def available(self) -> bool:
        return not self.without_ipvs

    def limitation(self) -> str | None:
        """Return one sentence on what cannot work, or None when every node has IPVS."""
        if self.available:
            return None
        total = len(self.with_ipvs) + len(self.without_ipvs)
        return LIMITATION.format(missing=len(self.without_ipvs), total=total)

    def to_dict(self) -> dict:
        return {
            "available": self.available,
            "nodes_with_ipvs": list(self.with_ipvs),
            "nodes_without_ipvs": list(self.without_ipvs),
        }


def probe_routing_mesh(cluster: Cluster) -> RoutingMesh:
    """Check over SSH which nodes have IPVS.

    Raises:
        PhaseFailed: the check could not run on some node (SSH failed or the command failed).
    """
    outcome = cluster.ssh.run_many(cluster.inventory.nodes, IPVS_PROBE, timeout=30)
    if outcome.failed:
        raise PhaseFailed(
            f"IPVS check failed on {len(outcome.failed)} of {len(cluster.inventory.nodes)} nodes: "
            f"{outcome.describe_failures()}; check that the nodes are up and reachable over SSH"
        )
    present = tuple(sorted(n for n, r in outcome.succeeded.items() if r.stdout.strip() == "present"))
    absent = tuple(sorted(n for n in outcome.succeeded if n not in present))
    return RoutingMesh(present, absent)


# -- HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpAnswer:
    """One HTTP request and its response: status (None without a response), seconds, body start or error."""

    status: int | None
    seconds: float
    body: str = ""
    error: str | None = None
    location: str | None = None


def http_get(address: str, port: int, path: str = "/", timeout: float = 5.0) -> HttpAnswer:
    """Send one GET to ``address:port``, without following redirects."""
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request("GET", path, headers={"Connection": "close", "User-Agent": "swarmlab"})
        response = connection.getresponse()
        body = response.read(65536).decode(errors="replace")
        return HttpAnswer(
            response.status, time.perf_counter() - started, body[:200], location=response.getheader("Location")
        )
    except (OSError, http.client.HTTPException) as error:
        return HttpAnswer(None, time.perf_counter() - started, error=f"{type(error).__name__}: {error}")
    finally:
        connection.close()


def answer_label(answer: HttpAnswer) -> str:
    return str(answer.status) if answer.status is not None else (answer.error or "no answer")


def served_by(answer: HttpAnswer, attempt: str) -> str | None:
    """Return the hostname in a response of this attempt's nginx (``swarmlab nginx_mesh HOST ATTEMPT``), else None."""
    words = answer.body.split()
    if answer.status == 200 and len(words) == 4 and words[:2] == ["swarmlab", "nginx_mesh"] and words[3] == attempt:
        return words[2]
    return None


def describe_answer(answer: HttpAnswer, attempt: str) -> str:
    """Return ``200`` for a response of this attempt's nginx, otherwise what came instead."""
    if answer.status == 200 and served_by(answer, attempt) is None:
        return "200 from another server (not this attempt's nginx)"
    return answer_label(answer)


# -- Swarm objects ---------------------------------------------------------------------------


def remove_labelled(client: docker.DockerClient, label: str, value: str, network_wait: float = 60.0) -> list[str]:
    """Remove services, then configs, secrets and networks carrying ``label=value``; return their names.

    Waits up to ``network_wait`` seconds in all for the removed services' containers to stop: a
    stopping container still keeps its host-mode port and its network attachment.
    """
    api = client.api
    selector = {"label": f"{label}={value}"}
    removed: list[str] = []
    service_ids = set()
    for service in api.services(filters=selector):
        try:
            api.remove_service(service["ID"])
            removed.append(service["Spec"]["Name"])
            service_ids.add(service["ID"])
        except docker.errors.NotFound:
            pass
    deadline = time.monotonic() + network_wait
    wait_for_tasks_gone(api, service_ids, deadline)
    for kind in ("configs", "secrets"):
        collection = getattr(client, kind)
        for item in collection.list(filters=selector):
            try:
                item.remove()
                removed.append(item.name)
            except docker.errors.NotFound:
                pass
    for network in api.networks(filters=selector):
        while True:
            try:
                api.remove_network(network["Id"])
                removed.append(network["Name"])
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as error:
                if time.monotonic() > deadline:
                    raise PhaseFailed(
                        f"network {network['Name']} could not be removed within {network_wait:.0f}s: "
                        f"{error.explanation or error}; remove it with `docker network rm`"
                    ) from None
                time.sleep(1)
    # A removed overlay network stays listed on a node until the containers attached there have
    # stopped. Waiting for that gives the caller's next step a clean swarm.
    while api.networks(filters=selector) and time.monotonic() < deadline:
        time.sleep(1)
    lingering = [n["Name"] for n in api.networks(filters=selector)]
    if lingering:
        log.warning("swarm: networks %s still listed %.0fs after removal", ", ".join(lingering), network_wait)
    return removed


def wait_for_tasks_gone(api, service_ids: set[str], deadline: float) -> None:
    """Wait until no task of the given (removed) services is left, or until ``deadline``.

    A removed service's tasks stay listed, with desired state "remove", until their containers
    have stopped. The task list cannot be filtered by a service that no longer exists, so every
    task is listed and matched by service id.
    """
    # NOTE: a full task listing per second is heavy on a swarm with 100,000+ tasks. It runs only
    # while a workload phase cleans up, for the seconds its containers take to stop.
    while service_ids and time.monotonic() < deadline:
        if not any(t.get("ServiceID") in service_ids for t in api.tasks()):
            return
        time.sleep(1)
    if service_ids:
        log.warning(
            "swarm: tasks of removed services %s still stopping at the deadline", ", ".join(sorted(service_ids))
        )


def running_tasks(api, service: str) -> list[dict]:
    return [
        t
        for t in api.tasks(filters={"service": service, "desired-state": "running"})
        if t.get("Status", {}).get("State") == "running"
    ]


# -- the phase -------------------------------------------------------------------------------


@dataclass
class NodeAnswers:
    """The answers of one node; only answers naming ``attempt`` count as answers of this phase."""

    node: str
    address: str
    attempt: str
    first_answer: float | None = None
    first_status: str | None = None
    answers: list[HttpAnswer] = field(default_factory=list)

    def ours(self) -> list[HttpAnswer]:
        return [a for a in self.answers if served_by(a, self.attempt) is not None]

    def served_by(self) -> list[str]:
        return sorted({served_by(a, self.attempt) for a in self.ours()})

    def to_dict(self) -> dict:
        latencies = [a.seconds * 1000 for a in self.ours()]
        failed = [describe_answer(a, self.attempt) for a in self.answers if served_by(a, self.attempt) is None]
        return {
            "node": self.node,
            "address": self.address,
            "seconds_to_first_answer": None if self.first_answer is None else round(self.first_answer, 3),
            "requests": len(self.answers),
            "failed_requests": len(failed),
            "failures": sorted(set(failed))[:3],
            "latency_ms": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in percentiles(latencies).items()},
            "served_by": self.served_by(),
        }


def run_nginx_mesh(cluster: Cluster, phase: NginxMeshPhase, run_id: str, data_dir: Path) -> dict:
    """Run the nginx_mesh phase; see the module docstring. Returns a JSON-ready result.

    Raises:
        PhaseFailed: a node did not answer within ``phase.deadline``, or ``publish_mode: ingress``
            was asked for on nodes without IPVS. The service is removed first unless
            ``phase.keep``.
    """
    started = time.monotonic()
    mesh = probe_routing_mesh(cluster)
    mode = phase.publish_mode
    if mode == "auto":
        mode = "ingress" if mesh.available else "host"
    if not mesh.available:
        if mode == "ingress":
            raise PhaseFailed(
                f"nginx_mesh: publish_mode ingress was requested (phases[{phase.name}].publish_mode), but "
                f"{mesh.limitation()}: {', '.join(mesh.without_ipvs[:5])}; use publish_mode host or auto"
            )
        log.warning("nginx_mesh: %s; publishing in host mode from a global service instead", mesh.limitation())

    leader = cluster.leader()
    client = cluster.engine(leader)
    leftovers = remove_labelled(client, "swarmlab.phase", phase.name)
    if leftovers:
        log.info("nginx_mesh: removed %d objects left by an earlier attempt: %s", len(leftovers), ", ".join(leftovers))

    labels = {"swarmlab.run": run_id, "swarmlab.phase": phase.name}
    attempt = secrets.token_hex(4)
    nodes = {node.name: NodeAnswers(node.name, node.address, attempt) for node in cluster.inventory.nodes}
    try:
        created = create_service(client, phase, mode, labels, attempt)
        failpoints.reach(f"during:{phase.name}")
        log.info(
            "nginx_mesh: service %s created (%s mode, %s), waiting for %d nodes to answer on port %d",
            phase.name,
            mode,
            f"{phase.replicas} replicas" if mode == "ingress" else "global",
            len(nodes),
            phase.published_port,
        )
        all_answering = wait_for_answers(cluster, phase, nodes, created)
        if all_answering is not None:
            measure_latency(cluster.inventory.nodes, phase, nodes)
    except Exception as error:
        if not phase.keep:
            log.warning("nginx_mesh: stopped by %s: %s; removing the service", type(error).__name__, error)
            try:
                remove_labelled(client, "swarmlab.phase", phase.name)
            except Exception as cleanup_error:  # noqa: BLE001 - the first error is re-raised below
                log.warning("nginx_mesh: removal after the error failed too: %s", cleanup_error)
        raise

    tasks = running_tasks(client.api, phase.name)
    write_answers(data_dir / f"{phase.name}-answers.csv", nodes)
    result = build_result(phase, mode, mesh, nodes, all_answering, len(tasks))
    if not phase.keep:
        remove_labelled(client, "swarmlab.phase", phase.name)
    result["seconds"] = round(time.monotonic() - started, 3)
    if all_answering is None:
        silent = sorted(n for n, a in nodes.items() if a.first_answer is None)
        result["status"] = "failed"
        raise PhaseFailed(
            f"nginx_mesh: {len(silent)} of {len(nodes)} nodes did not answer on port {phase.published_port} "
            f"within {phase.deadline:.0f}s (phases[{phase.name}].deadline): "
            + ", ".join(f"{n} ({nodes[n].first_status or 'no answer'})" for n in silent[:5]),
            result,
        )
    return result


def create_service(
    client: docker.DockerClient, phase: NginxMeshPhase, mode: str, labels: dict[str, str], attempt: str
) -> float:
    """Create the nginx config and service for ``mode`` (ingress or host); return the creation time."""
    config = client.configs.create(
        name=f"{phase.name}-conf-{attempt}",
        data=NGINX_CONFIG.read_text().replace("@ATTEMPT@", attempt).encode(),
        labels=labels,
    )
    service_mode = ServiceMode("replicated", replicas=phase.replicas) if mode == "ingress" else ServiceMode("global")
    created = time.monotonic()
    client.services.create(
        phase.image,
        command=["nginx", "-c", NGINX_CONFIG_TARGET],
        name=phase.name,
        mode=service_mode,
        hostname="{{.Node.Hostname}}",
        configs=[ConfigReference(config.id, config.name, filename=NGINX_CONFIG_TARGET)],
        endpoint_spec=EndpointSpec(
            mode="vip" if mode == "ingress" else "dnsrr",
            ports={phase.published_port: (CONTAINER_PORT, "tcp", mode)},
        ),
        restart_policy=RestartPolicy(condition="any", delay=2_000_000_000),
        stop_grace_period=2_000_000_000,
        labels=labels,
    )
    return created


def wait_for_answers(
    cluster: Cluster, phase: NginxMeshPhase, nodes: dict[str, NodeAnswers], created: float
) -> float | None:
    """Poll every node not yet answering until all answer with this attempt's nginx; return the seconds, or None."""
    deadline = created + phase.deadline
    by_name = {node.name: node for node in cluster.inventory.nodes}
    last = ""
    with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
        while True:
            waiting = [name for name, a in nodes.items() if a.first_answer is None]
            answers = dict(
                zip(
                    waiting,
                    pool.map(lambda name: http_get(by_name[name].address, phase.published_port, timeout=2.0), waiting),
                    strict=True,
                )
            )
            now = time.monotonic()
            for name, answer in answers.items():
                nodes[name].first_status = describe_answer(answer, nodes[name].attempt)
                if served_by(answer, nodes[name].attempt) is not None:
                    nodes[name].first_answer = now - created
            answering = sum(1 for a in nodes.values() if a.first_answer is not None)
            summary = f"nginx_mesh: {answering}/{len(nodes)} nodes answering"
            if summary != last:
                log.info(
                    "%s, %.0fs since the service was created, deadline in %.0fs",
                    summary,
                    now - created,
                    max(0.0, deadline - now),
                )
                last = summary
            if answering == len(nodes):
                return max(a.first_answer for a in nodes.values())
            if now > deadline:
                return None
            time.sleep(0.5)


def measure_latency(
    inventory_nodes: list[Node] | tuple[Node, ...], phase: NginxMeshPhase, nodes: dict[str, NodeAnswers]
) -> None:
    """Send ``phase.requests_per_node`` requests to each node, one node after another.

    Nodes go in turn, not at once, so that on a shared machine one node's latency does not
    include another's request handling.
    """
    for node in inventory_nodes:
        for _ in range(phase.requests_per_node):
            nodes[node.name].answers.append(http_get(node.address, phase.published_port))


def write_answers(path: Path, nodes: dict[str, NodeAnswers]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["node", "request", "status", "latency_ms", "served_by", "error"])
        for answers in nodes.values():
            for number, answer in enumerate(answers.answers, start=1):
                served = served_by(answer, answers.attempt)
                problem = "" if served else describe_answer(answer, answers.attempt)
                latency = round(answer.seconds * 1000, 3)
                writer.writerow([answers.node, number, answer.status, latency, served or "", problem])


def build_result(
    phase: NginxMeshPhase,
    mode: str,
    mesh: RoutingMesh,
    nodes: dict[str, NodeAnswers],
    all_answering: float | None,
    running: int,
) -> dict:
    per_node = [answers.to_dict() for answers in nodes.values()]
    latencies = [a.seconds * 1000 for answers in nodes.values() for a in answers.ours()]
    overall = percentiles(latencies)
    answering = sum(1 for a in nodes.values() if a.first_answer is not None)
    limitation = mesh.limitation() if mode == "host" else None
    figures = {
        "publish_mode": mode,
        "routing_mesh_available": mesh.available,
        "nodes": len(nodes),
        "nodes_answering": answering,
        "running_tasks": running,
        "seconds_to_all_answering": None if all_answering is None else round(all_answering, 3),
        "latency_ms_p50": _round(overall["p50"]),
        "latency_ms_p90": _round(overall["p90"]),
        "latency_ms_max": _round(overall["max"]),
    }
    how = (
        f"host mode, global service (routing mesh not tested: no IPVS on {len(mesh.without_ipvs)} nodes)"
        if limitation
        else "host mode, global service"
        if mode == "host"
        else f"ingress mode, {phase.replicas} replicas behind the routing mesh"
    )
    if all_answering is not None:
        summary = (
            f"{phase.name}: {answering}/{len(nodes)} nodes answering on port {phase.published_port} "
            f"{all_answering:.1f}s after creation ({how}); latency p50 {_fmt(overall['p50'])} ms, "
            f"p90 {_fmt(overall['p90'])} ms"
        )
    else:
        summary = (
            f"{phase.name}: only {answering}/{len(nodes)} nodes answered on port {phase.published_port} "
            f"within {phase.deadline:.0f}s ({how})"
        )
    return {
        "kind": "nginx_mesh",
        "phase": phase.name,
        "status": "completed" if all_answering is not None else "failed",
        "seconds": None,
        "summary": summary,
        "publish_mode": mode,
        "routing_mesh": mesh.to_dict(),
        "limitation": limitation,
        "image": phase.image,
        "published_port": phase.published_port,
        "replicas": phase.replicas if mode == "ingress" else len(nodes),
        "seconds_to_all_answering": figures["seconds_to_all_answering"],
        "latency_ms": {k: _round(v) if isinstance(v, float) else v for k, v in overall.items()},
        "nodes": per_node,
        "answers_file": f"data/{phase.name}-answers.csv",
        "summary_figures": figures,
        "report_markdown": report_markdown(phase, mode, limitation, per_node, all_answering, overall),
    }


def report_markdown(
    phase: NginxMeshPhase,
    mode: str,
    limitation: str | None,
    per_node: list[dict],
    all_answering: float | None,
    overall: dict,
) -> str:
    lines = [f"## nginx_mesh: {phase.name}", ""]
    if limitation:
        lines += [
            f"**Limitation:** {limitation}. The service was published in host mode from a global service, so "
            "each node answered with its own task; ingress load balancing was **not** measured in this run.",
            "",
        ]
    elif mode == "ingress":
        lines += [
            f"{phase.replicas} replicas of `{phase.image}` behind the routing mesh (ingress port "
            f"{phase.published_port}); every node was asked, whichever replica served it.",
            "",
        ]
    else:
        lines += [
            f"`{phase.image}` as a global service publishing port {phase.published_port} in host mode "
            "(publish_mode: host).",
            "",
        ]
    answering = sum(1 for n in per_node if n["seconds_to_first_answer"] is not None)
    if all_answering is not None:
        lines.append(
            f"All {answering} nodes answered HTTP 200 {all_answering:.1f} s after the service was created; "
            f"latency over {overall['count']} requests: p50 {_fmt(overall['p50'])} ms, "
            f"p90 {_fmt(overall['p90'])} ms, max {_fmt(overall['max'])} ms."
        )
    else:
        lines.append(f"Only {answering} of {len(per_node)} nodes answered within {phase.deadline:.0f} s.")
    lines += [
        "",
        "| node | first answer (s) | requests | failed | p50 (ms) | p90 (ms) | max (ms) | served by |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for node in per_node:
        latency = node["latency_ms"]
        lines.append(
            f"| {node['node']} | {_fmt(node['seconds_to_first_answer'], 2)} | {node['requests']} | "
            f"{node['failed_requests']} | {_fmt(latency['p50'])} | {_fmt(latency['p90'])} | {_fmt(latency['max'])} | "
            f"{', '.join(node['served_by']) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
