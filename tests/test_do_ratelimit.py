"""The client-side rate limiter and retrying session against the local server's real limits."""

from __future__ import annotations

import socket
import threading

import pytest

from swarmlab.doapi import (
    ApiConnectionError,
    ApiSession,
    Clock,
    DOApiError,
    DOClient,
    RateLimiter,
    UncertainOutcomeError,
)
from swarmlab.doserver import DOServer, Faults
from swarmlab.doserver.testing import api_endpoint, test_config

CREATE = dict(
    size="s-1vcpu-1gb",
    image="debian-12-x64",
    region="fra1",
    ssh_keys=[],
    tags=["t"],
    user_data="#cloud-config\n",
)


def make_client(server: DOServer, scale: float, **session_options) -> DOClient:
    limiter = RateLimiter(clock=Clock(scale))
    return DOClient(server.token, ApiSession(limiter, **session_options))


def test_limiter_stays_under_per_minute_limit():
    # A per-minute limit of 30 instead of 250 on both sides, so the limiter binds even on a
    # busy machine. The windows work the same way.
    scale = 20.0
    with DOServer(test_config(time_scale=scale, per_minute=30)) as server, api_endpoint(server):
        limiter = RateLimiter(per_minute=30, clock=Clock(scale))
        client = DOClient(server.token, ApiSession(limiter))
        started = limiter.clock.monotonic()

        def work() -> None:
            for _ in range(15):
                client.account()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        elapsed = limiter.clock.monotonic() - started
        assert server.stats.counted == 60
        assert server.stats.limit_rejections == 0
        assert server.stats.max_per_minute <= 30
        assert limiter.stats.waits > 0
        # 60 requests at 25 per sliding minute need the window to slide at least twice.
        assert elapsed >= 120


def test_limiter_waits_for_reset_when_remaining_runs_low():
    # Another client used most of the hour: the server allows 15 where this client expects
    # 5,000, so only ratelimit-remaining and ratelimit-reset can keep it from a 429.
    scale = 720.0
    config = test_config(time_scale=scale, per_hour=15)
    with DOServer(config) as server, api_endpoint(server):
        limiter = RateLimiter(clock=Clock(scale), hour_reserve=5)
        client = DOClient(server.token, ApiSession(limiter))
        started = limiter.clock.monotonic()
        for _ in range(15):
            client.account()

        assert server.stats.limit_rejections == 0
        assert server.stats.max_per_hour <= 15
        assert limiter.stats.waits >= 1
        # The first 10 requests fit; the rest waited for the oldest of them to expire.
        assert limiter.clock.monotonic() - started >= 3600


def test_retry_after_is_honoured():
    scale = 50.0
    config = test_config(time_scale=scale, faults=Faults(retry_after=7))
    with DOServer(config) as server, api_endpoint(server):
        client = make_client(server, scale)
        server.queue_429(3)
        started = client.session.clock.monotonic()
        assert client.account().droplet_limit == 25

        assert client.session.stats.rate_limited == 3
        assert client.session.stats.attempts == 4
        assert client.session.clock.monotonic() - started >= 21


def test_rate_limited_create_is_sent_again():
    scale = 50.0
    with DOServer(test_config(time_scale=scale)) as server, api_endpoint(server):
        client = make_client(server, scale)
        server.queue_429(2)
        droplets = client.create_droplets(["rl-1", "rl-2"], **CREATE)

        assert [d.name for d in droplets] == ["rl-1", "rl-2"]
        assert server.stats.requests("POST", "/v2/droplets") == 3
        assert len(server.state.droplet_records()) == 2


def test_server_errors_retried_only_when_safe():
    scale = 200.0
    with DOServer(test_config(time_scale=scale, faults=Faults(rate_500=1.0))) as server:
        with api_endpoint(server):
            client = make_client(server, scale, max_attempts=3)
            with pytest.raises(DOApiError) as raised:
                client.account()
            assert raised.value.status == 500
            assert server.stats.requests("GET", "/v2/account") == 3

            with pytest.raises(UncertainOutcomeError, match="list before retrying"):
                client.create_droplets(["se-1"], **CREATE)
            assert server.stats.requests("POST", "/v2/droplets") == 1


def test_dropped_create_is_uncertain_but_took_effect():
    scale = 50.0
    config = test_config(time_scale=scale, faults=Faults(drop_after_create=1.0))
    with DOServer(config) as server, api_endpoint(server):
        client = make_client(server, scale)
        with pytest.raises(UncertainOutcomeError):
            client.create_droplets(["drop-1"], **CREATE)
        assert server.stats.requests("POST", "/v2/droplets") == 1
        assert [d.name for d in client.droplets_by_tag("t")] == ["drop-1"]


def test_slow_create_times_out_as_uncertain():
    scale = 50.0
    config = test_config(time_scale=scale, faults=Faults(slow_rate=1.0, slow_seconds=1.0))
    with DOServer(config) as server, api_endpoint(server):
        client = make_client(server, scale, timeout=0.3)
        with pytest.raises(UncertainOutcomeError, match="ReadTimeout"):
            client.create_droplets(["slow-1"], **CREATE)
        assert len(server.state.droplet_records()) == 1


def test_refused_connection_is_retried_then_reported(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DIGITALOCEAN_END_POINT", f"http://127.0.0.1:{port}/v2/")
    limiter = RateLimiter(clock=Clock(1000.0))
    client = DOClient("token", ApiSession(limiter, max_attempts=3, timeout=2))

    with pytest.raises(ApiConnectionError) as raised:
        client.create_droplets(["nowhere-1"], **CREATE)
    # Nothing reached a server, so even the create was safe to send three times.
    assert raised.value.sent is False
    assert client.session.stats.attempts == 3


def test_end_point_must_end_in_v2(monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_END_POINT", "http://127.0.0.1:9/api")
    with pytest.raises(ValueError, match="must end in /v2/"):
        DOClient("token", ApiSession(RateLimiter()))
