"""Workload phases on real lab swarms: nginx_mesh, and mysql_wordpress with Galera through etcd.

The lab tests build the Debian images on first use (about four minutes on a fresh machine, then
cached under /var/lib/swarmlab/image-cache), boot their own nodes on prefix ``swk``, bridge
``swk0`` and subnet 10.213.7.0/24, and remove them afterwards.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import tarfile
import time
from pathlib import Path

import docker
import pytest

from swarmlab.cluster import Cluster
from swarmlab.lab.recipes import (
    ImageBuilder,
    ImageBuildError,
    ImageFile,
    ImageKind,
    apt_sources,
    image_kinds_for,
    recipes_for,
)
from swarmlab.phases import PhaseFailed
from swarmlab.phases.managers import init_managers
from swarmlab.phases.mysql_wordpress import StackNames, remove_mysql_wordpress, run_mysql_wordpress
from swarmlab.phases.nginx_mesh import probe_routing_mesh, run_nginx_mesh
from swarmlab.phases.workers import join_workers
from swarmlab.providers.lab import LabProvider
from swarmlab.spec import parse_spec
from tests.conftest import lab_spec_data

PREFIX = "swk"
SUBNET = "10.213.7.0/24"
PHASE_LABEL = "swarmlab.phase"


def workload_spec(workers: int, phases: list[dict]):
    return parse_spec(lab_spec_data(PREFIX, SUBNET, managers=1, workers=workers, phases=phases))


@pytest.fixture
def lab_swarm():
    """Return a function that provisions a lab swarm for a spec; every lab is removed afterwards."""
    providers: list[LabProvider] = []
    clusters: list[Cluster] = []

    def make(spec, run_id: str) -> Cluster:
        provider = LabProvider(spec, extra_images=recipes_for(spec))
        providers.append(provider)
        provider.lab.down()  # leftovers of a killed earlier run of this test file
        result = provider.provision(run_id)
        cluster = Cluster(result.inventory, provider.ssh_identity)
        clusters.append(cluster)
        init_managers(cluster, spec.managers)
        join_workers(cluster, spec.workers)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()
    for provider in providers:
        leftovers = provider.lab.down()
        assert leftovers.empty(), f"lab {PREFIX} left: {leftovers.describe()}"


def labelled_objects(client: docker.DockerClient, phase: str) -> list[str]:
    selector = {"label": f"{PHASE_LABEL}={phase}"}
    names = [s.name for s in client.services.list(filters=selector)]
    names += [s.name for s in client.secrets.list(filters=selector)]
    names += [c.name for c in client.configs.list(filters=selector)]
    names += [n["Name"] for n in client.api.networks(filters=selector)]
    return names


# -- recipes (no lab) ------------------------------------------------------------------------


def test_recipes_for_scale_only_spec_is_empty():
    spec = workload_spec(1, [{"kind": "scale", "steps": [2]}])
    assert recipes_for(spec) == ()


def test_recipes_for_workload_phases():
    spec = workload_spec(1, [{"kind": "nginx_mesh"}, {"kind": "mysql_wordpress"}, {"kind": "scale"}])
    recipes = recipes_for(spec)
    assert sorted(r.reference for r in recipes) == [
        "swarmlab/etcd:latest",
        "swarmlab/mariadb-galera:latest",
        "swarmlab/nginx:latest",
        "swarmlab/wordpress:latest",
    ]
    by_reference = {r.reference: r for r in recipes}
    assert 'CMD ["swarmlab-galera"]' in by_reference["swarmlab/mariadb-galera:latest"].changes
    assert len({r.digest() for r in recipes}) == 4


def test_one_reference_for_two_image_kinds_is_rejected():
    spec = workload_spec(
        1, [{"kind": "nginx_mesh", "image": "lab/x:1"}, {"kind": "mysql_wordpress", "etcd_image": "lab/x:1"}]
    )
    with pytest.raises(ImageBuildError, match=r"phases\[mysql-wordpress\]\.etcd_image and phases\[nginx-mesh\]\.image"):
        image_kinds_for(spec)


def test_apt_sources_reads_both_formats(tmp_path: Path):
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb http://other.example/debian bookworm non-free\n"
    )
    folder = tmp_path / "sources.list.d"
    folder.mkdir()
    (folder / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://security.example/debian-security/\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nEnabled: no\nURIs: http://off.example\nSuites: bookworm-backports\n"
        "Components: main\n"
    )
    sources = apt_sources([tmp_path / "sources.list", folder])
    assert sources == {
        "bookworm": "http://mirror.example/debian",
        "bookworm-updates": "http://deb.example/debian",
        "bookworm-security": "http://security.example/debian-security",
    }


def test_apt_sources_without_bookworm_is_an_error(tmp_path: Path):
    (tmp_path / "sources.list").write_text("deb http://mirror.example/ubuntu jammy main\n")
    with pytest.raises(ImageBuildError, match="no apt source for Debian bookworm"):
        apt_sources([tmp_path / "sources.list"])


def test_image_stage_adds_files_once_and_caches(tmp_path: Path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "start").write_text("#!/bin/sh\necho one\n")
    (files / "demo.conf").write_text("answer = 42\n")
    kind = ImageKind(
        "demo",
        ("hello",),
        (ImageFile("start", "/usr/local/bin/start", 0o755), ImageFile("demo.conf", "/etc/demo/demo.conf")),
        command=("start",),
    )
    cache = tmp_path / "cache"
    builder = ImageBuilder(cache, sources={"bookworm": "http://mirror.example/debian"}, image_files=files)
    # A real stage-2 tar, put where the builder looks for it: /usr/local/bin/start is replaced,
    # /etc/demo is new.
    tree = tmp_path / "tree"
    (tree / "usr/local/bin").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "usr/local/bin/start").write_text("old\n")
    cache.mkdir()
    packages = cache / f"demo-packages-{builder.packages_key(kind)}.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(tree), "-cf", str(packages), "."], check=True)

    first = builder.image_tar(kind)

    with tarfile.open(first) as tar:
        names = tar.getnames()
        assert len(names) == len(set(names)), "docker import rejects a path named twice"
        start = tar.getmember("./usr/local/bin/start")
        assert start.mode & 0o777 == 0o755
        assert tar.extractfile(start).read() == b"#!/bin/sh\necho one\n"
        assert tar.getmember("./etc/demo").isdir()
        assert tar.extractfile("./etc/demo/demo.conf").read() == b"answer = 42\n"
    built_at = first.stat().st_mtime_ns
    assert builder.image_tar(kind) == first
    assert first.stat().st_mtime_ns == built_at, "a second request must not rebuild"

    lab_copy = tmp_path / "lab-images" / "demo.tar"
    lab_copy.parent.mkdir()
    builder.build_into(kind, lab_copy)
    assert os.path.samefile(lab_copy, first)

    (files / "start").write_text("#!/bin/sh\necho two\n")
    second = builder.image_tar(kind)
    assert second != first
    assert not first.exists(), "the outdated image is pruned from the cache"
    assert lab_copy.exists(), "a lab keeps its hard link to the outdated image"


# -- lab -------------------------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_nginx_mesh_every_node_answers(lab_swarm, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    spec = workload_spec(2, [{"kind": "nginx_mesh", "published_port": 8080, "requests_per_node": 10, "deadline": 120}])
    cluster = lab_swarm(spec, "nginx")
    phase = spec.phases[0]
    mesh = probe_routing_mesh(cluster)

    result = run_nginx_mesh(cluster, phase, "nginx", tmp_path)

    assert result["status"] == "completed"
    assert result["kind"] == "nginx_mesh"
    assert result["report_markdown"].startswith("## ")
    assert result["summary"]
    assert "\n" not in result["summary"]
    assert result["summary_figures"]["nodes_answering"] == 3
    assert result["seconds_to_all_answering"] > 0
    assert [node["requests"] for node in result["nodes"]] == [10, 10, 10]
    assert [node["failed_requests"] for node in result["nodes"]] == [0, 0, 0]
    assert (tmp_path / "nginx-mesh-answers.csv").exists()
    json.dumps(result)
    if mesh.available:
        assert result["publish_mode"] == "ingress"
    else:
        # Without IPVS (the lab machine's kernel has none): host mode, one task per node, limitation recorded.
        assert result["publish_mode"] == "host"
        assert "no IPVS" in (result["limitation"] or "")
        assert "**Limitation:**" in result["report_markdown"]
        assert all(node["served_by"] == [node["node"]] for node in result["nodes"])
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "IPVS" in r.getMessage()]
        assert len(warnings) == 1
    client = cluster.engine(cluster.leader())
    assert labelled_objects(client, phase.name) == []

    # An image no node has: no task starts, the phase fails naming the field, and still cleans up.
    missing = phase.model_copy(update={"image": "swarmlab/missing:latest", "deadline": 8.0})
    with pytest.raises(PhaseFailed, match=r"did not answer .* \(phases\[nginx-mesh\]\.deadline\)") as failure:
        run_nginx_mesh(cluster, missing, "nginx", tmp_path)
    assert failure.value.result["status"] == "failed"
    assert failure.value.result["summary_figures"]["nodes_answering"] == 0
    assert labelled_objects(client, phase.name) == []

    if not mesh.available:
        forced = phase.model_copy(update={"publish_mode": "ingress"})
        with pytest.raises(PhaseFailed, match="publish_mode ingress was requested"):
            run_nginx_mesh(cluster, forced, "nginx", tmp_path)
        assert labelled_objects(client, phase.name) == []


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_mysql_wordpress_galera_through_etcd(lab_swarm, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    spec = workload_spec(
        3, [{"kind": "mysql_wordpress", "galera_size": 3, "published_port": 8081, "deadline": 600, "keep": True}]
    )
    cluster = lab_swarm(spec, "mysql")
    phase = spec.phases[0]
    names = StackNames(phase.name)

    result = run_mysql_wordpress(cluster, phase, "mysql", tmp_path)

    assert result["status"] == "completed", result["summary"]
    assert result["report_markdown"].startswith("## ")
    assert "\n" not in result["summary"]
    assert [g["wsrep_cluster_size"] for g in result["galera"]] == [3, 3, 3]
    assert [g["wsrep_local_state_comment"] for g in result["galera"]] == ["Synced"] * 3
    assert len({g["node"] for g in result["galera"]}) == 3, "one Galera node per swarm node"
    assert result["summary_figures"]["seconds_to_healthy"] > 0
    assert set(result["wordpress"]["answers"].values()) == {"200"}

    # WordPress is installed and renders its home page through the published port.
    node = cluster.inventory.by_name(result["wordpress"]["nodes"][0])
    status, page = fetch(node.address, phase.published_port, "/")
    assert status == 200
    assert "<title>swarmlab" in page, page[:300]

    leader = cluster.engine(cluster.leader())
    tasks = {name: running_containers(cluster, leader, name) for name in (names.etcd, names.galera, names.wordpress)}

    # Every node registered in etcd, one bootstrapped, all announced themselves synced.
    keys = exec_in(
        cluster, *tasks[names.etcd][0], ["etcdctl", "get", "--prefix", "--keys-only", f"/swarmlab/galera/{phase.name}/"]
    ).split()
    assert sum(k.startswith(f"/swarmlab/galera/{phase.name}/members/") for k in keys) == 3
    assert sum(k.startswith(f"/swarmlab/galera/{phase.name}/synced/") for k in keys) == 3
    assert f"/swarmlab/galera/{phase.name}/bootstrapper" in keys

    # The generated passwords, read where they are meant to be: the secret files in the containers.
    galera_node, galera_container = tasks[names.galera][0]
    wordpress_node, wordpress_container = tasks[names.wordpress][0]
    passwords = {
        "mariadb root": exec_in(cluster, galera_node, galera_container, ["cat", "/run/secrets/mariadb_root_password"]),
        "wordpress db": exec_in(cluster, galera_node, galera_container, ["cat", "/run/secrets/wordpress_db_password"]),
        "wordpress admin": exec_in(
            cluster, wordpress_node, wordpress_container, ["cat", "/run/secrets/wordpress_admin_password"]
        ),
    }
    assert all(len(p) >= 24 for p in passwords.values())
    assert len(set(passwords.values())) == 3

    places = {"logs": caplog.text, "result": json.dumps(result)}
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        places[f"file {path.name}"] = path.read_text(errors="replace")
    for service in leader.services.list(filters={"label": f"{PHASE_LABEL}={phase.name}"}):
        places[f"service {service.name} env"] = json.dumps(service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"])
        logs = leader.api.service_logs(service.id, stdout=True, stderr=True, timestamps=False)
        places[f"service {service.name} logs"] = b"".join(logs).decode(errors="replace")
    for service, containers in tasks.items():
        for swarm_node, container in containers:
            inspect = cluster.engine(swarm_node).api.inspect_container(container)
            places[f"container of {service} on {swarm_node.name} env"] = json.dumps(inspect["Config"]["Env"])
    assert len(places) > 6
    for owner, password in passwords.items():
        for place, text in places.items():
            assert password not in text, f"the {owner} password appears in the {place}"

    # The bootstrapper dies: the swarm replaces its task, which joins the synced members through etcd.
    bootstrapper = exec_in(
        cluster,
        *tasks[names.etcd][0],
        ["etcdctl", "get", "--print-value-only", f"/swarmlab/galera/{phase.name}/bootstrapper"],
    )
    victims = [(n, c) for n, c in tasks[names.galera] if galera_hostname(cluster, n, c) == bootstrapper]
    assert len(victims) == 1, f"no running Galera task is the bootstrapper {bootstrapper!r}"
    victim_node, victim = victims[0]
    cluster.engine(victim_node).api.kill(victim)
    sizes = wait_for_galera_size(cluster, leader, names.galera, phase.galera_size, exclude=victim, timeout=300)
    assert sizes == [3, 3, 3]

    removed = remove_mysql_wordpress(cluster, phase)
    assert names.galera in removed
    assert names.network in removed
    assert labelled_objects(leader, phase.name) == []


def running_containers(cluster: Cluster, leader: docker.DockerClient, service: str) -> list[tuple]:
    """(inventory node, container id) of each running task of ``service``."""
    nodes = {item["ID"]: cluster.node_for(item) for item in leader.api.nodes()}
    found = []
    for task in leader.api.tasks(filters={"service": service, "desired-state": "running"}):
        status = task["Status"]
        if status["State"] == "running":
            found.append((nodes[task["NodeID"]], status["ContainerStatus"]["ContainerID"]))
    assert found, f"service {service} has no running task"
    return found


def galera_hostname(cluster: Cluster, node, container: str) -> str:
    return cluster.engine(node).api.inspect_container(container)["Config"]["Hostname"]


def wait_for_galera_size(
    cluster: Cluster, leader: docker.DockerClient, service: str, size: int, exclude: str, timeout: float
) -> list[int | None]:
    """Wait until ``size`` running tasks, none of them ``exclude``, each report ``wsrep_cluster_size == size``."""
    deadline = time.monotonic() + timeout
    sizes: list[int | None] = []
    while time.monotonic() < deadline:
        running = [(n, c) for n, c in running_containers(cluster, leader, service) if c != exclude]
        sizes = []
        for node, container in running:
            api = cluster.engine(node).api
            exec_id = api.exec_create(
                container, ["mariadb", "-uroot", "-N", "-B", "-e", "SHOW STATUS LIKE 'wsrep_cluster_size'"]
            )["Id"]
            output = api.exec_start(exec_id).decode().split()
            sizes.append(int(output[-1]) if output and output[-1].isdigit() else None)
        if len(running) == size and sizes == [size] * size:
            return sizes
        time.sleep(3)
    return sizes


def exec_in(cluster: Cluster, node, container: str, command: list[str]) -> str:
    api = cluster.engine(node).api
    exec_id = api.exec_create(container, command)["Id"]
    output = api.exec_start(exec_id).decode()
    assert api.exec_inspect(exec_id)["ExitCode"] == 0, f"{command} failed on {node.name}: {output}"
    return output.strip()


def fetch(address: str, port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection(address, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()
