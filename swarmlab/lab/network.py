"""Host-side plumbing of the lab: one bridge, a network namespace and veth pair per node.

Everything made here carries the lab's prefix so that :func:`find_leftovers` can find it again
after a killed run, when no manifest can be trusted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NETNS_DIR = Path("/var/run/netns")
IPTABLES_COMMENT = "swarmlab"


class LabCommandError(RuntimeError):
    """A host command the lab needs (ip, iptables, nsenter) failed."""


def run(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a host command, raising :class:`LabCommandError` with its stderr when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise LabCommandError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class LabNetwork:
    """Names and addresses of one lab: the bridge owns the subnet's first address."""

    prefix: str
    bridge: str
    subnet: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def address(self, slot: int) -> str:
        """Address of the node in ``slot`` (0-based); slot 0 is the subnet's second host."""
        address = self.network.network_address + 2 + slot
        if address >= self.network.broadcast_address:
            raise ValueError(f"slot {slot} is outside {self.subnet}")
        return str(address)

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def veth(self, slot: int) -> str:
        # Interface names are limited to 15 characters, so the host end is named by slot.
        return f"{self.prefix}v{slot}"

    # -- bridge ---------------------------------------------------------------------------

    def ensure_bridge(self) -> None:
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            log.info("lab: created bridge %s (%s)", self.bridge, self.subnet)
        prefixlen = self.network.prefixlen
        existing = run(["ip", "-j", "addr", "show", "dev", self.bridge]).stdout
        if f'"{self.gateway}"' not in existing:
            run(["ip", "addr", "add", f"{self.gateway}/{prefixlen}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        self._ensure_forward_rule()

    def _forward_rule(self) -> list[str]:
        return [
            "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT",
            "-m", "comment", "--comment", f"{IPTABLES_COMMENT}:{self.bridge}",
        ]

    def _ensure_forward_rule(self) -> None:
        # Bridged frames pass the host's iptables FORWARD chain (bridge-nf-call-iptables), whose
        # policy a host dockerd sets to DROP; without this rule swarm joins time out.
        if run(["iptables", "-C", *self._forward_rule()], check=False).returncode != 0:
            run(["iptables", "-I", *self._forward_rule()])

    # -- nodes ----------------------------------------------------------------------------

    def add_node(self, node: str, slot: int) -> str:
        """Create the node's namespace and veth pair (idempotent) and return its address."""
        netns = self.netns(node)
        veth = self.veth(slot)
        address = self.address(slot)
        if not (NETNS_DIR / netns).exists():
            run(["ip", "netns", "add", netns])
        if not Path(f"/sys/class/net/{veth}").exists():
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        in_ns = ["ip", "-n", netns]
        run([*in_ns, "link", "set", "lo", "up"])
        addresses = run([*in_ns, "-j", "addr", "show", "dev", "eth0"]).stdout
        if f'"{address}"' not in addresses:
            run([*in_ns, "addr", "add", f"{address}/{self.network.prefixlen}", "dev", "eth0"])
        run([*in_ns, "link", "set", "eth0", "up"])
        # No default route on purpose: lab nodes reach each other and the host, nothing else.
        return address

    def set_link(self, slot: int, up: bool) -> None:
        run(["ip", "link", "set", self.veth(slot), "up" if up else "down"])

    def remove_node(self, node: str, slot: int | None) -> None:
        netns = self.netns(node)
        if slot is not None and Path(f"/sys/class/net/{self.veth(slot)}").exists():
            run(["ip", "link", "del", self.veth(slot)], check=False)
        if (NETNS_DIR / netns).exists():
            run(["ip", "netns", "del", netns], check=False)

    def remove_bridge(self) -> None:
        while run(["iptables", "-C", *self._forward_rule()], check=False).returncode == 0:
            run(["iptables", "-D", *self._forward_rule()], check=False)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            run(["ip", "link", "del", self.bridge], check=False)


ARP_THRESHOLD_KEY = "net.ipv4.neigh.default.gc_thresh{}"


def neighbour_table_needs(nodes: int) -> dict[str, int]:
    """Return the ARP table limits (gc_thresh2 and gc_thresh3) that ``nodes`` lab nodes need.

    Every network namespace shares the kernel's one ARP table and its limits (512 and 1024 by
    default), so a full mesh of N lab nodes needs about N*(N+1) entries where N droplets need N
    each. Past the limit the kernel drops new entries ("neighbor table overflow") and
    connections to nodes time out.
    """
    # NOTE: the entries in use count other labs' as they are now. When one of them grows later,
    # it raises the limits again as it boots its nodes.
    needed = nodes * (nodes + 1) + _arp_entries()
    # Rounded up to whole thousands so that the values read well in the tuning record.
    return {ARP_THRESHOLD_KEY.format(2): -(-needed // 1000) * 1000,
            ARP_THRESHOLD_KEY.format(3): -(-2 * needed // 1000) * 1000}


def read_sysctl(key: str) -> str:
    return " ".join(Path("/proc/sys", *key.split(".")).read_text().split())


def _arp_entries() -> int:
    rows = Path("/proc/net/stat/arp_cache").read_text().split("\n")
    header, first = rows[0].split(), rows[1].split()
    return int(first[header.index("entries")], 16)


def netns_pids(netns: str) -> list[int]:
    """PIDs of every process whose network namespace is ``netns``."""
    result = run(["ip", "netns", "pids", netns], check=False)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


@dataclass
class Leftovers:
    """What a lab left on the host; empty after a clean ``lab down``."""

    namespaces: list[str]
    links: list[str]
    bridges: list[str]
    iptables_rules: list[str]
    processes: list[int]
    folders: list[str]
    cgroups: list[str]

    def empty(self) -> bool:
        return not any(
            (self.namespaces, self.links, self.bridges, self.iptables_rules, self.processes,
             self.folders, self.cgroups)
        )

    def describe(self) -> str:
        parts = [f"{name}: {', '.join(map(str, items))}" for name, items in self.__dict__.items() if items]
        return "; ".join(parts) or "nothing"


def list_links(prefix: str) -> list[str]:
    data = json.loads(run(["ip", "-j", "link", "show"]).stdout or "[]")
    return [item["ifname"] for item in data if item["ifname"].startswith(f"{prefix}v")]


def list_namespaces(prefix: str) -> list[str]:
    if not NETNS_DIR.exists():
        return []
    return sorted(path.name for path in NETNS_DIR.iterdir() if path.name.startswith(f"{prefix}-"))


def list_iptables_rules(bridge: str) -> list[str]:
    rules = run(["iptables", "-S", "FORWARD"], check=False).stdout.splitlines()
    return [rule for rule in rules if f"{IPTABLES_COMMENT}:{bridge}" in rule]
