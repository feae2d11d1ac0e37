"""Which run a command resumes, and what it rejects before Prefect starts or anything is created."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from swarmlab.runs import RunConflict, check_resumable, open_run
from tests.conftest import PYTHON, REPO, lab_spec_data


def write_spec(path, workers: int = 2):
    path.write_text(yaml.safe_dump(lab_spec_data("swz", "10.213.250.0/24", workers=workers)))
    return path


@pytest.fixture
def started(tmp_path):
    """A run that started (a record, no nodes) and the spec file it started from."""
    spec_file = write_spec(tmp_path / "first.yaml")
    record, _ = open_run(spec_file, None, False, tmp_path / "runs")
    return record, spec_file


def test_changed_spec_names_source(started, tmp_path):
    record, first = started
    changed = write_spec(tmp_path / "second.yaml", workers=3)
    with pytest.raises(RunConflict) as caught:
        check_resumable(changed, None, False, tmp_path / "runs")
    message = str(caught.value)
    assert f"started from {first.resolve()}" in message
    assert f"{changed} differs from it" in message
    assert str(record.path / "spec.yaml") in message


def test_same_spec_or_new_run(started, tmp_path):
    _, first = started
    check_resumable(first, None, False, tmp_path / "runs")
    check_resumable(write_spec(tmp_path / "other.yaml", workers=3), None, True, tmp_path / "runs")


def test_unknown_and_finished_ids(started, tmp_path):
    record, first = started
    with pytest.raises(RunConflict, match="not found under"):
        check_resumable(first, "20990101T000000Z-0000", False, tmp_path / "runs")
    record.update_meta(status="torn_down")
    with pytest.raises(RunConflict, match="is torn down; its record stays as it is"):
        check_resumable(first, record.run_id, False, tmp_path / "runs")


def test_cli_changed_spec_one_line(started, tmp_path):
    changed = write_spec(tmp_path / "second.yaml", workers=3)
    done = subprocess.run([PYTHON, "-m", "flows.swarm3k", "--spec", str(changed), "--runs-dir",
                           str(tmp_path / "runs")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.startswith("error: run ")
    assert len(list((tmp_path / "runs" / "tswz").iterdir())) == 1  # no second run folder


def test_teardown_missing_record(tmp_path):
    spec_file = write_spec(tmp_path / "spec.yaml")
    done = subprocess.run([PYTHON, "-m", "flows.teardown", "--spec", str(spec_file), "--run-id",
                           "20990101T000000Z-0000", "--runs-dir", str(tmp_path / "runs")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert done.returncode == 2
    assert "no record of run 20990101T000000Z-0000" in done.stderr
    assert "--runs-dir" in done.stderr
