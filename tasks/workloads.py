"""Workload phases (scale, nginx_mesh, mysql_wordpress) and the profiles captured during them."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from swarmlab.cluster import Cluster
from swarmlab.inventory import Inventory
from swarmlab.phases import PhaseFailed
from swarmlab.phases.profiles import capture_profiles
from tasks.common import RESULT_STORAGE, RunHandle, phase_key, publish
from tasks.monitoring import phase_event


def _phase(run: RunHandle, name: str):
    for phase in run.spec.phases:
        if phase.name == name:
            return phase
    raise KeyError(f"phase {name!r} is not in the spec")


@task(name="workload", retries=1, retry_delay_seconds=10, timeout_seconds=7200,
      cache_key_fn=phase_key("workload"), persist_result=True, result_serializer="json",
      result_storage=RESULT_STORAGE, task_run_name="workload-{phase_name}")
def workload(run: RunHandle, inventory: Inventory, phase_name: str) -> dict:
    phase = _phase(run, phase_name)
    progress = create_progress_artifact(progress=0.0, description=f"{phase_name} steps, run {run.run_id}")

    def report(done: int, total: int) -> None:
        update_progress_artifact(progress, progress=100.0 * done / max(1, total))

    phase_event(run, phase_name, "start", phase_kind=phase.kind)
    with Cluster(inventory, run.provider().ssh_identity) as cluster:
        try:
            result = run_phase(cluster, run, phase, report)
        except PhaseFailed as error:
            run.record.save_phase(phase_name, {**error.result, "status": "failed", "error": str(error)})
            phase_event(run, phase_name, "end", status="failed")
            raise
        except Exception as error:
            run.record.save_phase(phase_name, {"kind": phase.kind, "phase": phase_name, "status": "failed",
                                               "error": f"{type(error).__name__}: {error}"})
            phase_event(run, phase_name, "end", status="failed")
            raise
    phase_event(run, phase_name, "end", status=result.get("status", "completed"))
    publish(run, phase_name, result, summarise(result), rows=result.get("steps"))
    return result


def run_phase(cluster: Cluster, run: RunHandle, phase, progress) -> dict:
    data_dir = run.record.path / "data"
    if phase.kind == "scale":
        from swarmlab.phases.scale import run_scale

        return run_scale(cluster, phase, run.run_id, data_dir, progress=progress)
    if phase.kind == "nginx_mesh":
        from swarmlab.phases.nginx_mesh import run_nginx_mesh

        return run_nginx_mesh(cluster, phase, run.run_id, data_dir)
    from swarmlab.phases.mysql_wordpress import run_mysql_wordpress

    return run_mysql_wordpress(cluster, phase, run.run_id, data_dir)


def summarise(result: dict) -> str:
    if result.get("kind") == "scale":
        lines = [f"{result['max_running']} tasks running at the top step; sustained throughput "
                 f"{result['throughput_p50_over_steps'] or 0:.2f} tasks/s; projected "
                 f"{result['projected_hours_to_million'] or 'n/a'} h to 1,000,000 containers "
                 f"(Swarm3k: {result['swarm3k_projected_hours_to_million']} h)"]
        lines += [f"- step {i}: {s['running']}/{s['target']} in {s['seconds']:.1f}s, {s['throughput']:.2f} tasks/s"
                  for i, s in enumerate(result["steps"], 1)]
        return "\n".join(lines)
    return result.get("summary", f"{result.get('phase')}: {result.get('status')}")


# No task time-out: the profile runs in a worker thread, where Prefect cannot enforce one; the HTTP
# request to pprof has its own (the capture length plus 60 s).
@task(name="profile", retries=1, retry_delay_seconds=5,
      cache_key_fn=phase_key("profile"), persist_result=True, result_serializer="json",
      result_storage=RESULT_STORAGE, task_run_name="profile-{label}")
def profile(run: RunHandle, inventory: Inventory, label: str) -> dict:
    with Cluster(inventory, run.provider().ssh_identity) as cluster:
        result = capture_profiles(cluster, run.spec.profiling, label, run.record.path / "profiles")
    publish(run, f"profile-{label}", result,
            f"{result['cpu_seconds']}s CPU profile of {result['node']} "
            f"({'leader' if result['was_leader'] else 'not the leader at the end'}): {result['files']['cpu']}")
    return result


def profile_during(run: RunHandle, inventory: Inventory, phase_name: str):
    """Submit the CPU profile of a workload phase, to run while the phase runs.

    A stored profile is reused only if its phase completed too: a profile taken while an
    attempt failed at once shows an idle manager, not the workload.
    """
    done = (run.record.load_phase(phase_name) or {}).get("status") == "completed"
    return profile.with_options(refresh_cache=not done).submit(run, inventory, phase_name)
