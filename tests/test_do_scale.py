"""Swarm3k size through the API only: 4,700 address-only droplets on the local server, time-scaled.

The server counts every request in sliding windows; the claims checked here come from its
counts, not from the client's.
"""

from __future__ import annotations

from collections import Counter

import pytest

from swarmlab.doapi import Clock
from swarmlab.doserver import DOServer, Faults
from swarmlab.doserver.testing import api_endpoint, experiment_spec, test_config
from swarmlab.providers.digitalocean import DigitalOceanProvider

MANAGERS = 3
WORKERS = 4697
DROPLETS = MANAGERS + WORKERS
CREATES = 1 + 470  # three managers in one request, 4,697 workers ten to a request


def provision_and_teardown(tmp_path, scale: float, faults: Faults) -> dict:
    config = test_config(droplet_limit=5000, time_scale=scale, active_delay=45, active_jitter=15, faults=faults)
    with DOServer(config) as server, api_endpoint(server):
        # A generous deadline: on a busy machine the scaled clock runs through API time fast.
        spec = experiment_spec(server, "s3k", managers=MANAGERS, workers=WORKERS, active_deadline=7200)
        provider = DigitalOceanProvider(spec, server.token, clock=Clock(scale), state_dir=tmp_path)
        result = provider.provision("r1")
        after_provision = {
            "requests": server.stats.counted,
            "posts": server.stats.requests("POST", "/v2/droplets"),
            "names": Counter(r.name for r in server.state.droplet_records()),
        }
        removed = provider.teardown("r1")
        return {
            **after_provision,
            "result": result,
            "removed": removed,
            "left": server.state.droplet_records(),
            "stats": server.stats,
        }


def check_exactly_one_per_name(run: dict) -> None:
    assert len(run["names"]) == DROPLETS
    assert set(run["names"].values()) == {1}
    assert len(run["result"].inventory.nodes) == DROPLETS
    assert len(run["result"].created) == DROPLETS
    assert all(node.host_keys for node in run["result"].inventory.nodes)
    assert len(run["removed"]) == DROPLETS
    assert run["left"] == []


def check_within_limits(stats) -> None:
    assert stats.limit_rejections == 0
    assert stats.max_per_minute <= 250
    assert stats.max_per_hour <= 5000


def test_swarm3k_size_within_budget_and_limits(tmp_path):
    # At twenty API seconds per real second the per-minute limit binds on an idle machine.
    run = provision_and_teardown(tmp_path, scale=20.0, faults=Faults())

    check_exactly_one_per_name(run)
    check_within_limits(run["stats"])
    assert run["posts"] == CREATES
    assert run["requests"] / DROPLETS <= 0.15
    inventory = run["result"].inventory
    assert [n.name for n in inventory.nodes[:MANAGERS]] == ["s3k-m1", "s3k-m2", "s3k-m3"]
    assert all(n.address.startswith("198.18.") for n in inventory.nodes)
    assert all(n.advertise_address.startswith("198.19.") for n in inventory.nodes)


def test_swarm3k_size_survives_injected_faults(tmp_path):
    faults = Faults(rate_429=0.10, rate_500=0.05, drop_after_create=0.01, max_drops=3, retry_after=2, seed=11)
    run = provision_and_teardown(tmp_path, scale=40.0, faults=faults)

    stats = run["stats"]
    assert stats.injected_429 > 0.05 * stats.counted
    assert stats.injected_500 > 0.02 * stats.counted
    assert stats.dropped >= 1
    check_exactly_one_per_name(run)
    check_within_limits(stats)


@pytest.mark.parametrize("scale", [20.0])
def test_rerun_at_scale_lists_and_creates_nothing(tmp_path, scale):
    config = test_config(droplet_limit=5000, time_scale=scale, active_delay=5)
    with DOServer(config) as server, api_endpoint(server):
        spec = experiment_spec(server, "s3k", managers=MANAGERS, workers=WORKERS)
        server.state.add_droplets(
            [f"s3k-w{i}" for i in range(1, WORKERS + 1)] + ["s3k-m1", "s3k-m2", "s3k-m3"],
            tags=["swarmlab-exp-s3k", "swarmlab-run-s3k-r1"],
        )
        provider = DigitalOceanProvider(spec, server.token, clock=Clock(scale), state_dir=tmp_path)
        result = provider.provision("r1")

        assert result.created == ()
        assert len(result.reused) == DROPLETS
        assert server.stats.requests("POST") == 0
        # Preflight, then one listing for the preflight and one poll: 24 pages each.
        assert server.stats.counted <= 6 + 2 * 24
