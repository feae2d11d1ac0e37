"""The experiment flow: provision → managers → workers → tuning → monitoring → workloads → report.

Run the default lab experiment with ``python -m flows.swarm3k``; ``--help`` lists the options.
Running the same command again after a failure resumes the same run: finished phases come back
from their stored results (Prefect shows them as Cached) and no node is created twice.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A loaded machine (a lab of dockerd nodes on two cores) can take longer than the default 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "swarmlab")
# The observer logs from its own thread, outside any flow or task run.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from prefect import flow, get_run_logger  # noqa: E402

logging.getLogger("swarmlab").setLevel(logging.INFO)

from prefect import runtime as prefect_runtime  # noqa: E402

from swarmlab import failpoints  # noqa: E402
from swarmlab.record import RUNS_ROOT  # noqa: E402
from swarmlab.runs import RunConflict, check_resumable, open_run  # noqa: E402
from swarmlab.spec import DEFAULT_SPEC, SpecError, load_spec  # noqa: E402
from tasks.common import RunHandle, register_result_storage  # noqa: E402
from tasks.monitoring import monitoring, stop_monitoring  # noqa: E402
from tasks.provision import provision  # noqa: E402
from tasks.report import report  # noqa: E402
from tasks.stale import mark_stale_attempts  # noqa: E402
from tasks.swarm import managers, workers  # noqa: E402
from tasks.teardown import finish  # noqa: E402
from tasks.tuning import tuning  # noqa: E402
from tasks.workloads import profile, profile_during, workload  # noqa: E402


def start(spec_path: str, run_id: str | None, new_run: bool, runs_dir: str) -> RunHandle:
    record, spec = open_run(spec_path, run_id, new_run, Path(runs_dir))
    flow_run_id = str(prefect_runtime.flow_run.id) if prefect_runtime.flow_run.id else None
    attempts = record.meta().get("attempts", [])
    attempts[-1]["flow_run_id"] = flow_run_id
    record.update_meta(attempts=attempts)
    mark_stale_attempts(record, flow_run_id)
    register_result_storage(Path(runs_dir))
    run = RunHandle(spec.name, record.run_id, str(Path(runs_dir).resolve()), spec.digest())
    logger = get_run_logger()
    logger.info("run %s of %s: %d managers, %d workers, %d workload phases; record in %s",
                run.run_id, spec.name, spec.managers.count, spec.workers.count, len(spec.phases), record.path)
    where = "" if Path(runs_dir).resolve() == Path(RUNS_ROOT).resolve() else f" --runs-dir {runs_dir}"
    logger.info("to resume after a failure: python -m flows.swarm3k --spec %s --run-id %s%s",
                spec_path, run.run_id, where)
    logger.info("to tear down: python -m flows.teardown --spec %s --run-id %s%s", spec_path, run.run_id, where)
    return run


@flow(name="swarm3k", log_prints=True)
def swarm3k(spec_path: str = str(DEFAULT_SPEC), run_id: str | None = None, new_run: bool = False,
            teardown: str | None = None, runs_dir: str = str(RUNS_ROOT)) -> str:
    """Run (or resume) one Docker Swarm scale experiment end to end; return the report's path."""
    run = start(spec_path, run_id, new_run, runs_dir)
    spec = run.spec
    failpoints.reach("after:start")
    meta = run.record.meta()
    if meta["attempts"][-1].get("found_status") == "tearing_down":
        # The last attempt finished every phase and was removing the nodes: finish that, and
        # do not provision again what it had already removed.
        get_run_logger().info("run %s: the last attempt stopped while removing its nodes; finishing the teardown",
                              run.run_id)
        return finish(run, meta.get("failed_phases", []), teardown)

    inventory = provision(run)
    failpoints.reach("after:provision")
    managers(run, inventory)
    failpoints.reach("after:managers")
    workers(run, inventory)
    failpoints.reach("after:workers")
    tuning(run, inventory)
    failpoints.reach("after:tuning")
    influxdb = monitoring(run, inventory)
    failpoints.reach("after:monitoring")
    if spec.profiling.enabled and spec.profiling.idle:
        profile(run, inventory, "idle")
        failpoints.reach("after:profile-idle")

    failed = []
    for phase in spec.phases:
        capture = None
        if spec.profiling.enabled and phase.profile:
            capture = profile_during(run, inventory, phase.name)
        state = workload(run, inventory, phase.name, return_state=True)
        if capture is not None:
            capture.wait()
        if state.is_failed():
            failed.append(phase.name)
        failpoints.reach(f"after:{phase.name}")

    stop_monitoring(run, influxdb)
    failpoints.reach("after:monitoring-stopped")
    report(run)
    failpoints.reach("after:report")
    return finish(run, failed, teardown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.swarm3k",
        description="Run a Docker Swarm scale experiment end to end (default: the local lab). Running the "
                    "same command again after a failure resumes the newest unfinished run of the experiment.",
    )
    parser.add_argument("--spec", default=str(DEFAULT_SPEC),
                        help="experiment spec (YAML); default: %(default)s")
    parser.add_argument("--run-id", help="resume this run instead of the newest unfinished one")
    parser.add_argument("--new-run", action="store_true",
                        help="start a new run even if an unfinished one exists")
    parser.add_argument("--teardown", choices=["always", "on_success", "never"],
                        help="remove the nodes after the run (default: the spec's teardown policy)")
    parser.add_argument("--runs-dir", default=str(RUNS_ROOT),
                        help="folder of run records (default: %(default)s, or $SWARMLAB_RUNS)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        spec = load_spec(args.spec)  # a bad spec stops here, before Prefect starts or anything is created
        try:
            failpoints.check(spec)
        except ValueError as error:
            raise RunConflict(str(error)) from None
        check_resumable(args.spec, args.run_id, args.new_run, Path(args.runs_dir))
        path = swarm3k(spec_path=args.spec, run_id=args.run_id, new_run=args.new_run,
                       teardown=args.teardown, runs_dir=args.runs_dir)
    except (SpecError, RunConflict) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the flow already logged the traceback
        print(f"\nthe run failed: {error}\nrun the same command again to resume it; "
              "`python -m flows.teardown --spec SPEC` removes its nodes", file=sys.stderr)
        return 1
    print(f"\nreport: {path}  ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
