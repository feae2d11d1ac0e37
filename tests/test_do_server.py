"""The local DigitalOcean-compatible server: binding, pagination, limits, faults, backends, CLI."""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from swarmlab.doapi.cloudinit import build_user_data, generate_host_key, parse_user_data
from swarmlab.doserver import DOServer, Faults, ServerConfig
from swarmlab.doserver.testing import test_config

REPO = Path(__file__).resolve().parents[1]


def session_for(server: DOServer, token: str | None = None) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token or server.token}"
    return session


def create(session: requests.Session, server: DOServer, names: list[str], **body) -> requests.Response:
    payload = {"names": names, "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "fra1"}
    return session.post(f"{server.url}/v2/droplets", json={**payload, **body})


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com"])
def test_refuses_non_loopback_bind(host):
    with pytest.raises(ValueError, match="binds only to loopback"):
        DOServer(ServerConfig(host=host))


def test_pagination_links_are_absolute():
    with DOServer(test_config(droplet_limit=500)) as server:
        server.state.add_droplets([f"p-{i}" for i in range(450)], tags=["page"])
        session = session_for(server)
        first = session.get(f"{server.url}/v2/droplets", params={"tag_name": "page", "per_page": 500})
        body = first.json()

        assert body["meta"]["total"] == 450
        assert len(body["droplets"]) == 200
        assert body["links"]["pages"]["next"].startswith(f"{server.url}/v2/droplets?page=2")
        assert "page=3" in body["links"]["pages"]["last"]

        names, url = [], f"{server.url}/v2/droplets?tag_name=page&per_page=200"
        while url:
            page = session.get(url).json()
            names += [d["name"] for d in page["droplets"]]
            url = page["links"]["pages"].get("next")
        assert sorted(names) == sorted(f"p-{i}" for i in range(450))
        assert "first" in page["links"]["pages"]
        assert "prev" in page["links"]["pages"]


def test_droplet_turns_active_with_addresses():
    with DOServer(test_config(time_scale=100, active_delay=30)) as server:
        session = session_for(server)
        droplet = create(session, server, ["boot-1"]).json()["droplets"][0]
        assert droplet["status"] == "new"
        assert droplet["networks"]["v4"] == []

        time.sleep(0.4)
        later = session.get(f"{server.url}/v2/droplets/{droplet['id']}").json()["droplet"]
        assert later["status"] == "active"
        kinds = {net["type"]: net["ip_address"] for net in later["networks"]["v4"]}
        assert kinds["public"].startswith("198.18.")
        assert kinds["private"].startswith("198.19.")


def test_delete_by_tag_then_gone_after_delay():
    with DOServer(test_config(time_scale=100, delete_delay=300)) as server:
        session = session_for(server)
        create(session, server, ["d-1", "d-2"], tags=["gone"])
        create(session, server, ["keep-1"], tags=["keep"])

        deleted = session.delete(f"{server.url}/v2/droplets", params={"tag_name": "gone"})
        assert deleted.status_code == 204
        assert deleted.content == b""
        listed = session.get(f"{server.url}/v2/droplets", params={"tag_name": "gone"}).json()
        assert listed["meta"]["total"] == 2  # still there until delete_delay has passed

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(server.state.droplet_records()) > 1:
            time.sleep(0.1)
        assert [r.name for r in server.state.droplet_records()] == ["keep-1"]
        missing = session.delete(f"{server.url}/v2/droplets", params={"tag_name": "never-used"})
        assert missing.status_code == 404
        assert missing.json()["id"] == "not_found"


def test_rate_limit_headers_and_429():
    with DOServer(test_config(per_minute=5, time_scale=1)) as server:
        session = session_for(server)
        responses = [session.get(f"{server.url}/v2/account") for _ in range(6)]

        remaining = [int(a.headers["ratelimit-remaining"]) for a in responses[:5]]
        assert remaining == [4999, 4998, 4997, 4996, 4995]
        assert all(a.headers["ratelimit-limit"] == "5000" for a in responses)
        reset = int(responses[0].headers["ratelimit-reset"])
        now = email.utils.parsedate_to_datetime(responses[0].headers["date"]).timestamp()
        assert 3590 <= reset - now <= 3601

        limited = responses[5]
        assert limited.status_code == 429
        assert limited.json() == {"id": "too_many_requests", "message": "API rate limit exceeded."}
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        assert server.stats.limit_rejections == 1
        assert server.stats.max_per_minute == 5


def test_key_list_limited_to_ten_per_minute():
    with DOServer(test_config()) as server:
        session = session_for(server)
        listed = [session.get(f"{server.url}/v2/account/keys") for _ in range(11)]
        assert [a.status_code for a in listed] == [200] * 10 + [429]
        assert "retry-after" in listed[10].headers

        fingerprint = listed[0].json()["ssh_keys"][0]["fingerprint"]
        single = [session.get(f"{server.url}/v2/account/keys/{fingerprint}") for _ in range(12)]
        assert {a.status_code for a in single} == {200}


def test_unauthorized_requests():
    with DOServer(test_config()) as server:
        missing = requests.get(f"{server.url}/v2/account", timeout=10)
        wrong = session_for(server, "wrong").get(f"{server.url}/v2/account")
        assert missing.status_code == wrong.status_code == 401
        assert wrong.json() == {"id": "unauthorized", "message": "Unable to authenticate you."}
        assert server.stats.unauthorized == 2
        assert server.stats.counted == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"names": [f"n-{i}" for i in range(11)]}, "up to 10 droplets"),
        ({"region": "atlantis1"}, "invalid region"),
        ({"size": "huge"}, "invalid size"),
        ({"image": "plan9"}, "invalid image"),
        ({"tags": ["has space"]}, "Tag names"),
        ({"user_data": "x" * (64 * 1024 + 1)}, "64 KiB"),
        ({"ssh_keys": [999]}, "SSH key 999"),
        ({"names": ["bad_name!"]}, "is invalid"),
    ],
)
def test_create_rejects_invalid_request(body, message):
    with DOServer(test_config()) as server:
        payload = {"names": ["ok-1"], "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "fra1", **body}
        response = session_for(server).post(f"{server.url}/v2/droplets", json=payload)
        assert response.status_code == 422
        assert response.json()["id"] == "unprocessable_entity"
        assert message in response.json()["message"]
        assert server.state.droplet_records() == []


def test_create_over_droplet_limit():
    with DOServer(test_config(droplet_limit=3)) as server:
        session = session_for(server)
        assert create(session, server, ["a-1", "a-2"]).status_code == 202
        over = create(session, server, ["a-3", "a-4"])
        assert over.status_code == 422
        assert "exceed your droplet limit" in over.json()["message"]


def test_injected_faults_follow_the_seed():
    def outcomes() -> list[int]:
        faults = Faults(rate_429=0.2, burst_429=2, rate_500=0.1, seed=5)
        with DOServer(test_config(faults=faults)) as server:
            session = session_for(server)
            return [session.get(f"{server.url}/v2/regions").status_code for _ in range(60)]

    first, second = outcomes(), outcomes()
    assert first == second
    assert 429 in first
    assert 500 in first
    assert 200 in first
    position = first.index(429)
    assert first[position + 1] == 429  # a burst of two


def test_dropped_create_took_effect():
    with DOServer(test_config(faults=Faults(drop_after_create=1.0, max_drops=1))) as server:
        session = session_for(server)
        with pytest.raises(requests.ConnectionError):
            create(session, server, ["lost-1"])
        assert [r.name for r in server.state.droplet_records()] == ["lost-1"]
        assert create(session_for(server), server, ["seen-1"]).status_code == 202
        assert server.stats.dropped == 1


class RecordingBackend:
    """A backend without machines: it records calls and installs host keys in a folder.

    It shows what a lab backend does with the interface: read the droplet's own host key from
    the user data and put it where the machine's sshd reads it.
    """

    def __init__(self, root: Path, fail: set[str] = frozenset()):
        self.root = root
        self.fail = fail
        self.created: list[str] = []
        self.destroyed: list[str] = []
        self.release = threading.Event()

    def create_node(self, name: str, user_data: str | None = None) -> dict:
        self.release.wait(5)
        if name in self.fail:
            raise RuntimeError(f"no room for {name}")
        boot = parse_user_data(user_data, name)
        folder = self.root / name
        folder.mkdir(parents=True)
        (folder / "ssh_host_ed25519_key").write_text(boot.host_key.private_openssh)
        self.created.append(name)
        number = len(self.created)
        return {"public_ip": f"127.0.10.{number}", "private_ip": f"127.0.20.{number}"}

    def destroy_node(self, name: str) -> None:
        self.destroyed.append(name)


def test_backend_creates_and_destroys_nodes(tmp_path):
    backend = RecordingBackend(tmp_path, fail={"lab-3"})
    keys = {name: generate_host_key() for name in ("lab-1", "lab-2", "lab-3")}
    user_data = build_user_data(keys, {"net.core.somaxconn": 4096})
    config = test_config(time_scale=100, active_delay=5, delete_delay=1)
    with DOServer(config, backend=backend) as server:
        session = session_for(server)
        created = create(session, server, list(keys), user_data=user_data, tags=["lab"]).json()
        assert {d["status"] for d in created["droplets"]} == {"new"}

        time.sleep(0.2)  # past active_delay, but the backend has not finished
        listed = session.get(f"{server.url}/v2/droplets", params={"tag_name": "lab"}).json()
        assert {d["status"] for d in listed["droplets"]} == {"new"}

        backend.release.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(backend.created) < 2:
            time.sleep(0.05)
        time.sleep(0.1)
        listed = session.get(f"{server.url}/v2/droplets", params={"tag_name": "lab"}).json()
        status = {d["name"]: d["status"] for d in listed["droplets"]}
        assert status == {"lab-1": "active", "lab-2": "active", "lab-3": "new"}
        addresses = {
            net["type"]: net["ip_address"]
            for d in listed["droplets"]
            if d["name"] == "lab-1"
            for net in d["networks"]["v4"]
        }
        assert addresses["public"].startswith("127.0.10.")
        assert addresses["private"].startswith("127.0.20.")
        installed = (tmp_path / "lab-2" / "ssh_host_ed25519_key").read_text()
        assert installed == keys["lab-2"].private_openssh

        failed_action = created["links"]["actions"][2]["id"]
        action = session.get(f"{server.url}/v2/actions/{failed_action}").json()["action"]
        assert action["status"] == "errored"

        session.delete(f"{server.url}/v2/droplets", params={"tag_name": "lab"})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and server.state.droplet_records():
            time.sleep(0.05)
        assert server.state.droplet_records() == []
        # The node that never came up has nothing to destroy.
        assert sorted(backend.destroyed) == ["lab-1", "lab-2"]


def test_command_line_server_answers():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "swarmlab.doserver", "--port", "0", "--token", "cli-token", "--droplet-limit", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("DIGITALOCEAN_END_POINT=http://127.0.0.1:")
        end_point = line.split("=", 1)[1]
        account = requests.get(end_point + "account", headers={"Authorization": "Bearer cli-token"}, timeout=5)
        assert account.json()["account"]["droplet_limit"] == 7
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_command_line_refuses_public_bind():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "swarmlab.doserver", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
    )
    assert done.returncode != 0
    assert "binds only to loopback" in done.stderr
