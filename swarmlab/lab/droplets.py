"""Lab nodes behind the local DigitalOcean-compatible server: each droplet created is a real lab node.

The backend plays cloud-init the way a droplet would: it installs the host key that the provider
generated and pinned (from the droplet's ``user_data``), so the provider's pin holds. Packages
and kernel-wide sysctls in ``user_data`` are not applied: the node already has Docker, and all lab
nodes share the host's kernel.
"""

from __future__ import annotations

import logging
import threading

from swarmlab.doapi.cloudinit import parse_user_data
from swarmlab.lab import Lab, NodePlan
from swarmlab.spec import LabSettings

log = logging.getLogger(__name__)

RUN_ID = "doserver"


class LabDropletBackend:
    """``create_node``/``destroy_node`` for :class:`swarmlab.doserver.DOServer`, on one lab."""

    def __init__(self, settings: LabSettings):
        self.lab = Lab(settings)
        self.lab.ensure_base()
        self._lock = threading.Lock()
        self._slots: dict[str, int] = {}

    def create_node(self, name: str, user_data: str | None = None) -> dict:
        # One boot at a time: the server calls from several threads, and each boot changes host
        # networking (namespaces, veth pairs) that the lab sets up step by step.
        with self._lock:
            try:
                return self._create(name, user_data)
            except Exception:
                log.exception("doserver backend: droplet %s failed to boot", name)
                raise

    def _create(self, name: str, user_data: str | None) -> dict:
        slot = self._slots.setdefault(name, len(self._slots))
        folder = self.lab.nodes_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        if user_data:
            boot = parse_user_data(user_data, name)
            if boot.host_key is not None:
                key = folder / "ssh_host_ed25519_key"
                key.write_text(boot.host_key.private_openssh)
                key.chmod(0o600)
                (folder / "ssh_host_ed25519_key.pub").write_text(boot.host_key.public.strip() + f" {name}\n")
        [state] = self.lab.up([NodePlan(name, "worker", slot + 1, slot)], RUN_ID, "doserver", concurrency=1)
        log.info("doserver backend: droplet %s is lab node %s", name, state.address)
        return {"public_ip": state.address, "private_ip": state.address}

    def destroy_node(self, name: str) -> None:
        with self._lock:
            self.lab.destroy_node(name)
        log.info("doserver backend: lab node %s destroyed", name)
