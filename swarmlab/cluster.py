"""A run's nodes as one object: SSH connections, engine clients and who leads the swarm now."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import docker

from swarmlab.engine import engine_client
from swarmlab.inventory import Inventory, Node
from swarmlab.ssh import SSHPool

log = logging.getLogger(__name__)

CPU_SAMPLE = "cat /proc/$(cat /var/run/docker.pid)/stat; getconf CLK_TCK; cat /proc/uptime"


class NoLeader(RuntimeError):
    """No manager could name a swarm leader."""


class Cluster:
    """Connections to every node of a run; reuse one per run and close() it at the end."""

    def __init__(self, inventory: Inventory, identity: Path, ssh_concurrency: int = 50):
        self.inventory = inventory
        self.identity = Path(identity)
        self.ssh = SSHPool(self.identity, concurrency=ssh_concurrency)
        self._engines: dict[str, docker.DockerClient] = {}
        self._lock = threading.Lock()
        self._cpu_last: dict[str, tuple[float, float]] = {}

    def engine(self, node: Node | str, fresh: bool = False) -> docker.DockerClient:
        node = self.inventory.by_name(node) if isinstance(node, str) else node
        with self._lock:
            client = self._engines.get(node.name)
            if client is None or fresh:
                if client is not None:
                    client.close()
                client = engine_client(node, self.identity)
                self._engines[node.name] = client
            return client

    def leader(self, deadline: float = 60.0) -> Node:
        """Return the manager that leads the swarm, asking each reachable manager in turn."""
        stop = time.monotonic() + deadline
        last_error: Exception | None = None
        while time.monotonic() < stop:
            for manager in self.inventory.managers:
                try:
                    for item in self.engine(manager).api.nodes(filters={"role": "manager"}):
                        if item.get("ManagerStatus", {}).get("Leader"):
                            return self.node_for(item)
                except Exception as error:  # noqa: BLE001 - try the next manager
                    last_error = error
                    self.drop_engine(manager.name)
            time.sleep(1)
        raise NoLeader(f"no manager named a swarm leader within {deadline:.0f}s (last error: {last_error})")

    def node_for(self, swarm_node: dict) -> Node:
        """Map a swarm node (from the API) to the inventory node, by address, then hostname."""
        address = swarm_node.get("Status", {}).get("Addr")
        hostname = swarm_node.get("Description", {}).get("Hostname")
        for node in self.inventory.nodes:
            if node.advertise_address == address or node.name == hostname:
                return node
        raise KeyError(f"swarm node {hostname} ({address}) is not in the inventory")

    def drop_engine(self, name: str) -> None:
        with self._lock:
            client = self._engines.pop(name, None)
        if client is not None:
            client.close()

    def dockerd_cpu(self, node: Node) -> tuple[float | None, int | None]:
        """dockerd CPU percent since the previous call for ``node`` (100 = one core) and its RSS bytes."""
        result = self.ssh.run(node, CPU_SAMPLE, timeout=10)
        if not result.ok:
            return None, None
        stat, ticks, uptime = result.stdout.strip().splitlines()[:3]
        fields = stat.rsplit(")", 1)[1].split()
        cpu_seconds = (int(fields[11]) + int(fields[12])) / int(ticks)
        rss = int(fields[21]) * 4096
        now = float(uptime.split()[0])
        previous = self._cpu_last.get(node.name)
        self._cpu_last[node.name] = (now, cpu_seconds)
        if previous is None or now <= previous[0]:
            return None, rss
        return 100.0 * (cpu_seconds - previous[1]) / (now - previous[0]), rss

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for client in engines:
            client.close()
        self.ssh.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
