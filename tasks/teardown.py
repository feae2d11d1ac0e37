"""Finishing a run: its status in the record, and the teardown its policy asks for."""

from __future__ import annotations

import time

from prefect import get_run_logger, task

from swarmlab import failpoints
from tasks.common import RunHandle, publish
from tasks.monitoring import forget_credentials


@task(name="teardown", retries=2, retry_delay_seconds=10, timeout_seconds=1800)
def teardown_nodes(run: RunHandle) -> list[str]:
    """Destroy the run's nodes through the provider (by run tag, so a lost record does not matter)."""
    started = time.monotonic()
    removed = run.provider().teardown(run.run_id)
    failpoints.reach("during:teardown")
    publish(run, "teardown", {"status": "completed", "seconds": round(time.monotonic() - started, 3),
                              "removed": removed}, f"{len(removed)} nodes removed")
    run.record.update_meta(status="torn_down", torn_down_at=time.time())
    forget_credentials(run)
    return removed


def finish(run: RunHandle, failed_phases: list[str], teardown: str | None) -> str:
    """Mark the run completed (or failed), tear down per policy, and return the report path."""
    logger = get_run_logger()
    record = run.record
    meta = record.meta()
    attempts = meta.get("attempts", [{}])
    ok = not failed_phases
    policy = teardown or run.spec.teardown
    remove = policy == "always" or (policy == "on_success" and ok)
    # A run whose nodes are still to be removed stays resumable ("tearing_down"): killed during
    # the teardown, the same command finishes it instead of starting a new run beside its nodes.
    outcome = "completed" if ok else "failed"
    record.update_meta(status="tearing_down" if remove else outcome, outcome=outcome, finished_at=time.time(),
                       elapsed_seconds=round(time.time() - attempts[0].get("started_at", time.time()), 1),
                       failed_phases=failed_phases)
    report = str(record.path / "report.md")
    if remove:
        teardown_nodes(run)
    else:
        logger.info("nodes kept (teardown policy %s); remove them with: python -m flows.teardown --spec %s "
                    "--run-id %s --runs-dir %s", policy, record.path / "spec.yaml", run.run_id, run.runs_root)
    if not ok:
        raise RuntimeError(f"phases failed: {', '.join(failed_phases)}; report: {report}")
    logger.info("report: %s", report)
    return report
