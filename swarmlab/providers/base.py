"""The contract every provider (lab, digitalocean) fulfils for the experiment flow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from swarmlab.inventory import Inventory


@dataclass(frozen=True)
class ProvisionResult:
    inventory: Inventory
    created: tuple[str, ...]
    reused: tuple[str, ...]
    seconds: float


class Provider(Protocol):
    """Creates, finds and destroys the nodes of one run.

    The provider's own listing is the truth: ``provision`` first lists what exists for
    ``(experiment, run_id)`` and creates only the missing nodes, so calling it twice never
    creates a node twice.
    """

    kind: str

    def provision(self, run_id: str, progress=None) -> ProvisionResult:
        """Create the missing nodes of the run and return the full inventory."""
        ...

    def list_nodes(self, run_id: str) -> Inventory:
        """Return the nodes that exist for the run, from the provider's own listing."""
        ...

    def teardown(self, run_id: str | None) -> list[str]:
        """Destroy the run's nodes (all of this experiment's when ``run_id`` is None)."""
        ...

    def kernel_wide_tuning(self) -> bool:
        """True where all nodes share one kernel, so kernel-wide sysctls are set once on the host."""
        ...
