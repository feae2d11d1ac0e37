"""Nodes of a run as the provider reports them: the inventory the phases work on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Role = Literal["manager", "worker"]


@dataclass(frozen=True)
class Node:
    """One machine of the experiment: a lab namespace or a droplet.

    ``address`` is where the pipeline reaches the node over SSH; ``advertise_address`` is what
    swarm members use to reach each other (a droplet's private address, a lab node's only one).
    ``host_keys`` holds the node's public SSH host keys as ``"type base64"`` lines, pinned at
    creation: a connection that sees another key is rejected.
    """

    name: str
    role: Role
    index: int
    address: str
    advertise_address: str
    provider_id: str
    host_keys: tuple[str, ...] = ()
    ssh_user: str = "root"
    ssh_port: int = 22
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["host_keys"] = list(self.host_keys)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Node:
        return cls(**{**data, "host_keys": tuple(data.get("host_keys", ()))})


@dataclass(frozen=True)
class Inventory:
    """All nodes of a run, managers first."""

    nodes: tuple[Node, ...]

    @property
    def managers(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "manager"]

    @property
    def workers(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "worker"]

    def by_name(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"node {name!r} is not in the inventory")

    def to_dict(self) -> dict:
        return {"nodes": [node.to_dict() for node in self.nodes]}

    @classmethod
    def from_dict(cls, data: dict) -> Inventory:
        return cls(nodes=tuple(Node.from_dict(item) for item in data["nodes"]))


def node_name(experiment: str, role: Role, index: int) -> str:
    """Name nodes the way every provider does, so a re-run finds them: ``lab-m1``, ``lab-w12``."""
    return f"{experiment}-{'m' if role == 'manager' else 'w'}{index}"
