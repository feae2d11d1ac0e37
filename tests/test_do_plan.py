"""The dry-run plan and the Swarm2k/Swarm3k specs for DigitalOcean."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from swarmlab.doapi.catalog import SIZES
from swarmlab.plan import make_plan
from swarmlab.spec import SWARM3K_SYSCTLS, load_spec, parse_spec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "deployments" / "experiments"


def test_swarm3k_spec_has_2016_size():
    spec = load_spec(EXPERIMENTS / "swarm3k.yaml")
    settings = spec.provider.digitalocean

    assert spec.provider.kind == "digitalocean"
    assert spec.managers.count == 3
    assert spec.node_count == 4700
    manager = SIZES[settings.manager_size]
    assert (manager.vcpus, manager.memory) == (16, 128 * 1024)
    for key, value in SWARM3K_SYSCTLS.items():
        assert spec.tuning.sysctls[key] == value
    kinds = [phase.kind for phase in spec.phases]
    assert kinds == ["mysql_wordpress", "nginx_mesh", "scale"]
    assert spec.phases[2].steps[-1] >= 70_000


def test_swarm2k_spec_has_2016_size():
    spec = load_spec(EXPERIMENTS / "swarm2k.yaml")
    worker = SIZES[spec.provider.digitalocean.worker_size]

    assert spec.managers.count == 3
    assert spec.node_count == 2384
    assert (worker.vcpus, worker.memory) == (1, 512)
    assert {phase.kind for phase in spec.phases} <= {"mysql_wordpress", "nginx_mesh", "scale"}


def test_swarm3k_plan_budget_and_cost():
    spec = load_spec(EXPERIMENTS / "swarm3k.yaml")
    plan = make_plan(spec)

    assert plan.droplets == 4700
    assert plan.budget.creates == 1 + 470
    assert plan.budget.pages_per_poll == 24
    assert plan.requests_per_droplet < 0.15
    expected = 3 * SIZES["m-16vcpu-128gb"].price_hourly + 4697 * SIZES["s-1vcpu-1gb"].price_hourly
    assert plan.cost_per_hour == pytest.approx(expected)
    assert plan.cost_expected == pytest.approx(expected * spec.provider.digitalocean.expected_hours)
    # The creates alone need the sliding minute to turn over at least once.
    assert plan.create_seconds >= 60
    assert plan.provisioning_seconds > plan.create_seconds

    text = plan.to_markdown()
    assert "| worker | 4,697 | `s-1vcpu-1gb` |" in text
    assert "| creates (up to 10 names each) | 471 |" in text
    assert "droplet_limit` of at least 4,700" in text


def test_prices_from_spec_override_the_table():
    spec = parse_spec(
        {
            "name": "priced",
            "provider": {
                "kind": "digitalocean",
                "digitalocean": {"prices_per_hour": {"s-1vcpu-1gb": 0.01}, "expected_hours": 4},
            },
            "managers": {"count": 1},
            "workers": {"count": 100},
        }
    )
    plan = make_plan(spec)
    worker = plan.groups[1]
    assert (worker.price_per_hour, worker.price_source) == (0.01, "spec")
    assert plan.cost_expected == pytest.approx(4 * (100 * 0.01 + SIZES["s-2vcpu-4gb"].price_hourly))


def test_unknown_size_leaves_cost_open():
    spec = parse_spec(
        {
            "name": "odd",
            "provider": {"kind": "digitalocean", "digitalocean": {"worker_size": "gpu-h100x8"}},
            "workers": {"count": 2},
        }
    )
    plan = make_plan(spec)
    assert plan.cost_per_hour is None
    assert plan.unpriced_sizes == ["gpu-h100x8"]
    assert "set `provider.digitalocean.prices_per_hour`" in plan.to_markdown()


def test_hourly_limit_adds_hours_to_huge_plans():
    spec = parse_spec({"name": "huge", "provider": {"kind": "digitalocean"}, "workers": {"count": 60_000}})
    plan = make_plan(spec)
    requests = plan.budget.preflight + plan.budget.first_listing + plan.budget.creates
    assert plan.create_seconds == (math.ceil(requests / 4950) - 1) * 3600


def test_plan_flow_prints_markdown(capsys):
    from flows.plan import plan

    text = plan.fn(str(EXPERIMENTS / "swarm2k.yaml"))
    assert text.startswith("# Plan: swarm2k on DigitalOcean")
    assert "2,381" in capsys.readouterr().out
