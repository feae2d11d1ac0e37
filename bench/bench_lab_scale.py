"""Lab scale: boot-and-join time and memory per node for real dockerd lab nodes.

    .venv/bin/python bench/bench_lab_scale.py --sizes 10 25 50 --repeat 3 --write

For each size, boots that many nodes (1 manager, the rest workers) with the lab provider, forms the
swarm (init, joins, all Ready), and measures the wall time of each stage and the resident memory
of every process in the nodes' namespaces (dockerd, containerd, sshd), then tears the lab down.
Sizes run in turn, ``--repeat`` rounds; the table shows medians. A size that fails is reported
with its error and the others still run. There is no peer tool; the ratio printed is the time
against the target: 50 nodes up and joined within 5 minutes.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
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


def measure(size: int, prefix: str, subnet: str) -> dict:
    spec = parse_spec({
        "name": "bench", "provider": {"kind": "lab", "lab": {"prefix": prefix, "bridge": f"{prefix}0",
                                                             "subnet": subnet}},
        "managers": {"count": 1}, "workers": {"count": size - 1, "ready_deadline": 600, "join_concurrency": 20},
        "monitoring": {"enabled": False}, "profiling": {"enabled": False}, "phases": [],
        "tuning": {"sysctls": {}},
    })
    provider = LabProvider(spec)
    try:
        load_before = os.getloadavg()[0]
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
            "ready": workers["ready"] + 1, "background": len(workers["joined_in_background"]),
            "join_calls_s": workers["join_seconds"], "rss_per_node_mb": memory / size / 2**20,
            "host_used_gb": int(free[2]) / 2**30, "load_before": load_before, "load_after": os.getloadavg()[0],
        }
    finally:
        leftovers = provider.lab.down()
        if not leftovers.empty():
            print(f"lab down left: {leftovers.describe()}", file=sys.stderr)


TARGET_NODES, TARGET_SECONDS = 50, 300


def median_row(size: int, runs: list[dict]) -> dict:
    done = [r for r in runs if "error" not in r]
    row = {"size": size, "runs": len(runs), "done": len(done), "errors": [r["error"] for r in runs if "error" in r]}
    for key in ("boot_s", "join_s", "total_s", "ready", "rss_per_node_mb", "background"):
        row[key] = statistics.median(r[key] for r in done) if done else None
    row["loads"] = [r[key] for r in done for key in ("load_before", "load_after")]
    return row


def table_line(row: dict) -> str:
    if not row["done"]:
        return f"| {row['size']} | failed: {row['errors'][0][:120]} | | | | | |"
    return (f"| {row['size']} | {row['boot_s']:.0f} s | {row['join_s']:.0f} s | {row['total_s']:.0f} s | "
            f"{row['ready']:.0f} | {row['rss_per_node_mb']:.0f} MB | {row['done']} of {row['runs']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50], help="node counts (default 10 25 50)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all sizes (default 3)")
    parser.add_argument("--quick", action="store_true", help="one round instead of --repeat")
    parser.add_argument("--prefix", default="swr", help="lab prefix, also the bridge name's stem (default swr)")
    parser.add_argument("--subnet", default="10.213.33.0/24", help="lab subnet (default 10.213.33.0/24)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    repeat = 1 if args.quick else args.repeat
    runs: dict[int, list[dict]] = {size: [] for size in args.sizes}
    for round_number in range(1, repeat + 1):
        for size in args.sizes:
            try:
                figures = measure(size, args.prefix, args.subnet)
            except Exception as error:  # noqa: BLE001 - a failed size is a result; the others still run
                figures = {"error": f"{type(error).__name__}: {error}"}
                print(f"round {round_number}, {size} nodes: failed: {figures['error'][:500]}", flush=True)
            else:
                print(f"round {round_number}, {size} nodes: boot {figures['boot_s']:.0f}s, swarm formed "
                      f"{figures['join_s']:.0f}s later, {figures['ready']}/{size} Ready "
                      f"({figures['background']} joined in the background), "
                      f"{figures['rss_per_node_mb']:.0f} MB per node, load average {figures['load_before']:.1f} "
                      f"before, {figures['load_after']:.1f} after", flush=True)
            runs[size].append(figures)
    rows = [median_row(size, runs[size]) for size in args.sizes]
    loads = [load for row in rows for load in row["loads"]]
    load_text = f"{min(loads):.0f} to {max(loads):.0f}" if loads else "unknown"
    target = next((r for r in rows if r["size"] == TARGET_NODES), None)
    if target is None or target["total_s"] is None:
        ratio = f"ratio: not measured ({TARGET_NODES} nodes did not run or did not finish)"
        verdict = "not shown by this run"
    else:
        ratio = (f"ratio: {TARGET_NODES} nodes up and joined in {target['total_s']:.0f} s, "
                 f"{target['total_s'] / TARGET_SECONDS:.2f} of the {TARGET_SECONDS} s target")
        verdict = "met" if target["total_s"] <= TARGET_SECONDS and not target["errors"] else "not met"
    command = f"bench/bench_lab_scale.py --sizes {' '.join(map(str, args.sizes))} --repeat {repeat}"
    body = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{platform.machine()}); `{command}`; medians of the rounds that finished; 1-minute load average "
        f"{load_text} at the starts and ends of the runs (other jobs shared the machine).",
        "",
        "| nodes | boot (namespaces, sshd, dockerd, image) | swarm init + joins + Ready | total | Ready "
        "| RSS per node | rounds finished |",
        "|---|---|---|---|---|---|---|",
        *[table_line(row) for row in rows],
        "",
        ratio + ".",
        "",
        f"Target ({TARGET_NODES} nodes up and joined within 5 minutes): {verdict}. RSS counts dockerd, "
        "containerd and sshd of each node.",
    ]
    for row in rows:
        for error in row["errors"]:
            body.append(f"A {row['size']}-node round failed: {error[:300]}")
    print("\n".join(body))
    if args.write:
        update_section(REPO / "docs" / "benchmarks.md", "Lab scale (boot and join)", "\n".join(body))
    return 0 if all(row["done"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
