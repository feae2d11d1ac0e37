"""The local lab: real dockerd nodes in network namespaces on this machine, reached over SSH.

Needs root. Every node gets a network namespace on one bridge, its own sshd and dockerd, its own
hostname and a generated SSH host key that the inventory pins. :meth:`Lab.down` removes everything
the lab made, and finds leftovers of a killed run by their names even when its state is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from swarmlab import failpoints
from swarmlab.inventory import Node
from swarmlab.lab import images
from swarmlab.lab.network import (
    LabNetwork,
    Leftovers,
    list_iptables_rules,
    list_links,
    list_namespaces,
    neighbour_table_needs,
    netns_pids,
    read_sysctl,
    run,
)
from swarmlab.lab.node import LabNode, NodeState, cgroup_dirs, kill_cgroup_tree
from swarmlab.spec import LabSettings

log = logging.getLogger(__name__)

__all__ = ["Lab", "LabError", "NodePlan"]


class LabError(RuntimeError):
    """The lab cannot do what was asked (not root, in use by another run, a node failed to boot)."""


@dataclass(frozen=True)
class NodePlan:
    name: str
    role: str
    index: int
    slot: int


class Lab:
    """All lab nodes under one prefix; ``settings`` come from the spec's ``provider.lab``."""

    def __init__(self, settings: LabSettings):
        self.settings = settings
        self.network = LabNetwork(settings.prefix, settings.bridge, settings.subnet)
        self.root = Path(settings.state_dir) / settings.prefix
        self.cgroup_root = f"/swarmlab-{settings.prefix}"

    # -- paths ----------------------------------------------------------------------------

    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    @property
    def client_key(self) -> Path:
        """Private key the pipeline uses to reach lab nodes over SSH."""
        return self.root / "client_ed25519"

    def node(self, name: str) -> LabNode:
        return LabNode(name, self.nodes_dir / name, self.network.netns(name), f"{self.cgroup_root}/{name}")

    # -- life cycle -----------------------------------------------------------------------

    def check_host(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab provider needs root (network namespaces, bridges, iptables); run as root")
        missing = [tool for tool in ("dockerd", "sshd", "ip", "iptables", "nsenter", "unshare", "ssh-keygen")
                   if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
        if missing:
            raise LabError(
                f"missing host tools: {', '.join(missing)}; install docker.io openssh-server iproute2 iptables"
            )

    @property
    def marker(self) -> Path:
        """File that marks the lab folder as made by the lab, so `down` never deletes another folder."""
        return self.root / ".swarmlab-lab"

    def ensure_base(self) -> None:
        """Create the lab folder, the client key and the bridge (idempotent)."""
        self.check_host()
        if self.root.exists() and not self.marker.exists() and not self.client_key.exists():
            raise LabError(f"{self.root} exists but was not made by the lab; choose another provider.lab.prefix "
                           "or state_dir")
        if not Path(f"/sys/class/net/{self.settings.bridge}").exists():
            self.check_subnet_free()
        self.nodes_dir.mkdir(parents=True, exist_ok=True)
        self.marker.write_text("made by swarmlab.lab; `python -m swarmlab.lab down` removes this folder\n")
        os.chmod(self.root, 0o700)
        if not self.client_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "swarmlab-client", "-f", str(self.client_key)])
        self.network.ensure_bridge()

    def check_subnet_free(self) -> None:
        """Reject a subnet that overlaps an address or route already on the host (another lab, eth0)."""
        import ipaddress
        import json as json_module

        requested = ipaddress.IPv4Network(self.settings.subnet)
        routes = json_module.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
        for route in routes:
            destination = route.get("dst", "")
            if destination in ("default", ""):
                continue
            if "/" not in destination:
                destination = f"{destination}/32"
            try:
                network = ipaddress.IPv4Network(destination, strict=False)
            except ValueError:
                continue
            if network.overlaps(requested) and route.get("dev") != self.settings.bridge:
                raise LabError(
                    f"provider.lab.subnet {requested} overlaps {network} on {route.get('dev')}, already on this host; "
                    "choose another subnet"
                )

    def states(self) -> list[NodeState]:
        if not self.nodes_dir.exists():
            return []
        found = []
        for folder in sorted(self.nodes_dir.iterdir()):
            if (folder / "node.json").exists():
                found.append(NodeState.load(folder))
        return found

    def up(self, plans: list[NodePlan], run_id: str, experiment: str, tiny_image: bool = True,
           extra_images: tuple[images.ImageRecipe, ...] = (), concurrency: int = 8,
           engines: bool = True) -> list[NodeState]:
        """Boot the planned nodes that are not running yet and return the state of every planned node.

        ``engines=False`` boots SSH-only hosts (no dockerd, no images), for fan-out benchmarks.
        """
        self.ensure_base()
        others = {s.run_id for s in self.states() if s.run_id != run_id}
        if others:
            raise LabError(
                f"lab {self.settings.prefix!r} is in use by run(s) {', '.join(sorted(others))}: resume that run "
                "with `python -m flows.swarm3k --run-id ID`, or remove it with `python -m flows.teardown`"
            )
        if engines:
            # SSH-only hosts talk to the host alone, so they need no more than the default limits.
            self.ensure_neighbour_table(len({s.name for s in self.states()} | {p.name for p in plans}))
        public_key = self.client_key.with_suffix(".pub").read_text()
        recipes: tuple[images.ImageRecipe, ...] = ()
        if engines:
            recipes = tuple(extra_images)
            if tiny_image:
                recipes = (images.TINY, *recipes)
        tars = {recipe.reference: images.cached_tar(recipe, self.root / "images") for recipe in recipes}

        def boot(plan: NodePlan) -> NodeState:
            node = self.node(plan.name)
            address = self.network.add_node(plan.name, plan.slot)
            host_key = node.prepare(address, public_key, engine=engines)
            state = NodeState(plan.name, plan.role, plan.index, plan.slot, address, run_id, experiment, host_key)
            state.save(node.folder)
            node.start()
            node.wait_ready(self.settings.node_boot_timeout)
            for recipe in recipes:
                images.import_image(node.docker_socket, recipe, tars[recipe.reference])
            failpoints.reach("during:provision")
            return state

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = {plan.name: pool.submit(boot, plan) for plan in plans}
        failures = {name: f.exception() for name, f in futures.items() if f.exception() is not None}
        if failures:
            details = "; ".join(f"{name}: {error}" for name, error in sorted(failures.items()))
            raise LabError(f"{len(failures)} of {len(plans)} lab nodes failed to boot: {details}")
        return [futures[plan.name].result() for plan in plans]

    def import_images(self, recipes: tuple[images.ImageRecipe, ...], names: list[str] | None = None) -> int:
        """Import extra images into running nodes (all by default); returns how many imports ran."""
        tars = {recipe.reference: images.cached_tar(recipe, self.root / "images") for recipe in recipes}
        targets = [s.name for s in self.states() if names is None or s.name in names]

        def load(name: str) -> int:
            node = self.node(name)
            return sum(images.import_image(node.docker_socket, r, tars[r.reference]) for r in recipes)

        with ThreadPoolExecutor(max_workers=4) as pool:
            return sum(pool.map(load, targets))

    def is_running(self, name: str) -> bool:
        node = self.node(name)
        return bool(node.sshd_pid and (node.dockerd_pid or not node.has_engine))

    def to_node(self, state: NodeState) -> Node:
        return Node(
            name=state.name, role=state.role, index=state.index, address=state.address,
            advertise_address=state.address, provider_id=f"lab:{state.name}", host_keys=(state.host_key,),
            labels={"run_id": state.run_id, "slot": str(state.slot)},
        )

    def destroy_node(self, name: str) -> None:
        folder = self.nodes_dir / name
        slot = NodeState.load(folder).slot if (folder / "node.json").exists() else None
        self.node(name).stop()
        self.network.remove_node(name, slot)
        shutil.rmtree(folder, ignore_errors=True)

    # -- host-wide kernel settings --------------------------------------------------------

    def ensure_neighbour_table(self, nodes: int) -> None:
        """Raise the host's ARP table limits so that ``nodes`` nodes in one kernel can reach each other.

        The original values come back when the last lab goes down, as for the tuning phase's.
        """
        needs = neighbour_table_needs(nodes)
        original: dict[str, str] = {}
        if self.host_sysctls_file.exists():
            with _host_lock(self.host_sysctls_file):
                original = _read_shared(self.host_sysctls_file)["original"]
        # The needs are compared with the values from before any lab changed them. A lab that needs
        # more registers as a user even when another lab raised the limits far enough already, so
        # that the other lab's teardown does not restore them under this one.
        if all(needs[key] <= int(original.get(key, read_sysctl(key))) for key in needs):
            return
        values = {key: str(max(needs[key], int(read_sysctl(key)))) for key in needs}
        before = self.set_host_sysctls(values)
        settings = ", ".join(f"{key.rsplit('.', 1)[1]}={value}" for key, value in values.items())
        if all(before[key] == value for key, value in values.items()):
            log.info("lab: %d nodes share the host's ARP table; keeping %s, set by an earlier lab", nodes, settings)
        else:
            log.info("lab: %d nodes share the host's ARP table; set %s (were %s)", nodes, settings,
                     ", ".join(before[key] for key in values))

    @property
    def host_sysctls_file(self) -> Path:
        # One file for every lab on the machine: the host kernel is one, so the original values
        # are saved by the first lab that changes them and restored when the last lab goes down.
        return Path(self.settings.state_dir) / "host-sysctls.json"

    def set_host_sysctls(self, values: dict[str, str]) -> dict[str, str]:
        """Set kernel-wide sysctls on the host once, remembering the original values for :meth:`down`."""
        with _host_lock(self.host_sysctls_file):
            shared = _read_shared(self.host_sysctls_file)
            before = {}
            for key, value in values.items():
                path = Path("/proc/sys", *key.split("."))
                current = " ".join(path.read_text().split())
                before[key] = current
                shared["original"].setdefault(key, current)
                if self.settings.prefix not in shared["labs"]:
                    shared["labs"].append(self.settings.prefix)
                _write_shared(self.host_sysctls_file, shared)
                path.write_text(str(value))
        return before

    def restore_host_sysctls(self) -> dict[str, str]:
        """Forget this lab's use of the host sysctls; the last lab to go restores the original values."""
        if not self.host_sysctls_file.exists():
            return {}
        with _host_lock(self.host_sysctls_file):
            shared = _read_shared(self.host_sysctls_file)
            if self.settings.prefix in shared["labs"]:
                shared["labs"].remove(self.settings.prefix)
            if shared["labs"]:
                _write_shared(self.host_sysctls_file, shared)
                return {}
            for key, value in shared["original"].items():
                Path("/proc/sys", *key.split(".")).write_text(value)
            self.host_sysctls_file.unlink()
            self.host_sysctls_file.with_suffix(".lock").unlink(missing_ok=True)
            return shared["original"]

    # -- teardown -------------------------------------------------------------------------

    def leftovers(self) -> Leftovers:
        namespaces = list_namespaces(self.settings.prefix)
        processes = sorted({pid for ns in namespaces for pid in netns_pids(ns)})
        bridge = [self.settings.bridge] if Path(f"/sys/class/net/{self.settings.bridge}").exists() else []
        return Leftovers(
            namespaces=namespaces,
            links=list_links(self.settings.prefix),
            bridges=bridge,
            iptables_rules=list_iptables_rules(self.settings.bridge),
            processes=processes,
            folders=[str(self.root)] if self.marker.exists() else [],
            cgroups=[str(p) for p in cgroup_dirs(self.cgroup_root)],
        )

    def down(self) -> Leftovers:
        """Remove every node, link, namespace, rule, process, cgroup and folder of this lab.

        Works from names alone, so it also cleans up after a killed run whose state is lost.
        Returns what was still there afterwards (empty on success).
        """
        names = {s.name for s in self.states()}
        names |= {ns.removeprefix(f"{self.settings.prefix}-") for ns in list_namespaces(self.settings.prefix)}
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda name: self.node(name).stop(), sorted(names)))
        for name in sorted(names):
            self.network.remove_node(name, None)
        for link in list_links(self.settings.prefix):
            run(["ip", "link", "del", link], check=False)
        kill_cgroup_tree(self.cgroup_root)
        self.restore_host_sysctls()
        self.network.remove_bridge()
        if self.marker.exists() or self.client_key.exists():
            # A folder with the lab's client key predates the marker file; it is the lab's too.
            _remove_tree(self.root)
        elif self.root.exists():
            log.warning("lab: %s was not made by the lab (no %s); left in place", self.root, self.marker.name)
        remaining = self.leftovers()
        log.info("lab: down in %.1fs, %d nodes removed, leftovers: %s",
                 time.monotonic() - started, len(names), remaining.describe())
        return remaining


@contextlib.contextmanager
def _host_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read_shared(path: Path) -> dict:
    if not path.exists():
        return {"original": {}, "labs": []}
    return json.loads(path.read_text())


def _write_shared(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def _remove_tree(path: Path) -> None:
    # dockerd leaves overlay and netns mounts under its data root when it is killed; unmount
    # them first or rmtree fails with EBUSY.
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(path))), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
