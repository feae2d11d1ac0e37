"""Plan flow: the dry run of a DigitalOcean experiment (droplets, cost, API requests, time).

``python -m flows.plan deployments/experiments/swarm3k.yaml`` prints the plan; nothing is created
and no API token is needed.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow  # noqa: E402

from swarmlab.plan import make_plan  # noqa: E402
from swarmlab.spec import DEFAULT_SPEC, load_spec  # noqa: E402

SWARM3K_SPEC = DEFAULT_SPEC.parent / "swarm3k.yaml"


@flow(name="plan", log_prints=True)
def plan(spec_path: str = str(SWARM3K_SPEC)) -> str:
    """Print the DigitalOcean plan of the spec at ``spec_path`` and return it as markdown."""
    markdown = make_plan(load_spec(spec_path)).to_markdown()
    print(markdown)
    return markdown


if __name__ == "__main__":
    plan(*sys.argv[1:2])
