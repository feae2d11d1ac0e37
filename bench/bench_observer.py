"""Observer cost at 50 and 500 tasks: Docker API requests per sample and extra leader dockerd CPU.

    .venv/bin/python bench/bench_observer.py --tasks 50 500 --seconds 30 --write

Boots a lab of 1 manager and 2 workers, runs a tiny-image service at each task count, then for
``--seconds`` each measures the leader's dockerd CPU without the observer and with it sampling
once a second (as `swarm_sample` does in a run), and counts the HTTP requests each sample makes.
The requests per sample must not grow with the number of tasks.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from docker.types import ServiceMode  # noqa: E402

from bench.report import update_section  # noqa: E402
from swarmlab.cluster import Cluster  # noqa: E402
from swarmlab.observer import swarm_sample  # noqa: E402
from swarmlab.phases.managers import init_managers  # noqa: E402
from swarmlab.phases.scale import service_counts, set_replicas  # noqa: E402
from swarmlab.phases.workers import join_workers  # noqa: E402
from swarmlab.providers.lab import LabProvider  # noqa: E402
from swarmlab.spec import parse_spec  # noqa: E402


class RequestCounter:
    """Count the HTTP requests a Docker SDK client sends, by wrapping its session's ``send``."""

    def __init__(self, client):
        self.count = 0
        original = client.api.send

        def send(request, **kwargs):
            self.count += 1
            return original(request, **kwargs)

        client.api.send = send


def cpu_over(cluster: Cluster, leader, seconds: float, sample=None) -> float:
    """Mean leader dockerd CPU percent over ``seconds``, calling ``sample()`` once a second if given."""
    cluster.dockerd_cpu(leader)
    values = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if sample:
            sample()
        time.sleep(1)
        cpu, _ = cluster.dockerd_cpu(leader)
        if cpu is not None:
            values.append(cpu)
    return statistics.mean(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[50, 500], help="task counts (default 50 500)")
    parser.add_argument("--seconds", type=float, default=30, help="measuring time per case (default 30)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    spec = parse_spec({
        "name": "obs", "provider": {"kind": "lab", "lab": {"prefix": "swo", "bridge": "swo0",
                                                           "subnet": "10.213.13.0/24"}},
        "managers": {"count": 1}, "workers": {"count": 2}, "monitoring": {"enabled": False},
        "profiling": {"enabled": False}, "phases": [], "tuning": {"sysctls": {}},
    })
    provider = LabProvider(spec)
    rows = []
    try:
        result = provider.provision("bench")
        with Cluster(result.inventory, provider.ssh_identity) as cluster:
            init_managers(cluster, spec.managers)
            join_workers(cluster, spec.workers)
            leader = cluster.leader()
            client = cluster.engine(leader)
            client.services.create("swarmlab/tiny:latest", command=["sleep", "1000000"], name="load",
                                   mode=ServiceMode("replicated", replicas=0), constraints=["node.role==worker"],
                                   stop_grace_period=1_000_000_000)
            for tasks in args.tasks:
                set_replicas(client.api, "load", tasks)
                deadline = time.monotonic() + 900
                while service_counts(client.api, "load")[0] < tasks and time.monotonic() < deadline:
                    time.sleep(2)
                counter = RequestCounter(client)
                before = counter.count
                swarm_sample(client)
                per_sample = counter.count - before
                idle = cpu_over(cluster, leader, args.seconds)
                observed = cpu_over(cluster, leader, args.seconds, sample=lambda: swarm_sample(client))
                rows.append({"tasks": tasks, "requests": per_sample, "idle": idle, "observed": observed})
                print(f"{tasks} tasks: {per_sample} requests per sample; leader dockerd CPU {idle:.1f}% without "
                      f"the observer, {observed:.1f}% with it (+{observed - idle:.1f} points)", flush=True)
            set_replicas(client.api, "load", 0)
    finally:
        leftovers = provider.lab.down()
        print(f"lab down: leftovers {leftovers.describe()}")

    flat = len({r["requests"] for r in rows}) == 1
    body = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, shared with "
        f"other jobs; 1-minute load average {os.getloadavg()[0]:.0f} at the end); "
        f"`bench/bench_observer.py --tasks {' '.join(map(str, args.tasks))} --seconds {args.seconds:.0f}`; "
        "lab of 1 manager and 2 workers, one sample a second.",
        "",
        "| running tasks | API requests per sample | leader dockerd CPU without observer | with observer | extra |",
        "|---|---|---|---|---|",
        *[f"| {r['tasks']} | {r['requests']} | {r['idle']:.1f}% | {r['observed']:.1f}% | "
          f"{r['observed'] - r['idle']:+.1f} points |" for r in rows],
        "",
        f"Requests per sample are {'the same at every task count' if flat else 'NOT flat'}: one node list, one "
        "service list with status counts, one list of stopped tasks. CPU is in percent of one core; the "
        "difference between two 30 s means on a shared machine is noisy, so read it as an order of magnitude.",
    ]
    print("\n".join(body))
    if args.write:
        update_section(REPO / "docs" / "benchmarks.md", "Observer cost (requests per sample, manager CPU)",
                       "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
