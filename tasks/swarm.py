"""Managers and workers: form the swarm."""

from __future__ import annotations

from prefect import task

from swarmlab.cluster import Cluster
from swarmlab.inventory import Inventory
from swarmlab.phases.managers import init_managers
from swarmlab.phases.workers import join_workers
from tasks.common import RESULT_STORAGE, RunHandle, phase_key, publish


@task(name="managers", retries=2, retry_delay_seconds=5, timeout_seconds=900,
      cache_key_fn=phase_key("managers"), persist_result=True, result_serializer="json",
      result_storage=RESULT_STORAGE)
def managers(run: RunHandle, inventory: Inventory) -> dict:
    with Cluster(inventory, run.provider().ssh_identity) as cluster:
        result = init_managers(cluster, run.spec.managers)
    summary = (f"swarm of {len(result['managers'])} managers, leader {result['leader']}, "
               f"{'initialised' if result['initialised'] else 'already initialised'} in {result['seconds']:.1f}s")
    publish(run, "managers", result, summary, rows=result["managers"])
    return result


@task(name="workers", retries=1, retry_delay_seconds=10, timeout_seconds=7200,
      cache_key_fn=phase_key("workers"), persist_result=True, result_serializer="json",
      result_storage=RESULT_STORAGE)
def workers(run: RunHandle, inventory: Inventory) -> dict:
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    progress = create_progress_artifact(progress=0.0, description=f"workers Ready, run {run.run_id}")

    def report(done: int, total: int) -> None:
        update_progress_artifact(progress, progress=100.0 * done / max(1, total))

    with Cluster(inventory, run.provider().ssh_identity) as cluster:
        try:
            result = join_workers(cluster, run.spec.workers, progress=report)
        except Exception as error:
            if getattr(error, "result", None):
                run.record.save_phase("workers", error.result)
            raise
    ttr = result["time_to_ready_summary"]
    summary = (f"{result['ready']}/{result['expected']} workers Ready, {len(result['failed'])} failed; "
               f"join rate {result['join_rate_per_second'] or 0:.2f}/s; time to Ready p50 {ttr['p50'] or 0:.1f}s, "
               f"max {ttr['max'] or 0:.1f}s")
    publish(run, "workers", result, summary,
            rows=[{"node": k, "time_to_ready_s": v} for k, v in sorted(result["time_to_ready"].items())])
    return result
