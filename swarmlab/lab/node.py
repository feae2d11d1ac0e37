"""One lab node: sshd and dockerd in the node's own network, mount and UTS namespaces.

A node feels like a droplet: ``ssh root@ADDRESS docker ...`` talks to that node's engine, because
sshd and dockerd share a private mount namespace with its own tmpfs on ``/run`` (dockerd's default
socket, pid file and containerd paths are then per node) and a UTS namespace with the node's
hostname. The host reaches each engine directly through a second socket in the node folder, which
the lab uses only for set-up work (importing images, fault injection).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from swarmlab.lab.network import NETNS_DIR, LabCommandError, netns_pids, run

log = logging.getLogger(__name__)

SSHD_CONFIG = """\
Port 22
ListenAddress {address}
HostKey {folder}/ssh_host_ed25519_key
PidFile {folder}/sshd.pid
PermitRootLogin prohibit-password
AuthorizedKeysFile {folder}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 500:30:1000
MaxSessions 200
# The node's sessions use Debian's docker CLI, which matches the node's dockerd.
SetEnv PATH=/usr/sbin:/usr/bin:/sbin:/bin
"""

BOOT_SCRIPT = """\
set -e
mount -t tmpfs -o mode=0755 swarmlab-run /run
mkdir -p /run/sshd /run/lock
# The node gets its own, empty home for root. Otherwise the host's /root/.bashrc, which Debian's
# bash reads for every command that sshd starts, runs on each command of each node.
mount --bind {folder}/home /root
hostname {name}
ln -sf {folder}/dockerd.pid /run/docker.pid
/usr/sbin/sshd -f {folder}/sshd_config -E {folder}/sshd.log
DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 setsid dockerd \\
  --config-file {folder}/daemon.json \\
  --data-root {folder}/docker \\
  --pidfile {folder}/dockerd.pid \\
  --cgroup-parent {cgroup_parent} \\
  --bip 172.31.255.1/24 \\
  -H unix:///run/docker.sock -H unix://{folder}/docker.sock \\
  >{folder}/dockerd.log 2>&1 </dev/null &
"""


@dataclass(frozen=True)
class NodeState:
    """A node's record in ``nodes/<name>/node.json``: name, role, slot, address, run and host key."""

    name: str
    role: str
    index: int
    slot: int
    address: str
    run_id: str
    experiment: str
    host_key: str

    def save(self, folder: Path) -> None:
        (folder / "node.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> NodeState:
        return cls(**json.loads((folder / "node.json").read_text()))


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


class LabNode:
    """Processes and files of one node, in ``folder``."""

    def __init__(self, name: str, folder: Path, netns: str, cgroup_parent: str):
        self.name = name
        self.folder = folder
        self.netns = netns
        self.cgroup_parent = cgroup_parent

    @property
    def docker_socket(self) -> Path:
        return self.folder / "docker.sock"

    @property
    def dockerd_pid(self) -> int | None:
        return read_pid(self.folder / "dockerd.pid")

    @property
    def sshd_pid(self) -> int | None:
        return read_pid(self.folder / "sshd.pid")

    def prepare(self, address: str, client_public_key: str, engine: bool = True) -> str:
        """Write the node's configuration and host key (kept if present); return the public host key."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder / "ssh_host_ed25519_key"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.name}-host", "-f", str(key)])
        (self.folder / "sshd_config").write_text(SSHD_CONFIG.format(address=address, folder=self.folder))
        authorized = self.folder / "authorized_keys"
        authorized.write_text(client_public_key.strip() + "\n")
        authorized.chmod(0o600)
        (self.folder / "daemon.json").write_text("{}\n")
        (self.folder / "home").mkdir(mode=0o700, exist_ok=True)
        boot = BOOT_SCRIPT.format(name=self.name, folder=self.folder, cgroup_parent=self.cgroup_parent)
        if not engine:
            # An SSH-only host (fan-out benchmarks): everything before dockerd's start.
            boot = boot.split("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", 1)[0]
        (self.folder / "boot.sh").write_text(boot)
        public = (self.folder / "ssh_host_ed25519_key.pub").read_text().split()
        return f"{public[0]} {public[1]}"

    @property
    def has_engine(self) -> bool:
        return "setsid dockerd" in (self.folder / "boot.sh").read_text()

    def start(self) -> None:
        """Start sshd (and dockerd, unless SSH-only) in the node's namespaces unless they already run."""
        if self.sshd_pid and (self.dockerd_pid or not self.has_engine):
            return
        if self.sshd_pid or self.dockerd_pid:
            # Half a node (one daemon died): start from a clean slate rather than guess.
            self.stop()
        for stale in ("docker.sock", "dockerd.pid", "sshd.pid"):
            (self.folder / stale).unlink(missing_ok=True)
        # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then fails with
        # "Devices cgroup isn't mounted".
        run(
            [
                "nsenter", f"--net={NETNS_DIR / self.netns}", "--",
                "unshare", "--mount", "--uts", "--propagation", "private", "--",
                "/bin/sh", str(self.folder / "boot.sh"),
            ],
            timeout=30,
        )

    def wait_ready(self, timeout: float) -> None:
        """Wait until the engine answers on its host socket and sshd has its pid file."""
        import docker
        import requests

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        engine = self.has_engine
        while time.monotonic() < deadline:
            if self.sshd_pid and not engine:
                return
            if self.sshd_pid and self.docker_socket.exists():
                try:
                    client = docker.DockerClient(base_url=f"unix://{self.docker_socket}", version="1.41", timeout=5)
                    try:
                        client.ping()
                        return
                    finally:
                        client.close()
                except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
                    # A loaded machine can take longer than the ping's own timeout; keep waiting.
                    last_error = error
            time.sleep(0.3)
        tail = self.log_tail()
        raise TimeoutError(
            f"lab node {self.name}: dockerd or sshd not ready after {timeout:.0f}s "
            f"(last error: {last_error}); dockerd.log ends with: {tail}"
        )

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.folder / "dockerd.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no dockerd.log)"

    def enter(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the node's network, mount and UTS namespaces."""
        target = self.sshd_pid or self.dockerd_pid
        if target is None:
            raise LabCommandError(f"lab node {self.name} is not running")
        return run(["nsenter", f"--target={target}", "--net", "--mount", "--uts", "--", *argv], timeout=timeout)

    def kill_dockerd(self) -> int | None:
        """SIGKILL the node's dockerd (fault injection); containers keep running under their shims."""
        pid = self.dockerd_pid
        if pid:
            os.kill(pid, signal.SIGKILL)
        return pid

    def restart_dockerd(self) -> None:
        """Start dockerd again in the node's existing namespaces after :meth:`kill_dockerd`."""
        if self.dockerd_pid:
            return
        (self.folder / "docker.sock").unlink(missing_ok=True)
        script = BOOT_SCRIPT.split("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", 1)[1]
        command = "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE" + script.format(
            name=self.name, folder=self.folder, cgroup_parent=self.cgroup_parent
        )
        self.enter(["/bin/sh", "-c", command])

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process of the node: containers first, then dockerd, sshd and the rest."""
        kill_cgroup_tree(self.cgroup_parent)
        for pid in (self.dockerd_pid, self.sshd_pid):
            if pid:
                _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self.dockerd_pid or self.sshd_pid):
            time.sleep(0.2)
        # Any process left in the namespace (shims, containerd, SSH sessions) keeps it alive.
        if (NETNS_DIR / self.netns).exists():
            for pid in netns_pids(self.netns):
                _signal(pid, signal.SIGKILL)
        kill_cgroup_tree(self.cgroup_parent)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_dirs(parent: str) -> list[Path]:
    """Return the cgroup folders named ``parent`` (absolute, e.g. ``/swarmlab-swl/lab-m1``) in each hierarchy."""
    relative = parent.strip("/")
    found: list[Path] = []
    roots = [CGROUP_ROOT] if (CGROUP_ROOT / "cgroup.procs").exists() else sorted(CGROUP_ROOT.iterdir())
    for root in roots:
        candidate = root / relative
        if candidate.is_dir():
            found.append(candidate)
    return found


def kill_cgroup_tree(parent: str) -> None:
    """SIGKILL every process in the cgroup ``parent`` and below, then remove the empty folders."""
    for top in cgroup_dirs(parent):
        # os.walk ignores folders that vanish while it walks (containerd removes them too).
        folders = [Path(root) for root, _, _ in os.walk(top, topdown=False)]
        for folder in folders:
            try:
                pids = (folder / "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                _signal(int(pid), signal.SIGKILL)
        for _ in range(50):
            for folder in folders:
                try:
                    folder.rmdir()
                except OSError:
                    pass
            if not top.exists():
                break
            time.sleep(0.1)
