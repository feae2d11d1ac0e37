"""Profiles: pprof captures from a manager's dockerd (CPU, heap, goroutine) into the run record."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from swarmlab.cluster import Cluster
from swarmlab.engine import pprof
from swarmlab.spec import ProfilingSpec

log = logging.getLogger(__name__)


def capture_profiles(cluster: Cluster, spec: ProfilingSpec, label: str, folder: Path) -> dict:
    """Capture a CPU profile of ``spec.cpu_seconds`` from the leader (plus heap and goroutine).

    The engine is not switched to debug mode: debug logging doubles the scheduler's CPU and puts
    logrus in a fifth of the samples. A capture from a manager that is not the leader at the end
    of the capture is labelled so.
    """
    folder.mkdir(parents=True, exist_ok=True)
    leader = cluster.leader()
    client = cluster.engine(leader)
    started = time.monotonic()
    files = {}
    cpu = pprof(client, "profile", seconds=spec.cpu_seconds)
    files["cpu"] = _save(folder / f"{label}-{leader.name}.cpu.pb.gz", cpu)
    if spec.heap:
        files["heap"] = _save(folder / f"{label}-{leader.name}.heap.pb.gz", pprof(client, "heap"))
    if spec.goroutine:
        files["goroutine"] = _save(folder / f"{label}-{leader.name}.goroutine.pb.gz", pprof(client, "goroutine"))
    leader_after = cluster.leader()
    result = {
        "label": label,
        "node": leader.name,
        "was_leader": leader_after.name == leader.name,
        "cpu_seconds": spec.cpu_seconds,
        "files": {kind: str(path.relative_to(folder.parent)) for kind, path in files.items()},
        "bytes": {kind: path.stat().st_size for kind, path in files.items()},
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "profiles: %s: %ds CPU profile of %s%s (%d bytes)",
        label,
        spec.cpu_seconds,
        leader.name,
        "" if result["was_leader"] else " (no longer the leader)",
        result["bytes"]["cpu"],
    )
    return result


def _save(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
