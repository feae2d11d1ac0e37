"""Shared pieces of the phase tasks: the run handle, resume keys, result storage and artifacts."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.filesystems import LocalFileSystem

from swarmlab.inventory import Inventory
from swarmlab.record import RunRecord
from swarmlab.spec import ExperimentSpec, load_spec

RESULTS_BLOCK = "swarmlab-runs"
RESULT_STORAGE = f"local-file-system/{RESULTS_BLOCK}"


@dataclass(frozen=True)
class RunHandle:
    """Everything a task needs to find its run again; small, hashable and free of secrets."""

    experiment: str
    run_id: str
    runs_root: str
    spec_digest: str

    @property
    def record(self) -> RunRecord:
        return RunRecord(self.experiment, self.run_id, Path(self.runs_root))

    @cached_property
    def spec(self) -> ExperimentSpec:
        return load_spec(self.record.path / "spec.yaml")

    def provider(self):
        from swarmlab.providers import get_provider

        return get_provider(self.spec)


def register_result_storage(runs_root: Path) -> None:
    """Point the tasks' result storage at the runs folder, so cached results live in each run."""
    LocalFileSystem(basepath=str(Path(runs_root).resolve())).save(RESULTS_BLOCK, overwrite=True)


def inventory_digest(inventory: Inventory | None) -> str:
    if inventory is None:
        return "none"
    return hashlib.sha256(json.dumps(inventory.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def phase_key(phase: str):
    """A cache key function: one result per run, phase, spec and set of nodes.

    A resumed run with the same nodes skips the phase and restores its stored result; a node
    that was re-created (new host key, new inventory digest) makes the phase run again.
    """

    def key(_context, parameters: dict) -> str:
        run: RunHandle = parameters["run"]
        label = parameters.get("label") or parameters.get("phase_name") or ""
        name = f"{phase}-{label}" if label else phase
        digest = inventory_digest(parameters.get("inventory"))
        return f"{run.experiment}/{run.run_id}/results/{name}-{run.spec_digest}-{digest}.json"

    return key


def artifact_key(run: RunHandle, phase: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{run.experiment}-{phase}".lower()).strip("-")


def publish(run: RunHandle, phase: str, result: dict, summary: str, rows: list[dict] | None = None) -> None:
    """Save a phase result in the run record and publish it as Prefect artifacts."""
    run.record.save_phase(phase, result)
    create_markdown_artifact(
        key=artifact_key(run, phase),
        markdown=f"### {phase} ({run.run_id})\n\n{summary}\n",
        description=f"{phase} phase of run {run.run_id}",
    )
    if rows:
        create_table_artifact(key=artifact_key(run, f"{phase}-table"), table=rows,
                              description=f"{phase} per item, run {run.run_id}")
    get_run_logger().info("%s: %s", phase, summary.splitlines()[0] if summary else "done")
