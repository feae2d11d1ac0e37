"""Flow runs of a killed attempt stay Running on the Prefect server; the next attempt marks them Crashed."""

from __future__ import annotations

from prefect import get_client, get_run_logger
from prefect.states import Crashed

from swarmlab.record import RunRecord


def mark_stale_attempts(record: RunRecord, current_flow_run_id: str | None) -> list[str]:
    """Set earlier attempts' flow runs that are still Running to Crashed; return their ids."""
    logger = get_run_logger()
    marked = []
    with get_client(sync_client=True) as client:
        for attempt in record.meta().get("attempts", []):
            flow_run_id = attempt.get("flow_run_id")
            if not flow_run_id or flow_run_id == current_flow_run_id:
                continue
            try:
                flow_run = client.read_flow_run(flow_run_id)
            except Exception as error:  # noqa: BLE001 - another server or a pruned database: nothing to fix
                logger.debug("stale flow run %s not readable: %s", flow_run_id, error)
                continue
            if flow_run.state is not None and flow_run.state.is_running():
                client.set_flow_run_state(
                    flow_run_id,
                    Crashed(message=f"the process running attempt of {attempt.get('started_at')} was killed; "
                                    f"run {record.run_id} resumed in a new flow run"),
                    force=True,
                )
                marked.append(flow_run_id)
                logger.info("flow run %s of a killed attempt marked Crashed", flow_run_id)
    return marked
