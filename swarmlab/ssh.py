"""SSH to nodes with pinned host keys, and fan-out of one command over many nodes.

A fan-out returns one :class:`FanOutResult` mapping each node to its :class:`CommandResult` or to
the exception that stopped it; partial failure is part of the contract, and the caller (a phase)
decides which failure rate it tolerates.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import resource
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from swarmlab.inventory import Node

log = logging.getLogger(__name__)
logging.getLogger("paramiko").setLevel(logging.WARNING)


class HostKeyMismatch(paramiko.SSHException):
    """A node presented an SSH host key other than the one pinned when it was created."""


class CommandFailed(RuntimeError):
    """A remote command exited non-zero."""


def fingerprint(host_key_line: str) -> str:
    """OpenSSH-style SHA256 fingerprint of a ``"type base64"`` public key."""
    blob = base64.b64decode(host_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def known_hosts_line(node: Node) -> list[str]:
    host = node.address if node.ssh_port == 22 else f"[{node.address}]:{node.ssh_port}"
    return [f"{host} {key}" for key in node.host_keys]


def new_client(node: Node) -> paramiko.SSHClient:
    """Return an SSHClient, not yet connected, that accepts only the node's pinned host keys."""
    if not node.host_keys:
        raise HostKeyMismatch(f"node {node.name} ({node.address}) has no pinned host key; re-provision it")
    client = paramiko.SSHClient()
    host = node.address if node.ssh_port == 22 else f"[{node.address}]:{node.ssh_port}"
    for line in node.host_keys:
        key_type, blob = line.split()[:2]
        client.get_host_keys().add(host, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(blob)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def connect_params(node: Node, identity: Path, timeout: float) -> dict:
    return {
        "hostname": node.address,
        "port": node.ssh_port,
        "username": node.ssh_user,
        "key_filename": str(identity),
        "allow_agent": False,
        "look_for_keys": False,
        "timeout": timeout,
        "banner_timeout": timeout,
        "auth_timeout": timeout,
    }


def connect(node: Node, identity: Path, timeout: float = 15.0, pkey: paramiko.PKey | None = None) -> paramiko.SSHClient:
    """Connect to ``node`` as its SSH user with ``identity``, rejecting any unpinned host key.

    ``pkey`` is ``identity`` already loaded; without it the key file is read and parsed again.

    Raises:
        HostKeyMismatch: the node's key differs from the pinned one.
        paramiko.SSHException, OSError: the connection or authentication failed.
    """
    client = new_client(node)
    params = connect_params(node, identity, timeout)
    if pkey is not None:
        del params["key_filename"]
        params["pkey"] = pkey
    try:
        client.connect(**params)
    except paramiko.BadHostKeyException as error:
        client.close()
        raise HostKeyMismatch(
            f"node {node.name} ({node.address}) presented host key {fingerprint(_line(error.key))}, "
            f"not the pinned {fingerprint(node.host_keys[0])}: the node was replaced or this is another "
            "machine; connection refused. Re-provision the node if it was rebuilt on purpose."
        ) from None
    except paramiko.SSHException as error:
        client.close()
        if "not found in known_hosts" in str(error):
            raise HostKeyMismatch(
                f"node {node.name} ({node.address}) offered no host key of a pinned type; connection refused"
            ) from None
        raise
    return client


def _line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


@dataclass(frozen=True)
class CommandResult:
    node: str
    command: str
    exit_status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass
class FanOutResult:
    """Per node, the command's result or the exception that stopped it.

    >>> result = pool.run_many(inventory.workers, "sysctl -n net.core.somaxconn")
    >>> len(result.succeeded), sorted(result.failed)
    (499, ['lab-w17'])
    """

    results: dict[str, CommandResult | BaseException] = field(default_factory=dict)
    seconds: float = 0.0
    client_cpu_seconds: float = 0.0

    @property
    def succeeded(self) -> dict[str, CommandResult]:
        return {n: r for n, r in self.results.items() if isinstance(r, CommandResult) and r.ok}

    @property
    def failed(self) -> dict[str, CommandResult | BaseException]:
        return {n: r for n, r in self.results.items() if not (isinstance(r, CommandResult) and r.ok)}

    def describe_failures(self, limit: int = 5) -> str:
        parts = []
        for name, outcome in sorted(self.failed.items())[:limit]:
            if isinstance(outcome, CommandResult):
                parts.append(f"{name}: exit {outcome.exit_status}: {outcome.stderr.strip()[:200]}")
            else:
                parts.append(f"{name}: {type(outcome).__name__}: {outcome}")
        more = len(self.failed) - limit
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class SSHPool:
    """One persistent SSH connection per node, shared by threads; close() ends them all."""

    def __init__(self, identity: Path, connect_timeout: float = 15.0, concurrency: int = 50):
        self.identity = Path(identity)
        self.connect_timeout = connect_timeout
        self.concurrency = concurrency
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._pkey: paramiko.PKey | None = None

    def _identity_key(self) -> paramiko.PKey:
        # Parsed once per pool: paramiko otherwise reads the file and tries each key type on every
        # connection, about 1 ms of CPU per node.
        with self._guard:
            if self._pkey is None:
                self._pkey = paramiko.PKey.from_path(self.identity)
            return self._pkey

    def client(self, node: Node) -> paramiko.SSHClient:
        with self._guard:
            lock = self._locks.setdefault(node.name, threading.Lock())
        with lock:
            client = self._clients.get(node.name)
            transport = client.get_transport() if client else None
            if transport is None or not transport.is_active():
                client = connect(node, self.identity, self.connect_timeout, pkey=self._identity_key())
                self._clients[node.name] = client
            return client

    def run(self, node: Node, command: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        """Run ``command`` on ``node``; with ``check``, raise :class:`CommandFailed` on a non-zero exit."""
        started = time.monotonic()
        client = self.client(node)
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
        except paramiko.SSHException as error:
            # A cached connection can stop opening channels (sshd overloaded or restarted):
            # replace it once and retry, instead of failing the node.
            log.warning("ssh: %s: %s; reconnecting once", node.name, error)
            self.drop(node.name)
            client = self.client(node)
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        status = stdout.channel.recv_exit_status()
        result = CommandResult(node.name, command, status, out, err, time.monotonic() - started)
        if check and not result.ok:
            raise CommandFailed(f"node {node.name}: `{command}` exited {status}: {err.strip()[:300]}")
        return result

    def run_many(
        self,
        nodes: Iterable[Node],
        command: str | Callable[[Node], str],
        timeout: float = 60.0,
        concurrency: int | None = None,
    ) -> FanOutResult:
        """Run a command (or one built per node) on every node at once, ``concurrency`` at a time."""
        nodes = list(nodes)
        started = time.monotonic()
        cpu_before = _process_cpu()
        outcome = FanOutResult()

        def one(node: Node) -> tuple[str, CommandResult | BaseException]:
            text = command(node) if callable(command) else command
            try:
                return node.name, self.run(node, text, timeout=timeout)
            except Exception as error:  # noqa: BLE001 - every failure is reported per node
                return node.name, error

        with ThreadPoolExecutor(max_workers=max(1, min(concurrency or self.concurrency, len(nodes) or 1))) as pool:
            for name, result in pool.map(one, nodes):
                outcome.results[name] = result
        outcome.seconds = time.monotonic() - started
        outcome.client_cpu_seconds = _process_cpu() - cpu_before
        return outcome

    def drop(self, name: str) -> None:
        """Close and forget the cached connection to node ``name``."""
        with self._guard:
            client = self._clients.pop(name, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._guard:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def __enter__(self) -> SSHPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
