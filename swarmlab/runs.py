"""Starting and resuming runs: which run a command continues, and the spec it is tied to."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from swarmlab.record import RunRecord, find_resumable, new_run_id
from swarmlab.spec import ExperimentSpec, SpecError, load_spec

log = logging.getLogger(__name__)


FINISHED = ("completed", "torn_down", "abandoned")


class RunConflict(RuntimeError):
    """The requested run cannot continue with the given spec."""


def open_run(
    spec_path: str | Path, run_id: str | None, new_run: bool, runs_root: Path
) -> tuple[RunRecord, ExperimentSpec]:
    """Return the run to work on: the named one, else the newest unfinished one, else a new one.

    A run keeps the spec it started with (``spec.yaml`` in its folder): resuming with a changed
    spec would mix two experiments in one record, so it is rejected.

    Raises:
        SpecError: the spec is invalid (nothing was created).
        RunConflict: the spec changed since the run started, or the named run does not exist.
    """
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    if run_id:
        record = named_run(spec, run_id, runs_root)
    elif not new_run:
        record = find_resumable(spec.name, runs_root)
    else:
        record = None

    if record is None:
        record = RunRecord(spec.name, new_run_id(), runs_root).ensure()
        shutil.copyfile(spec_path, record.path / "spec.yaml")
        record.update_meta(experiment=spec.name, run_id=record.run_id, provider=spec.provider.kind,
                           spec_digest=spec.digest(), spec_source=str(spec_path.resolve()),
                           status="running", started_at=time.time(), attempts=[])
        log.info("run %s: new run of %s", record.run_id, spec.name)
    else:
        spec = check_same_spec(record, spec, spec_path)
        log.info("run %s: resuming (status %s)", record.run_id, record.meta().get("status"))

    record.ensure()
    attempts = record.meta().get("attempts", [])
    attempts.append({"started_at": time.time(), "pid": os.getpid(), "found_status": record.meta().get("status")})
    record.update_meta(status="running", attempts=attempts)
    return record, spec


__all__ = ["open_run", "check_resumable", "RunConflict", "SpecError"]


def named_run(spec: ExperimentSpec, run_id: str, runs_root: Path) -> RunRecord:
    """Return the record of `run_id`, or raise RunConflict if it is missing or the run has finished."""
    record = RunRecord(spec.name, run_id, runs_root)
    if not (record.path / "spec.yaml").exists():
        raise RunConflict(f"run {run_id!r} of experiment {spec.name!r} not found under {runs_root}")
    status = record.meta().get("status")
    if status in FINISHED:
        raise RunConflict(f"run {run_id} is {status.replace('_', ' ')}; its record stays as it is. "
                          "Start a new run with --new-run")
    return record


def check_same_spec(record: RunRecord, spec: ExperimentSpec, spec_path: Path) -> ExperimentSpec:
    """Return the spec `record` started with, if `spec` is the same experiment; else raise RunConflict."""
    stored = load_spec(record.path / "spec.yaml")
    if stored.digest() != spec.digest():
        started_from = record.meta().get("spec_source", "its spec")
        raise RunConflict(
            f"run {record.run_id} of {spec.name!r} started from {started_from} (spec {stored.digest()}), and "
            f"{spec_path} differs from it (spec {spec.digest()}): resume with the spec the run started with "
            f"(a copy is {record.path / 'spec.yaml'}), or start a new run with --new-run"
        )
    return stored


def check_resumable(spec_path: str | Path, run_id: str | None, new_run: bool, runs_root: Path) -> None:
    """Raise RunConflict for what `open_run` would reject, so that the error comes before Prefect starts.

    Creates nothing.
    """
    if new_run:
        return
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    record = named_run(spec, run_id, runs_root) if run_id else find_resumable(spec.name, runs_root)
    if record is not None:
        check_same_spec(record, spec, spec_path)


def mark_abandoned(record: RunRecord, reason: str) -> None:
    """Take a run that cannot go on (its lab belongs to another run) out of the resumable runs."""
    record.update_meta(status="abandoned", abandoned_because=reason, abandoned_at=time.time())


def mark_unfinished_torn_down(experiment: str, runs_root: Path) -> list[str]:
    """After removing all of an experiment's nodes, no unfinished run of it can resume."""
    folder = Path(runs_root) / experiment
    marked = []
    for candidate in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []:
        record = RunRecord(experiment, candidate.name, runs_root)
        if record.meta().get("status") not in FINISHED:
            record.update_meta(status="torn_down", torn_down_at=time.time())
            marked.append(candidate.name)
    return marked
