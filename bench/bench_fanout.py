"""Tuning fan-out on N lab hosts: swarmlab's SSH pool against Ansible and parallel-ssh, same run.

    .venv/bin/python bench/bench_fanout.py --hosts 100 --repeat 5 --write

Boots N SSH-only lab hosts (network namespaces with sshd, no dockerd), then times the tuning phase's
SSH work (set and read back two sysctls, read the ARP counters) three ways on the same hosts,
interleaved: swarmlab's ``apply_tuning`` (paramiko pool, 50 at a time, fresh connections each
repeat), Ansible ad-hoc ``command`` with forks=50, and parallel-ssh with a pool of 50. Prints
medians, client CPU per host, server CPU per host (every process under the hosts' sshd, counted
by a cpuacct cgroup) and the ratios; ``--write`` updates docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402
from swarmlab.cluster import Cluster  # noqa: E402
from swarmlab.inventory import Inventory  # noqa: E402
from swarmlab.lab import Lab, NodePlan  # noqa: E402
from swarmlab.phases.tuning import apply_tuning  # noqa: E402
from swarmlab.spec import LabSettings, TuningSpec  # noqa: E402

SYSCTLS = {"net.core.somaxconn": 4096, "net.ipv4.tcp_fin_timeout": 30}
COMMAND = "sysctl -w net.core.somaxconn=4096 net.ipv4.tcp_fin_timeout=30 && cat /proc/net/stat/arp_cache || true"


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class ServerCPU:
    """CPU seconds of the hosts' sshd and everything it starts, from a cgroup the listeners move into.

    The cgroup sits under the lab's cgroup root, so ``Lab.down`` removes it. Reads None when the
    machine has neither a cgroup v1 cpuacct hierarchy nor cgroup v2.
    """

    def __init__(self, lab: Lab):
        root = Path("/sys/fs/cgroup")
        relative = lab.cgroup_root.strip("/") + "/sshd"
        if (root / "cgroup.controllers").exists():
            self.folder, self.v2 = root / relative, True
        elif (root / "cpuacct").is_dir():
            self.folder, self.v2 = root / "cpuacct" / relative, False
        else:
            self.folder, self.v2 = None, False

    def adopt(self, pids: list[int]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for pid in pids:
            (self.folder / "cgroup.procs").write_text(str(pid))

    def seconds(self) -> float | None:
        if self.folder is None:
            return None
        if self.v2:
            stat = dict(line.split() for line in (self.folder / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        return int((self.folder / "cpuacct.usage").read_text()) / 1e9


def run_swarmlab(inventory: Inventory, identity: Path) -> tuple[float, float]:
    started, cpu = time.monotonic(), cpu_self()
    with Cluster(inventory, identity, ssh_concurrency=50) as cluster:
        result = apply_tuning(cluster, TuningSpec(sysctls=SYSCTLS, persist=False))
    assert result["status"] == "completed" and not result["failed"], result["failed"]
    return time.monotonic() - started, cpu_self() - cpu


def run_ansible(folder: Path, hosts: int) -> tuple[float, float]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(folder / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(folder / "tmp"),
           "ANSIBLE_HOME": str(folder / "home")}
    started, cpu = time.monotonic(), cpu_children()
    result = subprocess.run([str(REPO / ".venv/bin/ansible"), "all", "-i", str(folder / "inventory.ini"),
                             "-m", "command", "-a", "sysctl -w net.core.somaxconn=4096 net.ipv4.tcp_fin_timeout=30",
                             "-f", "50", "-o"], capture_output=True, text=True, env=env, timeout=900)
    elapsed, used = time.monotonic() - started, cpu_children() - cpu
    ok = result.stdout.count("CHANGED") + result.stdout.count("SUCCESS")
    assert ok == hosts, f"ansible: {ok}/{hosts} hosts succeeded: {result.stdout[-800:]} {result.stderr[-800:]}"
    return elapsed, used


def run_pssh(addresses: list[str], identity: Path) -> tuple[float, float]:
    from pssh.clients import ParallelSSHClient

    started, cpu = time.monotonic(), cpu_self()
    client = ParallelSSHClient(addresses, user="root", pkey=str(identity), pool_size=50, num_retries=1, timeout=60)
    output = client.run_command(COMMAND)
    client.join(output)
    failed = [o.host for o in output if o.exit_code != 0]
    del client
    assert not failed, f"parallel-ssh failed on {failed[:5]}"
    return time.monotonic() - started, cpu_self() - cpu


def write_ansible_files(folder: Path, inventory: Inventory, identity: Path) -> None:
    (folder / "tmp").mkdir(exist_ok=True)
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("".join(f"{n.address} {key}\n" for n in inventory.nodes for key in n.host_keys))
    lines = ["[lab]"] + [f"{n.name} ansible_host={n.address}" for n in inventory.nodes]
    (folder / "inventory.ini").write_text("\n".join(lines) + "\n")
    (folder / "ansible.cfg").write_text(
        "[defaults]\nhost_key_checking = True\nforks = 50\ninterpreter_python = /usr/bin/python3\n"
        f"private_key_file = {identity}\nremote_user = root\n"
        "[ssh_connection]\n"
        # No ControlPersist: its master processes would hold the lab's namespaces after the run.
        f"ssh_args = -o ControlMaster=no -o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes\n"
        "pipelining = True\n"
    )


def boot(lab: Lab, hosts: int) -> Inventory:
    plans = [NodePlan(f"b{i}", "worker", i, i - 1) for i in range(1, hosts + 1)]
    started = time.monotonic()
    states = lab.up(plans, "bench", "bench", engines=False, concurrency=16)
    print(f"booted {hosts} SSH-only hosts in {time.monotonic() - started:.1f}s", flush=True)
    return Inventory(tuple(lab.to_node(s) for s in states))


def median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=100, help="number of SSH-only lab hosts (default 100)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per tool (default 5)")
    parser.add_argument("--quick", action="store_true", help="3 runs per tool instead of --repeat")
    parser.add_argument("--prefix", default="swq", help="lab prefix, also the bridge name's stem (default swq)")
    parser.add_argument("--subnet", default="10.213.32.0/24", help="lab subnet (default 10.213.32.0/24)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    repeat = 3 if args.quick else args.repeat

    lab = Lab(LabSettings(prefix=args.prefix, bridge=f"{args.prefix}0", subnet=args.subnet))
    times: dict[str, list[float]] = {"swarmlab": [], "ansible": [], "parallel-ssh": []}
    cpus: dict[str, list[float]] = {name: [] for name in times}
    server: dict[str, list[float | None]] = {name: [] for name in times}
    loads = [os.getloadavg()[0]]
    try:
        inventory = boot(lab, args.hosts)
        addresses = [n.address for n in inventory.nodes]
        server_cpu = ServerCPU(lab)
        server_cpu.adopt([lab.node(n.name).sshd_pid for n in inventory.nodes])
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_ansible_files(folder, inventory, lab.client_key)
            for round_number in range(1, repeat + 1):
                for name, run in (("swarmlab", lambda: run_swarmlab(inventory, lab.client_key)),
                                  ("ansible", lambda: run_ansible(folder, args.hosts)),
                                  ("parallel-ssh", lambda: run_pssh(addresses, lab.client_key))):
                    before = server_cpu.seconds()
                    wall, cpu = run()
                    # Sessions end after the client sees the exit status; let sshd reap them.
                    time.sleep(1)
                    after = server_cpu.seconds()
                    used = None if before is None or after is None else after - before
                    times[name].append(wall)
                    cpus[name].append(cpu)
                    server[name].append(used)
                    print(f"round {round_number}: {name:13s} {wall:6.2f}s wall, {cpu:6.2f}s client CPU, "
                          f"{'n/a' if used is None else f'{used:.2f}s'} server CPU", flush=True)
                loads.append(os.getloadavg()[0])
    finally:
        leftovers = lab.down()
        print(f"lab down: leftovers {leftovers.describe()}")

    median = {name: statistics.median(values) for name, values in times.items()}
    cpu_per_host = {name: statistics.median(values) / args.hosts * 1000 for name, values in cpus.items()}
    server_per_host = {name: (None if (m := median_or_none(values)) is None else m / args.hosts * 1000)
                       for name, values in server.items()}
    vs_ansible = median["ansible"] / median["swarmlab"]
    vs_pssh = median["swarmlab"] / median["parallel-ssh"]
    rows = [f"| {name} | {median[name]:.2f} s | {cpu_per_host[name]:.1f} ms | {ms(server_per_host[name])} |"
            for name in times]
    command = f"bench/bench_fanout.py --hosts {args.hosts} --repeat {repeat}"
    summary = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{platform.machine()}), {args.hosts} SSH-only lab hosts, medians of {repeat} interleaved runs, "
        f"1-minute load average {min(loads):.1f} to {max(loads):.1f} during the run (other jobs shared the "
        f"machine); `{command}`.",
        "",
        "| tool | wall time | client CPU per host | server CPU per host (sshd and the command) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"ratio: swarmlab is {vs_ansible:.1f}x faster than Ansible (target: at least 3x) and takes "
        f"{vs_pssh:.2f}x parallel-ssh's time (target: within 1.5x).",
        "",
        "Client and hosts share the same cores, so wall time is about the sum of client and server CPU "
        "divided by the cores. parallel-ssh here does not check host keys; swarmlab and Ansible pin them.",
    ]
    print("\n".join(summary))
    if args.write:
        update_section(REPO / "docs" / "benchmarks.md", "SSH fan-out (tuning phase)", "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
