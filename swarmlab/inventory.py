"""Nodes of a run as the provider reports them: the inventory the phases work on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import FrozenInstanceError, dataclass, field, fields
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
        # Field by field, not dataclasses.asdict, which deep-copies every value: for 4,700 nodes
        # asdict took 3 s against 0.08 s on a busy 2-core machine, and every phase's cache key
        # (tasks/common.py) converts the whole inventory.
        data = {name: getattr(self, name) for name in _NODE_FIELDS}
        data["host_keys"] = list(self.host_keys)
        data["labels"] = dict(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Node:
        return cls(**{**data, "host_keys": tuple(data.get("host_keys", ()))})


_NODE_FIELDS = tuple(f.name for f in fields(Node))


class Inventory:
    """All nodes of a run, managers first; immutable.

    Not a dataclass on purpose. Before every task run, Prefect 3 walks each parameter that is a
    dataclass, pydantic model or collection down to every field of every item, looking for
    futures and states. It does so at least twice per task (to record the task's inputs and to
    resolve its parameters). A 4,700-node dataclass inventory is about 61,000 objects, and the
    two walks took about 2 s per task on a busy 2-core machine. Prefect passes any other object
    through as one value, and an inventory never contains futures. ``bench/bench_overhead.py``
    measures the whole flow.

    Args:
        nodes: the nodes, managers first; a node name that repeats is looked up as its first
            occurrence.
    """

    __slots__ = ("nodes", "_by_name", "_managers", "_workers")

    nodes: tuple[Node, ...]

    def __init__(self, nodes: Iterable[Node]):
        nodes = tuple(nodes)
        by_name: dict[str, Node] = {}
        for node in nodes:
            by_name.setdefault(node.name, node)
        set_slot = object.__setattr__
        set_slot(self, "nodes", nodes)
        set_slot(self, "_by_name", by_name)
        set_slot(self, "_managers", tuple(n for n in nodes if n.role == "manager"))
        set_slot(self, "_workers", tuple(n for n in nodes if n.role == "worker"))

    def __setattr__(self, name: str, value) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: an Inventory is immutable")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: an Inventory is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Inventory):
            return NotImplemented
        return self.nodes == other.nodes

    def __hash__(self) -> int:
        return hash(self.nodes)

    def __repr__(self) -> str:
        return f"Inventory({len(self._managers)} managers, {len(self._workers)} workers)"

    def __reduce__(self):
        return (Inventory, (self.nodes,))

    @property
    def managers(self) -> list[Node]:
        return list(self._managers)

    @property
    def workers(self) -> list[Node]:
        return list(self._workers)

    def by_name(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"node {name!r} is not in the inventory") from None

    def to_dict(self) -> dict:
        return {"nodes": [node.to_dict() for node in self.nodes]}

    @classmethod
    def from_dict(cls, data: dict) -> Inventory:
        return cls(nodes=tuple(Node.from_dict(item) for item in data["nodes"]))


def node_name(experiment: str, role: Role, index: int) -> str:
    """Name nodes the way every provider does, so a re-run finds them: ``lab-m1``, ``lab-w12``."""
    return f"{experiment}-{'m' if role == 'manager' else 'w'}{index}"
