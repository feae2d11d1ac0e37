"""Tuning: apply the spec's sysctls, read them back, and record the ARP cache overflow counters.

The neighbour-table thresholds (``net.ipv4.neigh.default.gc_thresh1/2/3``) and
``/proc/net/stat/arp_cache`` exist once per kernel. Where all nodes share one kernel (the lab),
the provider reports it, so those keys are set once on the host. Everything else is per node.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

from swarmlab import failpoints
from swarmlab.cluster import Cluster
from swarmlab.phases import PhaseFailed
from swarmlab.spec import KERNEL_WIDE_SYSCTL_PREFIXES, TuningSpec

log = logging.getLogger(__name__)

PERSIST_FILE = "/etc/sysctl.d/60-swarmlab.conf"


def parse_arp_cache(text: str) -> dict[str, int]:
    """Sum the per-CPU hexadecimal counters of ``/proc/net/stat/arp_cache`` by column name."""
    lines = [line.split() for line in text.strip().splitlines()]
    if len(lines) < 2:
        return {}
    header = lines[0]
    totals = dict.fromkeys(header, 0)
    for row in lines[1:]:
        for name, value in zip(header, row, strict=False):
            totals[name] += int(value, 16)
    # `entries` is a table-wide gauge repeated on every CPU line, not a per-CPU counter.
    if "entries" in totals and len(lines) > 1:
        totals["entries"] = int(lines[1][header.index("entries")], 16)
    return totals


ARP_CACHE_FILE = "/proc/net/stat/arp_cache"


def sysctl_path(key: str) -> str:
    """Return the /proc/sys file of a dotted sysctl key (keys are validated to contain no slash)."""
    return "/proc/sys/" + key.replace(".", "/")


def node_script(sysctls: dict[str, str], persist: bool) -> str:
    """Return a shell script that reads, writes and reads back every key with two ``grep`` processes.

    The output has a ``BEFORE`` and an ``AFTER`` section of ``path:value`` lines (the ARP cache
    counters are in ``AFTER``) and one ``RC key status`` line per write; :func:`parse_node_output`
    reads it. Writes go through the shell's ``printf`` builtin. Processes per key (``sysctl -n``
    piped to ``tr`` twice, and ``sysctl -w``) would cost about 8 ms of CPU per key on each node,
    against about 27 ms for the SSH connection itself (bench/bench_fanout.py on lab hosts).
    """
    paths = " ".join(shlex.quote(sysctl_path(key)) for key in sysctls)
    lines = []
    if sysctls:
        lines.append(f"echo BEFORE; grep -H . {paths}")
    for key, value in sysctls.items():
        # dash's `read` takes one byte at a time, and a sysctl file returns end-of-file after the
        # first byte. So reads go through grep, and only writes use the builtin.
        lines.append(f"printf '%s\\n' {shlex.quote(str(value))} > {shlex.quote(sysctl_path(key))}; echo RC {key} $?")
    if persist and sysctls:
        body = "\\n".join(f"{key} = {value}" for key, value in sysctls.items())
        lines.append(f"printf '{body}\\n' > {PERSIST_FILE}")
    lines.append(f"echo AFTER; grep -H . {paths} {ARP_CACHE_FILE}")
    # Unreadable keys show up as missing values, so the exit status carries no verdict.
    lines.append("exit 0")
    return "\n".join(lines)


def parse_node_output(stdout: str, sysctls: dict[str, str]) -> tuple[dict[str, dict], str]:
    """Split :func:`node_script` output into per-key ``before``/``after``/``rc`` and the ARP cache text.

    A value the node could not read (no such key, write-only key) is ``None``; a write that did
    not run has ``rc`` ``None``.
    """
    read: dict[str, dict[str, list[str]]] = {"BEFORE": {}, "AFTER": {}}
    rcs: dict[str, int] = {}
    arp_lines: list[str] = []
    section = None
    for line in stdout.splitlines():
        if line in read:
            section = line
            continue
        if line.startswith("RC "):
            _, key, status = line.split()
            rcs[key] = int(status)
            continue
        path, colon, value = line.partition(":")
        if not colon or section is None:
            continue
        if path == ARP_CACHE_FILE:
            arp_lines.append(value)
        else:
            read[section].setdefault(path, []).append(value)

    def value_of(section: str, key: str) -> str | None:
        found = read[section].get(sysctl_path(key))
        return _normalise(" ".join(found)) if found else None

    values = {
        key: {"before": value_of("BEFORE", key), "after": value_of("AFTER", key), "rc": rcs.get(key)}
        for key in sysctls
    }
    return values, "\n".join(arp_lines)


def _normalise(value) -> str:
    return " ".join(str(value).split())


def apply_tuning(cluster: Cluster, spec: TuningSpec, host_tuner=None) -> dict:
    """Apply the sysctls on every node (kernel-wide ones through ``host_tuner`` when it is given).

    ``host_tuner`` is the provider's hook for a shared kernel: ``host_tuner(values) -> before``.
    """
    started = time.monotonic()
    wanted = {key: _normalise(value) for key, value in spec.sysctls.items()}
    kernel_wide = {k: v for k, v in wanted.items() if k.startswith(KERNEL_WIDE_SYSCTL_PREFIXES)}
    per_node = dict(wanted)
    host: dict = {}
    if host_tuner is not None and kernel_wide:
        arp_before = read_host_arp_cache()
        before = host_tuner(kernel_wide)
        after = {key: _normalise(Path("/proc/sys", *key.split(".")).read_text()) for key in kernel_wide}
        host = {
            "values": {key: {"before": before[key], "after": after[key]} for key in kernel_wide},
            "arp_cache_before": arp_before,
            "arp_cache_after": read_host_arp_cache(),
        }
        per_node = {k: v for k, v in wanted.items() if k not in kernel_wide}
        log.info("tuning: %d kernel-wide sysctls set once on the shared host kernel", len(kernel_wide))

    persist = spec.persist and host_tuner is None
    script = node_script(per_node, persist)
    fan_out = cluster.ssh.run_many(cluster.inventory.nodes, f"sh -c {shlex.quote(script)}", timeout=60)
    failpoints.reach("during:tuning")
    nodes: dict[str, dict] = {}
    mismatches: list[str] = []
    for node in cluster.inventory.nodes:
        outcome = fan_out.results.get(node.name)
        if not hasattr(outcome, "stdout"):
            continue
        values, arp_text = parse_node_output(outcome.stdout, per_node)
        for key, item in values.items():
            if item["after"] is None:
                mismatches.append(f"{node.name}: reading {key} back failed: {outcome.stderr.strip()[:200]}")
            elif item["after"] != per_node[key]:
                mismatches.append(f"{node.name}: {key} is {item['after']!r}, wanted {per_node[key]!r}")
        nodes[node.name] = {"values": values, "arp_cache": parse_arp_cache(arp_text) if arp_text.strip() else None}

    failed = {name: str(err) for name, err in fan_out.failed.items()}
    log.info(
        "tuning: %d/%d nodes tuned, %d failed, %d values not applied; %.1fs wall, %.2fs client CPU",
        len(fan_out.succeeded),
        len(cluster.inventory.nodes),
        len(failed),
        len(mismatches),
        fan_out.seconds,
        fan_out.client_cpu_seconds,
    )
    result = {
        "status": "completed",
        "seconds": round(time.monotonic() - started, 3),
        "kernel_wide_on_host": bool(host),
        "host": host,
        "nodes": nodes,
        "failed": failed,
        "mismatches": mismatches,
        "persisted": persist,
        "fan_out_seconds": round(fan_out.seconds, 3),
        "fan_out_client_cpu_seconds": round(fan_out.client_cpu_seconds, 3),
    }
    if failed or mismatches:
        result["status"] = "failed"
        raise PhaseFailed(
            f"tuning: {len(failed)} nodes failed and {len(mismatches)} values were not applied: "
            f"{(list(failed.items()) + mismatches)[:3]}; check tuning.sysctls",
            result,
        )
    return result


def read_host_arp_cache() -> dict[str, int] | None:
    path = Path("/proc/net/stat/arp_cache")
    return parse_arp_cache(path.read_text()) if path.exists() else None
