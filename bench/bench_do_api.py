"""API requests and time to provision N droplets: the swarmlab provider against the usual way.

Both approaches run against the local DigitalOcean-compatible server in the same process run,
with the API's real limits (250 requests per sliding minute, 5,000 per hour) on a scaled clock:

- swarmlab: :class:`~swarmlab.providers.digitalocean.DigitalOceanProvider`: ten names per
  create, one paginated listing of the run's tag per poll, client-side rate limiter.
- one-by-one: the docker-machine/Terraform way. Each droplet gets its own create, then its own
  polling (``GET /v2/droplets/{id}``), modelled on the wait of Terraform's DigitalOcean provider:
  10 s after the create, then waits that double from 0.1 s, at least 3 s and at most 10 s.
  Ten droplets are in flight at once (Terraform's default parallelism) and there is no
  client-side limiter. A 429 is waited out (``retry-after``, or 60 s without one), which is
  kinder than docker-machine, which fails.

The one-by-one runs stop after ``--naive-hours`` API hours; the table says how far they got.
Times are API seconds (scaled back from real time); the floor is the least time the creates
alone need at the per-minute limit, plus the server's boot delay.

Usage: ``python bench/bench_do_api.py [--sizes 1000 4700] [--scale 20] [--naive-scale 120]``
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from swarmlab.doapi import Clock
from swarmlab.doserver import DOServer
from swarmlab.doserver.testing import api_endpoint, experiment_spec, test_config
from swarmlab.providers.digitalocean import DigitalOceanProvider

ACTIVE_DELAY = 45.0
ACTIVE_JITTER = 15.0
PER_MINUTE = 250


@dataclass
class Outcome:
    approach: str
    droplets: int
    active: int
    requests: int
    rejected_429: int
    api_seconds: float
    real_seconds: float
    max_per_minute: int
    finished: bool

    @property
    def per_droplet(self) -> float:
        return self.requests / max(1, self.active)


def floor_seconds(droplets: int) -> float:
    """Return the least API time: creates (ten names each) at 250 per sliding minute, then boot."""
    creates = math.ceil(droplets / 10)
    return max(0, math.ceil(creates / PER_MINUTE) - 1) * 60.0 + ACTIVE_DELAY + ACTIVE_JITTER


def server_config(droplets: int, scale: float):
    return test_config(
        droplet_limit=droplets + 10,
        time_scale=scale,
        active_delay=ACTIVE_DELAY,
        active_jitter=ACTIVE_JITTER,
    )


def run_swarmlab(droplets: int, scale: float) -> Outcome:
    with DOServer(server_config(droplets, scale)) as server, api_endpoint(server):
        spec = experiment_spec(server, "bench", managers=3, workers=droplets - 3)
        with tempfile.TemporaryDirectory() as state:
            provider = DigitalOceanProvider(spec, server.token, clock=Clock(scale), state_dir=state)
            started = time.monotonic()
            result = provider.provision("r1")
            real = time.monotonic() - started
            requests_made = server.stats.counted
            provider.teardown("r1")
        return Outcome(
            approach="swarmlab",
            droplets=droplets,
            active=len(result.inventory.nodes),
            requests=requests_made,
            rejected_429=server.stats.limit_rejections + server.stats.injected_429,
            api_seconds=result.seconds,
            real_seconds=real,
            max_per_minute=server.stats.max_per_minute,
            finished=True,
        )


def run_one_by_one(droplets: int, scale: float, max_hours: float) -> Outcome:
    clock = Clock(scale)
    deadline = max_hours * 3600
    active = 0
    lock = threading.Lock()

    with DOServer(server_config(droplets, scale)) as server:
        headers = {"Authorization": f"Bearer {server.token}"}
        local = threading.local()

        def call(method: str, url: str, **kwargs) -> requests.Response | None:
            """Send until not rate-limited; None once the bench's deadline has passed."""
            if not hasattr(local, "session"):
                local.session = requests.Session()
                local.session.headers.update(headers)
            while clock.monotonic() < deadline:
                response = local.session.request(method, url, timeout=30, **kwargs)
                if response.status_code != 429:
                    return response
                clock.sleep(float(response.headers.get("retry-after", 60)))
            return None

        def one_droplet(index: int) -> None:
            nonlocal active
            body = {
                "name": f"naive-{index}",
                "size": "s-1vcpu-1gb",
                "image": "debian-12-x64",
                "region": "fra1",
                "tags": ["naive"],
            }
            created = call("POST", f"{server.url}/v2/droplets", json=body)
            if created is None:
                return
            droplet_id = created.json()["droplet"]["id"]
            clock.sleep(10)
            wait = 0.1
            while True:
                response = call("GET", f"{server.url}/v2/droplets/{droplet_id}")
                if response is None:
                    return
                if response.json()["droplet"]["status"] == "active":
                    with lock:
                        active += 1
                    return
                wait = min(wait * 2, 10.0)
                clock.sleep(max(wait, 3.0))

        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(one_droplet, range(droplets)))
        real = time.monotonic() - started
        return Outcome(
            approach="one-by-one",
            droplets=droplets,
            active=active,
            requests=server.stats.counted,
            rejected_429=server.stats.limit_rejections,
            api_seconds=min(clock.monotonic(), deadline),
            real_seconds=real,
            max_per_minute=server.stats.max_per_minute,
            finished=active == droplets,
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4700])
    parser.add_argument("--scale", type=float, default=20.0, help="API seconds per real second for the swarmlab runs")
    parser.add_argument(
        "--naive-scale", type=float, default=120.0, help="API seconds per real second for the one-by-one runs"
    )
    parser.add_argument("--naive-hours", type=float, default=2.0, help="API hours after which a one-by-one run stops")
    parser.add_argument("--repeat", type=int, default=1, help="swarmlab runs per size (median)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = []
    for size in args.sizes:
        ours = [run_swarmlab(size, args.scale) for _ in range(args.repeat)]
        median = sorted(ours, key=lambda o: o.api_seconds)[len(ours) // 2]
        naive = run_one_by_one(size, args.naive_scale, args.naive_hours)
        rows.append((size, median, statistics.median(o.real_seconds for o in ours), naive))

    print(
        "| droplets | approach | active | requests | per droplet | 429s | max/min "
        "| API time | floor | time/floor | real time |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, ours, ours_real, naive in rows:
        floor = floor_seconds(size)
        for outcome, real in ((ours, ours_real), (naive, naive.real_seconds)):
            done = "" if outcome.finished else " (stopped)"
            print(
                f"| {size:,} | {outcome.approach} | {outcome.active:,}{done} | {outcome.requests:,} "
                f"| {outcome.per_droplet:.3f} | {outcome.rejected_429:,} | {outcome.max_per_minute} "
                f"| {_minutes(outcome.api_seconds)} | {_minutes(floor)} "
                f"| {outcome.api_seconds / floor:.2f} | {real:.1f} s |"
            )
        print(
            f"| {size:,} | ratio one-by-one/swarmlab | | | "
            f"{naive.per_droplet / ours.per_droplet:.1f}x | | | "
            f"{naive.api_seconds / ours.api_seconds:.1f}x{' or more' if not naive.finished else ''} "
            "| | | |"
        )


if __name__ == "__main__":
    main()
