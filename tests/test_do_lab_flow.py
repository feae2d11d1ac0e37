"""The experiment flow with provider digitalocean against the local API server, droplets being lab nodes."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml

from swarmlab.doserver import DOServer
from swarmlab.doserver.testing import operator_key_fingerprint, test_config
from swarmlab.lab.droplets import LabDropletBackend
from swarmlab.spec import LabSettings
from tests.conftest import PYTHON, REPO
from tests.secret_scan import file_hits, prefect_database_files, process_hits

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_flow_on_lab_backed_droplets(tmp_path):
    backend = LabDropletBackend(LabSettings(prefix="swd", bridge="swd0", subnet="10.213.11.0/24"))
    operator_key = backend.lab.client_key.with_suffix(".pub").read_text().strip()
    config = test_config(ssh_public_keys=(("operator", operator_key),), active_delay=2, delete_delay=0.5,
                         backend_workers=3)
    try:
        with DOServer(config, backend=backend) as server:
            spec = {
                "name": "dolab",
                "provider": {"kind": "digitalocean", "digitalocean": {
                    "ssh_keys": [operator_key_fingerprint(server)],
                    "ssh_private_key": str(backend.lab.client_key),
                    "poll_interval": 2, "active_deadline": 300,
                }},
                "managers": {"count": 1},
                "workers": {"count": 2, "ready_deadline": 120},
                # Lab-backed droplets share this host's kernel and /etc: per-namespace sysctls only,
                # and nothing persisted into the host's /etc/sysctl.d.
                "tuning": {"sysctls": {"net.core.somaxconn": 2048}, "persist": False},
                # The public images monitoring needs cannot be pulled here.
                "monitoring": {"enabled": False},
                "phases": [{"kind": "scale", "name": "scale", "steps": [10, 20], "sample_interval": 0.5}],
                "profiling": {"enabled": True, "cpu_seconds": 3, "idle": False},
                "teardown": "always",
            }
            spec_file = tmp_path / "dolab.yaml"
            spec_file.write_text(yaml.safe_dump(spec))
            env = {**os.environ, "DIGITALOCEAN_END_POINT": server.end_point,
                   "DIGITALOCEAN_ACCESS_TOKEN": server.token}
            log_path = tmp_path / "flow.log"
            with log_path.open("w") as log:
                flow = subprocess.Popen(
                    [PYTHON, "-m", "flows.swarm3k", "--spec", str(spec_file), "--runs-dir", str(tmp_path / "runs")],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                )
            # The process list (command lines, what `ps` shows) never carries the token while the run goes on.
            token = server.token.encode()
            deadline = time.monotonic() + 900
            while flow.poll() is None:
                assert process_hits([token], parts=("cmdline",)) == []
                assert time.monotonic() < deadline, "the flow did not finish within 900s"
                time.sleep(1)
            output = log_path.read_text()
            assert flow.returncode == 0, output[-4000:]
            assert server.token not in output
            assert file_hits(prefect_database_files(), [token]) == []

            [run_dir] = list((tmp_path / "runs" / "dolab").iterdir())
            report = (run_dir / "report.md").read_text()
            assert "Provider **digitalocean**, **3 nodes** (1 managers, 2 workers)" in report
            assert "| 2 | 10→20 | 20 |" in report
            assert "profiles/scale-dolab-m1.cpu.pb.gz" in report
            inventory = json.loads((run_dir / "inventory.json").read_text())
            assert sorted(n["name"] for n in inventory["nodes"]) == ["dolab-m1", "dolab-w1", "dolab-w2"]
            for node in inventory["nodes"]:
                assert node["host_keys"], node["name"]
                assert node["provider_id"]
            assert server.stats.requests("POST", "/v2/droplets") == 2  # managers first, then workers
            assert server.state.droplet_records() == []
            leaked = [p for p in run_dir.rglob("*") if p.is_file() and server.token.encode() in p.read_bytes()]
            assert leaked == []
    finally:
        leftovers = backend.lab.down()
        assert leftovers.empty(), leftovers.describe()


def test_lab_backend_installs_pinned_host_key(tmp_path):
    """The droplet's sshd serves the host key the provider put in user_data (the pin holds)."""
    from swarmlab.doapi.cloudinit import build_user_data, generate_host_key

    backend = LabDropletBackend(LabSettings(prefix="swe", bridge="swe0", subnet="10.213.12.0/24"))
    try:
        key = generate_host_key()
        user_data = build_user_data({"keyed": key}, sysctls={}, persist_sysctls=False)
        address = backend.create_node("keyed", user_data)["public_ip"]
        scanned = subprocess.run(["ssh-keyscan", "-t", "ed25519", address], capture_output=True, text=True,
                                 timeout=30).stdout
        assert key.public.split()[1] in scanned
    finally:
        leftovers = backend.lab.down()
        assert leftovers.empty(), leftovers.describe()
