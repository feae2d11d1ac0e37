"""A local DigitalOcean-compatible API server, for tests, benchmarks and lab-backed droplets.

Run it with ``python -m swarmlab.doserver --port 8080`` or in-process::

    from swarmlab.doserver import DOServer, ServerConfig, Faults

    with DOServer(ServerConfig(droplet_limit=5000, time_scale=20)) as server:
        os.environ["DIGITALOCEAN_END_POINT"] = server.end_point   # http://127.0.0.1:PORT/v2/
        os.environ["DIGITALOCEAN_ACCESS_TOKEN"] = server.token
        ...
        server.stats.requests("POST", "/v2/droplets")

It binds to loopback addresses only and responds with the bodies, status codes and headers of the
public API v2 description:

- droplets: ``POST /v2/droplets`` with ``name`` or ``names`` (at most ten), list with
  ``tag_name``/``name`` and pagination (``per_page`` at most 200, absolute ``links.pages``
  URLs, ``meta.total``), get, delete, delete by tag, and their actions;
- ``/v2/account`` (``droplet_limit`` from the config), ``/v2/account/keys`` (the list allows 10
  requests per minute; get by id or fingerprint is not limited), ``/v2/regions``, ``/v2/sizes``,
  ``/v2/images`` and ``/v2/images/{id or slug}``, ``/v2/tags``, ``/v2/actions``;
- rate limits per token: 250 requests per sliding minute (429 with ``retry-after``) and 5,000 per
  sliding hour, with ``ratelimit-limit``, ``ratelimit-remaining`` and ``ratelimit-reset`` on every
  response and a ``Date`` header in API time;
- droplet status ``new`` until ``active_delay`` (plus jitter) has passed, then ``active`` with
  ``networks.v4`` holding a private and a public address;
- :class:`Faults`: bursts of 429s, 500s, a connection dropped after a create took effect, slow
  responses, all from a seeded generator;
- ``time_scale``: API seconds per real second, applied to rate-limit windows, delays and ``Date``;
- ``GET /_doserver/stats``: the :class:`ServerStats` as JSON (not part of the DigitalOcean API).

Droplets without a backend are address-only records: their addresses come from 198.18.0.0/15,
the benchmarking range, and nothing runs behind them.

Backends
--------
``DOServer(config, backend=obj)`` puts a machine behind every droplet. ``obj`` provides::

    create_node(name: str, user_data: str | None = None) -> dict
        Create the machine for droplet ``name`` and return at least ``{"public_ip": str}``,
        optionally ``"private_ip"`` (the public address is used when it is missing). Called in
        a worker thread (``config.backend_workers`` at a time), so it may block while the machine
        boots; the droplet stays ``new`` until it returns and ``active_delay`` has passed. An
        exception leaves the droplet ``new`` for good and its create action ``errored``, as a
        failed droplet would be.

        ``user_data`` is the droplet's cloud-init text exactly as the create request sent it.
        The backend plays cloud-init: :func:`swarmlab.doapi.cloudinit.parse_user_data` reads
        the droplet's own SSH host key (private and public), its sysctls and packages from it,
        and the backend installs that host key as the machine's sshd host key, so the key the
        provider pinned is the key the machine serves.

    destroy_node(name: str) -> None
        Destroy the machine; called in a worker thread after a delete (by id or by tag). The
        droplet leaves the listings once this has returned and ``delete_delay`` has passed.

The API does not make names unique: a client that creates the same name twice gets two
droplets, and ``create_node`` is called twice with that name.
"""

from swarmlab.doserver.config import Faults, ServerConfig
from swarmlab.doserver.server import DOServer, check_loopback
from swarmlab.doserver.state import DropletBackend, ServerStats

__all__ = ["DOServer", "DropletBackend", "Faults", "ServerConfig", "ServerStats", "check_loopback"]
