"""Failpoints: named places where a run can be frozen on purpose, to test kill -9 and resume.

Set ``SWARMLAB_FAILPOINT`` to one point name, for example ``after:managers`` or ``during:scale``,
and the process that reaches that point logs one line and stops itself with SIGSTOP. The caller
that started it (a test, or an engineer at a shell) then kills it with SIGKILL, as a crash or an
OOM kill would, and runs the same command again to check that the run resumes.

Stopping instead of killing keeps the kill itself outside the process, and makes the place
deterministic: the process is frozen at the point, not some time after it. With the variable
unset (the normal case) `reach` does nothing.

Point names:

- ``after:<step>``: the flow finished a step and stored its result. Steps are ``start``
  (the run record is open, nothing created yet), ``provision``, ``managers``, ``workers``,
  ``tuning``, ``monitoring``, ``profile-idle``, each workload phase by its name in the spec,
  ``monitoring-stopped`` and ``report``.
- ``during:<step>``: the step has done part of its work and stored nothing yet. ``provision``
  (the first node is up, the others are booting), ``managers`` (the swarm is initialised),
  ``workers`` (the first worker joined), ``tuning`` (the sysctls are applied, not yet
  verified), ``monitoring`` (InfluxDB's service exists), a workload phase by name (its
  services exist; for scale, the first step is measured), ``report`` (the plots are drawn)
  and ``teardown`` (the nodes are removed, the record not yet updated).
"""

from __future__ import annotations

import logging
import os
import re
import signal

ENV = "SWARMLAB_FAILPOINT"
_NAME = re.compile(r"^(after|during):[a-z0-9][a-z0-9-]*$")

log = logging.getLogger(__name__)


def armed() -> str | None:
    """Return the point named in the environment, or None when no failpoint is set.

    Raises:
        ValueError: the variable is set but is not of the form ``after:<step>`` or ``during:<step>``.
    """
    point = os.environ.get(ENV, "").strip()
    if not point:
        return None
    if not _NAME.match(point):
        raise ValueError(f"{ENV}={point!r}: expected after:<step> or during:<step>, e.g. after:managers")
    return point


def reach(point: str) -> None:
    """Stop this process with SIGSTOP if `point` is the armed failpoint; otherwise return at once."""
    if os.environ.get(ENV, "").strip() != point:
        return
    log.warning("failpoint %s reached: process %d stops here and waits to be killed", point, os.getpid())
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGSTOP)


def points(spec) -> list[str]:
    """Return every failpoint a run of `spec` passes, in the order the flow reaches them."""
    order = ["after:start"]
    steps = ["provision", "managers", "workers", "tuning"]
    if spec.monitoring.enabled:
        steps.append("monitoring")
    for step in steps:
        order += [f"during:{step}", f"after:{step}"]
    if spec.profiling.enabled and spec.profiling.idle:
        order.append("after:profile-idle")
    for phase in spec.phases:
        order += [f"during:{phase.name}", f"after:{phase.name}"]
    if spec.monitoring.enabled:
        order.append("after:monitoring-stopped")
    order += ["during:report", "after:report"]
    if spec.teardown != "never":
        order.append("during:teardown")
    return order


def check(spec) -> None:
    """Raise ValueError if the armed failpoint is malformed or is not a point a run of `spec` reaches."""
    point = armed()
    if point is not None and point not in points(spec):
        raise ValueError(f"{ENV}={point!r} is not a point of experiment {spec.name!r}; "
                         f"its points are: {', '.join(points(spec))}")
