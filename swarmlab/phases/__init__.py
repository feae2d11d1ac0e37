"""The experiment's phases as plain functions over a :class:`~swarmlab.cluster.Cluster`.

Each returns a JSON-ready dict of what it measured; tasks in ``tasks/`` wrap them with retries,
time-outs, caching and artifacts.
"""

from __future__ import annotations


class PhaseFailed(RuntimeError):
    """A phase missed a criterion of the spec; the message names the figure, threshold and field."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max of ``values`` (nearest-rank), None for an empty list."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "count": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        index = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))
        return ordered[index]

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1], "count": len(ordered)}
