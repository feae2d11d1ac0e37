"""Teardown flow: remove a run's nodes (or every node of the experiment) through its provider.

``python -m flows.teardown`` removes the default lab, including leftovers of a killed run.
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

from swarmlab.providers import get_provider  # noqa: E402
from swarmlab.record import RUNS_ROOT, RunRecord  # noqa: E402
from swarmlab.runs import mark_unfinished_torn_down  # noqa: E402
from swarmlab.spec import DEFAULT_SPEC, SpecError, load_spec  # noqa: E402


@flow(name="teardown", log_prints=True)
def teardown(
    spec_path: str = str(DEFAULT_SPEC), run_id: str | None = None, runs_dir: str = str(RUNS_ROOT)
) -> list[str]:
    """Destroy the nodes of ``run_id`` (all of the experiment's when None) and mark the run torn down."""
    spec = load_spec(spec_path)
    removed = get_provider(spec).teardown(run_id)
    if run_id:
        record = RunRecord(spec.name, run_id, Path(runs_dir))
        if record.path.exists():
            record.update_meta(status="torn_down", torn_down_at=time.time())
    else:
        mark_unfinished_torn_down(spec.name, Path(runs_dir))
    get_run_logger().info("teardown: %d nodes removed: %s", len(removed), ", ".join(removed) or "none")
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.teardown", description=teardown.__doc__)
    parser.add_argument("--spec", default=str(DEFAULT_SPEC), help="experiment spec; default: %(default)s")
    parser.add_argument("--run-id", help="only this run's nodes (default: every node of the experiment)")
    parser.add_argument("--runs-dir", default=str(RUNS_ROOT))
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if args.run_id and not RunRecord(spec.name, args.run_id, Path(args.runs_dir)).path.exists():
            # Removing the nodes without the record would leave the run "running": the next plain
            # `flows.swarm3k` would resume it and create its nodes again.
            print(f"error: no record of run {args.run_id} of {spec.name!r} under {args.runs_dir}; pass the "
                  "--runs-dir the run used, or leave out --run-id to remove every node of the experiment",
                  file=sys.stderr)
            return 2
        teardown(spec_path=args.spec, run_id=args.run_id, runs_dir=args.runs_dir)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the flow logged the traceback; say it in one line
        print(f"error: teardown failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
