"""The inventory: one value to Prefect, immutable, and the same dict form as before."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError, asdict

import pytest
from prefect.utilities.collections import visit_collection
from prefect.utilities.engine import collect_task_run_inputs_sync, resolve_inputs_sync

from swarmlab.inventory import Inventory, Node


def make_inventory(workers: int) -> Inventory:
    nodes = [Node(f"s3k-m{i}", "manager", i, f"198.18.0.{i}", f"198.19.0.{i}", str(i),
                  host_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIManager",), labels={"do_size": "m-16vcpu-128gb"})
             for i in range(1, 4)]
    nodes += [Node(f"s3k-w{i}", "worker", i, f"198.18.{i // 250}.{i % 250}", f"198.19.{i // 250}.{i % 250}",
                   str(100 + i), host_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIWorker",),
                   labels={"do_size": "s-1vcpu-1gb", "do_region": "fra1"})
              for i in range(1, workers + 1)]
    return Inventory(nodes)


def test_prefect_visits_inventory_once():
    inventory = make_inventory(4697)
    visited = []

    visit_collection({"inventory": inventory}, visited.append)

    # The dict, its key, its value: Prefect does not descend into the 4,700 nodes.
    assert len(visited) == 3
    assert collect_task_run_inputs_sync({"inventory": inventory}) == set()
    assert resolve_inputs_sync({"inventory": inventory})["inventory"] is inventory


def test_node_dict_matches_asdict():
    node = make_inventory(1).workers[0]

    data = node.to_dict()

    assert data == {**asdict(node), "host_keys": list(node.host_keys)}
    assert Node.from_dict(data) == node
    data["labels"]["do_size"] = "changed"
    assert node.labels["do_size"] == "s-1vcpu-1gb"


def test_inventory_round_trips():
    inventory = make_inventory(5)

    assert Inventory.from_dict(inventory.to_dict()) == inventory
    # Prefect pickles task results it persists; the bytes come from this test.
    assert pickle.loads(pickle.dumps(inventory)) == inventory  # noqa: S301
    assert copy.deepcopy(inventory) == inventory
    assert Inventory(nodes=inventory.nodes) == inventory
    assert inventory != make_inventory(6)


def test_inventory_lookups():
    inventory = make_inventory(5)

    assert [n.name for n in inventory.managers] == ["s3k-m1", "s3k-m2", "s3k-m3"]
    assert [n.name for n in inventory.workers] == [f"s3k-w{i}" for i in range(1, 6)]
    assert inventory.by_name("s3k-w4").index == 4
    with pytest.raises(KeyError, match="s3k-w9"):
        inventory.by_name("s3k-w9")
    assert repr(inventory) == "Inventory(3 managers, 5 workers)"


def test_inventory_first_duplicate_wins():
    first, second = make_inventory(2).workers
    twin = Node(first.name, "worker", 9, "198.18.9.9", "198.19.9.9", "999")

    inventory = Inventory((first, second, twin))

    assert inventory.by_name(first.name) is first
    assert len(inventory.workers) == 3


def test_inventory_is_immutable():
    inventory = make_inventory(2)

    with pytest.raises(FrozenInstanceError):
        inventory.nodes = ()
    with pytest.raises(FrozenInstanceError):
        del inventory.nodes
    inventory.workers.clear()
    assert len(inventory.workers) == 2
