"""Look for a run's secrets where they must never be: processes, files, and a Prefect server's records.

A "needle" is a secret's bytes (a password) or a prefix every secret of a kind starts with (a
swarm join token starts with ``SWMTKN-1-``). Each function returns human-readable hits: an empty
list means nothing was found.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

JOIN_TOKEN = b"SWMTKN-1-"
PAGE = 200


def process_hits(needles: list[bytes], parts: tuple[str, ...] = ("cmdline", "environ")) -> list[str]:
    """Return the processes on this host whose command line (what ``ps`` shows) or environment contains a needle."""
    hits = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for part in parts:
            try:
                data = (entry / part).read_bytes()
            except OSError:  # the process ended, or a kernel thread
                continue
            for needle in needles:
                if needle in data:
                    command = data.split(b"\0")[0].decode(errors="replace") if part == "cmdline" else ""
                    hits.append(f"pid {entry.name} {command} ({part}) holds {describe(needle)}")
    return hits


def file_hits(paths: list[Path], needles: list[bytes]) -> list[str]:
    """Return the files under `paths` (folders are walked) whose bytes contain a needle."""
    hits = []
    for root in paths:
        if root.is_file():
            files = [root]
        elif root.exists():
            files = [path for path in root.rglob("*") if path.is_file()]
        else:
            files = []
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path} holds {describe(n)}" for n in needles if n in data]
    return hits


def prefect_hits(api_url: str, needles: list[bytes]) -> list[str]:
    """Return the logs, artifacts, flow runs and task runs on the Prefect server at `api_url` that contain a needle."""
    hits = []
    with httpx.Client(base_url=api_url, timeout=60) as client:
        for kind in ("logs", "artifacts", "flow_runs", "task_runs"):
            offset = 0
            while True:
                response = client.post(f"/{kind}/filter", json={"limit": PAGE, "offset": offset})
                response.raise_for_status()
                items = response.json()
                for item in items:
                    data = json.dumps(item).encode()
                    hits += [f"{kind} {item.get('id')} holds {describe(n)}" for n in needles if n in data]
                if len(items) < PAGE:
                    break
                offset += PAGE
    return hits


def block_secret(api_url: str, name: str) -> dict | None:
    """Return the value of the Secret block `name`, decrypted by the server, or None if it does not exist."""
    response = httpx.post(f"{api_url}/block_documents/filter", timeout=60, json={
        "block_documents": {"name": {"any_": [name]}}, "include_secrets": True, "limit": 1})
    response.raise_for_status()
    found = response.json()
    if not found:
        return None
    value = found[0]["data"]["value"]
    return json.loads(value) if isinstance(value, str) else value


def prefect_database_files() -> list[Path]:
    """Return the SQLite files of the Prefect database that this process's settings point at."""
    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home)
    return sorted(home.glob("*.db*"))


def describe(needle: bytes) -> str:
    """Name a needle without printing a secret: a join-token prefix as is, anything else by length."""
    return needle.decode() if needle == JOIN_TOKEN else f"a secret of {len(needle)} bytes"
