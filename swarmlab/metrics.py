"""The metrics store: points and phase events in InfluxDB over its 1.x HTTP API.

The store speaks ``/write`` (line protocol) and ``/query`` (InfluxQL) through the ``influxdb``
package (``InfluxDBClient``), which every InfluxDB generation serves: Debian's 1.6.7, 1.8, and
2.x/3.x in compatibility mode. The package does the line-protocol escaping and the result parsing.

A write never raises because InfluxDB is down. While it is unreachable, points wait in a bounded
in-memory buffer, which drops and counts the oldest when full. Every later write or flush
retries, and the outage is logged once when it starts and once when it ends.
:attr:`MetricsStore.gaps` lists the outages so the report can say where the data has holes.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pandas as pd
import requests
from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError
from influxdb.line_protocol import quote_ident, quote_literal
from influxdb.resultset import ResultSet

from swarmlab.spec import InfluxDBSpec

log = logging.getLogger(__name__)

Point = dict[str, Any]
"""One point as ``InfluxDBClient.write_points`` takes it: measurement, tags, fields, time (ns)."""

EVENT_MEASUREMENT = "events"
DEFAULT_RETENTION_POLICY = "swarmlab"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# HTTP status codes that a retry may cure: the server or a proxy in front of it is not ready, or
# the credentials are not set up yet. Any other 4xx means the points themselves are bad.
_RETRYABLE_CLIENT_CODES = frozenset({401, 403, 408, 429})


class MetricsError(RuntimeError):
    """InfluxDB could not be set up or queried; the message names the server and the cause."""


@dataclass(frozen=True)
class Outage:
    """One period during which InfluxDB could not be written to.

    ``end`` is None while the outage lasts. ``points_kept`` counts the buffered points written
    once InfluxDB came back; ``points_dropped`` counts those the full buffer pushed out.
    """

    start: datetime
    end: datetime | None
    points_kept: int = 0
    points_dropped: int = 0

    @property
    def duration(self) -> timedelta | None:
        return None if self.end is None else self.end - self.start


def to_nanoseconds(moment: datetime | int | None) -> int:
    """Convert a point time to integer nanoseconds since the Unix epoch.

    Args:
        moment: an aware ``datetime`` (a naive one is taken as UTC), integer nanoseconds, or
            None for now.

    Raises:
        ValueError: for any other type (a float is ambiguous: seconds or nanoseconds).
    """
    if moment is None:
        return time.time_ns()
    if isinstance(moment, pd.Timestamp):
        stamp = moment if moment.tzinfo else moment.tz_localize("UTC")
        return int(stamp.value)
    if isinstance(moment, datetime):
        aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return (aware - _EPOCH) // timedelta(microseconds=1) * 1000
    if isinstance(moment, int) and not isinstance(moment, bool):
        return moment
    raise ValueError(f"point time {moment!r} must be a datetime or integer nanoseconds")


def make_point(
    measurement: str,
    tags: Mapping[str, Any] | None,
    fields: Mapping[str, Any],
    time: datetime | int | None = None,
) -> Point:
    """Build one point in the form ``InfluxDBClient.write_points`` takes.

    Raises:
        ValueError: empty measurement or no fields (InfluxDB rejects a point without fields).
    """
    if not measurement or not isinstance(measurement, str):
        raise ValueError(f"measurement {measurement!r} must be a non-empty string")
    kept_fields = {key: value for key, value in fields.items() if value is not None}
    if not kept_fields:
        raise ValueError(f"point of {measurement!r} has no fields; InfluxDB needs at least one")
    point: Point = {
        "measurement": measurement,
        "fields": kept_fields,
        "time": to_nanoseconds(time),
    }
    if tags:
        # An empty tag value is invalid in line protocol; leave such tags out.
        point["tags"] = {key: str(value) for key, value in tags.items() if value not in (None, "")}
    return point


class MetricsStore:
    """Points and events in one InfluxDB database, buffered across outages.

    Args:
        host, port: the InfluxDB HTTP API.
        username, password: credentials, or None for a server without authentication.
        database: database to write to and query.
        retention: retention duration for :meth:`setup`, e.g. ``30d`` or ``INF``.
        retention_policy: name of the policy :meth:`setup` creates and makes the default.
        ssl: use HTTPS.
        timeout: seconds per HTTP request.
        max_buffer: points kept in memory while InfluxDB is unreachable; past that the oldest
            are dropped and counted.
        batch_size: points per ``/write`` request when the buffer is flushed.
        retry_interval: seconds between two write attempts during an outage. Writes in between
            only buffer, so a dead server costs one time-out per interval, not one per point.

    A write never raises for an unreachable server (see :meth:`write`). :meth:`setup`,
    :meth:`ensure_admin`, :meth:`ensure_user` and :meth:`query_frame` raise
    :class:`MetricsError`. Thread-safe: the observer thread and the flow may write at once.

    Example:
        >>> store = MetricsStore("10.213.0.2", 8086, "swarmlab", secret, "swarm3k")
        >>> store.setup()
        >>> store.write("tasks", {"service": "web"}, {"running": 48, "desired": 50})
        True
    """

    def __init__(
        self,
        host: str,
        port: int = 8086,
        username: str | None = None,
        password: str | None = None,
        database: str = "swarm3k",
        *,
        retention: str = "30d",
        retention_policy: str = DEFAULT_RETENTION_POLICY,
        ssl: bool = False,
        timeout: float = 5.0,
        max_buffer: int = 100_000,
        batch_size: int = 5_000,
        retry_interval: float = 1.0,
    ):
        if max_buffer < 1:
            raise ValueError(f"max_buffer is {max_buffer}; it must be at least 1")
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}; it must be at least 1")
        self.host = host
        self.port = int(port)
        self.username = username
        self._password = password
        self.database = database
        self.retention = retention
        self.retention_policy = retention_policy
        self.ssl = ssl
        self.timeout = timeout
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.retry_interval = retry_interval

        # retries=1: one attempt per request. The buffer and retry_interval do the retrying, so a
        # dead server does not stall the caller for the library's own back-off loop.
        self._client = InfluxDBClient(
            host=host,
            port=self.port,
            username=username,
            password=password,
            database=database,
            ssl=ssl,
            verify_ssl=ssl,
            timeout=timeout,
            retries=1,
        )
        self._lock = threading.RLock()
        self._buffer: deque[Point] = deque(maxlen=max_buffer)
        self._last_attempt = float("-inf")
        self._outages: list[Outage] = []
        self._outage_start: datetime | None = None
        self._outage_kept = 0
        self._outage_dropped = 0
        self._buffer_full_logged = False
        self.dropped = 0
        """Points pushed out of the full buffer, over the store's life."""
        self.rejected = 0
        """Points InfluxDB refused as invalid (HTTP 400/404), over the store's life."""
        self.written = 0
        """Points InfluxDB accepted, over the store's life."""
        self._rejection_messages: set[str] = set()

    @classmethod
    def from_spec(
        cls,
        spec: InfluxDBSpec,
        host: str,
        port: int = 8086,
        username: str | None = None,
        password: str | None = None,
        **options: Any,
    ) -> MetricsStore:
        """Create a store for the spec's database and retention.

        ``options`` are the constructor's keyword arguments (timeout, max_buffer, …).
        """
        return cls(
            host,
            port,
            username,
            password,
            spec.database,
            retention=spec.retention,
            **options,
        )

    def __repr__(self) -> str:
        return (
            f"MetricsStore(url={self.url!r}, database={self.database!r}, "
            f"username={self.username!r}, buffered={len(self._buffer)})"
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    # Set-up -----------------------------------------------------------------------------------

    def ping(self) -> bool:
        """Return True if InfluxDB responds to ``/ping``."""
        try:
            self._client.ping()
        except (requests.exceptions.RequestException, InfluxDBClientError, InfluxDBServerError):
            return False
        return True

    def setup(self) -> None:
        """Create the database and its retention policy (made the default); safe to repeat.

        An existing policy of the same name gets the spec's duration.

        Raises:
            MetricsError: InfluxDB is unreachable or refused a statement.
        """
        with self._guard("create database and retention policy"):
            self._client.create_database(self.database)
            policies = {
                policy["name"]: policy
                for policy in self._client.get_list_retention_policies(self.database)
            }
            if self.retention_policy in policies:
                self._client.alter_retention_policy(
                    self.retention_policy, self.database, duration=self.retention, default=True
                )
            else:
                self._client.create_retention_policy(
                    self.retention_policy, self.retention, 1, self.database, default=True
                )
        log.info(
            "metrics: database %s ready on %s (retention policy %s, %s)",
            self.database, self.url, self.retention_policy, self.retention,
        )

    def ensure_admin(self) -> None:
        """Create this store's user as an InfluxDB admin if the server has no such user yet.

        With ``auth-enabled = true`` and no users, InfluxDB 1.x accepts one unauthenticated
        ``CREATE USER … WITH ALL PRIVILEGES``. So a fresh server gets its generated admin
        password without it passing through an image or an environment variable.

        Raises:
            MetricsError: the store has no credentials, or InfluxDB refused the request.
        """
        if not self.username or not self._password:
            raise MetricsError(f"{self.url}: ensure_admin needs the store's username and password")
        try:
            users = self._client.get_list_users()
        except InfluxDBClientError as error:
            if error.code not in (401, 403):
                raise MetricsError(f"{self.url}: SHOW USERS failed: {error.content}") from None
            # Authentication is on. Either no user exists yet, and the server accepts an
            # unauthenticated admin creation, or the password is wrong, and the creation fails.
            anonymous = InfluxDBClient(
                self.host, self.port, None, None, ssl=self.ssl, verify_ssl=self.ssl,
                timeout=self.timeout, retries=1,
            )
            self._send_user_statement(anonymous, self._create_user_statement(admin=True))
            log.info("metrics: created InfluxDB admin user %s on %s", self.username, self.url)
            return
        except requests.exceptions.RequestException as error:
            raise MetricsError(f"{self.url}: unreachable: {error}") from None
        if not any(user["user"] == self.username for user in users):
            self._send_user_statement(self._client, self._create_user_statement(admin=True))
            log.info("metrics: created InfluxDB admin user %s on %s", self.username, self.url)

    def ensure_user(
        self, username: str, password: str, privilege: Literal["READ", "WRITE", "ALL"]
    ) -> None:
        """Create or update a non-admin user with ``privilege`` on this store's database.

        An existing user gets ``password`` again, so a resumed run's regenerated secret works.
        The store's own credentials must be an admin's.

        Raises:
            MetricsError: InfluxDB is unreachable or refused a statement.
        """
        with self._guard(f"set up user {username}"):
            existing = {user["user"] for user in self._client.get_list_users()}
            name, secret = quote_ident(username), quote_literal(password)
            if username in existing:
                statement = f"SET PASSWORD FOR {name} = {secret}"
            else:
                statement = f"CREATE USER {name} WITH PASSWORD {secret}"
            self._send_user_statement(self._client, statement)
            self._client.grant_privilege(privilege, self.database, username)
        log.info("metrics: user %s has %s on %s", username, privilege, self.database)

    def _create_user_statement(self, admin: bool) -> str:
        name, secret = quote_ident(self.username), quote_literal(self._password)
        statement = f"CREATE USER {name} WITH PASSWORD {secret}"
        return statement + (" WITH ALL PRIVILEGES" if admin else "")

    def _send_user_statement(self, client: InfluxDBClient, statement: str) -> None:
        # The statement contains a password, so it goes in a form body and not in the URL's
        # query string, where InfluxDB's HTTP access log and any proxy log would record it.
        try:
            response = client.request(
                "query",
                method="POST",
                data=urllib.parse.urlencode({"q": statement}),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            # A failed statement still gets HTTP 200, with the error inside the result.
            # ResultSet raises InfluxDBClientError for it.
            for result in response.json().get("results", []):
                ResultSet(result)
        except (InfluxDBClientError, InfluxDBServerError) as error:
            # InfluxDB 1.6.7's error names the cause or the unexpected token, never the whole
            # statement, so the message carries no password.
            raise MetricsError(f"{self.url}: user statement failed: {_describe(error)}") from None
        except requests.exceptions.RequestException as error:
            raise MetricsError(f"{self.url}: unreachable: {error}") from None

    # Writes -----------------------------------------------------------------------------------

    def write(
        self,
        measurement: str,
        tags: Mapping[str, Any] | None,
        fields: Mapping[str, Any],
        time: datetime | int | None = None,
    ) -> bool:
        """Write one point, or buffer it if InfluxDB is unreachable.

        Args:
            measurement: e.g. ``tasks``.
            tags: indexed string values, e.g. ``{"service": "web"}``; None or empty for none.
            fields: values, at least one; a None value is left out.
            time: aware ``datetime`` or integer nanoseconds; None stamps the point now, so a
                buffered point keeps the time it was taken.

        Returns:
            True if InfluxDB stored everything buffered so far, False if points wait in the buffer.

        Raises:
            ValueError: only for a malformed point (no fields, empty measurement, bad time),
                never because InfluxDB is unreachable or refuses the write.
        """
        return self.write_points([make_point(measurement, tags, fields, time)])

    def write_points(self, points: Iterable[Point]) -> bool:
        """Write a batch of points (as :func:`make_point` builds them); see :meth:`write`.

        A point without ``time`` is stamped now.

        Raises:
            ValueError: a point is malformed; then no point of the batch is buffered.
        """
        checked = [
            make_point(point["measurement"], point.get("tags"), point["fields"], point.get("time"))
            if isinstance(point, Mapping) and "measurement" in point and "fields" in point
            else _malformed(point)
            for point in points
        ]
        with self._lock:
            for point in checked:
                self._append(point)
            return self._flush(force=False)

    def flush(self) -> bool:
        """Try to write everything buffered now, whatever the retry interval; never raises.

        Returns:
            True if the buffer is empty afterwards.
        """
        with self._lock:
            return self._flush(force=True)

    def events(
        self,
        phase: str,
        kind: Literal["start", "end"],
        time: datetime | int | None = None,
        **fields: Any,
    ) -> bool:
        """Write a phase start or end to the ``events`` measurement (tags phase and kind).

        Args:
            phase: the phase name from the spec, e.g. ``scale``.
            kind: ``start`` or ``end``.
            time: when it happened; None for now.
            fields: extra values, e.g. ``outcome="passed"`` or ``replicas=200``.

        Returns:
            As :meth:`write`.
        """
        if kind not in ("start", "end"):
            raise ValueError(f"event kind {kind!r} must be 'start' or 'end'")
        # "count" gives every event a field, which InfluxDB requires, and sums to the event count.
        tags = {"phase": phase, "kind": kind}
        return self.write(EVENT_MEASUREMENT, tags, {"count": 1, **fields}, time)

    @property
    def buffered(self) -> int:
        """Points waiting in memory for InfluxDB."""
        return len(self._buffer)

    @property
    def outages(self) -> list[Outage]:
        """Past outages and, last, the current one (``end`` None) if InfluxDB is unreachable."""
        with self._lock:
            current = []
            if self._outage_start is not None:
                current = [
                    Outage(self._outage_start, None, self._outage_kept, self._outage_dropped)
                ]
            return [*self._outages, *current]

    @property
    def gaps(self) -> list[tuple[datetime, datetime | None]]:
        """``(start, end)`` of each outage in UTC; ``end`` is None for one still going on."""
        return [(outage.start, outage.end) for outage in self.outages]

    def _append(self, point: Point) -> None:
        if len(self._buffer) == self.max_buffer:
            self.dropped += 1
            if self._outage_start is not None:
                self._outage_dropped += 1
            if not self._buffer_full_logged:
                self._buffer_full_logged = True
                log.warning(
                    "metrics: buffer full (%d points) while %s is unreachable; dropping the oldest",
                    self.max_buffer, self.url,
                )
        self._buffer.append(point)

    def _flush(self, force: bool) -> bool:
        if not self._buffer:
            return True
        now = time.monotonic()
        if self._outage_start is not None and not force:
            if now - self._last_attempt < self.retry_interval:
                return False
        self._last_attempt = now

        while self._buffer:
            batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            try:
                self._client.write_points(batch, time_precision="n", database=self.database)
            except InfluxDBClientError as error:
                if error.code in _RETRYABLE_CLIENT_CODES:
                    self._begin_outage(f"HTTP {error.code}: {_content(error)}")
                    return False
                # The points are bad (type conflict, unparsable, unknown database): retrying
                # cannot help, so they are dropped and counted.
                self._drop_batch(len(batch), f"HTTP {error.code}: {_content(error)}")
                continue
            except (InfluxDBServerError, requests.exceptions.RequestException) as error:
                self._begin_outage(_describe(error))
                return False
            for _ in batch:
                self._buffer.popleft()
            self.written += len(batch)
            if self._outage_start is not None:
                self._outage_kept += len(batch)

        self._end_outage()
        return True

    def _drop_batch(self, count: int, reason: str) -> None:
        for _ in range(count):
            self._buffer.popleft()
        self.rejected += count
        if reason not in self._rejection_messages:
            # Each distinct rejection is logged once; the count goes on in self.rejected.
            self._rejection_messages.add(reason)
            log.error("metrics: %s rejected %d points, dropped them: %s", self.url, count, reason)

    def _begin_outage(self, reason: str) -> None:
        if self._outage_start is not None:
            return
        self._outage_start = datetime.now(UTC)
        self._outage_kept = 0
        self._outage_dropped = 0
        self._buffer_full_logged = False
        log.warning(
            "metrics: InfluxDB at %s unreachable (%s); buffering up to %d points and retrying "
            "every %.1f s",
            self.url, reason, self.max_buffer, self.retry_interval,
        )

    def _end_outage(self) -> None:
        if self._outage_start is None:
            return
        outage = Outage(
            self._outage_start, datetime.now(UTC), self._outage_kept, self._outage_dropped
        )
        self._outages.append(outage)
        self._outage_start = None
        log.info(
            "metrics: InfluxDB at %s reachable again after %.1f s; wrote %d buffered points, "
            "dropped %d",
            self.url, outage.duration.total_seconds(), outage.points_kept, outage.points_dropped,
        )

    # Queries ----------------------------------------------------------------------------------

    def query_frame(
        self, influxql: str, bind_params: Mapping[str, Any] | None = None
    ) -> pd.DataFrame:
        """Run an InfluxQL query and return its rows as one DataFrame.

        Each series' tags become columns, so ``SELECT … GROUP BY service`` yields one frame with a
        ``service`` column, and the ``time`` column contains UTC timestamps. Buffered points are
        flushed first, so a query sees what this store wrote.

        Args:
            influxql: e.g. ``SELECT running, desired FROM tasks WHERE time > now() - 1h``.
            bind_params: values for ``$name`` placeholders, quoted by InfluxDB itself.

        Returns:
            The rows, or an empty DataFrame if the query matched nothing.

        Raises:
            MetricsError: InfluxDB is unreachable or rejected the query.
        """
        self.flush()
        with self._guard(f"query {influxql!r}"):
            result = self._client.query(
                influxql, bind_params=dict(bind_params) if bind_params else None, epoch="ns"
            )
        frames = []
        for (measurement, tags), rows in result.items():
            frame = pd.DataFrame(list(rows))
            if frame.empty:
                continue
            frame.insert(0, "measurement", measurement)
            for key, value in (tags or {}).items():
                frame[key] = value
            frames.append(frame)
        if not frames:
            return pd.DataFrame()
        combined = pd.concat(frames, ignore_index=True)
        if "time" in combined.columns:
            combined["time"] = pd.to_datetime(combined["time"], unit="ns", utc=True)
        return combined

    def close(self) -> None:
        """Flush what is buffered (one attempt) and close the HTTP session."""
        self.flush()
        self._client.close()

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn the influxdb package's and requests' errors into :class:`MetricsError`."""
        try:
            yield
        except (
            InfluxDBClientError,
            InfluxDBServerError,
            requests.exceptions.RequestException,
        ) as error:
            raise MetricsError(f"{self.url}: {action} failed: {_describe(error)}") from None


def _malformed(point: Any) -> Point:
    raise ValueError(f"point {point!r} needs at least 'measurement' and 'fields'")


def _content(error: InfluxDBClientError | InfluxDBServerError) -> str:
    content = getattr(error, "content", None) or (error.args[0] if error.args else "")
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return str(content).strip()


def _describe(error: BaseException) -> str:
    if isinstance(error, InfluxDBClientError):
        prefix = f"HTTP {error.code}: " if error.code else ""
        return prefix + _content(error)
    if isinstance(error, InfluxDBServerError):
        return f"server error: {_content(error)}"
    if isinstance(error, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout):
        return "timed out"
    if isinstance(error, requests.exceptions.ConnectionError):
        return "connection refused or reset"
    return type(error).__name__
