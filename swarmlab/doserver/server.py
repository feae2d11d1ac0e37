"""HTTP layer of the local DigitalOcean-compatible API server (stdlib ``http.server``)."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from swarmlab.doserver.config import Faults, ServerConfig
from swarmlab.doserver.state import ApiError, ApiState, DropletBackend, Reply, ServerStats

log = logging.getLogger(__name__)

STATS_PATH = "/_doserver/stats"

# (method, route template, handler). A handler takes (state, match, query, body, base URL)
# and returns the JSON body, or None for 204 No Content.
_Route = tuple[str, str, Callable]
ROUTES: list[_Route] = [
    ("GET", "/v2/account", lambda s, m, q, b, u: s.account()),
    ("GET", "/v2/account/keys", lambda s, m, q, b, u: s.keys(q, u)),
    ("POST", "/v2/account/keys", lambda s, m, q, b, u: s.create_key(b)),
    ("GET", "/v2/account/keys/{key}", lambda s, m, q, b, u: s.key(m["key"])),
    ("DELETE", "/v2/account/keys/{key}", lambda s, m, q, b, u: s.delete_key(m["key"])),
    ("GET", "/v2/regions", lambda s, m, q, b, u: s.regions(q, u)),
    ("GET", "/v2/sizes", lambda s, m, q, b, u: s.sizes(q, u)),
    ("GET", "/v2/images", lambda s, m, q, b, u: s.images(q, u)),
    ("GET", "/v2/images/{image}", lambda s, m, q, b, u: s.image(m["image"])),
    ("GET", "/v2/droplets", lambda s, m, q, b, u: s.list_droplets(q, u)),
    ("POST", "/v2/droplets", lambda s, m, q, b, u: s.create_droplets(b, u)),
    ("DELETE", "/v2/droplets", lambda s, m, q, b, u: s.delete_by_tag(q)),
    ("GET", "/v2/droplets/{droplet}", lambda s, m, q, b, u: s.droplet(m["droplet"])),
    ("DELETE", "/v2/droplets/{droplet}", lambda s, m, q, b, u: s.delete_droplet(m["droplet"])),
    (
        "GET",
        "/v2/droplets/{droplet}/actions",
        lambda s, m, q, b, u: s.droplet_actions(m["droplet"], q, u),
    ),
    ("GET", "/v2/actions", lambda s, m, q, b, u: s.actions(q, u)),
    ("GET", "/v2/actions/{action}", lambda s, m, q, b, u: s.action(m["action"])),
    ("GET", "/v2/tags", lambda s, m, q, b, u: s.tags(q, u)),
    ("POST", "/v2/tags", lambda s, m, q, b, u: s.create_tag(b)),
    ("GET", "/v2/tags/{tag}", lambda s, m, q, b, u: s.tag(m["tag"])),
    ("DELETE", "/v2/tags/{tag}", lambda s, m, q, b, u: s.delete_tag(m["tag"])),
]
CREATED_STATUS = {
    ("POST", "/v2/droplets"): 202,
    ("POST", "/v2/account/keys"): 201,
    ("POST", "/v2/tags"): 201,
}


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


_COMPILED = [(method, template, _compile(template), handler) for method, template, handler in ROUTES]


def _match(method: str, path: str) -> tuple[str | None, re.Match | None, Callable | None, bool]:
    """Return (route template, match, handler, path known) for a request."""
    known = False
    for route_method, template, pattern, handler in _COMPILED:
        match = pattern.match(path)
        if match:
            known = True
            if route_method == method:
                return template, match, handler, True
    return None, None, None, known


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes. Without TCP_NODELAY the body waits for the
    # client's delayed ACK of the headers, about 40 ms on Linux.
    disable_nagle_algorithm = True
    server: _HTTPServer
    server_version = "swarmlab-doserver"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = parse_qs(split.query)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        host, port = self.server.server_address[:2]
        base = f"http://{self.headers.get('Host') or f'{host}:{port}'}"

        if method == "GET" and path == STATS_PATH:
            self._send(Reply(200, state.stats.to_dict()))
            return

        template, match, handler, known = _match(method, path)
        route = template or path
        token, reply = state.admit(method, route, self.headers.get("Authorization"))
        created = False
        if reply is None:
            if handler is None:
                status = 405 if known else 404
                message = "Method not allowed." if known else "The resource you were accessing could not be found."
                reply = ApiError(status, message).reply()
            else:
                reply = self._call(handler, state, match, query, raw, base, method, template)
                created = reply.status == 202
        reply = state.finish(token, reply, created)

        if reply.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if reply.delay:
            time.sleep(reply.delay)
        self._send(reply)

    def _call(self, handler, state, match, query, raw, base, method, template) -> Reply:
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return ApiError(400, "The request body is not valid JSON.").reply()
        try:
            result = handler(state, match.groupdict(), query, body, base)
        except ApiError as error:
            return error.reply()
        if result is None:
            return Reply(204)
        return Reply(CREATED_STATUS.get((method, template), 200), result)

    def _send(self, reply: Reply) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header is in API time, so a client can turn ratelimit-reset into a delay.
        return formatdate(self.server.state.clock.time(), usegmt=True)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    state: ApiState

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (timeout, closed connection) is routine, not a server fault.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away: %s", client_address, error)
        else:
            log.exception("failed to respond to %s", client_address)


def check_loopback(host: str) -> str:
    """Return the address for ``host`` if it is a loopback address; raise ValueError otherwise."""
    address = "127.0.0.1" if host == "localhost" else host
    try:
        is_loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise ValueError(f"doserver binds only to loopback addresses; {host!r} is not one (use 127.0.0.1)")
    return address


class DOServer:
    """A local DigitalOcean-compatible API server on a loopback port, in a background thread.

    Args:
        config: server settings; the defaults serve one token, ``doserver-token``.
        backend: optional machines behind droplets; see :mod:`swarmlab.doserver`.

    Raises:
        ValueError: ``config.host`` is not a loopback address.

    Example::

        with DOServer(ServerConfig(droplet_limit=100, time_scale=20)) as server:
            os.environ["DIGITALOCEAN_END_POINT"] = server.end_point
            ...
            assert server.stats.requests("POST", "/v2/droplets") == 2
    """

    def __init__(self, config: ServerConfig | None = None, *, backend: DropletBackend | None = None):
        self.config = config or ServerConfig()
        self._host = check_loopback(self.config.host)
        self.state = ApiState(self.config, backend)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> DOServer:
        server_class = _HTTPServer
        if ":" in self._host:
            server_class = type("_HTTPServer6", (_HTTPServer,), {"address_family": socket.AF_INET6})
        self._httpd = server_class((self._host, self.config.port), _Handler)
        self._httpd.state = self.state
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            name="doserver",
            kwargs={"poll_interval": 0.1},
            daemon=True,
        )
        self._thread.start()
        log.info("doserver listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.state.close()

    def __enter__(self) -> DOServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def end_point(self) -> str:
        """The value for ``DIGITALOCEAN_END_POINT``: the server URL with ``/v2/``."""
        return f"{self.url}/v2/"

    @property
    def stats(self) -> ServerStats:
        return self.state.stats

    @property
    def token(self) -> str:
        """The first token the server accepts."""
        return self.config.tokens[0]

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault plan while the server runs."""
        self.state.set_faults(faults)

    def queue_429(self, count: int) -> None:
        """Respond 429 to the next ``count`` authenticated requests (``faults.retry_after``)."""
        self.state.queue_429(count)
