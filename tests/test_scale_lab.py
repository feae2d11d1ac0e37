"""The scale phase on a real lab: stepped scale-up to 300 tasks, and stop criteria that scale back."""

from __future__ import annotations

import pytest

from swarmlab.cluster import Cluster
from swarmlab.phases import PhaseFailed
from swarmlab.phases.scale import remove_service, run_scale, scale_down, service_counts
from swarmlab.spec import ScalePhase
from tests.conftest import formed_swarm

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    with formed_swarm("sws", "10.213.6.0/24", managers=1, workers=3) as (_, cluster):
        yield cluster


def tasks_per_node(cluster: Cluster, service: str) -> dict[str, int]:
    api = cluster.engine(cluster.leader()).api
    names = {item["ID"]: item["Description"]["Hostname"] for item in api.nodes()}
    counts: dict[str, int] = {}
    for task in api.tasks(filters={"service": service, "desired-state": "running"}):
        if task["Status"]["State"] == "running":
            host = names[task["NodeID"]]
            counts[host] = counts.get(host, 0) + 1
    return counts


def test_scale_to_300_in_steps(cluster, tmp_path):
    phase = ScalePhase(kind="scale", name="scale300", steps=[100, 200, 300], step_deadline=240, keep=True)
    result = run_scale(cluster, phase, "r1", tmp_path)
    try:
        assert result["status"] == "completed"
        assert [s["target"] for s in result["steps"]] == [100, 200, 300]
        for step in result["steps"]:
            assert step["converged"]
            assert step["throughput"] > 0
            assert step["interval_rates"]["count"] >= 1
        assert result["max_running"] == 300
        spread = tasks_per_node(cluster, "scale300")
        assert sorted(spread) == ["tsws-w1", "tsws-w2", "tsws-w3"]
        assert sum(spread.values()) == 300
        assert result["projected_hours_to_million"] > 0
        assert (tmp_path / "scale300-samples.csv").read_text().count("\n") > 3
    finally:
        phase_down = ScalePhase(kind="scale", name="scale300", steps=[100, 200, 300], keep=False)
        api = cluster.engine(cluster.leader()).api
        scale_down(api, phase_down, [300])
        remove_service(api, "scale300")


def test_unreachable_target_stops_and_scales_back(cluster, tmp_path):
    phase = ScalePhase(kind="scale", name="unreachable", steps=[20, 400], step_deadline=15, keep=True)
    with pytest.raises(PhaseFailed) as caught:
        run_scale(cluster, phase, "r1", tmp_path)
    message = str(caught.value)
    assert "did not converge" in message
    assert "phases[unreachable].step_deadline" in message
    assert "scaled back to 0" in message
    assert caught.value.result["status"] == "failed"
    assert caught.value.result["steps"][1]["aborted_by"]
    assert caught.value.result["scale_down"]["running"] == 0
    # Scaled back in steps, and kept (keep=True) at zero replicas.
    assert service_counts(cluster.engine(cluster.leader()).api, "unreachable") == (0, 0)


def test_throughput_floor_stops_phase(cluster, tmp_path):
    phase = ScalePhase(kind="scale", name="floor", steps=[10, 20], step_deadline=60,
                       abort={"min_throughput": 500})
    with pytest.raises(PhaseFailed) as caught:
        run_scale(cluster, phase, "r1", tmp_path)
    assert "abort.min_throughput 500.00" in str(caught.value)
    assert len(caught.value.result["steps"]) == 1
    api = cluster.engine(cluster.leader()).api
    assert [s["Spec"]["Name"] for s in api.services(filters={"name": "floor"})] == []
