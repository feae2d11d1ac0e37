"""The lab provider on real dockerd nodes: a swarm forms, host keys are pinned, nothing is left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from swarmlab.cluster import Cluster
from swarmlab.inventory import Inventory
from swarmlab.lab.node import cgroup_dirs
from swarmlab.phases.managers import init_managers
from swarmlab.phases.workers import join_workers
from swarmlab.providers.lab import LabProvider
from swarmlab.spec import parse_spec
from swarmlab.ssh import HostKeyMismatch, connect
from tests.conftest import lab_spec_data

pytestmark = pytest.mark.lab

PREFIX = "swu"


def alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped by init) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def host_processes(pattern: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if pattern in line]


@pytest.fixture(scope="module")
def swarm():
    spec = parse_spec(lab_spec_data(PREFIX, "10.213.2.0/24", managers=1, workers=2))
    provider = LabProvider(spec)
    try:
        result = provider.provision("r1")
        cluster = Cluster(result.inventory, provider.ssh_identity)
        init_managers(cluster, spec.managers)
        join_workers(cluster, spec.workers)
        yield provider, cluster, spec
        cluster.close()
    finally:
        leftovers = provider.lab.down()
        assert leftovers.empty(), leftovers.describe()


def test_docker_node_ls_over_ssh(swarm):
    provider, cluster, _ = swarm
    manager = cluster.inventory.managers[0]
    result = cluster.ssh.run(manager, "docker node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}'")
    assert result.ok, result.stderr
    rows = sorted(line.split(" ", 2) for line in result.stdout.strip().splitlines())
    assert [row[0] for row in rows] == ["tswu-m1", "tswu-w1", "tswu-w2"]
    assert all(row[1] == "Ready" for row in rows)
    assert rows[0][2] == "Leader"


def test_each_node_has_its_own_hostname_and_engine(swarm):
    _, cluster, _ = swarm
    for node in cluster.inventory.nodes:
        out = cluster.ssh.run(node, "hostname; docker info --format '{{.Name}} {{.Swarm.NodeAddr}}'").stdout.split()
        assert out[0] == node.name
        assert out[1] == node.name
        assert out[2] == node.address


def test_tiny_image_on_every_node(swarm):
    _, cluster, _ = swarm
    for node in cluster.inventory.nodes:
        images = cluster.ssh.run(node, "docker images --format '{{.Repository}}:{{.Tag}}'").stdout.split()
        assert "swarmlab/tiny:latest" in images


def test_provision_twice_creates_nothing(swarm):
    provider, cluster, _ = swarm
    again = provider.provision("r1")
    assert again.created == ()
    assert len(again.inventory.nodes) == 3
    assert again.inventory == cluster.inventory


def test_changed_host_key_is_refused(swarm):
    provider, cluster, _ = swarm
    node = cluster.inventory.workers[0]
    other = paramiko.Ed25519Key.from_private_key_file(str(provider.lab.node("tswu-w2").folder / "ssh_host_ed25519_key"))
    forged = Inventory.from_dict({"nodes": [{**node.to_dict(), "host_keys": [f"ssh-ed25519 {other.get_base64()}"]}]})
    with pytest.raises(HostKeyMismatch, match="not the pinned"):
        connect(forged.nodes[0], provider.ssh_identity, timeout=5)


def test_unpinned_node_is_refused(swarm):
    provider, cluster, _ = swarm
    node = cluster.inventory.workers[0]
    bare = Inventory.from_dict({"nodes": [{**node.to_dict(), "host_keys": []}]}).nodes[0]
    with pytest.raises(HostKeyMismatch, match="no pinned host key"):
        connect(bare, provider.ssh_identity, timeout=5)


def test_lab_down_leaves_nothing():
    spec = parse_spec(lab_spec_data("swv", "10.213.3.0/24", managers=1, workers=1))
    provider = LabProvider(spec)
    provider.provision("r1")
    lab = provider.lab
    assert lab.leftovers().namespaces == ["swv-tswv-m1", "swv-tswv-w1"]
    sockets = [str(lab.node(n).docker_socket) for n in ("tswv-m1", "tswv-w1")]

    leftovers = lab.down()

    assert leftovers.empty(), leftovers.describe()
    assert "swv-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "swvv" not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert not Path("/sys/class/net/swv0").exists()
    assert "swarmlab:swv0" not in subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    assert not Path(spec.provider.lab.state_dir, "swv").exists()
    assert cgroup_dirs(lab.cgroup_root) == []
    for daemon in ("dockerd", "containerd", "sshd"):
        assert not [p for p in host_processes(daemon) if "/swv/" in p or any(s in p for s in sockets)]


def test_lab_down_after_lost_state():
    """A killed run whose lab folder is gone: `down` still finds the namespaces and processes by name."""
    spec = parse_spec(lab_spec_data("sww", "10.213.4.0/24", managers=1, workers=1))
    provider = LabProvider(spec)
    provider.provision("r1")
    lab = provider.lab
    dockerd = lab.node("tsww-m1").dockerd_pid
    subprocess.run(["rm", "-rf", str(lab.nodes_dir / "tsww-m1" / "node.json")], check=True)

    leftovers = lab.down()

    assert leftovers.empty(), leftovers.describe()
    assert not alive(dockerd)
