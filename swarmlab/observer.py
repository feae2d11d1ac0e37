"""The observer: a background thread that samples swarm state at an interval into the metrics store.

:func:`swarm_sample` reads one sample with a fixed number of Docker API requests (nodes, services
with their task counts, and one task list for failures), however many tasks the swarm runs.
:class:`Observer` calls any such sample function every interval and writes what it returns; it
logs one line per change of state, not one per sample.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from swarmlab.metrics import MetricsStore, Point, make_point

log = logging.getLogger(__name__)

NODES = "nodes"
TASKS = "tasks"
MANAGER = "manager"

# Task states that count as failures: the task ran and failed, or no node could take it.
FAILED_TASK_STATES = frozenset({"failed", "rejected"})


class ManagerStats(NamedTuple):
    """One manager's dockerd: CPU percent (100 = one core) and resident memory in bytes."""

    cpu_percent: float
    rss_bytes: int


ManagerStatsValue = ManagerStats | tuple[float | None, int | None] | Mapping[str, Any] | None
ManagerStatsFn = Callable[[], Mapping[str, ManagerStatsValue]]
SampleFn = Callable[[], list[Point]]


class PartialSample(Exception):  # noqa: N818 - a result with a cause, not only an error
    """A sample of which one part failed; ``points`` contains the parts that were read.

    The :class:`Observer` writes ``points`` and counts the sample as failed.
    """

    def __init__(self, points: list[Point], cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.points = points
        self.cause = cause


def swarm_sample(docker_client: Any, manager_stats_fn: ManagerStatsFn | None = None) -> list[Point]:
    """Read nodes, tasks per service and manager dockerd usage as points, all with one timestamp.

    A sample costs three Docker API requests, whatever the number of tasks:

    - ``GET /nodes``;
    - ``GET /services?status=true``, with running and desired task counts per service (API 1.41
      or later);
    - ``GET /tasks`` filtered to desired state ``shutdown``: the tasks the orchestrator stopped,
      among which the failed and rejected ones are counted.

    That last list is the task history swarm keeps (``task_history_retention_limit`` per slot),
    so ``failed`` counts the failures still in that history, not every failure since the
    service was created.

    Args:
        docker_client: a ``docker.DockerClient`` connected to a manager.
        manager_stats_fn: returns ``{node: ManagerStats}``; see :func:`manager_points` for the
            other forms a value may take.

    Returns:
        Points of the measurements ``nodes`` (tags state, role, availability; field count),
        ``tasks`` (tag service; fields running, desired, failed) and ``manager`` (tag node;
        fields cpu_percent, rss_bytes).

    Raises:
        docker.errors.APIError, requests.exceptions.RequestException: the engine did not answer.
        PartialSample: ``manager_stats_fn`` raised; the swarm points are in the exception.
    """
    taken = time.time_ns()
    points = node_points(docker_client.nodes.list(), taken)
    services = docker_client.services.list(status=True)
    stopped_tasks = docker_client.api.tasks(filters={"desired-state": "shutdown"})
    points += task_points(services, stopped_tasks, taken)

    if manager_stats_fn is not None:
        try:
            stats = manager_stats_fn()
        except Exception as error:  # noqa: BLE001 - any failure of the caller's probe
            raise PartialSample(points, error) from error
        points += manager_points(stats, taken)
    return points


def node_points(nodes: list[Any], taken: int) -> list[Point]:
    """Count nodes by (state, role, availability); ``nodes`` are docker ``Node`` models."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for node in nodes:
        attrs = node.attrs
        state = attrs.get("Status", {}).get("State", "unknown")
        role = attrs.get("Spec", {}).get("Role", "unknown")
        availability = attrs.get("Spec", {}).get("Availability", "unknown")
        counts[(state, role, availability)] += 1
    return [
        make_point(NODES, {"state": s, "role": r, "availability": a}, {"count": n}, taken)
        for (s, r, a), n in sorted(counts.items())
    ]


def task_points(
    services: list[Any], stopped_tasks: list[Mapping[str, Any]], taken: int
) -> list[Point]:
    """Build one point per service: running and desired from ServiceStatus, failed from tasks.

    Raises:
        ValueError: a service has no ServiceStatus (the client was not asked for ``status=True``
            or the engine's API is older than 1.41).
    """
    failed = Counter(
        task.get("ServiceID")
        for task in stopped_tasks
        if task.get("Status", {}).get("State") in FAILED_TASK_STATES
    )
    points = []
    for service in services:
        status = service.attrs.get("ServiceStatus")
        if status is None:
            raise ValueError(
                f"service {service.name} has no ServiceStatus; list services with status=True "
                "against an engine with API 1.41 or later"
            )
        fields = {
            "running": int(status.get("RunningTasks", 0)),
            "desired": int(status.get("DesiredTasks", 0)),
            "failed": failed.get(service.id, 0),
        }
        points.append(make_point(TASKS, {"service": service.name}, fields, taken))
    return points


def manager_points(stats: Mapping[str, ManagerStatsValue], taken: int) -> list[Point]:
    """Turn ``{node: ManagerStats}`` into ``manager`` points.

    A value may also be a plain ``(cpu_percent, rss_bytes)`` pair or a mapping with those keys.
    A None value, or one whose figures are both None, is left out; one None figure is left out
    of its point.
    """
    points = []
    for node, value in sorted(stats.items()):
        if value is None:
            continue
        if isinstance(value, Mapping):
            cpu, rss = value.get("cpu_percent"), value.get("rss_bytes")
        else:
            cpu, rss = value  # ManagerStats or a plain (cpu_percent, rss_bytes) pair
        fields = {
            # Always a float and an int: InfluxDB fixes a field's type at its first write.
            "cpu_percent": None if cpu is None else float(cpu),
            "rss_bytes": None if rss is None else int(rss),
        }
        if fields["cpu_percent"] is None and fields["rss_bytes"] is None:
            continue
        points.append(make_point(MANAGER, {"node": node}, fields, taken))
    return points


def describe_swarm(points: list[Point]) -> str:
    """Summarise a swarm sample in one line.

    For example ``nodes 5/6 ready; tasks 48/50 running, 2 failed, in 3 services``.

    Manager CPU and memory are left out: they change every sample, and the observer logs a line
    only when this summary changes.
    """
    nodes_total = nodes_ready = 0
    running = desired = failed = services = 0
    for point in points:
        if point["measurement"] == NODES:
            nodes_total += point["fields"]["count"]
            if point["tags"].get("state") == "ready":
                nodes_ready += point["fields"]["count"]
        elif point["measurement"] == TASKS:
            services += 1
            running += point["fields"]["running"]
            desired += point["fields"]["desired"]
            failed += point["fields"]["failed"]
    return (
        f"nodes {nodes_ready}/{nodes_total} ready; "
        f"tasks {running}/{desired} running, {failed} failed, in {services} services"
    )


def describe_counts(points: list[Point]) -> str:
    """Summarise any sample as points per measurement, e.g. ``nodes=2 tasks=3``."""
    counts = Counter(point["measurement"] for point in points)
    return " ".join(f"{name}={count}" for name, count in sorted(counts.items())) or "no points"


@dataclass
class ObserverStats:
    """Counts over an observer's life."""

    samples: int = 0
    failed_samples: int = 0
    points: int = 0


class Observer:
    """Call ``sample_fn`` every ``interval`` seconds in a background thread and write its points.

    Args:
        store: where points go; its writes never raise, so an InfluxDB outage does not stop
            sampling (the store buffers and logs the gap).
        sample_fn: returns a list of points (see :func:`swarm_sample`); it may raise, or raise
            :class:`PartialSample` to have some points written anyway.
        interval: seconds between the starts of two samples. A sample that takes longer than
            that delays the next one; missed ticks are skipped, not caught up.
        describe: one-line summary of a sample; a line is logged when it changes.
        name: prefix of log lines and the thread's name.

    Log lines, one per change of state: started; the summary changed; sampling failed (once,
    with the error, and again only if the error changes); sampling recovered (with the number of
    failed samples); stopped (with counts).

    Example:
        >>> observer = Observer(store, lambda: swarm_sample(client, stats), interval=5)
        >>> observer.start()
        >>> ...  # run the phase
        >>> observer.stop()
    """

    def __init__(
        self,
        store: MetricsStore,
        sample_fn: SampleFn,
        interval: float,
        *,
        describe: Callable[[list[Point]], str] = describe_counts,
        name: str = "observer",
    ):
        if interval <= 0:
            raise ValueError(f"interval is {interval}; it must be positive seconds")
        self.store = store
        self.sample_fn = sample_fn
        self.interval = interval
        self.describe = describe
        self.name = name
        self.stats = ObserverStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_summary: str | None = None
        self._consecutive_failures = 0
        self._last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the sampling thread, which takes its first sample at once; idempotent."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        log.info("%s: sampling every %.1f s into %r", self.name, self.interval, self.store)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop sampling, wait for the sample in progress, and flush the store once.

        Args:
            timeout: seconds to wait for the thread; None waits as long as the sample takes.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "%s: sample still in progress after %s s; not waiting", self.name, timeout
                )
        self.store.flush()
        log.info(
            "%s: stopped after %d samples (%d failed), %d points; %d points still buffered",
            self.name,
            self.stats.samples,
            self.stats.failed_samples,
            self.stats.points,
            self.store.buffered,
        )

    def sample_once(self) -> list[Point]:
        """Take one sample and write it; an ``Exception`` from ``sample_fn`` is logged, not raised.

        Returns:
            The points written (those of a :class:`PartialSample` included).
        """
        self.stats.samples += 1
        error: BaseException | None = None
        try:
            points = self.sample_fn()
        except PartialSample as partial:
            points, error = partial.points, partial.cause
        except Exception as failure:  # noqa: BLE001 - a sampler error must not end the thread
            points, error = [], failure

        if points:
            try:
                self.store.write_points(points)
                self.stats.points += len(points)
            except ValueError as malformed:
                # A sample function bug: the sample counts as failed; sampling goes on.
                error = error or malformed
        if error is None:
            self._note_success(points)
        else:
            self._note_failure(error, points)
        return points

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_tick += self.interval
            now = time.monotonic()
            if next_tick < now:
                # The sample overran one or more ticks: start again from now.
                next_tick = now
            self._stop.wait(next_tick - now)

    def _note_success(self, points: list[Point]) -> None:
        if self._consecutive_failures:
            log.info(
                "%s: sampling recovered after %d failed samples",
                self.name, self._consecutive_failures,
            )
            self._consecutive_failures = 0
            self._last_error = None
        self._log_summary(points)

    def _note_failure(self, error: BaseException, points: list[Point]) -> None:
        self.stats.failed_samples += 1
        self._consecutive_failures += 1
        message = f"{type(error).__name__}: {error}"
        if message != self._last_error:
            self._last_error = message
            log.warning(
                "%s: sample failed (%s); wrote %d points of it, retrying every %.1f s",
                self.name, message, len(points), self.interval,
            )
        if points:
            self._log_summary(points)

    def _log_summary(self, points: list[Point]) -> None:
        summary = self.describe(points)
        if summary != self._last_summary:
            self._last_summary = summary
            log.info("%s: %s", self.name, summary)
