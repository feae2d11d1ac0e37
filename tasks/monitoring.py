"""Monitoring: InfluxDB on the swarm and the observer that writes swarm state to it."""

from __future__ import annotations

from prefect import task

from swarmlab.inventory import Inventory
from tasks.common import RunHandle


@task(name="monitoring", retries=1, retry_delay_seconds=10, timeout_seconds=900)
def monitoring(run: RunHandle, inventory: Inventory):
    """Set up monitoring as the spec asks; returns the running observer, or None when disabled."""
    if not run.spec.monitoring.enabled:
        return None
    raise NotImplementedError("monitoring.enabled: true is not wired in yet; set it to false")


def stop_monitoring(run: RunHandle, observer) -> None:
    if observer is not None:
        observer.stop()
