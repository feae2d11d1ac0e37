"""Workers: join in parallel with bounded concurrency, then wait until they are Ready."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import paramiko
import requests

from swarmlab import failpoints
from swarmlab.cluster import Cluster
from swarmlab.inventory import Node
from swarmlab.phases import PhaseFailed, percentiles
from swarmlab.spec import WorkersSpec

log = logging.getLogger(__name__)

JOIN_ATTEMPTS = 3
# Failures to reach a worker's engine, as opposed to errors its engine returned.
CONNECTION_ERRORS = (paramiko.SSHException, OSError, requests.exceptions.ConnectionError,
                     requests.exceptions.Timeout)


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
    in_background: list[str] = []

    def join_once(node: Node, fresh: bool) -> None:
        client = cluster.engine(node, fresh=fresh)
        state = client.info().get("Swarm", {}).get("LocalNodeState")
        if state == "active":
            return
        if state == "pending":
            # An earlier attempt's join is still going on.
            in_background.append(node.name)
            return
        try:
            client.swarm.join(
                remote_addrs=[remote],
                join_token=token,
                advertise_addr=node.advertise_address,
                listen_addr=f"{node.advertise_address}:2377",
            )
        except (docker.errors.APIError, requests.exceptions.RequestException) as error:
            if not joining_in_background(cluster, node, error):
                raise
            # The wait for Ready below decides whether this node made it.
            in_background.append(node.name)
            log.info("workers: %s still joining in the background (%s)", node.name, short_error(error))

    def join(node: Node) -> None:
        join_started[node.name] = time.monotonic()
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            try:
                join_once(node, fresh=attempt > 1)
                break
            except CONNECTION_ERRORS as error:
                # sshd on a loaded machine can miss the banner time-out; join_once checks the node's
                # swarm state first, so a second attempt never joins it twice.
                if attempt == JOIN_ATTEMPTS:
                    raise
                log.warning("workers: %s: %s; reconnecting (attempt %d of %d)",
                            node.name, short_error(error), attempt + 1, JOIN_ATTEMPTS)
                time.sleep(2 * attempt)
        failpoints.reach("during:workers")

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
    rejoins: dict[str, int] = {}

    def rejoin_stalled(ready: set[str]) -> None:
        # A join that went on in the background can still fail (the node's swarm state is then
        # "error" or "inactive", and it never turns Ready): join it again, a bounded number of times.
        for node in (n for n in workers if n.name in in_background and n.name not in ready):
            if rejoins.get(node.name, 0) >= JOIN_ATTEMPTS - 1:
                continue
            try:
                state = cluster.engine(node).info().get("Swarm", {}).get("LocalNodeState")
                if state not in ("error", "inactive"):
                    continue
                rejoins[node.name] = rejoins.get(node.name, 0) + 1
                log.warning("workers: %s is %r after a background join; joining again (%d of %d)",
                            node.name, state, rejoins[node.name], JOIN_ATTEMPTS - 1)
                if state == "error":
                    cluster.engine(node).swarm.leave(force=True)
                join_once(node, fresh=True)
            except (docker.errors.APIError, *CONNECTION_ERRORS) as error:
                log.warning("workers: %s: checking or repeating its join failed: %s", node.name, short_error(error))

    ready_at = wait_until_ready(cluster, spec, failed, progress, on_poll=rejoin_stalled if in_background else None)
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
        "joined_in_background": sorted(set(in_background)),
        "joined_again": rejoins,
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


def joining_in_background(cluster: Cluster, node: Node, error: Exception) -> bool:
    """Tell whether a failed join call left ``node`` joining: dockerd gave up waiting, not joining.

    dockerd returns 503 when the join takes longer than its own 20 s wait (``swarmConnectTimeout``
    in moby's daemon/cluster) and keeps joining. A client-side read time-out leaves the same
    doubt, so there the node's own swarm state decides.
    """
    if isinstance(error, docker.errors.APIError):
        return error.status_code == 503 and "continue in the background" in str(error.explanation)
    try:
        state = cluster.engine(node, fresh=True).info().get("Swarm", {}).get("LocalNodeState")
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as check_error:
        log.warning("workers: %s: join failed (%s) and its swarm state is unknown (%s)",
                    node.name, short_error(error), short_error(check_error))
        return False
    return state in ("pending", "active")


def short_error(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


REJOIN_CHECK_SECONDS = 15.0


def wait_until_ready(cluster: Cluster, spec: WorkersSpec, failed: dict, progress=None,
                     on_poll=None) -> dict[str, float]:
    """Poll the leader's node list once a second; return when each worker first showed Ready.

    ``on_poll(ready_names)``, when given, runs every ``REJOIN_CHECK_SECONDS`` while workers are
    still missing.
    """
    workers = {w.advertise_address: w.name for w in cluster.inventory.workers}
    expected = len(workers) - len(failed)
    deadline = time.monotonic() + spec.ready_deadline
    ready_at: dict[str, float] = {}
    last = ""
    next_check = time.monotonic() + REJOIN_CHECK_SECONDS
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
        if on_poll is not None and now >= next_check:
            on_poll(set(ready_at))
            next_check = time.monotonic() + REJOIN_CHECK_SECONDS
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
