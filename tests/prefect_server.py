"""A real ``prefect server start`` on a free loopback port, for tests and benchmarks.

The server runs from its own PREFECT_HOME (so its database is fresh) in its own process group,
and is stopped by that group's PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "prefect")
START_SECONDS = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_env(home: Path, port: int) -> dict[str, str]:
    """The environment a Prefect client (a flow, a worker, the CLI) needs to use this server."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        SWARMLAB_HOME=str(REPO),
        PATH=f"{Path(PREFECT).parent}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    return env


def stop(process: subprocess.Popen) -> None:
    """Stop the server's process group (uvicorn and the services it started): TERM, then KILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[dict[str, str]]:
    """Start a server with PREFECT_HOME `home`, wait until it is healthy, yield the client environment.

    Raises:
        RuntimeError: the server exited or was not healthy within START_SECONDS; its log is in the message.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = client_env(home, port)
    log_path = home / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + START_SECONDS
            while not _healthy(port):
                if process.poll() is not None:
                    raise RuntimeError(f"prefect server exited: {log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prefect server not healthy within {START_SECONDS}s: "
                                       f"{log_path.read_text()[-3000:]}")
                time.sleep(1)
            yield env
        finally:
            stop(process)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
