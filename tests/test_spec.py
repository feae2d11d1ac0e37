"""Spec validation: bad specs stop with one line per problem that names the field and the fix."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from swarmlab.spec import DEFAULT_SPEC, SpecError, load_spec, parse_spec
from tests.conftest import PYTHON, REPO


def base() -> dict:
    return yaml.safe_load(DEFAULT_SPEC.read_text())


def scale_index(data: dict) -> int:
    return next(i for i, phase in enumerate(data["phases"]) if phase["kind"] == "scale")


def problems(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, source="t.yaml")
    return caught.value.problems


def test_default_spec_is_valid():
    spec = load_spec(DEFAULT_SPEC)
    assert spec.provider.kind == "lab"
    assert spec.managers.count == 3
    assert spec.workers.count == 4
    assert [p.kind for p in spec.phases] == ["mysql_wordpress", "nginx_mesh", "scale"]


def test_even_manager_count():
    data = base()
    data["managers"]["count"] = 4
    [(field, message)] = problems(data)
    assert field == "managers.count"
    assert "even" in message
    assert "use 3 or 5" in message


def test_zero_workers():
    data = base()
    data["workers"]["count"] = 0
    [(field, message)] = problems(data)
    assert field == "workers.count"
    assert "at least 1 worker" in message


def test_unknown_phase_kind():
    data = base()
    data["phases"].append({"kind": "chaos_monkey", "name": "chaos"})
    [(field, message)] = problems(data)
    assert field == f"phases[{len(data['phases']) - 1}:chaos]"
    assert "unknown phase kind 'chaos_monkey'" in message
    assert "scale, nginx_mesh, mysql_wordpress" in message


def test_negative_scale_target():
    data = base()
    index = scale_index(data)
    data["phases"][index]["steps"] = [50, -100]
    [(field, message)] = problems(data)
    assert field == f"phases[{index}:scale].steps"
    assert "-100" in message
    assert "positive" in message


def test_unknown_sysctl_key():
    data = base()
    data["tuning"]["sysctls"]["net.ipv4.neigh.default.gc_thresh9"] = 1
    [(field, message)] = problems(data)
    assert field == "tuning.sysctls"
    assert "gc_thresh9" in message
    assert "unknown sysctl key" in message


def test_unknown_field_and_wrong_type_together():
    data = base()
    data["managers"]["raft"]["snapshot_intervall"] = 5
    data["workers"]["join_concurrency"] = "many"
    found = dict(problems(data))
    assert "unknown field" in found["managers.raft.snapshot_intervall"]
    assert "workers.join_concurrency" in found


def test_decreasing_steps_rejected():
    data = base()
    index = scale_index(data)
    data["phases"][index]["steps"] = [100, 50]
    [(field, message)] = problems(data)
    assert field == f"phases[{index}:scale].steps"
    assert "increase" in message


def test_lab_subnet_too_small_for_nodes():
    data = base()
    data["provider"]["lab"]["subnet"] = "10.213.0.0/28"
    data["workers"]["count"] = 20
    [(field, message)] = problems(data)
    assert "do not fit" in message


def test_digest_ignores_new_defaults():
    data = base()
    first = parse_spec(data).digest()
    assert parse_spec(base()).digest() == first
    data["workers"]["count"] = 5
    assert parse_spec(data).digest() != first


BAD_SPECS = {
    "managers.count": ("managers", {"count": 2}),
    "workers.count": ("workers", {"count": 0}),
    "phases[0:scale].steps": ("phases", [{"kind": "scale", "steps": [-5]}]),
    "phases[0:unknown]": ("phases", [{"kind": "unknown"}]),
    "tuning.sysctls": ("tuning", {"sysctls": {"net.bogus.key": 1}}),
}


@pytest.mark.parametrize("field", sorted(BAD_SPECS))
def test_cli_rejects_bad_spec_before_anything(field, tmp_path):
    """The CLI prints one line naming the field, exits 2 and creates no run folder or lab."""
    data = base()
    key, value = BAD_SPECS[field]
    data[key] = value
    data["provider"]["lab"]["prefix"] = "swbad"
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    result = subprocess.run(
        [PYTHON, "-m", "flows.swarm3k", "--spec", str(spec_file), "--runs-dir", str(runs)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"bad.yaml: {field}" in lines[0]
    assert not runs.exists()
    assert not (tmp_path / "swbad").exists()
    assert "swbad" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
