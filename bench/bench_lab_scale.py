"""Lab scale: boot-and-join time and memory per node for real dockerd lab nodes.

    .venv/bin/python bench/bench_lab_scale.py --sizes 10 25 50 --write

For each size, boots that many nodes (1 manager, the rest workers) with the lab provider, forms the
swarm (init, joins, all Ready), and measures the wall time of each stage and the resident memory
of every process in the nodes' namespaces (dockerd, containerd, sshd), then tears the lab down.
Target: 50 nodes up and joined within 5 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402
from swarmlab.cluster import Cluster  # noqa: E402
from swarmlab.lab.network import netns_pids  # noqa: E402
from swarmlab.phases.managers import init_managers  # noqa: E402
from swarmlab.phases.workers import join_workers  # noqa: E402
from swarmlab.providers.lab import LabProvider  # noqa: E402
from swarmlab.spec import parse_spec  # noqa: E402


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def measure(size: int) -> dict:
    spec = parse_spec({
        "name": "bench", "provider": {"kind": "lab", "lab": {"prefix": "swn", "bridge": "swn0",
                                                             "subnet": "10.213.128.0/24"}},
        "managers": {"count": 1}, "workers": {"count": size - 1, "ready_deadline": 600, "join_concurrency": 20},
        "monitoring": {"enabled": False}, "profiling": {"enabled": False}, "phases": [],
        "tuning": {"sysctls": {}},
    })
    provider = LabProvider(spec)
    try:
        started = time.monotonic()
        result = provider.provision("bench")
        booted = time.monotonic()
        with Cluster(result.inventory, provider.ssh_identity) as cluster:
            init_managers(cluster, spec.managers)
            workers = join_workers(cluster, spec.workers)
        joined = time.monotonic()
        namespaces = [provider.lab.network.netns(n.name) for n in result.inventory.nodes]
        memory = rss_bytes([pid for ns in namespaces for pid in netns_pids(ns)])
        free = subprocess.run(["free", "-b"], capture_output=True, text=True).stdout.split("\n")[1].split()
        return {
            "size": size, "boot_s": booted - started, "join_s": joined - booted, "total_s": joined - started,
            "ready": workers["ready"] + 1, "rss_per_node_mb": memory / size / 2**20,
            "host_used_gb": int(free[2]) / 2**30,
        }
    finally:
        leftovers = provider.lab.down()
        if not leftovers.empty():
            print(f"lab down left: {leftovers.describe()}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50], help="node counts (default 10 25 50)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        figures = measure(size)
        rows.append(figures)
        print(f"{size} nodes: boot {figures['boot_s']:.0f}s, swarm formed {figures['join_s']:.0f}s later, "
              f"{figures['ready']}/{size} Ready, {figures['rss_per_node_mb']:.0f} MB per node", flush=True)
    largest = rows[-1]
    verdict = "met" if largest["size"] >= 50 and largest["total_s"] <= 300 else "not met"
    body = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores); "
        f"`bench/bench_lab_scale.py --sizes {' '.join(map(str, args.sizes))}`; one run per size.",
        "",
        "| nodes | boot (namespaces, sshd, dockerd, image) | swarm init + joins + Ready | total | Ready "
        "| RSS per node |",
        "|---|---|---|---|---|---|",
        *[f"| {r['size']} | {r['boot_s']:.0f} s | {r['join_s']:.0f} s | {r['total_s']:.0f} s | {r['ready']} | "
          f"{r['rss_per_node_mb']:.0f} MB |" for r in rows],
        "",
        f"Target (50 nodes up and joined within 5 minutes): {verdict} ({largest['total_s']:.0f} s for "
        f"{largest['size']} nodes). RSS counts dockerd, containerd and sshd of each node.",
    ]
    print("\n".join(body))
    if args.write:
        update_section(REPO / "docs" / "benchmarks.md", "Lab scale (boot and join)", "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
