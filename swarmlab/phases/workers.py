"""Workers: join in parallel with bounded concurrency, then wait until they are Ready."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from swarmlab.cluster import Cluster
from swarmlab.inventory import Node
from swarmlab.phases import PhaseFailed, percentiles
from swarmlab.spec import WorkersSpec

log = logging.getLogger(__name__)


def join_workers(cluster: Cluster, spec: WorkersSpec, progress=None) -> dict:
    """Join every worker not yet in the swarm and wait until all are Ready or the deadline passes.

    Joins go through each worker's engine API over SSH, so the join token never appears on a
    command line. ``progress(done, total)`` is called as nodes become Ready.

    Raises:
        PhaseFailed: more workers failed or stayed not Ready than ``workers.max_failed_fraction``.
    """
    started = time.monotonic()
    leader = cluster.leader()
    leader_api = cluster.engine(leader).api
    workers = cluster.inventory.workers
    in_swarm = {item.get("Status", {}).get("Addr") for item in leader_api.nodes()}
    pending = [w for w in workers if w.advertise_address not in in_swarm]
    token = leader_api.inspect_swarm()["JoinTokens"]["Worker"]
    remote = f"{leader.advertise_address}:2377"
    join_started: dict[str, float] = {}
    failed: dict[str, str] = {}

    def join(node: Node) -> None:
        join_started[node.name] = time.monotonic()
        client = cluster.engine(node)
        if client.info().get("Swarm", {}).get("LocalNodeState") == "active":
            return
        client.swarm.join(
            remote_addrs=[remote],
            join_token=token,
            advertise_addr=node.advertise_address,
            listen_addr=f"{node.advertise_address}:2377",
        )

    log.info(
        "workers: %d in the inventory, %d already joined, %d to join (%d at a time)",
        len(workers),
        len(workers) - len(pending),
        len(pending),
        spec.join_concurrency,
    )
    with ThreadPoolExecutor(max_workers=spec.join_concurrency) as pool:
        futures = {node.name: pool.submit(join, node) for node in pending}
    for name, future in futures.items():
        if future.exception() is not None:
            failed[name] = f"{type(future.exception()).__name__}: {future.exception()}"
            log.warning("workers: %s failed to join: %s", name, failed[name])
    join_seconds = time.monotonic() - started

    ready_at = wait_until_ready(cluster, spec, failed, progress)
    times = {
        name: round(ready_at[name] - join_started.get(name, started), 3) for name in ready_at if name in join_started
    }
    not_ready = sorted(w.name for w in workers if w.name not in ready_at and w.name not in failed)
    external = count_external(cluster, spec)
    lost = len(failed) + len(not_ready)
    result = {
        "status": "completed",
        "seconds": round(time.monotonic() - started, 3),
        "expected": len(workers),
        "joined_now": len(pending) - len(failed),
        "ready": len(ready_at),
        "failed": failed,
        "not_ready": not_ready,
        "external_ready": external,
        "join_seconds": round(join_seconds, 3),
        "join_rate_per_second": round(len(pending) / join_seconds, 3) if pending and join_seconds > 0 else None,
        "time_to_ready": times,
        "time_to_ready_summary": percentiles(list(times.values())),
    }
    if workers and lost / len(workers) > spec.max_failed_fraction:
        result["status"] = "failed"
        raise PhaseFailed(
            f"workers: {lost} of {len(workers)} failed or not Ready ({lost / len(workers):.1%}), over "
            f"workers.max_failed_fraction {spec.max_failed_fraction:.1%}; failed: {sorted(failed)[:5]}, "
            f"not Ready: {not_ready[:5]}",
            result,
        )
    return result


def wait_until_ready(cluster: Cluster, spec: WorkersSpec, failed: dict, progress=None) -> dict[str, float]:
    """Poll the leader's node list once a second; return when each worker first showed Ready."""
    workers = {w.advertise_address: w.name for w in cluster.inventory.workers}
    expected = len(workers) - len(failed)
    deadline = time.monotonic() + spec.ready_deadline
    ready_at: dict[str, float] = {}
    last = ""
    while True:
        try:
            items = cluster.engine(cluster.leader()).api.nodes(filters={"role": "worker"})
        except Exception as error:  # noqa: BLE001 - a leader change; ask again next tick
            log.warning("workers: node list failed (%s); retrying", error)
            items = []
        now = time.monotonic()
        for item in items:
            name = workers.get(item.get("Status", {}).get("Addr"))
            if name and item.get("Status", {}).get("State") == "ready" and name not in ready_at:
                ready_at[name] = now
        summary = (
            f"workers: {len(ready_at)}/{len(workers)} Ready, {len(failed)} failed, "
            f"{expected - len(ready_at)} waiting, deadline in {max(0, deadline - now):.0f}s"
        )
        if summary.split(", deadline")[0] != last:
            log.info(summary)
            last = summary.split(", deadline")[0]
            if progress:
                progress(len(ready_at), len(workers))
        if len(ready_at) >= expected or now > deadline:
            return ready_at
        time.sleep(1)


def count_external(cluster: Cluster, spec: WorkersSpec) -> int:
    """Wait for contributor nodes (not in the inventory) up to ``workers.external.wait_seconds``."""
    known = {w.advertise_address for w in cluster.inventory.nodes}
    deadline = time.monotonic() + spec.external.wait_seconds
    while True:
        items = cluster.engine(cluster.leader()).api.nodes(filters={"role": "worker"})
        external = [
            i
            for i in items
            if i.get("Status", {}).get("Addr") not in known and i.get("Status", {}).get("State") == "ready"
        ]
        if len(external) >= spec.external.expected or time.monotonic() >= deadline:
            if spec.external.expected:
                log.info("workers: %d/%d external workers Ready", len(external), spec.external.expected)
            return len(external)
        time.sleep(5)
