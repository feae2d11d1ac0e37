"""Docker engine access over SSH with pinned host keys, through the Docker SDK for Python.

The SDK's own SSH transport reads ``~/.ssh/known_hosts`` and ``~/.ssh/config`` of the process;
the pipeline keeps its pinned keys per run instead, so it mounts an adapter that builds the
paramiko client from the node's pinned keys and the run's identity file.
"""

from __future__ import annotations

from pathlib import Path

import docker
from docker.transport.sshconn import SSHHTTPAdapter

from swarmlab.inventory import Node
from swarmlab.ssh import connect_params, new_client

API_VERSION = "1.41"  # dockerd 20.10; every engine since serves it


class _PinnedSSHAdapter(SSHHTTPAdapter):
    def __init__(self, node: Node, identity: Path, timeout: float, max_pool_size: int):
        self._node = node
        self._identity = identity
        self._connect_timeout = min(timeout, 15.0)
        super().__init__(
            f"ssh://{node.ssh_user}@{node.address}:{node.ssh_port}",
            timeout=timeout,
            pool_connections=4,
            max_pool_size=max_pool_size,
            shell_out=False,
        )

    # NOTE: overrides a private hook of docker-py 7.x (docker/transport/sshconn.py); the SDK takes
    # no known_hosts or identity argument. Re-check on a docker-py major upgrade.
    def _create_paramiko_client(self, base_url: str) -> None:
        self.ssh_client = new_client(self._node)
        self.ssh_params = connect_params(self._node, self._identity, self._connect_timeout)


def engine_client(node: Node, identity: Path, timeout: float = 60.0, max_pool_size: int = 8) -> docker.DockerClient:
    """Return a Docker SDK client for the engine on ``node``, over SSH, rejecting unpinned host keys.

    Raises:
        swarmlab.ssh.HostKeyMismatch (via paramiko): the node's host key changed.
    """
    client = docker.DockerClient(
        base_url=f"ssh://{node.ssh_user}@{node.address}:{node.ssh_port}",
        version=API_VERSION,
        timeout=int(timeout),
        use_ssh_client=True,  # builds no paramiko client of its own; ours is mounted below
    )
    adapter = _PinnedSSHAdapter(node, Path(identity), timeout, max_pool_size)
    client.api.mount("http+docker://ssh", adapter)
    client.api._custom_adapter = adapter
    return client


def pprof(client: docker.DockerClient, kind: str, seconds: int | None = None, timeout: float | None = None) -> bytes:
    """Fetch a pprof profile (``profile``, ``heap``, ``goroutine``, ...) from the engine, gzip protobuf.

    dockerd serves ``/debug/pprof/`` on its API socket without ``--debug``; the versioned URL
    answers 404, so the path is unversioned.
    """
    api = client.api
    params = {"seconds": seconds} if seconds else {}
    response = api.get(
        api._url(f"/debug/pprof/{kind}", versioned_api=False),
        params=params,
        timeout=timeout or (seconds or 0) + 60,
    )
    response.raise_for_status()
    return response.content
