"""Helpers to run the DigitalOcean provider against the local server in tests and benchmarks.

Example::

    with DOServer(test_config(droplet_limit=100, time_scale=20)) as server, api_endpoint(server):
        spec = experiment_spec(server, "exp", workers=12)
        provider = DigitalOceanProvider(spec, server.token, clock=Clock(20), state_dir=tmp)
        result = provider.provision("r1")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from swarmlab.doapi.client import END_POINT_VARIABLE
from swarmlab.doapi.cloudinit import generate_host_key
from swarmlab.doserver.config import ServerConfig
from swarmlab.doserver.server import DOServer
from swarmlab.spec import ExperimentSpec, parse_spec


def test_config(**overrides: Any) -> ServerConfig:
    """Return a :class:`ServerConfig` with one operator SSH key registered on the account."""
    overrides.setdefault("ssh_public_keys", (("operator", generate_host_key().public),))
    return ServerConfig(**overrides)


# pytest would otherwise collect the function above as a test when a test module imports it.
test_config.__test__ = False  # type: ignore[attr-defined]


def operator_key_fingerprint(server: DOServer) -> str:
    """Return the fingerprint of the first SSH key registered on the server's account."""
    keys = server.state.keys({"per_page": ["1"]}, server.url)["ssh_keys"]
    if not keys:
        raise ValueError("the server has no SSH key; build its config with test_config()")
    return keys[0]["fingerprint"]


@contextmanager
def api_endpoint(server: DOServer) -> Iterator[str]:
    """Point python-digitalocean at ``server`` through ``DIGITALOCEAN_END_POINT``, then restore."""
    previous = os.environ.get(END_POINT_VARIABLE)
    os.environ[END_POINT_VARIABLE] = server.end_point
    try:
        yield server.end_point
    finally:
        if previous is None:
            os.environ.pop(END_POINT_VARIABLE, None)
        else:
            os.environ[END_POINT_VARIABLE] = previous


def experiment_spec(
    server: DOServer,
    name: str = "exp",
    *,
    managers: int = 3,
    workers: int = 4,
    extra: dict | None = None,
    **settings: Any,
) -> ExperimentSpec:
    """Return a spec for the digitalocean provider with the server's operator key.

    ``settings`` go to ``provider.digitalocean``; ``extra`` merges into the top level.
    """
    settings.setdefault("ssh_keys", [operator_key_fingerprint(server)])
    data = {
        "name": name,
        "provider": {"kind": "digitalocean", "digitalocean": settings},
        "managers": {"count": managers},
        "workers": {"count": workers},
        **(extra or {}),
    }
    return parse_spec(data, source="test")
