"""Client side of the DigitalOcean API: rate limiter, retrying session, python-digitalocean layer.

- :mod:`~swarmlab.doapi.clock`: API time, optionally scaled for tests against the local server.
- :mod:`~swarmlab.doapi.ratelimit`: the client-side rate limiter (250/min, 5,000/h, headers).
- :mod:`~swarmlab.doapi.session`: the requests Session that retries and raises typed errors.
- :mod:`~swarmlab.doapi.client`: the calls the provider makes, over python-digitalocean.
- :mod:`~swarmlab.doapi.cloudinit`: user data with pre-generated SSH host keys and sysctls.
"""

from swarmlab.doapi.client import DOClient
from swarmlab.doapi.clock import Clock
from swarmlab.doapi.errors import (
    ApiConnectionError,
    DigitalOceanError,
    DOApiError,
    PreflightError,
    ProvisionTimeout,
    TeardownTimeout,
    UncertainOutcomeError,
)
from swarmlab.doapi.ratelimit import RateLimiter
from swarmlab.doapi.session import ApiSession

__all__ = [
    "ApiConnectionError",
    "ApiSession",
    "Clock",
    "DOApiError",
    "DOClient",
    "DigitalOceanError",
    "PreflightError",
    "ProvisionTimeout",
    "RateLimiter",
    "TeardownTimeout",
    "UncertainOutcomeError",
]
