"""Failpoint names: the points a spec has, and the refusal of a point that a run would never reach."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from swarmlab import failpoints
from swarmlab.spec import DEFAULT_SPEC, load_spec, parse_spec
from tests.conftest import PYTHON, REPO, lab_spec_data


def test_default_spec_points_in_flow_order():
    points = failpoints.points(load_spec(DEFAULT_SPEC))
    assert points[:3] == ["after:start", "during:provision", "after:provision"]
    assert points.index("after:tuning") < points.index("during:monitoring") < points.index("after:profile-idle")
    assert points.index("after:mysql-wordpress") < points.index("during:nginx-mesh") < points.index("during:scale")
    assert points[-4:] == ["after:monitoring-stopped", "during:report", "after:report", "during:teardown"]


def test_points_follow_the_spec():
    spec = parse_spec(lab_spec_data("swz", "10.213.250.0/24", teardown="never",
                                    phases=[{"kind": "scale", "name": "big", "steps": [5]}]))
    points = failpoints.points(spec)
    assert "during:monitoring" not in points  # monitoring is off in the test spec
    assert "after:profile-idle" not in points  # so is profiling
    assert "during:teardown" not in points  # teardown: never
    assert ["during:big", "after:big"] == [p for p in points if p.endswith(":big")]


@pytest.mark.parametrize("value, message", [
    ("after managers", "expected after:<step> or during:<step>"),
    ("after:nginx", "is not a point of experiment"),
])
def test_check_refuses(monkeypatch, value, message):
    monkeypatch.setenv(failpoints.ENV, value)
    with pytest.raises(ValueError, match=message):
        failpoints.check(load_spec(DEFAULT_SPEC))


def test_unset_does_nothing(monkeypatch):
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints.check(load_spec(DEFAULT_SPEC))
    failpoints.reach("after:start")  # returns: nothing is armed


def test_reach_stops_the_process():
    """The armed point stops the process (SIGSTOP); another point leaves it running."""
    code = "from swarmlab import failpoints; failpoints.reach('after:other'); failpoints.reach('after:start')"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                             env={**os.environ, failpoints.ENV: "after:start"})
    try:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        assert os.WSTOPSIG(status) == signal.SIGSTOP
    finally:
        child.kill()
        child.wait(timeout=10)


def test_cli_refuses_unknown_point(tmp_path):
    done = subprocess.run([PYTHON, "-m", "flows.swarm3k", "--runs-dir", str(tmp_path / "runs")], cwd=REPO,
                          env={**os.environ, failpoints.ENV: "after:nothing"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "is not a point of experiment 'lab'" in done.stderr
    assert not (tmp_path / "runs").exists()
