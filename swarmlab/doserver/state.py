"""The local server's account: droplets, actions, tags, SSH keys, rate limits, faults and stats.

:class:`ApiState` turns one parsed request into one :class:`Reply`; the HTTP layer in
:mod:`swarmlab.doserver.server` only reads requests and writes replies. All state sits behind
one lock, so each request works on one consistent snapshot of the account.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import random
import re
import threading
from collections import Counter, deque
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from swarmlab.doapi.catalog import SIZES
from swarmlab.doapi.clock import Clock
from swarmlab.doserver import catalog
from swarmlab.doserver.config import Faults, ServerConfig

log = logging.getLogger(__name__)

MAX_USER_DATA_BYTES = 64 * 1024
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 20
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$")
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_\-:]+$")

# Addresses of droplets without a backend come from the benchmarking range (RFC 2544), which no
# host listens on, so nothing reaches them. Nothing in this project connects to them either.
PUBLIC_RANGE = ipaddress.IPv4Network("198.18.0.0/16")
PRIVATE_RANGE = ipaddress.IPv4Network("198.19.0.0/16")

ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "server_error",
}


class DropletBackend(Protocol):
    """Stands in for the machines behind droplets; see the package docstring."""

    def create_node(self, name: str, user_data: str | None = None) -> dict: ...

    def destroy_node(self, name: str) -> None: ...


@dataclass
class Reply:
    """One response: status, JSON body (None for an empty body) and extra headers.

    ``drop`` closes the connection without a response; ``delay`` is real seconds to wait first.
    """

    status: int
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    delay: float = 0.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def reply(self) -> Reply:
        body = {"id": ERRORS.get(self.status, "error"), "message": self.message}
        return Reply(self.status, body, dict(self.headers))


@dataclass
class DropletRecord:
    id: int
    name: str
    size: str
    region: str
    image: str
    tags: list[str]
    user_data: str | None
    ssh_keys: list
    vpc_uuid: str
    created: float
    action_id: int
    ready_at: float | None
    public_ip: str | None = None
    private_ip: str | None = None
    backend_failed: str | None = None
    delete_at: float | None = None
    destroyed: bool = True
    boot: Future | None = None


@dataclass
class ServerStats:
    """Counts of what the server received; tests compare them with what the client claims.

    ``received`` counts every request by ``(method, route)`` before any check. ``counted`` is
    the number of requests inside the rate-limit windows. ``max_per_minute`` and
    ``max_per_hour`` are the most requests any sliding minute and hour held.
    ``limit_rejections`` counts the 429s the limits caused, not injected ones.
    """

    received: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    counted: int = 0
    max_per_minute: int = 0
    max_per_hour: int = 0
    limit_rejections: int = 0
    keys_limit_rejections: int = 0
    unauthorized: int = 0
    injected_429: int = 0
    injected_500: int = 0
    dropped: int = 0
    slow: int = 0
    creates_accepted: int = 0
    droplets_created: int = 0

    def requests(self, method: str, route: str | None = None) -> int:
        """Return requests received with this method (and route, e.g. ``/v2/droplets``)."""
        return sum(
            count
            for (seen_method, seen_route), count in self.received.items()
            if seen_method == method and (route is None or seen_route == route)
        )

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["received"] = {f"{m} {r}": n for (m, r), n in sorted(self.received.items())}
        data["statuses"] = {str(s): n for s, n in sorted(self.statuses.items())}
        return data


class _Windows:
    """Sliding one-minute and one-hour request logs of one token."""

    def __init__(self) -> None:
        self.minute: deque[float] = deque()
        self.hour: deque[float] = deque()
        self.keys_minute: deque[float] = deque()

    def prune(self, now: float) -> None:
        for window, length in ((self.minute, 60), (self.hour, 3600), (self.keys_minute, 60)):
            while window and window[0] <= now - length:
                window.popleft()


class ApiState:
    """The account behind the local server. See :mod:`swarmlab.doserver` for the API served."""

    def __init__(self, config: ServerConfig, backend: DropletBackend | None = None):
        self.config = config
        self.backend = backend
        self.clock = Clock(config.time_scale)
        self.stats = ServerStats()
        self._faults = config.faults
        self._random = random.Random(config.faults.seed)
        self._burst_left = 0
        self._drops = 0
        self._lock = threading.RLock()
        self._droplets: dict[int, DropletRecord] = {}
        self._actions: dict[int, dict] = {}
        self._tags: dict[str, float] = {}
        self._keys: list[dict] = []
        self._windows: dict[str, _Windows] = {}
        self._next_droplet_id = 400_000_001
        self._next_action_id = 2_000_000_001
        self._next_key_id = 51_000_001
        self._next_address = 0
        self._account_uuid = hashlib.sha1(b"swarmlab-doserver").hexdigest()  # noqa: S324 - an id
        self._boot_pool = ThreadPoolExecutor(config.backend_workers, thread_name_prefix="do-boot")
        self._destroy_pool = ThreadPoolExecutor(config.backend_workers, thread_name_prefix="do-destroy")
        for name, public_key in config.ssh_public_keys:
            self._add_key(name, public_key)

    def close(self) -> None:
        self._boot_pool.shutdown(wait=True, cancel_futures=True)
        self._destroy_pool.shutdown(wait=True)

    # Faults and settings that tests change while the server runs.

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._random = random.Random(faults.seed)
            self._burst_left = 0

    def queue_429(self, count: int) -> None:
        """Respond with an injected 429 to the next ``count`` authenticated requests."""
        with self._lock:
            self._burst_left = count

    def set_droplet_limit(self, limit: int) -> None:
        with self._lock:
            self.config = replace(self.config, droplet_limit=limit)

    # Request admission: authentication, rate limits, injected faults.

    def admit(self, method: str, route: str, authorization: str | None) -> tuple[str | None, Reply | None]:
        """Check one request; return its token and, if it must not proceed, the response."""
        with self._lock:
            self.stats.received[(method, route)] += 1
            token = _bearer(authorization)
            if token is None or token not in self.config.tokens:
                self.stats.unauthorized += 1
                return None, ApiError(401, "Unable to authenticate you.").reply()

            now = self.clock.monotonic()
            windows = self._windows.setdefault(token, _Windows())
            windows.prune(now)
            rejection = self._check_limits(windows, now, method, route)
            if rejection is not None:
                rejection.headers.update(self._limit_headers(token))
                return token, rejection

            windows.minute.append(now)
            windows.hour.append(now)
            if method == "GET" and route == "/v2/account/keys":
                windows.keys_minute.append(now)
            self.stats.counted += 1
            self.stats.max_per_minute = max(self.stats.max_per_minute, len(windows.minute))
            self.stats.max_per_hour = max(self.stats.max_per_hour, len(windows.hour))
            return token, self._inject(token)

    def _check_limits(self, windows: _Windows, now: float, method: str, route: str) -> Reply | None:
        if len(windows.minute) >= self.config.per_minute:
            self.stats.limit_rejections += 1
            retry_after = max(1, int(windows.minute[0] + 60 - now) + 1)
            return _too_many(retry_after)
        if len(windows.hour) >= self.config.per_hour:
            self.stats.limit_rejections += 1
            return ApiError(429, "API rate limit exceeded.").reply()
        if method == "GET" and route == "/v2/account/keys":
            if len(windows.keys_minute) >= self.config.keys_per_minute:
                self.stats.keys_limit_rejections += 1
                return _too_many(max(1, int(windows.keys_minute[0] + 60 - now) + 1))
        return None

    def _inject(self, token: str) -> Reply | None:
        faults = self._faults
        if self._burst_left > 0:
            self._burst_left -= 1
            return self._injected_429(token, faults)
        if faults.rate_429 and self._random.random() < faults.rate_429:
            self._burst_left = faults.burst_429 - 1
            return self._injected_429(token, faults)
        if faults.rate_500 and self._random.random() < faults.rate_500:
            self.stats.injected_500 += 1
            reply = ApiError(500, "Unexpected server-side error").reply()
            reply.headers.update(self._limit_headers(token))
            return reply
        return None

    def _injected_429(self, token: str, faults: Faults) -> Reply:
        self.stats.injected_429 += 1
        reply = _too_many(faults.retry_after)
        reply.headers.update(self._limit_headers(token))
        return reply

    def finish(self, token: str | None, reply: Reply, created: bool) -> Reply:
        """Add rate-limit headers and decide the late faults (dropped create, slow response)."""
        with self._lock:
            if token is not None:
                reply.headers.update(self._limit_headers(token))
            faults = self._faults
            if created and faults.drop_after_create:
                capped = faults.max_drops is not None and self._drops >= faults.max_drops
                if not capped and self._random.random() < faults.drop_after_create:
                    self._drops += 1
                    self.stats.dropped += 1
                    reply.drop = True
            if faults.slow_rate and self._random.random() < faults.slow_rate:
                self.stats.slow += 1
                reply.delay = faults.slow_seconds
            self.stats.statuses[0 if reply.drop else reply.status] += 1
        return reply

    def _limit_headers(self, token: str) -> dict[str, str]:
        windows = self._windows.get(token)
        now_epoch = self.clock.time()
        used = len(windows.hour) if windows else 0
        if windows and windows.hour:
            reset = now_epoch + (windows.hour[0] + 3600 - self.clock.monotonic())
        else:
            reset = now_epoch
        return {
            "ratelimit-limit": str(self.config.per_hour),
            "ratelimit-remaining": str(max(0, self.config.per_hour - used)),
            "ratelimit-reset": str(int(reset)),
        }

    # Account, regions, sizes, images.

    def account(self) -> dict:
        return {
            "account": {
                "droplet_limit": self.config.droplet_limit,
                "floating_ip_limit": 3,
                "reserved_ip_limit": 3,
                "volume_limit": 100,
                "email": "operator@swarmlab.invalid",
                "name": "swarmlab operator",
                "uuid": self._account_uuid,
                "email_verified": True,
                "status": "active",
                "status_message": "",
                "team": {"uuid": self._account_uuid[:32], "name": "swarmlab"},
            }
        }

    def regions(self, query: dict, base: str) -> dict:
        items = [catalog.region_body(slug) for slug in catalog.region_slugs()]
        return _page("regions", items, query, base, "/v2/regions")

    def sizes(self, query: dict, base: str) -> dict:
        items = [catalog.size_body(size) for size in SIZES.values()]
        return _page("sizes", items, query, base, "/v2/sizes")

    def image(self, slug_or_id: str) -> dict:
        try:
            return {"image": catalog.image_body(slug_or_id)}
        except KeyError:
            raise ApiError(404, "The resource you were accessing could not be found.") from None

    def images(self, query: dict, base: str) -> dict:
        return _page("images", catalog.all_images(), query, base, "/v2/images")

    # SSH keys.

    def _add_key(self, name: str, public_key: str) -> dict:
        parts = public_key.split()
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (IndexError, ValueError):
            raise ApiError(422, "public_key is not a valid OpenSSH public key") from None
        digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - DigitalOcean's key fingerprint
        key = {
            "id": self._next_key_id,
            "fingerprint": ":".join(digest[i : i + 2] for i in range(0, 32, 2)),
            "public_key": public_key,
            "name": name,
        }
        self._next_key_id += 1
        self._keys.append(key)
        return key

    def keys(self, query: dict, base: str) -> dict:
        with self._lock:
            return _page("ssh_keys", list(self._keys), query, base, "/v2/account/keys")

    def key(self, identifier: str) -> dict:
        with self._lock:
            return {"ssh_key": dict(self._find_key(identifier))}

    def _find_key(self, identifier: str | int) -> dict:
        for key in self._keys:
            if str(identifier) in (str(key["id"]), key["fingerprint"]):
                return key
        raise ApiError(404, "The resource you were accessing could not be found.")

    def create_key(self, body: dict) -> dict:
        if not body.get("name") or not body.get("public_key"):
            raise ApiError(422, "name and public_key are required")
        with self._lock:
            return {"ssh_key": dict(self._add_key(body["name"], body["public_key"]))}

    def delete_key(self, identifier: str) -> None:
        with self._lock:
            self._keys.remove(self._find_key(identifier))

    # Tags.

    def _tag_body(self, name: str) -> dict:
        tagged = [d for d in self._droplets.values() if name in d.tags]
        last = f"/v2/droplets/{tagged[-1].id}" if tagged else ""
        droplets = {"count": len(tagged), "last_tagged_uri": last}
        empty = {"count": 0}
        return {
            "name": name,
            "resources": {
                "count": len(tagged),
                "last_tagged_uri": last,
                "droplets": droplets,
                "images": dict(empty),
                "volumes": dict(empty),
                "volume_snapshots": dict(empty),
                "databases": dict(empty),
            },
        }

    def tags(self, query: dict, base: str) -> dict:
        with self._lock:
            items = [self._tag_body(name) for name in sorted(self._tags)]
        return _page("tags", items, query, base, "/v2/tags")

    def tag(self, name: str) -> dict:
        with self._lock:
            if name not in self._tags:
                raise ApiError(404, "The resource you were accessing could not be found.")
            return {"tag": self._tag_body(name)}

    def create_tag(self, body: dict) -> dict:
        name = body.get("name")
        if not isinstance(name, str) or not TAG_PATTERN.match(name) or len(name) > 255:
            raise ApiError(422, "name must be letters, digits, colons, dashes and underscores")
        with self._lock:
            self._tags.setdefault(name, self.clock.time())
            return {"tag": self._tag_body(name)}

    def delete_tag(self, name: str) -> None:
        with self._lock:
            if name not in self._tags:
                raise ApiError(404, "The resource you were accessing could not be found.")
            del self._tags[name]
            for droplet in self._droplets.values():
                if name in droplet.tags:
                    droplet.tags.remove(name)

    # Droplets.

    def create_droplets(self, body: Any, base: str) -> dict:
        """Create one droplet (``name``) or up to ten (``names``); raise ApiError if invalid."""
        names, request = self._validate_create(body)
        with self._lock:
            self._purge()
            if len(self._droplets) + len(names) > self.config.droplet_limit:
                raise ApiError(422, "creating this/these droplet(s) will exceed your droplet limit")
            for tag in request["tags"]:
                self._tags.setdefault(tag, self.clock.time())
            records = [self._new_droplet(name, request) for name in names]
            self.stats.creates_accepted += 1
            self.stats.droplets_created += len(records)
            bodies = [self._droplet_body(record) for record in records]

        links = {
            "actions": [
                {"id": r.action_id, "rel": "create", "href": f"{base}/v2/actions/{r.action_id}"} for r in records
            ]
        }
        if "name" in body:
            return {"droplet": bodies[0], "links": links}
        return {"droplets": bodies, "links": links}

    def _validate_create(self, body: Any) -> tuple[list[str], dict]:
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        if "names" in body:
            names = body["names"]
            if not isinstance(names, list) or not names:
                raise ApiError(422, "names must be a list of 1 to 10 droplet names")
            if len(names) > 10:
                raise ApiError(422, "You may only create up to 10 droplets per request.")
        elif "name" in body:
            names = [body["name"]]
        else:
            raise ApiError(422, "name or names is required")
        for name in names:
            if not isinstance(name, str) or len(name) > 255 or not NAME_PATTERN.match(name):
                raise ApiError(422, f"Droplet name {name!r} is invalid.")

        size = body.get("size")
        region = body.get("region") or "nyc3"
        image = body.get("image")
        if size not in SIZES:
            raise ApiError(422, "You specified an invalid size for Droplet creation.")
        if region not in catalog.region_slugs():
            raise ApiError(422, "You specified an invalid region for Droplet creation.")
        if not catalog.region_body(region)["available"]:
            raise ApiError(422, f"Region {region} is not available for new droplets.")
        if region not in catalog.size_regions(size):
            raise ApiError(422, f"Size {size} is not available in region {region}.")
        try:
            image_slug = catalog.image_body(str(image))["slug"]
        except KeyError:
            raise ApiError(422, "You specified an invalid image for Droplet creation.") from None

        user_data = body.get("user_data")
        if user_data is not None and len(str(user_data).encode()) > MAX_USER_DATA_BYTES:
            raise ApiError(422, "user_data must not exceed 64 KiB.")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or any(
            not isinstance(t, str) or not TAG_PATTERN.match(t) or len(t) > 255 for t in tags
        ):
            raise ApiError(422, "Tag names may contain letters, digits, colons, dashes and underscores.")
        ssh_keys = body.get("ssh_keys") or []
        with self._lock:
            for key in ssh_keys:
                try:
                    self._find_key(key)
                except ApiError:
                    raise ApiError(422, f"SSH key {key} was not found on this account.") from None
        request = {
            "size": size,
            "region": region,
            "image": image_slug,
            "tags": list(dict.fromkeys(tags)),
            "user_data": user_data,
            "ssh_keys": ssh_keys,
            "vpc_uuid": body.get("vpc_uuid") or _default_vpc(region),
        }
        return names, request

    def _new_droplet(self, name: str, request: dict) -> DropletRecord:
        now = self.clock.time()
        delay = self.config.active_delay + self._random.uniform(0, self.config.active_jitter)
        record = DropletRecord(
            id=self._next_droplet_id,
            name=name,
            size=request["size"],
            region=request["region"],
            image=request["image"],
            tags=list(request["tags"]),
            user_data=request["user_data"],
            ssh_keys=list(request["ssh_keys"]),
            vpc_uuid=request["vpc_uuid"],
            created=now,
            action_id=self._next_action_id,
            ready_at=now + delay,
        )
        self._next_droplet_id += 1
        self._next_action_id += 1
        if self.backend is None:
            record.public_ip = str(PUBLIC_RANGE[1 + self._next_address])
            record.private_ip = str(PRIVATE_RANGE[1 + self._next_address])
            self._next_address += 1
        else:
            record.ready_at = None
            record.destroyed = False
            record.boot = self._boot_pool.submit(self._boot, record, now + delay)
        self._droplets[record.id] = record
        self._actions[record.action_id] = {"droplet": record.id, "type": "create", "started": now}
        return record

    def _boot(self, record: DropletRecord, earliest: float) -> None:
        try:
            node = self.backend.create_node(record.name, user_data=record.user_data)
        except Exception as error:  # noqa: BLE001 - any backend failure becomes a stuck droplet
            log.error("backend failed to create node %s (droplet %d): %s", record.name, record.id, error)
            with self._lock:
                record.backend_failed = str(error)
            return
        with self._lock:
            record.public_ip = node["public_ip"]
            record.private_ip = node.get("private_ip") or node["public_ip"]
            record.ready_at = max(earliest, self.clock.time())

    def _destroy(self, record: DropletRecord) -> None:
        booted = True
        if record.boot is not None:
            try:
                record.boot.result()
            except CancelledError:
                booted = False  # the server shut down before the node was created
        if booted and record.backend_failed is None:
            try:
                self.backend.destroy_node(record.name)
            except Exception as error:  # noqa: BLE001 - logged; the droplet is gone either way
                log.error("backend failed to destroy node %s: %s", record.name, error)
        with self._lock:
            record.destroyed = True

    def _status(self, record: DropletRecord) -> str:
        if record.ready_at is not None and self.clock.time() >= record.ready_at:
            return "active"
        return "new"

    def _droplet_body(self, record: DropletRecord) -> dict:
        size = SIZES[record.size]
        status = self._status(record)
        v4 = []
        if status == "active":
            if record.private_ip:
                v4.append(
                    {
                        "ip_address": record.private_ip,
                        "netmask": "255.255.0.0",
                        "gateway": "nil",
                        "type": "private",
                    }
                )
            if record.public_ip:
                gateway = str(ipaddress.IPv4Network(f"{record.public_ip}/24", strict=False)[1])
                v4.append(
                    {
                        "ip_address": record.public_ip,
                        "netmask": "255.255.255.0",
                        "gateway": gateway,
                        "type": "public",
                    }
                )
        return {
            "id": record.id,
            "name": record.name,
            "memory": size.memory,
            "vcpus": size.vcpus,
            "disk": size.disk,
            "disk_info": [{"type": "local", "size": {"amount": size.disk, "unit": "gib"}}],
            "locked": False,
            "status": status,
            "kernel": None,
            "created_at": _iso(record.created),
            "features": ["private_networking"],
            "backup_ids": [],
            "next_backup_window": None,
            "snapshot_ids": [],
            "image": catalog.image_body(record.image),
            "volume_ids": [],
            "size": catalog.size_body(size),
            "size_slug": record.size,
            "networks": {"v4": v4, "v6": []},
            "region": catalog.region_body(record.region),
            "tags": list(record.tags),
            "vpc_uuid": record.vpc_uuid,
        }

    def _purge(self) -> None:
        now = self.clock.time()
        gone = [
            droplet_id
            for droplet_id, record in self._droplets.items()
            if record.delete_at is not None and record.delete_at <= now and record.destroyed
        ]
        for droplet_id in gone:
            del self._droplets[droplet_id]

    def list_droplets(self, query: dict, base: str) -> dict:
        tag = _first(query, "tag_name")
        name = _first(query, "name")
        with self._lock:
            self._purge()
            records = sorted(self._droplets.values(), key=lambda r: r.id)
            if tag is not None:
                records = [r for r in records if tag in r.tags]
            if name is not None:
                records = [r for r in records if r.name == name]
            window = _page_window(query, len(records))
            bodies = [self._droplet_body(r) for r in records[window[0] : window[1]]]
        return _page("droplets", bodies, query, base, "/v2/droplets", total=len(records), window=window)

    def droplet(self, droplet_id: str) -> dict:
        with self._lock:
            self._purge()
            return {"droplet": self._droplet_body(self._find_droplet(droplet_id))}

    def _find_droplet(self, droplet_id: str) -> DropletRecord:
        record = self._droplets.get(int(droplet_id)) if droplet_id.isdigit() else None
        if record is None:
            raise ApiError(404, "The resource you were accessing could not be found.")
        return record

    def delete_droplet(self, droplet_id: str) -> None:
        with self._lock:
            self._purge()
            self._delete(self._find_droplet(droplet_id))

    def delete_by_tag(self, query: dict) -> None:
        tag = _first(query, "tag_name")
        if not tag:
            raise ApiError(422, "tag_name is required to delete droplets by tag")
        with self._lock:
            if tag not in self._tags:
                raise ApiError(404, "The resource you were accessing could not be found.")
            for record in list(self._droplets.values()):
                if tag in record.tags:
                    self._delete(record)

    def _delete(self, record: DropletRecord) -> None:
        if record.delete_at is not None:
            return
        record.delete_at = self.clock.time() + self.config.delete_delay
        if self.backend is not None:
            self._destroy_pool.submit(self._destroy, record)

    # Actions.

    def _action_body(self, action_id: int) -> dict:
        action = self._actions[action_id]
        record = self._droplets.get(action["droplet"])
        if record is None or record.delete_at is not None:
            status, completed = "completed", _iso(action["started"])
        elif record.backend_failed:
            status, completed = "errored", None
        elif self._status(record) == "active":
            status, completed = "completed", _iso(record.ready_at)
        else:
            status, completed = "in-progress", None
        region = record.region if record else "nyc3"
        return {
            "id": action_id,
            "status": status,
            "type": action["type"],
            "started_at": _iso(action["started"]),
            "completed_at": completed,
            "resource_id": action["droplet"],
            "resource_type": "droplet",
            "region": catalog.region_body(region),
            "region_slug": region,
        }

    def action(self, action_id: str) -> dict:
        with self._lock:
            if not action_id.isdigit() or int(action_id) not in self._actions:
                raise ApiError(404, "The resource you were accessing could not be found.")
            return {"action": self._action_body(int(action_id))}

    def actions(self, query: dict, base: str) -> dict:
        with self._lock:
            items = [self._action_body(a) for a in sorted(self._actions)]
        return _page("actions", items, query, base, "/v2/actions")

    def droplet_actions(self, droplet_id: str, query: dict, base: str) -> dict:
        with self._lock:
            record = self._find_droplet(droplet_id)
            items = [self._action_body(a) for a, v in sorted(self._actions.items()) if v["droplet"] == record.id]
        return _page("actions", items, query, base, f"/v2/droplets/{droplet_id}/actions")

    # Inspection for tests and backends.

    def droplet_records(self) -> list[DropletRecord]:
        """Return the droplets that still exist (deleted ones vanish after ``delete_delay``)."""
        with self._lock:
            self._purge()
            return sorted(self._droplets.values(), key=lambda r: r.id)

    def add_droplets(self, names: list[str], tags: list[str], size: str = "s-1vcpu-1gb") -> None:
        """Create droplets directly, as another tool on the same account would."""
        request = {
            "size": size,
            "region": "nyc3",
            "image": "debian-12-x64",
            "tags": tags,
            "user_data": None,
            "ssh_keys": [],
            "vpc_uuid": _default_vpc("nyc3"),
        }
        with self._lock:
            for tag in tags:
                self._tags.setdefault(tag, self.clock.time())
            for name in names:
                self._new_droplet(name, request)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _too_many(retry_after: float) -> Reply:
    reply = ApiError(429, "API rate limit exceeded.").reply()
    reply.headers["retry-after"] = str(int(retry_after) if float(retry_after).is_integer() else retry_after)
    return reply


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first(query: dict, name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _default_vpc(region: str) -> str:
    digest = hashlib.sha1(f"vpc-{region}".encode()).hexdigest()  # noqa: S324 - a stable id
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _page_window(query: dict, total: int) -> tuple[int, int]:
    try:
        page = int(_first(query, "page") or 1)
        per_page = int(_first(query, "per_page") or DEFAULT_PER_PAGE)
    except ValueError:
        raise ApiError(400, "page and per_page must be integers") from None
    if page < 1 or per_page < 1:
        raise ApiError(400, "page and per_page must be 1 or more")
    per_page = min(per_page, MAX_PER_PAGE)
    start = (page - 1) * per_page
    return start, min(total, start + per_page)


def _page(
    key: str,
    items: list,
    query: dict,
    base: str,
    path: str,
    *,
    total: int | None = None,
    window: tuple[int, int] | None = None,
) -> dict:
    """Return one page of ``items`` with absolute ``links.pages`` and ``meta.total``.

    Without ``total``/``window`` the whole list is given and sliced here.
    """
    if window is None:
        total = len(items)
        window = _page_window(query, total)
        items = items[window[0] : window[1]]
    per_page = min(int(_first(query, "per_page") or DEFAULT_PER_PAGE), MAX_PER_PAGE)
    page = int(_first(query, "page") or 1)
    last = max(1, -(-total // per_page))
    extra = {k: v[0] for k, v in sorted(query.items()) if k not in ("page", "per_page") and v}

    def link(number: int) -> str:
        return f"{base}{path}?{urlencode({'page': number, 'per_page': per_page, **extra})}"

    pages: dict[str, str] = {}
    if page > 1:
        pages["first"] = link(1)
        pages["prev"] = link(page - 1)
    if page < last:
        pages["last"] = link(last)
        pages["next"] = link(page + 1)
    return {key: items, "links": {"pages": pages}, "meta": {"total": total}}


def error_json(status: int, message: str) -> bytes:
    return json.dumps({"id": ERRORS.get(status, "error"), "message": message}).encode()
