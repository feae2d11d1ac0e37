"""Monitoring: InfluxDB on the swarm and the observer that writes swarm state to it until the report."""

from __future__ import annotations

import json
import logging

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.system import Secret

from swarmlab.cluster import Cluster
from swarmlab.inventory import Inventory
from swarmlab.monitoring.credentials import MonitoringCredentials
from swarmlab.monitoring.session import (
    MonitoringSession,
    export_measurements,
    start_monitoring,
    write_tuning_points,
)
from tasks.common import RunHandle, artifact_key

log = logging.getLogger(__name__)

# Sessions live in the flow's process while the run goes on; workload tasks add phase events.
ACTIVE: dict[str, MonitoringSession] = {}


def secret_block_name(run: RunHandle) -> str:
    return f"swarmlab-{run.experiment}-{run.run_id}-monitoring".lower()


def run_credentials(run: RunHandle) -> MonitoringCredentials:
    """The run's generated passwords, kept in a Prefect Secret block so a resumed run reuses them."""
    name = secret_block_name(run)
    try:
        stored = Secret.load(name).get()
        return MonitoringCredentials(**json.loads(stored) if isinstance(stored, str) else stored)
    except ValueError:
        credentials = MonitoringCredentials.generate()
        Secret(value=json.dumps(credentials.__dict__)).save(name, overwrite=True)
        return credentials


def forget_credentials(run: RunHandle) -> None:
    """Delete the run's monitoring passwords once its nodes are gone."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(secret_block_name(run), "secret")
        except Exception:  # noqa: BLE001 - no block: monitoring was off or it is already gone
            return
        client.delete_block_document(document.id)


@task(name="monitoring", retries=1, retry_delay_seconds=10, timeout_seconds=900)
def monitoring(run: RunHandle, inventory: Inventory) -> str | None:
    """Deploy InfluxDB (and, on cloud runs, Telegraf and Grafana) and start the observer."""
    logger = get_run_logger()
    spec = run.spec.monitoring
    if not spec.enabled:
        logger.info("monitoring: disabled in the spec (monitoring.enabled: false)")
        return None
    provider = run.provider()
    cluster = Cluster(inventory, provider.ssh_identity)
    try:
        session = start_monitoring(cluster, spec, run.run_id, run.record.path, lab=provider.kind == "lab",
                                   credentials=run_credentials(run))
    except Exception:
        cluster.close()
        raise
    write_tuning_points(session.store, run.record.load_phase("tuning"))
    ACTIVE[run.run_id] = session
    lines = [f"- {name}: {what}" for name, what in session.deployed.items()]
    lines += [f"- {name}: not deployed: {why}" for name, why in session.skipped.items()]
    create_markdown_artifact(key=artifact_key(run, "monitoring"), markdown="### monitoring\n\n" + "\n".join(lines))
    dashboard = (run.record.path / "artifacts" / "grafana-dashboard.json").read_text()
    markdown = f"Grafana dashboard of this run (import by hand):\n\n```json\n{dashboard}\n```"
    create_markdown_artifact(key=artifact_key(run, "grafana-dashboard"), markdown=markdown,
                             description="Grafana dashboard JSON")
    return session.influxdb_url


def phase_event(run: RunHandle, phase: str, kind: str, **fields) -> None:
    session = ACTIVE.get(run.run_id)
    if session is not None:
        session.event(phase, kind, **fields)


def stop_monitoring(run: RunHandle, influxdb_url: str | None) -> None:
    """Stop the observer and record what monitoring did, for the report."""
    session = ACTIVE.pop(run.run_id, None)
    if session is None:
        return
    session.observer.stop(timeout=30)
    exported = export_measurements(session.store, run.record.path / "data")
    summary = session.stop()
    summary["exported_rows"] = exported
    run.record.save_phase("monitoring", {"status": "completed", "seconds": None, **summary})
