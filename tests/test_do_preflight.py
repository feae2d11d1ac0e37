"""Plans that cannot run fail before any create, with a message that says what to fix."""

from __future__ import annotations

import pytest

from swarmlab.doapi import Clock, PreflightError
from swarmlab.doapi.client import TOKEN_VARIABLE
from swarmlab.doserver import DOServer
from swarmlab.doserver.testing import api_endpoint, experiment_spec, test_config
from swarmlab.providers.digitalocean import DigitalOceanProvider

SCALE = 50.0


@pytest.fixture
def server():
    with DOServer(test_config(droplet_limit=20, time_scale=SCALE, active_delay=10)) as server:
        with api_endpoint(server):
            yield server


def provision_fails(server, tmp_path, token=None, run_id="r1", **kwargs) -> str:
    """Provision a spec that must fail; return the error text after checking nothing was created."""
    spec = experiment_spec(server, "bad", **kwargs)
    provider = DigitalOceanProvider(spec, token or server.token, clock=Clock(SCALE), state_dir=tmp_path)
    with pytest.raises(PreflightError) as raised:
        provider.provision(run_id)
    assert server.stats.requests("POST") == 0
    assert [r for r in server.state.droplet_records() if r.name.startswith("bad-")] == []
    assert "nothing was created" in str(raised.value)
    return str(raised.value)


def test_missing_token(server, tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    spec = experiment_spec(server, "bad")
    with pytest.raises(PreflightError, match="set DIGITALOCEAN_ACCESS_TOKEN or pass the token"):
        DigitalOceanProvider(spec, clock=Clock(SCALE), state_dir=tmp_path)
    assert sum(server.stats.received.values()) == 0


def test_token_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_VARIABLE, server.token)
    spec = experiment_spec(server, "envtoken", managers=1, workers=1)
    report = DigitalOceanProvider(spec, clock=Clock(SCALE), state_dir=tmp_path).preflight()
    assert report.to_create == 2


def test_wrong_token(server, tmp_path):
    message = provision_fails(server, tmp_path, token="not-a-valid-token")
    assert "rejected the API token (401 unauthorized" in message
    assert "not-a-valid-token" not in message


def test_unknown_region(server, tmp_path):
    message = provision_fails(server, tmp_path, region="xyz9")
    assert "provider.digitalocean.region: 'xyz9' does not exist; use one of" in message
    assert "fra1" in message


def test_region_closed_to_new_droplets(server, tmp_path):
    message = provision_fails(server, tmp_path, region="nyc2")
    assert "'nyc2' takes no new droplets" in message


def test_unknown_size(server, tmp_path):
    message = provision_fails(server, tmp_path, worker_size="s-64vcpu-1tb")
    assert "provider.digitalocean.worker_size: size 's-64vcpu-1tb' does not exist" in message


def test_size_not_offered_in_region(server, tmp_path):
    message = provision_fails(server, tmp_path, region="ams3", manager_size="m-32vcpu-256gb")
    assert "size 'm-32vcpu-256gb' is not offered in region 'ams3'" in message
    assert "fra1" in message


def test_unknown_image(server, tmp_path):
    message = provision_fails(server, tmp_path, image="windows-11")
    assert "provider.digitalocean.image: 'windows-11' was not found" in message


def test_droplet_limit_too_low(server, tmp_path):
    message = provision_fails(server, tmp_path, managers=3, workers=20)
    assert "needs 23 new droplets" in message
    assert "droplet_limit is 20" in message
    assert "raise the limit to at least 23" in message


def test_existing_droplets_count_against_limit(server, tmp_path):
    server.state.add_droplets([f"web-{i}" for i in range(15)], tags=["web"])
    message = provision_fails(server, tmp_path, managers=1, workers=5)
    assert "needs 6 new droplets and the account already has 15" in message
    assert "at least 21" in message


def test_user_data_over_64_kib(server, tmp_path):
    message = provision_fails(server, tmp_path, managers=1, workers=1, extra_runcmd=["echo " + "x" * 70_000])
    assert "over DigitalOcean's limit of 65536 (64 KiB)" in message
    assert "extra_runcmd" in message


def test_unknown_ssh_key(server, tmp_path):
    message = provision_fails(server, tmp_path, ssh_keys=["00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff"])
    assert "is not registered on the account" in message


def test_no_ssh_key(server, tmp_path):
    message = provision_fails(server, tmp_path, ssh_keys=[])
    assert "ssh_keys is empty" in message


def test_invalid_extra_tag(server, tmp_path):
    message = provision_fails(server, tmp_path, tags=["team swarm"])
    assert "'team swarm' is not a valid tag" in message


def test_every_problem_reported_at_once(server, tmp_path):
    message = provision_fails(server, tmp_path, region="xyz9", worker_size="tiny", image="nope", managers=3, workers=30)
    assert message.count("\n- ") == 4
    for part in ("region", "worker_size", "image", "droplet_limit"):
        assert part in message


def test_run_id_unusable_in_tag(server, tmp_path):
    spec = experiment_spec(server, "bad")
    provider = DigitalOceanProvider(spec, server.token, clock=Clock(SCALE), state_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot be part of a DigitalOcean tag"):
        provider.provision("run/1")
    assert server.stats.requests("POST") == 0


def test_preflight_spares_the_key_list(server, tmp_path):
    spec = experiment_spec(server, "keys", managers=1, workers=1)
    provider = DigitalOceanProvider(spec, server.token, clock=Clock(SCALE), state_dir=tmp_path)
    for _ in range(12):
        provider.preflight()
    # Keys are fetched one by one, never through the list limited to 10 requests per minute.
    assert server.stats.requests("GET", "/v2/account/keys") == 0
    assert server.stats.requests("GET", "/v2/account/keys/{key}") == 12
