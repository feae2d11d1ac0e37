"""Compare runs: throughput, join rate and the leader's CPU breakdown side by side, regressions flagged.

    python -m flows.compare RUN_DIR RUN_DIR ...          # the first folder is the baseline
    python -m flows.compare --experiment lab --last 5    # the newest five runs under runs/lab/

The exit status is 0 without regressions, 1 with at least one, and 2 on a usage error, so a
scheduled job or CI step can fail on a regression. ``--artifact`` runs the comparison as a
Prefect flow that also publishes the table as a markdown artifact.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from analysis.compare import DEFAULT_THRESHOLD, compare_runs, latest_runs  # noqa: E402
from swarmlab.record import RUNS_ROOT  # noqa: E402


@flow(name="compare", log_prints=True)
def compare(run_dirs: list[str], threshold: float = DEFAULT_THRESHOLD) -> int:
    """Compare run folders (the first is the baseline), publish the table; return the regression count."""
    markdown, regressions = compare_runs([Path(p) for p in run_dirs], threshold)
    print(markdown)
    create_markdown_artifact(key="swarmlab-compare", markdown=markdown,
                             description=f"comparison of {len(run_dirs)} runs")
    return len(regressions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.compare",
        description="Compare runs from their summary.json files; the first run is the baseline.",
    )
    parser.add_argument("run_dirs", nargs="*", type=Path, help="run folders, baseline first")
    parser.add_argument("--experiment", help="compare the newest runs of this experiment instead")
    parser.add_argument("--last", type=int, default=5,
                        help="with --experiment: how many of the newest runs (default: %(default)s)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_ROOT,
                        help="folder of run records (default: %(default)s, or $SWARMLAB_RUNS)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="flag a figure that is worse than the baseline's by more than this fraction "
                             "(default: %(default)s, that is 20%%)")
    parser.add_argument("--artifact", action="store_true",
                        help="run as a Prefect flow and publish the table as a markdown artifact")
    args = parser.parse_args(argv)
    if bool(args.run_dirs) == bool(args.experiment):
        parser.error("give either run folders or --experiment, not both and not neither")
    if args.last < 2 or args.threshold < 0:
        parser.error("--last must be 2 or more and --threshold 0 or more")

    try:
        run_dirs = args.run_dirs or latest_runs(args.runs_dir, args.experiment, args.last)
        if len(run_dirs) < 2:
            print(f"error: only {len(run_dirs)} run to compare; give at least two", file=sys.stderr)
            return 2
        if args.artifact:
            count = compare([str(p) for p in run_dirs], args.threshold)
        else:
            markdown, regressions = compare_runs(run_dirs, args.threshold)
            print(markdown)
            count = len(regressions)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if count else 0


if __name__ == "__main__":
    sys.exit(main())
