"""A real InfluxDB 1.x server for tests: Debian's ``influxd`` on a free loopback port.

Use it from a test module with ``from tests.influx_fixture import influx_server, influx_url``, or
register the module once in ``conftest.py`` with ``pytest_plugins = ["tests.influx_fixture"]``.

``influx_url`` is one server shared by the whole session, so tests use their own database
names. ``influx_server`` is a server per test, for tests that stop and restart it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomli_w

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InfluxServer:
    """One ``influxd`` process with its own meta, data and WAL folders under ``root``.

    The HTTP API and the RPC (backup/restore) listener bind to 127.0.0.1 only. ``stop()`` and
    ``start()`` keep the folders and the port, so a restarted server has the same data and URL.
    """

    def __init__(self, root: Path, auth_enabled: bool = False):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_loopback_port()
        self.rpc_port = free_loopback_port()
        self.auth_enabled = auth_enabled
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path = root / "influxdb.conf"
        self.log_path = root / "influxd.log"
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _write_config(self) -> None:
        config = {
            # Upstream 1.x reads reporting-disabled; Debian's 1.6.7 build reads reporting-enabled.
            # Each ignores the other's key, so both are set.
            "reporting-disabled": True,
            "reporting-enabled": False,
            "bind-address": f"{self.host}:{self.rpc_port}",
            "meta": {"dir": str(self.root / "meta")},
            "data": {
                "dir": str(self.root / "data"),
                "wal-dir": str(self.root / "wal"),
                "query-log-enabled": False,
            },
            "http": {
                "bind-address": f"{self.host}:{self.port}",
                "auth-enabled": self.auth_enabled,
                "log-enabled": False,
            },
            "monitor": {"store-enabled": False},
        }
        self.config_path.write_text(tomli_w.dumps(config))

    def start(self) -> None:
        """Start ``influxd`` and wait until ``/ping`` returns 204."""
        if self.process is not None and self.process.poll() is None:
            return
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [INFLUXD, "run", "-config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"influxd exited with {self.process.returncode} at start; see {self.log_path}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"influxd did not answer /ping within {START_TIMEOUT} s; see {self.log_path}"
        )

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as response:  # noqa: S310
                return response.status == 204
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop this server's own ``influxd`` by PID: SIGTERM, then SIGKILL after a time-out."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None


def _require_influxd() -> None:
    if not Path(INFLUXD).exists():
        pytest.skip("influxd is not installed (apt-get install influxdb)")


@pytest.fixture(scope="session")
def influx_url():
    """Yield the URL of a session-wide ``influxd``, e.g. ``http://127.0.0.1:41234``."""
    _require_influxd()
    with tempfile.TemporaryDirectory(prefix="swarmlab-influx-") as root:
        server = InfluxServer(Path(root))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def influx_server(tmp_path):
    """Yield a started :class:`InfluxServer` for one test, which may stop and restart it."""
    _require_influxd()
    server = InfluxServer(tmp_path / "influxdb")
    server.start()
    try:
        yield server
    finally:
        server.stop()
