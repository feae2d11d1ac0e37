"""Managers: initialise the swarm on the first manager, join the others, check the quorum."""

from __future__ import annotations

import logging
import time

from swarmlab import failpoints
from swarmlab.cluster import Cluster
from swarmlab.phases import PhaseFailed
from swarmlab.spec import ManagersSpec

log = logging.getLogger(__name__)


def _swarm_state(client) -> dict:
    return client.info().get("Swarm", {})


def init_managers(cluster: Cluster, spec: ManagersSpec) -> dict:
    """Initialise the swarm with the spec's Raft options and join the other managers.

    Idempotent: a manager already in the swarm is left as it is, so a retried or resumed phase
    does not re-initialise the cluster.
    """
    started = time.monotonic()
    managers = cluster.inventory.managers
    first = managers[0]
    first_client = cluster.engine(first)
    raft = spec.raft
    initialised = False

    state = _swarm_state(first_client)
    if state.get("LocalNodeState") == "active" and state.get("ControlAvailable"):
        log.info("managers: %s already manages a swarm; not initialising again", first.name)
        leader_node = cluster.leader()
        leader_client = cluster.engine(leader_node)
    else:
        first_client.swarm.init(
            advertise_addr=first.advertise_address,
            listen_addr=f"{first.advertise_address}:2377",
            snapshot_interval=raft.snapshot_interval,
            keep_old_snapshots=raft.keep_old_snapshots,
            log_entries_for_slow_followers=raft.log_entries_for_slow_followers,
            heartbeat_tick=raft.heartbeat_tick,
            election_tick=raft.election_tick,
            task_history_retention_limit=raft.task_history_retention_limit,
            dispatcher_heartbeat_period=int(raft.dispatcher_heartbeat_seconds * 1e9),
        )
        initialised = True
        leader_node, leader_client = first, first_client
        log.info("managers: swarm initialised on %s (%s)", first.name, first.advertise_address)
        failpoints.reach("during:managers")

    leader_client.swarm.reload()
    token = leader_client.swarm.attrs["JoinTokens"]["Manager"]
    remote = f"{leader_node.advertise_address}:2377"
    joined = []
    for manager in managers:
        client = cluster.engine(manager)
        if _swarm_state(client).get("LocalNodeState") == "active":
            continue
        # One manager at a time: each join is a Raft membership change.
        client.swarm.join(
            remote_addrs=[remote],
            join_token=token,
            advertise_addr=manager.advertise_address,
            listen_addr=f"{manager.advertise_address}:2377",
        )
        joined.append(manager.name)
        log.info("managers: %s joined (%d/%d)", manager.name, len(joined) + 1, len(managers))

    quorum = wait_for_quorum(cluster, len(managers), spec.quorum_deadline)
    applied = leader_client.swarm.attrs["Spec"]
    return {
        "status": "completed",
        "seconds": round(time.monotonic() - started, 3),
        "initialised": initialised,
        "joined": joined,
        "leader": quorum["leader"],
        "managers": quorum["managers"],
        "swarm_id": leader_client.swarm.attrs["ID"],
        "raft": applied.get("Raft", {}),
        "dispatcher": applied.get("Dispatcher", {}),
        "task_history_retention_limit": applied.get("Orchestration", {}).get("TaskHistoryRetentionLimit"),
    }


def wait_for_quorum(cluster: Cluster, expected: int, deadline: float) -> dict:
    """Wait until ``expected`` managers are reachable with exactly one leader."""
    stop = time.monotonic() + deadline
    last = ""
    while True:
        leader = cluster.leader(deadline=max(1.0, stop - time.monotonic()))
        items = cluster.engine(leader).api.nodes(filters={"role": "manager"})
        managers = [
            {
                "name": cluster.node_for(item).name,
                "id": item["ID"],
                "reachability": item.get("ManagerStatus", {}).get("Reachability"),
                "leader": bool(item.get("ManagerStatus", {}).get("Leader")),
            }
            for item in items
        ]
        reachable = [m for m in managers if m["reachability"] == "reachable"]
        leaders = [m for m in managers if m["leader"]]
        summary = f"managers: {len(reachable)}/{expected} reachable, leader {leader.name}"
        if summary != last:
            log.info(summary)
            last = summary
        if len(reachable) >= expected and len(leaders) == 1:
            return {"leader": leader.name, "managers": managers}
        if time.monotonic() > stop:
            raise PhaseFailed(
                f"quorum not reached: {len(reachable)}/{expected} managers reachable after "
                f"{deadline:.0f}s (managers.quorum_deadline)"
            )
        time.sleep(1)
