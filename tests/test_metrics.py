"""MetricsStore against a real influxd (Debian's InfluxDB 1.6.7)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from swarmlab.metrics import MetricsError, MetricsStore, make_point, to_nanoseconds
from swarmlab.monitoring.credentials import generate_password
from swarmlab.spec import InfluxDBSpec
from tests.influx_fixture import InfluxServer, free_loopback_port, influx_server, influx_url  # noqa: F401


def store_for(url: str, **options) -> MetricsStore:
    parts = urlsplit(url)
    database = "t_" + uuid.uuid4().hex[:12]
    store = MetricsStore(parts.hostname, parts.port, database=database, **options)
    store.setup()
    return store


def messages(caplog, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


def test_write_and_query_back(influx_url):  # noqa: F811
    store = store_for(influx_url)
    # Within the 30-day retention, with microseconds to check that no precision is lost.
    taken = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=678901)

    web = {"service": "web, tier=front"}
    assert store.write("tasks", web, {"running": 48, "desired": 50}, taken)
    assert store.write("tasks", {"service": "db"}, {"running": 3, "desired": 3}, taken)

    frame = store.query_frame('SELECT running, desired FROM tasks GROUP BY "service"')
    by_service = frame.set_index("service")
    assert set(by_service.index) == {"web, tier=front", "db"}
    assert by_service.loc["web, tier=front", "running"] == 48
    assert by_service.loc["db", "desired"] == 3
    assert (frame["time"] == taken).all()
    assert (frame["measurement"] == "tasks").all()


def test_query_frame_bind_params(influx_url):  # noqa: F811
    store = store_for(influx_url)
    store.write("nodes", {"state": "ready", "role": "worker"}, {"count": 7})
    store.write("nodes", {"state": "down", "role": "worker"}, {"count": 2})

    frame = store.query_frame("SELECT count FROM nodes WHERE state = $state", {"state": "down"})

    assert list(frame["count"]) == [2]


def test_query_frame_empty(influx_url):  # noqa: F811
    store = store_for(influx_url)

    assert store.query_frame("SELECT * FROM nothing_here").empty


def test_events_written_with_tags(influx_url):  # noqa: F811
    store = store_for(influx_url)
    start = datetime.now(UTC) - timedelta(seconds=30)

    store.events("scale", "start", start, replicas=50)
    store.events("scale", "end", outcome="passed")

    frame = store.query_frame('SELECT * FROM events GROUP BY "phase", "kind"').set_index("kind")
    assert frame.loc["start", "phase"] == "scale"
    assert frame.loc["start", "replicas"] == 50
    assert frame.loc["start", "time"] == start
    assert frame.loc["end", "outcome"] == "passed"
    with pytest.raises(ValueError, match="start' or 'end"):
        store.events("scale", "middle")


def test_setup_creates_retention_policy(influx_url):  # noqa: F811
    store = store_for(influx_url, retention="2w")

    policies = {p["name"]: p for p in store._client.get_list_retention_policies(store.database)}
    assert policies["swarmlab"]["duration"] == "336h0m0s"
    assert policies["swarmlab"]["default"] is True

    store.retention = "INF"
    store.setup()
    policies = {p["name"]: p for p in store._client.get_list_retention_policies(store.database)}
    assert policies["swarmlab"]["duration"] == "0s"


def test_from_spec_takes_database_and_retention():
    spec = InfluxDBSpec(database="run_a", retention="7d")

    store = MetricsStore.from_spec(spec, "127.0.0.1", 8086, "swarmlab", "s3cret-value")

    assert store.database == "run_a"
    assert store.retention == "7d"


def test_repr_hides_password():
    store = MetricsStore("127.0.0.1", 8086, "swarmlab", "very-secret-password", "db")

    assert "very-secret-password" not in repr(store)
    assert "swarmlab" in repr(store)


def test_make_point_rejects_bad_points():
    with pytest.raises(ValueError, match="no fields"):
        make_point("tasks", {"service": "web"}, {"running": None})
    with pytest.raises(ValueError, match="measurement"):
        make_point("", None, {"count": 1})
    with pytest.raises(ValueError, match="integer nanoseconds"):
        make_point("tasks", None, {"count": 1}, time=1.5)


def test_write_points_rejects_malformed_batch(influx_url):  # noqa: F811
    store = store_for(influx_url)
    good = make_point("nodes", None, {"count": 1})

    with pytest.raises(ValueError, match="'measurement' and 'fields'"):
        store.write_points([good, {"tags": {"state": "ready"}}])
    with pytest.raises(ValueError, match="no fields"):
        store.write_points([good, {"measurement": "nodes", "fields": {}}])

    assert store.buffered == 0
    assert store.query_frame("SELECT * FROM nodes").empty


def test_make_point_drops_empty_tags():
    point = make_point("nodes", {"role": "worker", "state": ""}, {"count": 1}, time=5)

    assert point["tags"] == {"role": "worker"}
    assert point["time"] == 5


def test_to_nanoseconds_keeps_microseconds():
    moment = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)

    assert to_nanoseconds(moment) == 1767225600_123456000
    assert to_nanoseconds(moment.replace(tzinfo=None)) == 1767225600_123456000


def test_unreachable_server_buffers_without_raising(caplog):
    caplog.set_level(logging.INFO, logger="swarmlab.metrics")
    store = MetricsStore("127.0.0.1", free_loopback_port(), database="db", retry_interval=0)

    for index in range(5):
        assert store.write("nodes", {"state": "ready"}, {"count": index}) is False

    assert store.buffered == 5
    assert len(messages(caplog, "unreachable")) == 1
    assert store.gaps[0][1] is None
    with pytest.raises(MetricsError, match="127.0.0.1"):
        store.setup()


def test_outage_buffers_and_recovers(influx_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="swarmlab.metrics")
    store = store_for(influx_server.url, retry_interval=0)
    assert store.write("tasks", {"service": "web"}, {"running": 1})

    influx_server.stop()
    during = []
    for index in range(10):
        moment = datetime.now(UTC) + timedelta(milliseconds=index)
        during.append(moment)
        assert store.write("tasks", {"service": "web"}, {"running": 10 + index}, moment) is False
    assert store.buffered == 10
    assert len(store.gaps) == 1
    assert store.gaps[0][1] is None
    assert len(messages(caplog, "unreachable")) == 1

    influx_server.start()
    assert store.write("tasks", {"service": "web"}, {"running": 99})

    assert store.buffered == 0
    (start, end), = store.gaps
    assert start < end
    outage = store.outages[0]
    assert outage.points_kept == 11
    assert outage.points_dropped == 0
    assert len(messages(caplog, "unreachable")) == 1
    recovered = messages(caplog, "reachable again")
    assert len(recovered) == 1
    assert "wrote 11 buffered points, dropped 0" in recovered[0]

    frame = store.query_frame("SELECT running FROM tasks")
    assert sorted(frame["running"]) == [1, *range(10, 20), 99]
    # Buffered points keep the time they were taken, not the time they were flushed.
    assert set(during) <= set(frame["time"])


def test_full_buffer_drops_oldest(influx_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="swarmlab.metrics")
    store = store_for(influx_server.url, retry_interval=0, max_buffer=4)

    influx_server.stop()
    first = to_nanoseconds(datetime.now(UTC))
    for index in range(7):
        store.write("nodes", None, {"count": index}, time=first + index)
    assert store.buffered == 4
    assert store.dropped == 3
    assert len(messages(caplog, "buffer full")) == 1

    influx_server.start()
    assert store.flush()

    outage = store.outages[0]
    assert (outage.points_kept, outage.points_dropped) == (4, 3)
    frame = store.query_frame("SELECT count FROM nodes")
    assert sorted(frame["count"]) == [3, 4, 5, 6]


def test_retry_interval_limits_attempts(influx_server):  # noqa: F811
    store = store_for(influx_server.url, retry_interval=3600)
    influx_server.stop()
    store.write("nodes", None, {"count": 1})
    influx_server.start()

    assert store.write("nodes", None, {"count": 2}) is False
    assert store.buffered == 2
    assert store.flush()
    assert store.buffered == 0


def test_rejected_points_are_dropped_once_logged(influx_url, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="swarmlab.metrics")
    store = store_for(influx_url)
    store.write("manager", {"node": "m1"}, {"cpu_percent": 1.5})

    # A string into a float field is a type conflict, which InfluxDB rejects with HTTP 400.
    assert store.write("manager", {"node": "m1"}, {"cpu_percent": "high"})
    assert store.write("manager", {"node": "m1"}, {"cpu_percent": "higher"})

    assert store.rejected == 2
    assert store.buffered == 0
    assert store.gaps == []
    assert len(messages(caplog, "rejected")) == 1


def test_admin_and_users_with_auth(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = InfluxServer(tmp_path / "auth", auth_enabled=True)
    server.start()
    try:
        admin_password = generate_password()
        admin = MetricsStore(server.host, server.port, "swarmlab", admin_password, "runs")
        admin.ensure_admin()
        admin.ensure_admin()  # a second call finds the user and changes nothing
        admin.setup()
        assert admin.write("nodes", {"state": "ready"}, {"count": 3})

        reader_password = generate_password()
        admin.ensure_user("grafana", reader_password, "READ")
        reader = MetricsStore(server.host, server.port, "grafana", reader_password, "runs")
        assert list(reader.query_frame("SELECT count FROM nodes")["count"]) == [3]
        reader.write("nodes", {"state": "ready"}, {"count": 4})
        assert reader.rejected == 0
        assert reader.buffered == 1  # 403: kept, as credentials may still be granted

        wrong = MetricsStore(server.host, server.port, "swarmlab", "not-the-password", "runs")
        with pytest.raises(MetricsError, match="authorization failed"):
            wrong.query_frame("SELECT * FROM nodes")

        log_text = caplog.text + server.log_path.read_text()
        assert admin_password not in log_text
        assert reader_password not in log_text
    finally:
        server.stop()
