"""Client-side rate limiter for the DigitalOcean API.

DigitalOcean allows 250 requests per minute and 5,000 per hour per token. Every response
carries ``ratelimit-limit`` (the hourly limit), ``ratelimit-remaining`` (requests left in the
hour) and ``ratelimit-reset`` (Unix time when the oldest request of the hour expires). A 429
from the per-minute limit carries ``retry-after`` in seconds.

:class:`RateLimiter` keeps a sliding-window log of its own requests for both windows and stays a
few requests under each limit, because the server timestamps a request a little later than the
client and concurrent requests overtake each other. It also follows the server's view: when
``ratelimit-remaining`` falls to the hourly reserve (other clients may share the token), it
waits until ``ratelimit-reset``, and after a 429 it delays every request for ``retry-after``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from swarmlab.doapi.clock import Clock

log = logging.getLogger(__name__)

PER_MINUTE = 250
PER_HOUR = 5000

# Seconds to wait before probing again when the server reported the hourly budget spent and
# its reset time has passed without a fresh response.
_PROBE_SECONDS = 1.0


@dataclass
class LimiterStats:
    """Counts of the limiter: requests let through, waits, API seconds waited, holds."""

    requests: int = 0
    waits: int = 0
    waited_seconds: float = 0.0
    holds: int = 0


class RateLimiter:
    """Blocks each request until it fits under the per-minute and per-hour limits.

    Args:
        per_minute: the API's per-minute limit.
        per_hour: the API's per-hour limit.
        clock: API time; a scaled :class:`Clock` shrinks the windows with the server's.
        minute_reserve: requests kept unused in every minute window.
        hour_reserve: requests kept unused in every hour window, and the ``ratelimit-remaining``
            value at which the limiter waits for ``ratelimit-reset``.

    Thread-safe: one limiter is shared by every thread that uses the same token.
    """

    def __init__(
        self,
        per_minute: int = PER_MINUTE,
        per_hour: int = PER_HOUR,
        *,
        clock: Clock | None = None,
        minute_reserve: int = 5,
        hour_reserve: int = 50,
    ):
        if per_minute <= minute_reserve or per_hour <= hour_reserve:
            raise ValueError("each limit must be larger than its reserve")
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.clock = clock or Clock()
        self.minute_budget = per_minute - minute_reserve
        self.hour_budget = per_hour - hour_reserve
        self.hour_reserve = hour_reserve
        self.stats = LimiterStats()
        self._lock = threading.Lock()
        self._minute: deque[float] = deque()
        self._hour: deque[float] = deque()
        self._held_until = 0.0
        self._server_remaining: int | None = None
        self._server_reset_at: float | None = None

    def acquire(self) -> float:
        """Wait until one more request fits, count it, and return the API seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                delay = self._delay(self.clock.monotonic())
                if delay <= 0:
                    now = self.clock.monotonic()
                    self._minute.append(now)
                    self._hour.append(now)
                    if self._server_remaining is not None:
                        self._server_remaining -= 1
                    self.stats.requests += 1
                    if waited:
                        self.stats.waits += 1
                        self.stats.waited_seconds += waited
                    return waited
            self.clock.sleep(delay)
            waited += delay

    def _delay(self, now: float) -> float:
        """Return how long the next request must wait; caller holds the lock."""
        while self._minute and self._minute[0] <= now - 60:
            self._minute.popleft()
        while self._hour and self._hour[0] <= now - 3600:
            self._hour.popleft()

        delays = [self._held_until - now]
        if len(self._minute) >= self.minute_budget:
            delays.append(self._minute[0] + 60 - now)
        if len(self._hour) >= self.hour_budget:
            delays.append(self._hour[0] + 3600 - now)
        if self._server_remaining is not None and self._server_remaining <= self.hour_reserve:
            reset_at = self._server_reset_at
            if reset_at is not None and reset_at > now:
                delays.append(reset_at - now)
            else:
                # The reset time has passed: let one request probe for a fresh count.
                self._server_remaining = self.hour_reserve + 1
                self._server_reset_at = now + _PROBE_SECONDS
        return max(delays)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take the server's ``ratelimit-remaining`` and ``ratelimit-reset`` from a response.

        ``ratelimit-reset`` is converted to a delay with the response's own ``Date`` header, so
        the two clocks never need to agree. Without a ``Date`` the reset time is ignored.
        """
        remaining = _int_header(headers, "ratelimit-remaining")
        if remaining is None:
            return
        reset = _int_header(headers, "ratelimit-reset")
        server_now = _date_header(headers)
        with self._lock:
            self._server_remaining = remaining
            if reset is not None and server_now is not None:
                self._server_reset_at = self.clock.monotonic() + max(0.0, reset - server_now)
            if remaining <= self.hour_reserve:
                log.warning("DigitalOcean API: %d requests left this hour; waiting for the reset", remaining)

    def hold(self, seconds: float) -> None:
        """Hold every request for ``seconds`` API seconds, e.g. a 429's ``retry-after``."""
        with self._lock:
            self._held_until = max(self._held_until, self.clock.monotonic() + seconds)
            self.stats.holds += 1

    def seconds_until_reset(self) -> float | None:
        """Return API seconds until the server's reported ``ratelimit-reset``, if known."""
        with self._lock:
            if self._server_reset_at is None:
                return None
            return max(0.0, self._server_reset_at - self.clock.monotonic())


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _date_header(headers: Mapping[str, str]) -> float | None:
    value = headers.get("date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
