"""One run's monitoring: InfluxDB on the swarm, the observer writing to it, Telegraf and Grafana.

:func:`start_monitoring` deploys what the provider can run and starts the observer; the returned
:class:`MonitoringSession` is stopped after the report has read its measurements back.
Where an image cannot be pulled (the lab reaches no registry), Telegraf and Grafana are skipped
with one log line each, and :attr:`MonitoringSession.skipped` records why, for the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker

from swarmlab import failpoints
from swarmlab.cluster import Cluster
from swarmlab.metrics import MetricsStore
from swarmlab.monitoring import grafana, services
from swarmlab.monitoring.credentials import MonitoringCredentials
from swarmlab.monitoring.influx_image import HTTP_PORT
from swarmlab.observer import Observer, swarm_sample
from swarmlab.spec import MonitoringSpec

log = logging.getLogger(__name__)


@dataclass
class MonitoringSession:
    store: MetricsStore
    observer: Observer
    cluster: Cluster
    influxdb_url: str
    deployed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def event(self, phase: str, kind: str, **fields) -> None:
        self.store.events(phase, kind, **fields)

    def stop(self) -> dict:
        """Stop sampling, flush the buffer and return the monitoring summary for the report."""
        if self.observer.running:
            self.observer.stop(timeout=30)
        self.store.flush()
        summary = self.describe()
        self.store.close()
        self.cluster.close()
        return summary

    def describe(self) -> dict:
        return {
            "influxdb_url": self.influxdb_url,
            "database": self.store.database,
            "deployed": self.deployed,
            "skipped": self.skipped,
            "points_written": self.store.written,
            "points_dropped": self.store.dropped,
            "gaps": [{"start": start, "end": end} for start, end in self.store.gaps],
            "samples": self.observer.stats.__dict__ if hasattr(self.observer.stats, "__dict__") else {},
        }


def _wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise TimeoutError(f"monitoring: {what} not ready after {seconds:.0f}s")


def start_monitoring(cluster: Cluster, spec: MonitoringSpec, run_id: str, record_path: Path, *, lab: bool,
                     credentials: MonitoringCredentials) -> MonitoringSession:
    """Deploy InfluxDB (pinned to the leader, host-mode port), create its users, start the observer.

    ``credentials`` must be the same on a resumed run (the caller keeps them in a Prefect Secret
    block); the InfluxDB admin is created only on a fresh server.

    Raises:
        TimeoutError: InfluxDB did not answer in time.
        swarmlab.metrics.MetricsError: InfluxDB refused the set-up statements (e.g. the admin
            password no longer matches: remove the service and its volume, or start a new run).
    """
    prefix = f"swarmlab-{run_id.lower()[-4:]}"
    leader = cluster.leader()
    client = cluster.engine(leader)
    leader_id = client.info()["Swarm"]["NodeID"]
    services.ensure_network(client, services.network_name(prefix))
    definition = services.influxdb_service(spec, lab=lab, prefix=prefix, node_id=leader_id,
                                           published_port=HTTP_PORT, publish_mode="host")
    services.deploy_service(client, definition)
    failpoints.reach("during:monitoring")
    url = f"http://{leader.address}:{HTTP_PORT}"
    store = MetricsStore.from_spec(spec.influxdb, host=leader.address, port=HTTP_PORT,
                                   username=credentials.influxdb_admin_user, password=credentials.influxdb_admin)
    _wait_for(store.ping, 120, f"InfluxDB at {url}")
    store.ensure_admin()
    store.setup()
    store.ensure_user(credentials.influxdb_telegraf_user, credentials.influxdb_telegraf, "WRITE")
    store.ensure_user(credentials.influxdb_grafana_user, credentials.influxdb_grafana, "READ")
    deployed = {"influxdb": f"{definition.image} on {leader.name}, {url}, database {spec.influxdb.database}"}
    skipped: dict[str, str] = {}

    dashboard = grafana.dashboard_json()
    artifacts = record_path / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "grafana-dashboard.json").write_text(dashboard)
    if lab:
        reason = "the lab reaches no image registry, so public images cannot be pulled"
        skipped["telegraf"] = f"{spec.telegraf_image}: {reason}"
        skipped["grafana"] = f"{spec.grafana_image}: {reason}; the dashboard JSON is saved for import by hand"
        log.info("monitoring: Telegraf and Grafana skipped: %s", reason)
    else:
        internal_url = f"http://{services.influxdb_service_name(prefix)}:{HTTP_PORT}"
        for definition in services.telegraf_services(spec, credentials, manager_node_id=leader_id,
                                                     influxdb_url=internal_url, prefix=prefix):
            services.deploy_service(client, definition)
            deployed[definition.name] = definition.image
        grafana_definition = services.grafana_service(spec, credentials, prefix=prefix)
        services.deploy_service(client, grafana_definition)
        deployed["grafana"] = f"{grafana_definition.image}, port {services.GRAFANA_PORT} on the managers"

    managers = cluster.inventory.managers

    def manager_stats() -> dict:
        return {node.name: cluster.dockerd_cpu(node) for node in managers}

    def sample() -> list:
        try:
            return swarm_sample(cluster.engine(cluster.leader(deadline=10)), manager_stats)
        except docker.errors.DockerException:
            cluster.drop_engine(leader.name)
            raise

    observer = Observer(store, sample, spec.interval_seconds, name="observer")
    observer.start()
    log.info("monitoring: observer writing to %s every %.0fs", url, spec.interval_seconds)
    return MonitoringSession(store, observer, cluster, url, deployed, skipped)


def write_tuning_points(store: MetricsStore, tuning: dict | None) -> None:
    """Write the ARP cache overflow counters the tuning phase read, as the ``arp_cache`` measurement."""
    if not tuning:
        return
    host = tuning.get("host") or {}
    for moment in ("before", "after"):
        counters = host.get(f"arp_cache_{moment}")
        if counters:
            store.write("arp_cache", {"node": "host", "moment": moment}, _arp_fields(counters))
    for node, data in (tuning.get("nodes") or {}).items():
        counters = data.get("arp_cache")
        if counters:
            store.write("arp_cache", {"node": node, "moment": "after"}, _arp_fields(counters))


def _arp_fields(counters: dict) -> dict[str, int]:
    return {"table_fulls": int(counters.get("table_fulls", 0)), "entries": int(counters.get("entries", 0))}


MEASUREMENTS = ("nodes", "tasks", "manager", "events", "arp_cache")


def export_measurements(store: MetricsStore, folder: Path) -> dict[str, int | None]:
    """Read the run's measurements back with InfluxQL into ``folder/influx-<measurement>.csv``.

    The report's time-series plots come from these files, so they show what InfluxDB stored.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int | None] = {}
    for measurement in MEASUREMENTS:
        try:
            # The names come from MEASUREMENTS above, never from input.
            frame = store.query_frame(f'SELECT * FROM "{measurement}"')  # noqa: S608
        except Exception as error:  # noqa: BLE001 - the report says what is missing
            log.warning("monitoring: could not read back %s: %s", measurement, error)
            rows[measurement] = None
            continue
        frame.to_csv(folder / f"influx-{measurement}.csv", index=False)
        rows[measurement] = len(frame)
    log.info("monitoring: read back from InfluxDB: %s", ", ".join(f"{k} {v}" for k, v in rows.items()))
    return rows
