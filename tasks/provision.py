"""Provision: create the run's nodes (or find them) and pin their host keys."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_progress_artifact

from swarmlab.inventory import Inventory
from swarmlab.lab import LabError
from swarmlab.runs import mark_abandoned
from tasks.common import RunHandle, publish


@task(name="provision", retries=2, retry_delay_seconds=10, timeout_seconds=3600)
def provision(run: RunHandle) -> Inventory:
    """Create the missing nodes; never cached, because the provider's listing is the truth."""
    provider = run.provider()
    progress = create_progress_artifact(progress=0.0, description=f"nodes of run {run.run_id}")
    try:
        result = provider.provision(run.run_id)
    except LabError as error:
        if "in use by run" in str(error):
            mark_abandoned(run.record, str(error))
        raise
    inventory = result.inventory
    run.record.save_inventory(inventory)
    from prefect.artifacts import update_progress_artifact

    update_progress_artifact(progress, progress=100.0)
    expected = run.spec.node_count
    summary = (f"{len(inventory.nodes)}/{expected} nodes ({len(inventory.managers)} managers, "
               f"{len(inventory.workers)} workers): {len(result.created)} created, {len(result.reused)} "
               f"already running, in {result.seconds:.1f}s")
    publish(run, "provision", {
        "status": "completed" if len(inventory.nodes) == expected else "failed",
        "seconds": round(result.seconds, 3),
        "created": list(result.created),
        "reused": list(result.reused),
        "nodes": len(inventory.nodes),
        "provider": provider.kind,
    }, summary, rows=[{"name": n.name, "role": n.role, "address": n.address, "provider_id": n.provider_id}
                      for n in inventory.nodes])
    if len(inventory.nodes) != expected:
        raise RuntimeError(f"provision: {len(inventory.nodes)} of {expected} nodes are up; see the provider log")
    return inventory
