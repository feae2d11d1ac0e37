"""Shared test settings: lab tests need root and use their own prefixes, bridges and subnets."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="lab tests need root (network namespaces, bridges, iptables)")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


def lab_spec_data(prefix: str, subnet: str, managers: int = 1, workers: int = 2, **extra) -> dict:
    """A small lab experiment on its own prefix, bridge and subnet, so tests never share nodes."""
    data = {
        "name": f"t{prefix}",
        "provider": {"kind": "lab", "lab": {"prefix": prefix, "bridge": f"{prefix}0", "subnet": subnet}},
        "managers": {"count": managers},
        "workers": {"count": workers, "ready_deadline": 120},
        "tuning": {"sysctls": {"net.core.somaxconn": 2048}},
        "monitoring": {"enabled": False},
        "phases": [],
        "profiling": {"enabled": False},
    }
    data.update(extra)
    return data


@contextlib.contextmanager
def formed_swarm(prefix: str, subnet: str, managers: int, workers: int):
    """Boot a lab, form its swarm and yield ``(provider, cluster)``; the lab is removed afterwards.

    The exit asserts that ``Lab.down`` left nothing, so every test using it checks clean-up too.
    """
    from swarmlab.cluster import Cluster
    from swarmlab.phases.managers import init_managers
    from swarmlab.phases.workers import join_workers
    from swarmlab.providers.lab import LabProvider
    from swarmlab.spec import parse_spec

    spec = parse_spec(lab_spec_data(prefix, subnet, managers=managers, workers=workers))
    provider = LabProvider(spec)
    try:
        result = provider.provision("r1")
        with Cluster(result.inventory, provider.ssh_identity) as cluster:
            init_managers(cluster, spec.managers)
            join_workers(cluster, spec.workers)
            yield provider, cluster
    finally:
        leftovers = provider.lab.down()
        assert leftovers.empty(), leftovers.describe()
