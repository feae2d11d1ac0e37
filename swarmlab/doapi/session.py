"""A requests Session that rate-limits, retries and turns error responses into exceptions.

python-digitalocean 1.17 sends each request once, raises ``DataReadError`` on a 429 and drops
the rate-limit headers of that response. :class:`ApiSession` sits underneath it: the DigitalOcean
client installs it as the ``_session`` of every python-digitalocean object it makes, so every
GET and DELETE passes through :meth:`ApiSession.request`, which

- waits for the shared :class:`~swarmlab.doapi.ratelimit.RateLimiter` before each attempt and
  feeds it the headers of each response;
- on a 429 delays all requests for ``retry-after`` (or until ``ratelimit-reset``) and retries;
- retries 5xx responses and connection errors with exponential back-off and jitter, but only for
  methods that are safe to repeat: a POST that may have reached the server raises
  :class:`~swarmlab.doapi.errors.UncertainOutcomeError` instead, so the caller lists first and
  never creates a droplet twice;
- raises :class:`~swarmlab.doapi.errors.DOApiError` for any other error status, which passes
  through python-digitalocean unchanged.

Retries use tenacity with the session's clock for sleeping, so a scaled clock scales back-off.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import tenacity
import urllib3

from swarmlab.doapi.clock import Clock
from swarmlab.doapi.errors import (
    ApiConnectionError,
    DOApiError,
    RetryableApiError,
    UncertainOutcomeError,
)
from swarmlab.doapi.ratelimit import RateLimiter

log = logging.getLogger(__name__)

SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass
class SessionStats:
    """Attempts sent through the session, by outcome; retries are attempts after the first."""

    attempts: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    uncertain: int = 0


class ApiSession(requests.Session):
    """requests Session for the DigitalOcean API; see the module docstring.

    Args:
        limiter: the rate limiter shared by every request made with the same token.
        timeout: seconds for connect and read when the caller passes no timeout.
        max_attempts: attempts per request, the first one included.
        backoff_initial: first back-off in API seconds after a 5xx or connection error.
        backoff_max: maximum back-off in API seconds.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        timeout: float = 30.0,
        max_attempts: int = 8,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ):
        super().__init__()
        self.limiter = limiter
        self.clock: Clock = limiter.clock
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.stats = SessionStats()
        self._stats_lock = threading.Lock()
        self._backoff = tenacity.wait_exponential_jitter(initial=backoff_initial, max=backoff_max)

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        method = method.upper()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_is_retryable),
            sleep=self.clock.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        return retrying(self._attempt, method, url, *args, **kwargs)

    def _attempt(self, method: str, url: str, *args, **kwargs) -> requests.Response:
        path = urlsplit(url).path
        self.limiter.acquire()
        self._count(method)
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.exceptions.RequestException as error:
            return self._connection_failed(method, path, error)

        self.limiter.observe(response.headers)
        if response.ok:
            return response

        error_id, message = _error_body(response)
        status = response.status_code
        if status == 429:
            retry_after = _retry_after(response)
            hold = retry_after if retry_after is not None else self.limiter.seconds_until_reset()
            self.limiter.hold(hold if hold is not None else 1.0)
            self._bump("rate_limited")
            raise RetryableApiError(status, error_id, message, method, path, retry_after=retry_after)
        if status >= 500:
            self._bump("server_errors")
            if method not in SAFE_TO_REPEAT:
                self._bump("uncertain")
                raise UncertainOutcomeError(method, path, f"{status} {error_id}: {message}")
            raise RetryableApiError(status, error_id, message, method, path)
        raise DOApiError(status, error_id, message, method, path)

    def _connection_failed(self, method: str, path: str, error: Exception) -> requests.Response:
        self._bump("connection_errors")
        sent = _request_was_sent(error)
        reason = type(error).__name__
        if sent and method not in SAFE_TO_REPEAT:
            self._bump("uncertain")
            raise UncertainOutcomeError(method, path, reason) from None
        raise ApiConnectionError(method, path, reason, sent) from None

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, RetryableApiError) and error.status == 429:
            # The limiter already delays every request until retry-after has passed.
            return 0.0
        return self._backoff(retry_state)

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        self._bump("retries")
        error = retry_state.outcome.exception() if retry_state.outcome else None
        # 429s are routine under load and the limiter handles them; the stats count them.
        rate_limited = isinstance(error, RetryableApiError) and error.status == 429
        log.log(
            logging.DEBUG if rate_limited else logging.INFO,
            "DigitalOcean API: attempt %d failed (%s); retrying",
            retry_state.attempt_number,
            error,
        )

    def _count(self, method: str) -> None:
        with self._stats_lock:
            self.stats.attempts += 1
            self.stats.by_method[method] = self.stats.by_method.get(method, 0) + 1

    def _bump(self, name: str) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def __repr__(self) -> str:
        return f"ApiSession(timeout={self.timeout}, max_attempts={self.max_attempts})"


def _is_retryable(error: BaseException) -> bool:
    if isinstance(error, RetryableApiError):
        return True
    return isinstance(error, ApiConnectionError)


def _request_was_sent(error: Exception) -> bool:
    """Tell whether a failed request may have reached the server."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return False
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return not isinstance(reason, urllib3.exceptions.NewConnectionError)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_body(response: requests.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    if not isinstance(body, dict):
        return "", str(body)[:200]
    return str(body.get("id", "")), str(body.get("message", ""))
