"""The DigitalOcean provider against the local API server: create, re-run, lost responses, teardown."""

from __future__ import annotations

import logging
import os
import subprocess
from collections import Counter

import pytest
import yaml

from swarmlab.doapi import Clock, DOApiError, ProvisionTimeout
from swarmlab.doapi.cloudinit import (
    HOST_KEY_DIR,
    SYSCTL_FILE,
    build_user_data,
    generate_host_key,
    parse_user_data,
)
from swarmlab.doserver import DOServer, Faults
from swarmlab.doserver.testing import api_endpoint, experiment_spec, test_config
from swarmlab.providers.digitalocean import DigitalOceanProvider

SCALE = 50.0
TOKEN = "do-token-7f3a91c2e5b84d06"


@pytest.fixture
def server():
    config = test_config(tokens=(TOKEN,), droplet_limit=60, time_scale=SCALE, active_delay=20, active_jitter=10)
    with DOServer(config) as server, api_endpoint(server):
        yield server


def make_provider(server, tmp_path, name="exp", **kwargs) -> DigitalOceanProvider:
    # A scaled clock races through API time when the machine is busy; the deadline is not
    # what these tests are about.
    kwargs.setdefault("active_deadline", 7200)
    spec = experiment_spec(server, name, **kwargs)
    return DigitalOceanProvider(spec, TOKEN, clock=Clock(SCALE), state_dir=tmp_path)


def test_provision_creates_tagged_batches(server, tmp_path):
    provider = make_provider(server, tmp_path, managers=3, workers=12, tags=["team:swarm"])
    progress = []
    result = provider.provision("r1", progress=lambda *args: progress.append(args))

    records = server.state.droplet_records()
    assert [r.name for r in records][:3] == ["exp-m1", "exp-m2", "exp-m3"]
    assert sorted(result.created) == sorted(r.name for r in records)
    assert result.reused == ()
    assert server.stats.requests("POST", "/v2/droplets") == 3
    for record in records:
        assert set(record.tags) == {"swarmlab-exp-exp", "swarmlab-run-exp-r1", "team:swarm"}
        expected_size = "s-2vcpu-4gb" if record.name.startswith("exp-m") else "s-1vcpu-1gb"
        assert record.size == expected_size
        assert record.region == "fra1"
    assert progress[-1][:2] == (15, 15)


def test_inventory_pins_keys_from_user_data(server, tmp_path):
    provider = make_provider(server, tmp_path, managers=1, workers=3)
    inventory = provider.provision("r1").inventory

    assert [n.name for n in inventory.managers] == ["exp-m1"]
    assert [n.index for n in inventory.workers] == [1, 2, 3]
    for record in server.state.droplet_records():
        node = inventory.by_name(record.name)
        boot = parse_user_data(record.user_data, record.name)
        assert node.host_keys == (boot.host_key.public,)
        assert node.host_keys[0].startswith("ssh-ed25519 ")
        assert node.provider_id == str(record.id)
        assert node.address == record.public_ip
        assert node.advertise_address == record.private_ip
        assert boot.packages == ("docker.io",)
        assert boot.persist_sysctls
        assert boot.sysctls["net.ipv4.neigh.default.gc_thresh3"] == "32768"
        assert SYSCTL_FILE in record.user_data
    assert provider.kernel_wide_tuning() is False


def test_boot_script_installs_own_host_key(tmp_path):
    """Run the user data's host-key step with its paths moved into a folder and fake commands."""
    keys = {name: generate_host_key() for name in ("exp-w1", "exp-w2")}
    user_data = build_user_data(keys, {})
    config = yaml.safe_load(user_data)
    root = tmp_path / "root"
    for item in config["write_files"]:
        path = root / item["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item["content"])
    ssh_dir = root / "etc" / "ssh"
    ssh_dir.mkdir(parents=True)
    (ssh_dir / "ssh_host_rsa_key").write_text("a key the image made")
    (ssh_dir / "ssh_host_rsa_key.pub").write_text("ssh-rsa AAAA image")

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hostname").write_text("#!/bin/sh\necho exp-w2\n")
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.log\n')
    # install -m 600 -o root -g root KEY DEST, without the chown a test user may not do.
    (bin_dir / "install").write_text('#!/bin/sh\ncp "$7" "$8" && chmod "$2" "$8"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = next(c for c in config["runcmd"] if c[:2] == ["sh", "-c"])[2]
    script = script.replace("/etc/ssh", str(ssh_dir)).replace(HOST_KEY_DIR, str(root) + HOST_KEY_DIR)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    subprocess.run(["sh", "-c", script], check=True, env=env)

    assert sorted(p.name for p in ssh_dir.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    public = (ssh_dir / "ssh_host_ed25519_key.pub").read_text().split()
    assert " ".join(public[:2]) == keys["exp-w2"].public
    assert not (root / HOST_KEY_DIR.lstrip("/")).exists()
    assert (tmp_path / "systemctl.log").read_text() == "restart ssh\n"


def test_user_data_without_persist_sets_sysctls_at_boot(server, tmp_path):
    provider = make_provider(
        server,
        tmp_path,
        managers=1,
        workers=1,
        extra={"tuning": {"persist": False}},
        extra_runcmd=["echo ready > /run/swarmlab-ready"],
    )
    provider.provision("r1")

    record = server.state.droplet_records()[0]
    boot = parse_user_data(record.user_data, record.name)
    assert SYSCTL_FILE not in record.user_data
    assert not boot.persist_sysctls
    assert boot.sysctls["net.ipv4.neigh.default.gc_thresh1"] == "30000"
    assert boot.extra_runcmd == ("echo ready > /run/swarmlab-ready",)


def test_second_provision_creates_nothing(server, tmp_path):
    first = make_provider(server, tmp_path, managers=3, workers=8).provision("r1")
    posts = server.stats.requests("POST", "/v2/droplets")

    # A new provider object, as after a process restart; the key file is kept.
    again = make_provider(server, tmp_path, managers=3, workers=8).provision("r1")

    assert again.created == ()
    assert sorted(again.reused) == sorted(n.name for n in first.inventory.nodes)
    assert server.stats.requests("POST", "/v2/droplets") == posts
    assert again.inventory == first.inventory


def test_provision_creates_only_missing_names(server, tmp_path):
    # Droplets an interrupted earlier attempt left behind, found by the run tag and name.
    server.state.add_droplets(["exp-w2", "exp-w5"], tags=["swarmlab-exp-exp", "swarmlab-run-exp-r1"])
    result = make_provider(server, tmp_path, managers=1, workers=6).provision("r1")

    assert sorted(result.reused) == ["exp-w2", "exp-w5"]
    assert sorted(result.created) == ["exp-m1", "exp-w1", "exp-w3", "exp-w4", "exp-w6"]
    names = Counter(r.name for r in server.state.droplet_records())
    assert set(names.values()) == {1}
    # No stored key for droplets this provider did not create: they stay unpinned.
    assert result.inventory.by_name("exp-w2").host_keys == ()
    assert result.inventory.by_name("exp-w1").host_keys != ()


def test_lost_create_response_makes_no_duplicate(server, tmp_path):
    server.set_faults(Faults(drop_after_create=1.0, max_drops=2))
    provider = make_provider(server, tmp_path, managers=1, workers=14)
    result = provider.provision("r1")

    names = Counter(r.name for r in server.state.droplet_records())
    assert server.stats.dropped == 2
    assert provider.session.stats.uncertain == 2
    assert len(names) == 15
    assert set(names.values()) == {1}
    assert len(result.inventory.nodes) == 15
    assert all(node.host_keys for node in result.inventory.nodes)


def test_failed_create_is_sent_again(server, tmp_path):
    # Injected 500s come before the create takes effect, so the names are really missing.
    server.set_faults(Faults(rate_500=0.4, seed=3))
    provider = make_provider(server, tmp_path, managers=1, workers=29)
    result = provider.provision("r1")

    names = Counter(r.name for r in server.state.droplet_records())
    assert server.stats.injected_500 > 0
    assert provider.session.stats.uncertain > 0
    assert len(names) == 30
    assert set(names.values()) == {1}
    assert len(result.inventory.nodes) == 30


def test_list_nodes_matches_inventory(server, tmp_path):
    provider = make_provider(server, tmp_path, managers=1, workers=4)
    inventory = provider.provision("r1").inventory
    assert provider.list_nodes("r1") == inventory


def test_teardown_without_run_record(server, tmp_path):
    make_provider(server, tmp_path / "first", managers=1, workers=4).provision("r1")
    other = make_provider(server, tmp_path / "first", name="other", managers=1, workers=1)
    other.provision("r1")

    # A fresh process with no key files and no record of the run.
    removed = make_provider(server, tmp_path / "fresh", managers=1, workers=4).teardown("r1")

    assert removed == ["exp-m1", "exp-w1", "exp-w2", "exp-w3", "exp-w4"]
    assert [r.name for r in server.state.droplet_records()] == ["other-m1", "other-w1"]


def test_teardown_of_experiment_removes_every_run(server, tmp_path):
    provider = make_provider(server, tmp_path, managers=1, workers=2)
    provider.provision("r1")
    provider.provision("r2")
    key_files = list(tmp_path.glob("exp/*/digitalocean-host-keys.jsonl"))
    assert len(key_files) == 2

    removed = provider.teardown(None)

    assert len(removed) == 3
    assert server.state.droplet_records() == []
    assert list(tmp_path.glob("exp/*/digitalocean-host-keys.jsonl")) == []
    assert provider.teardown(None) == []


def test_provision_deadline_names_late_droplets(tmp_path):
    config = test_config(droplet_limit=10, time_scale=SCALE, active_delay=10**6)
    with DOServer(config) as server, api_endpoint(server):
        spec = experiment_spec(server, "slow", managers=1, workers=2, active_deadline=120)
        provider = DigitalOceanProvider(spec, server.token, clock=Clock(SCALE), state_dir=tmp_path)
        with pytest.raises(ProvisionTimeout) as raised:
            provider.provision("r1")
        assert "3 of 3 droplets were not active" in str(raised.value)
        assert "active_deadline (120 s)" in str(raised.value)
        assert provider.teardown("r1") == ["slow-m1", "slow-w1", "slow-w2"]


def test_limit_reached_during_create_stops_creating(server, tmp_path):
    provider = make_provider(server, tmp_path, managers=1, workers=25, create_concurrency=1)

    def another_tool_takes_the_room(done, total, message):
        if done == 1:
            server.state.add_droplets([f"intruder-{i}" for i in range(50)], tags=["other"])

    with pytest.raises(DOApiError, match="exceed your droplet limit"):
        provider.provision("r1", progress=another_tool_takes_the_room)
    # The manager batch went through; the first worker batch failed and no other was sent.
    assert server.stats.requests("POST", "/v2/droplets") == 2
    assert provider.teardown("r1") == ["exp-m1"]


def test_token_stays_out_of_logs_and_errors(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    provider = make_provider(server, tmp_path, managers=1, workers=2)
    provider.provision("r1")
    with pytest.raises(DOApiError) as raised:
        provider.client.image("no-such-image")
    provider.teardown("r1")

    texts = [record.getMessage() for record in caplog.records]
    assert any("GET" in text for text in texts), "python-digitalocean debug logs were not captured"
    assert not [text for text in texts if TOKEN in text]
    assert TOKEN not in str(raised.value)
    for shown in (provider, provider.client, provider.session):
        assert TOKEN not in repr(shown)
