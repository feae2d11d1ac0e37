"""Scale: a tiny-image service scaled toward a target in steps, each waiting for convergence.

Per step it measures scheduling throughput (tasks reaching running per second, per sampling
interval and over the step), failed or rejected tasks and the leader's dockerd CPU. A missed stop
criterion scales the service back down in steps and fails the phase with a message that names the
criterion, the figure and the spec field. One huge jump is what overloaded Swarm3k's managers, so
the service only ever moves one step at a time, up and down.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import paramiko
import requests
from docker.types import EndpointSpec, RestartPolicy, ServiceMode

from swarmlab import failpoints
from swarmlab.cluster import Cluster, NoLeader
from swarmlab.phases import PhaseFailed, percentiles
from swarmlab.spec import ScalePhase

log = logging.getLogger(__name__)

MILLION = 1_000_000
# Swarm3k (Oct 2016): 47,000 containers scheduled in about 30 minutes.
SWARM3K_TASKS_PER_SECOND = 47_000 / 1800


@dataclass
class Sample:
    step: int
    target: int
    elapsed: float
    running: int
    desired: int
    rate: float | None
    manager_cpu: float | None


@dataclass
class StepResult:
    number: int
    target: int
    started_running: int
    seconds: float
    converged: bool
    running: int
    tasks_started: int
    throughput: float
    interval_rates: dict
    failed_tasks: int
    failure_rate: float
    manager_cpu: dict
    aborted_by: str | None = None
    samples: list[Sample] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "samples"}
        data["throughput"] = round(self.throughput, 3)
        data["seconds"] = round(self.seconds, 3)
        data["failure_rate"] = round(self.failure_rate, 4)
        return data

    @classmethod
    def from_dict(cls, data: dict, samples: list[dict]) -> StepResult:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "samples"}
        return cls(**fields, samples=[Sample(**item) for item in samples])


def load_steps(path: Path) -> dict[int, StepResult]:
    """Steps measured by an earlier attempt of the same run, by target."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {item["step"]["target"]: StepResult.from_dict(item["step"], item["samples"]) for item in data}


def save_steps(path: Path, steps: list[StepResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [{"step": s.to_dict(), "samples": [sample.__dict__ for sample in s.samples]} for s in steps]
    path.write_text(json.dumps(items, indent=1))


ENGINE_ERRORS = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    paramiko.SSHException,
    OSError,
    EOFError,
)


class LeaderTracker:
    """Requests to the current leader; when one fails, find the new leader and record the change.

    A leader's dockerd can die mid-phase (Swarm3k lost managers under load); with a quorum left
    the other managers elect a new leader, and the phase carries on against it.
    """

    def __init__(self, cluster: Cluster, leader, started: float, deadline: float = 90.0):
        self.cluster = cluster
        self.leader = leader
        self.started = started
        self.deadline = deadline
        self.events: list[dict] = []

    def call(self, request):
        """Return ``request(api)`` on the leader, following a leader change for up to ``deadline`` s."""
        try:
            return request(self.cluster.engine(self.leader).api)
        except ENGINE_ERRORS as error:
            lost_at = time.monotonic()
            first_error = error
        old = self.leader.name
        log.warning("scale: request to leader %s failed (%s); looking for the leader", old, first_error)
        stop = lost_at + self.deadline
        while True:
            self.cluster.drop_engine(self.leader.name)
            try:
                self.leader = self.cluster.leader(deadline=max(1.0, stop - time.monotonic()))
                result = request(self.cluster.engine(self.leader).api)
                break
            except (*ENGINE_ERRORS, NoLeader) as error:
                if time.monotonic() > stop:
                    raise PhaseFailed(
                        f"no leader responded for {self.deadline:.0f}s after {old} failed: {error}"
                    ) from None
                time.sleep(1)
        found = time.monotonic()
        event = {
            "at_seconds": round(lost_at - self.started, 1),
            "event": "leader request failed",
            "error": str(first_error)[:200],
            "from": old,
            "to": self.leader.name,
            "seconds_to_leader": round(found - lost_at, 1),
        }
        self.events.append(event)
        log.info("scale: leader now %s (was %s), found after %.1fs", self.leader.name, old, found - lost_at)
        return result


def service_counts(api, name: str) -> tuple[int, int]:
    """Running and desired task counts of one service, from one service-list request."""
    services = api.services(filters={"name": name}, status=True)
    for service in services:
        if service["Spec"]["Name"] == name:
            status = service.get("ServiceStatus", {})
            return int(status.get("RunningTasks", 0)), int(status.get("DesiredTasks", 0))
    raise LookupError(f"service {name!r} not found")


def failed_task_count(api, name: str) -> int:
    tasks = api.tasks(filters={"service": name})
    return sum(1 for t in tasks if t.get("Status", {}).get("State") in ("failed", "rejected"))


def ensure_service(client: docker.DockerClient, phase: ScalePhase, run_id: str):
    """Create the phase's service with no replicas unless it exists; return it."""
    try:
        return client.services.get(phase.name)
    except docker.errors.NotFound:
        pass
    return client.services.create(
        phase.image,
        command=phase.command,
        name=phase.name,
        mode=ServiceMode("replicated", replicas=0),
        constraints=["node.role==worker"],
        restart_policy=RestartPolicy(condition="on-failure", delay=1_000_000_000, max_attempts=3),
        stop_grace_period=1_000_000_000,
        labels={"swarmlab.run": run_id, "swarmlab.phase": phase.name},
        endpoint_spec=EndpointSpec(mode="dnsrr"),
    )


def set_replicas(api, name: str, replicas: int) -> None:
    """Scale one service; retried on an update-out-of-sequence race with the orchestrator."""
    for attempt in range(5):
        inspect = api.inspect_service(name)
        spec = inspect["Spec"]
        spec["Mode"] = {"Replicated": {"Replicas": replicas}}
        try:
            api.update_service(
                inspect["ID"],
                inspect["Version"]["Index"],
                task_template=spec["TaskTemplate"],
                name=spec["Name"],
                labels=spec.get("Labels"),
                mode=spec["Mode"],
                endpoint_spec=spec.get("EndpointSpec"),
            )
            return
        except docker.errors.APIError as error:
            if "update out of sequence" not in str(error) or attempt == 4:
                raise
            time.sleep(0.5)


def run_scale(cluster: Cluster, phase: ScalePhase, run_id: str, data_dir: Path, progress=None) -> dict:
    """Run the scale phase; see the module docstring. Returns per-step results and the projection.

    Raises:
        PhaseFailed: a stop criterion was hit; the service was scaled back first.
    """
    started = time.monotonic()
    tracker = LeaderTracker(cluster, cluster.leader(), started)
    tracker.call(lambda api: ensure_service(cluster.engine(tracker.leader), phase, run_id))
    running, _ = tracker.call(lambda api: service_counts(api, phase.name))
    steps: list[StepResult] = []
    samples: list[Sample] = []
    failure: str | None = None
    baseline_failed = tracker.call(lambda api: failed_task_count(api, phase.name))
    cluster.dockerd_cpu(tracker.leader)  # first reading primes the CPU delta

    steps_file = data_dir / f"{phase.name}-steps.json"
    earlier = load_steps(steps_file)
    for number, target in enumerate(phase.steps, start=1):
        if running >= target:
            # Reached by an earlier attempt of this run (resumed after a failure or a kill).
            if target in earlier and earlier[target].converged:
                steps.append(earlier[target])
                samples.extend(earlier[target].samples)
            log.info("scale: step %d (%d replicas) already reached, %d running", number, target, running)
            continue
        step = run_step(cluster, tracker, phase, number, target, running, baseline_failed)
        baseline_failed += step.failed_tasks
        steps.append(step)
        samples.extend(step.samples)
        save_steps(steps_file, steps)
        failpoints.reach(f"during:{phase.name}")
        running = step.running
        log.info(
            "scale: step %d/%d: %d/%d running in %.1fs, %.1f tasks/s (p50 %.1f, max %.1f), "
            "%d failed, leader CPU max %s%%",
            number,
            len(phase.steps),
            step.running,
            target,
            step.seconds,
            step.throughput,
            step.interval_rates.get("p50") or 0,
            step.interval_rates.get("max") or 0,
            step.failed_tasks,
            _fmt(step.manager_cpu.get("max")),
        )
        if progress:
            progress(number, len(phase.steps))
        if step.aborted_by:
            failure = step.aborted_by
            break

    write_samples(data_dir / f"{phase.name}-samples.csv", samples)
    throughputs = [s.throughput for s in steps if s.tasks_started > 0]
    sustained = percentiles(throughputs)["p50"] if throughputs else None
    result = {
        "status": "failed" if failure else "completed",
        "kind": "scale",
        "phase": phase.name,
        "seconds": None,
        "leader": tracker.leader.name,
        "steps": [s.to_dict() for s in steps],
        "max_running": max((s.running for s in steps), default=running),
        "throughput_p50_over_steps": sustained,
        "projected_hours_to_million": round(MILLION / sustained / 3600, 2) if sustained else None,
        "swarm3k_tasks_per_second": round(SWARM3K_TASKS_PER_SECOND, 2),
        "swarm3k_projected_hours_to_million": round(MILLION / SWARM3K_TASKS_PER_SECOND / 3600, 2),
        "samples_file": f"data/{phase.name}-samples.csv",
        "aborted_by": failure,
    }
    if failure or not phase.keep:
        result["scale_down"] = tracker.call(lambda api: scale_down(api, phase, [s.target for s in steps]))
        if not phase.keep:
            tracker.call(lambda api: remove_service(api, phase.name))
    result["events"] = tracker.events
    result["seconds"] = round(time.monotonic() - started, 3)
    if failure:
        back = result["scale_down"]
        outcome = "scaled back to 0" if back["running"] == 0 else f"scale-down left {back['running']} running"
        raise PhaseFailed(f"scale phase {phase.name!r} stopped: {failure}; {outcome}", result)
    return result


def run_step(
    cluster: Cluster,
    tracker: LeaderTracker,
    phase: ScalePhase,
    number: int,
    target: int,
    running_before: int,
    failed_before: int,
) -> StepResult:
    tracker.call(lambda api: set_replicas(api, phase.name, target))
    started = time.monotonic()
    deadline = started + phase.step_deadline
    samples: list[Sample] = []
    previous_running, previous_time = running_before, started
    cpu_values: list[float] = []
    running = running_before
    converged = False
    aborted_by = None
    while True:
        time.sleep(phase.sample_interval)
        now = time.monotonic()
        running, desired = tracker.call(lambda api: service_counts(api, phase.name))
        cpu = leader_cpu(cluster, tracker.leader)
        if cpu is not None:
            cpu_values.append(cpu)
        rate = (running - previous_running) / (now - previous_time)
        samples.append(
            Sample(
                number,
                target,
                round(now - started, 3),
                running,
                desired,
                round(rate, 3),
                None if cpu is None else round(cpu, 1),
            )
        )
        previous_running, previous_time = running, now
        if running >= target:
            converged = True
            break
        criteria = phase.abort
        if criteria.max_manager_cpu and cpu is not None and cpu > criteria.max_manager_cpu:
            aborted_by = (
                f"leader dockerd CPU {cpu:.0f}% over scale.abort.max_manager_cpu "
                f"{criteria.max_manager_cpu:.0f}% at {running}/{target} running"
            )
            break
        if now > deadline:
            aborted_by = (
                f"step {number} did not converge: {running}/{target} running after "
                f"{phase.step_deadline:.0f}s (phases[{phase.name}].step_deadline)"
            )
            break
    seconds = time.monotonic() - started
    started_tasks = max(0, running - running_before)
    throughput = started_tasks / seconds if seconds > 0 else 0.0
    failed = max(0, tracker.call(lambda api: failed_task_count(api, phase.name)) - failed_before)
    failure_rate = failed / max(1, started_tasks + failed)
    criteria = phase.abort
    if aborted_by is None and criteria.max_failure_rate < 1 and failure_rate > criteria.max_failure_rate:
        aborted_by = (
            f"{failed} tasks failed or rejected in step {number} ({failure_rate:.0%}), over "
            f"abort.max_failure_rate {criteria.max_failure_rate:.0%}"
        )
    if aborted_by is None and criteria.min_throughput and throughput < criteria.min_throughput:
        aborted_by = (
            f"step {number} throughput {throughput:.2f} tasks/s under abort.min_throughput "
            f"{criteria.min_throughput:.2f}"
        )
    rates = [s.rate for s in samples if s.rate is not None]
    return StepResult(
        number=number,
        target=target,
        started_running=running_before,
        seconds=seconds,
        converged=converged,
        running=running,
        tasks_started=started_tasks,
        throughput=throughput,
        interval_rates=percentiles(rates),
        failed_tasks=failed,
        failure_rate=failure_rate,
        manager_cpu=percentiles(cpu_values),
        aborted_by=aborted_by,
        samples=samples,
    )


def leader_cpu(cluster: Cluster, leader) -> float | None:
    """Return the leader's dockerd CPU percent, or None while it cannot be read (the node is failing)."""
    try:
        return cluster.dockerd_cpu(leader)[0]
    except ENGINE_ERRORS:
        cluster.ssh.close()
        return None


def scale_down(api, phase: ScalePhase, reached: list[int], step_wait: float = 120.0) -> dict:
    """Scale back one step at a time to zero, waiting for each step to drain.

    Each wait grows with the tasks to stop (half a second each beyond ``step_wait``): after an
    aborted jump, agents are still starting queued containers before they can stop them.
    Returns the last target, the tasks still running then and the seconds it took.
    """
    started = time.monotonic()
    targets = sorted({t for t in reached if t > 0} | set(phase.steps), reverse=True)
    try:
        running, _ = service_counts(api, phase.name)
    except LookupError:
        return {"target": 0, "running": 0, "seconds": 0.0}
    target = running
    for target in [*[t for t in targets if t < running], 0]:
        set_replicas(api, phase.name, target)
        deadline = time.monotonic() + step_wait + 0.5 * max(0, running - target)
        while time.monotonic() < deadline:
            running, _ = service_counts(api, phase.name)
            if running <= target:
                break
            time.sleep(1)
        if running > target:
            log.warning("scale: scale-down to %d timed out with %d tasks still running", target, running)
        else:
            log.info("scale: scaled down to %d (%d running)", target, running)
    return {"target": target, "running": running, "seconds": round(time.monotonic() - started, 3)}


def remove_service(api, name: str) -> None:
    try:
        api.remove_service(name)
    except docker.errors.NotFound:
        pass


def write_samples(path: Path, samples: list[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "target", "elapsed_s", "running", "desired", "rate_per_s", "leader_cpu_percent"])
        for s in samples:
            writer.writerow([s.step, s.target, s.elapsed, s.running, s.desired, s.rate, s.manager_cpu])


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.0f}"
