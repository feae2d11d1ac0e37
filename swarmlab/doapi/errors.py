"""Errors of the DigitalOcean layer; none of them ever carries the API token."""

from __future__ import annotations


class DigitalOceanError(RuntimeError):
    """Base class of every error the DigitalOcean provider and its API layer raise."""


class DOApiError(DigitalOceanError):
    """The API responded with an error status (after any retries the status allows).

    Attributes:
        status: HTTP status code, e.g. 401, 422, 429.
        error_id: the ``id`` field of the error body, e.g. ``unauthorized``; empty if absent.
        message: the ``message`` field of the error body.
        method: HTTP method of the request.
        path: URL path of the request, without the query string.
    """

    def __init__(self, status: int, error_id: str, message: str, method: str, path: str):
        self.status = status
        self.error_id = error_id
        self.message = message
        self.method = method
        self.path = path
        super().__init__(f"{method} {path} failed with {status} {error_id}: {message}")


class RetryableApiError(DOApiError):
    """A 429 or 5xx response; ``retry_after`` is the server's ``retry-after`` in seconds, if any."""

    def __init__(self, *args, retry_after: float | None = None):
        super().__init__(*args)
        self.retry_after = retry_after


class ApiConnectionError(DigitalOceanError):
    """No response from the API: the connection failed, was dropped or timed out.

    ``sent`` is False when the request never left this machine (connection refused or connect
    timeout), so even a create can be sent again safely.
    """

    def __init__(self, method: str, path: str, reason: str, sent: bool):
        self.method = method
        self.path = path
        self.sent = sent
        super().__init__(f"{method} {path}: no response from the API ({reason})")


class UncertainOutcomeError(DigitalOceanError):
    """A request that is unsafe to repeat (a create) may or may not have taken effect.

    Raised for a connection lost after the request was sent, a read timeout, or a 5xx response
    to a POST. The caller must list what exists before it sends the request again.
    """

    def __init__(self, method: str, path: str, reason: str):
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: outcome unknown ({reason}); list before retrying")


class PreflightError(DigitalOceanError):
    """The plan cannot run on this account; ``problems`` contains one line per problem and its fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"- {problem}" for problem in problems)
        super().__init__(f"DigitalOcean preflight failed; nothing was created:\n{lines}")


class ProvisionTimeout(DigitalOceanError):
    """Droplets did not become active with addresses before the deadline."""


class TeardownTimeout(DigitalOceanError):
    """Droplets were still listed after the delete deadline."""
