"""The run record: ``runs/<experiment>/<run-id>/`` with the inventory, phase results and files.

Nothing secret is written here: join tokens, passwords and API tokens stay in memory, in Docker
secrets or in Prefect Secret blocks. :func:`scrub` is the last line of defence for text that
might carry one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from swarmlab.inventory import Inventory

RUNS_ROOT = Path(os.environ.get("SWARMLAB_RUNS", "runs"))

# Swarm join tokens look like SWMTKN-1-<50 base36>-<25 base36>.
JOIN_TOKEN = re.compile(r"SWMTKN-1-[0-9a-z]+-[0-9a-z]+")


def scrub(text: str) -> str:
    """Replace anything shaped like a swarm join token with a placeholder."""
    return JOIN_TOKEN.sub("SWMTKN-1-<redacted>", text)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


@dataclass
class RunRecord:
    experiment: str
    run_id: str
    root: Path = RUNS_ROOT

    @property
    def path(self) -> Path:
        return Path(self.root) / self.experiment / self.run_id

    def ensure(self) -> RunRecord:
        for sub in ("phases", "profiles", "data", "plots", "artifacts"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        return self

    # -- JSON files -----------------------------------------------------------------------

    def write_json(self, relative: str, data: Any) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        text = scrub(json.dumps(data, indent=2, sort_keys=True, default=str))
        partial = target.with_suffix(target.suffix + ".partial")
        partial.write_text(text + "\n")
        partial.replace(target)
        return target

    def read_json(self, relative: str, default: Any = None) -> Any:
        target = self.path / relative
        if not target.exists():
            return default
        return json.loads(target.read_text())

    # -- run metadata ---------------------------------------------------------------------

    def meta(self) -> dict:
        return self.read_json("run.json", {}) or {}

    def update_meta(self, **fields: Any) -> dict:
        data = self.meta()
        data.update(fields)
        self.write_json("run.json", data)
        return data

    def save_inventory(self, inventory: Inventory) -> None:
        self.write_json("inventory.json", inventory.to_dict())
        lines = [line for node in inventory.nodes for line in _known_hosts(node)]
        (self.path / "known_hosts").write_text("\n".join(lines) + "\n")

    def load_inventory(self) -> Inventory | None:
        data = self.read_json("inventory.json")
        return Inventory.from_dict(data) if data else None

    def save_phase(self, phase: str, result: dict) -> None:
        self.write_json(f"phases/{phase}.json", result)
        timings = self.read_json("timings.json", {}) or {}
        timings[phase] = {
            "seconds": result.get("seconds"),
            "status": result.get("status", "completed"),
            "finished_at": time.time(),
        }
        self.write_json("timings.json", timings)

    def load_phase(self, phase: str) -> dict | None:
        return self.read_json(f"phases/{phase}.json")

    def phases(self) -> dict[str, dict]:
        folder = self.path / "phases"
        if not folder.exists():
            return {}
        return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _known_hosts(node) -> list[str]:
    host = node.address if node.ssh_port == 22 else f"[{node.address}]:{node.ssh_port}"
    return [f"{host} {key}" for key in node.host_keys]


def find_resumable(experiment: str, root: Path = RUNS_ROOT) -> RunRecord | None:
    """Return the newest run of ``experiment`` that did not finish, if any."""
    folder = Path(root) / experiment
    if not folder.exists():
        return None
    for candidate in sorted((p for p in folder.iterdir() if p.is_dir()), reverse=True):
        record = RunRecord(experiment, candidate.name, root)
        status = record.meta().get("status")
        if status not in ("completed", "torn_down", "abandoned"):
            return record
    return None
