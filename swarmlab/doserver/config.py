"""Settings and fault plan of the local DigitalOcean-compatible API server."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Faults:
    """Faults the server injects into authenticated requests, drawn from a seeded generator.

    Injected 429 and 500 responses come before the request takes effect; they count towards the
    rate-limit windows like any other request. A dropped create takes effect (the droplets
    exist) and then the server closes the connection without a response. A slow response takes
    effect and then waits ``slow_seconds`` real seconds before it is sent.

    Attributes:
        rate_429: fraction of requests that start a burst of injected 429 responses.
        burst_429: consecutive requests that get a 429 per burst.
        retry_after: ``retry-after`` of an injected 429, in API seconds.
        rate_500: fraction of requests that get a 500 ``server_error``.
        drop_after_create: fraction of accepted creates whose connection is dropped.
        max_drops: most creates dropped in the server's life; None for no cap.
        slow_rate: fraction of responses sent late.
        slow_seconds: real seconds a slow response waits.
        seed: seed of the generator, so a fault plan repeats run after run.
    """

    rate_429: float = 0.0
    burst_429: int = 1
    retry_after: float = 1.0
    rate_500: float = 0.0
    drop_after_create: float = 0.0
    max_drops: int | None = None
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rate_429", "rate_500", "drop_after_create", "slow_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} is {value}; use a fraction from 0 to 1")
        if self.burst_429 < 1:
            raise ValueError(f"Faults.burst_429 is {self.burst_429}; use 1 or more")


@dataclass(frozen=True)
class ServerConfig:
    """Settings of :class:`~swarmlab.doserver.DOServer`.

    Times are API seconds unless marked real; ``time_scale`` API seconds pass per real
    second, so at ``time_scale=20`` the per-minute rate-limit window lasts three real seconds.

    Attributes:
        host: address to bind; only loopback addresses are accepted.
        port: TCP port; 0 picks a free one.
        tokens: API tokens the server accepts as ``Authorization: Bearer``.
        droplet_limit: the account's ``droplet_limit``; creates beyond it get a 422.
        time_scale: API seconds per real second.
        active_delay: seconds from create until a droplet is ``active`` with addresses.
        active_jitter: up to this many extra seconds, drawn per droplet.
        delete_delay: seconds from a delete until the droplet is gone from listings.
        per_minute: requests per token per sliding minute before a 429 with ``retry-after``.
        per_hour: requests per token per sliding hour before a 429.
        keys_per_minute: ``GET /v2/account/keys`` requests per token per minute.
        ssh_public_keys: OpenSSH public keys registered on the account at start, as
            ``(name, public_key)``; ids and fingerprints are assigned by the server.
        backend_workers: threads that call the backend's ``create_node``/``destroy_node``.
        faults: the fault plan.
    """

    host: str = "127.0.0.1"
    port: int = 0
    tokens: tuple[str, ...] = ("doserver-token",)
    droplet_limit: int = 25
    time_scale: float = 1.0
    active_delay: float = 30.0
    active_jitter: float = 0.0
    delete_delay: float = 3.0
    per_minute: int = 250
    per_hour: int = 5000
    keys_per_minute: int = 10
    ssh_public_keys: tuple[tuple[str, str], ...] = ()
    backend_workers: int = 4
    faults: Faults = field(default_factory=Faults)
