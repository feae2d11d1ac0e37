"""Grafana provisioning for a run: the InfluxDB data source, a dashboard provider and the dashboard.

The dashboard is built with ``grafana-foundation-sdk`` (Grafana Labs' generated types and
builders, pinned to its Grafana 10.4 build to match the default image). The SDK has no model of
InfluxDB queries, so :class:`InfluxQLQuery` adds one as a data-query variant of the SDK's
runtime. A dashboard read back with ``Dashboard.from_json`` then yields these objects again.

The data source's password is never in a file: it reads ``$__file{/run/secrets/…}``, which
Grafana expands when it loads the provisioning file, from the Docker secret mounted there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dashboard_model

DATASOURCE_UID = "swarmlab-influxdb"
DATASOURCE_TYPE = "influxdb"
DASHBOARD_UID = "swarmlab-swarm"
DASHBOARD_FOLDER = "/var/lib/grafana/dashboards/swarmlab"
PROVISIONING_ROOT = "/etc/grafana/provisioning"
SECRETS_DIR = "/run/secrets"
INFLUXDB_PASSWORD_SECRET = "influxdb_grafana_password"  # noqa: S105 - a file name
ADMIN_PASSWORD_SECRET = "grafana_admin_password"  # noqa: S105 - a file name

DATASOURCE_FILE = "datasources/swarmlab.yaml"
PROVIDER_FILE = "dashboards/swarmlab.yaml"
DASHBOARD_FILE = "swarm.json"


@dataclass
class InfluxQLQuery(cogvariants.Dataquery):
    """A raw InfluxQL query of Grafana's InfluxDB data source, as a dashboard target stores it.

    ``alias`` names series with Grafana's patterns, e.g. ``$tag_service``; ``result_format`` is
    ``time_series`` or ``table``.
    """

    ref_id: str
    query: str
    alias: str = ""
    result_format: str = "time_series"
    datasource_uid: str = DATASOURCE_UID

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": {"type": DATASOURCE_TYPE, "uid": self.datasource_uid},
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            payload["alias"] = self.alias
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            ref_id=data.get("refId", ""),
            query=data.get("query", ""),
            alias=data.get("alias", ""),
            result_format=data.get("resultFormat", "time_series"),
            datasource_uid=(data.get("datasource") or {}).get("uid", DATASOURCE_UID),
        )


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    """Builder of an :class:`InfluxQLQuery`, in the SDK's builder style."""

    def __init__(self, query: str, ref_id: str = "A"):
        self._internal = InfluxQLQuery(ref_id=ref_id, query=query)

    def build(self) -> InfluxQLQuery:
        return self._internal

    def alias(self, alias: str) -> Self:
        self._internal.alias = alias
        return self

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def table(self) -> Self:
        self._internal.result_format = "table"
        return self


def register_influxql_variant() -> None:
    """Make the SDK read InfluxDB targets as :class:`InfluxQLQuery` (idempotent)."""
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(
            identifier=DATASOURCE_TYPE, from_json_hook=InfluxQLQuery.from_json
        )
    )


register_influxql_variant()

# Panel queries. $timeFilter and $__interval are Grafana's InfluxQL macros.
NODES_READY_NOW = (
    'SELECT sum("last") FROM (SELECT last("count") FROM "nodes" '
    "WHERE \"state\" = 'ready' AND $timeFilter GROUP BY \"role\", \"availability\")"
)
NODES_READY = (
    'SELECT last("count") FROM "nodes" WHERE "state" = \'ready\' AND $timeFilter '
    'GROUP BY time($__interval), "role", "availability" fill(previous)'
)
TASKS_RUNNING_DESIRED = (
    'SELECT last("running") AS "running", last("desired") AS "desired" FROM "tasks" '
    'WHERE $timeFilter GROUP BY time($__interval), "service" fill(previous)'
)
SCHEDULING_THROUGHPUT = (
    'SELECT non_negative_derivative(last("running"), 1s) FROM "tasks" '
    'WHERE $timeFilter GROUP BY time($__interval), "service" fill(none)'
)
TASKS_FAILED = (
    'SELECT last("failed") FROM "tasks" WHERE $timeFilter '
    'GROUP BY time($__interval), "service" fill(previous)'
)
MANAGER_CPU = (
    'SELECT mean("cpu_percent") FROM "manager" WHERE $timeFilter '
    'GROUP BY time($__interval), "node" fill(none)'
)
MANAGER_MEMORY = (
    'SELECT mean("rss_bytes") FROM "manager" WHERE $timeFilter '
    'GROUP BY time($__interval), "node" fill(none)'
)
# table_fulls is a counter since boot: the panel shows how much it grew in each interval.
ARP_TABLE_FULLS = (
    'SELECT non_negative_difference(last("table_fulls")) FROM "arp_cache" '
    'WHERE $timeFilter GROUP BY time($__interval), "node" fill(none)'
)
PHASE_EVENTS = 'SELECT "count", "phase", "kind" FROM "events" WHERE $timeFilter'

PANEL_QUERIES = {
    "Nodes ready now": NODES_READY_NOW,
    "Nodes ready": NODES_READY,
    "Tasks running and desired per service": TASKS_RUNNING_DESIRED,
    "Scheduling throughput (tasks reaching running per second)": SCHEDULING_THROUGHPUT,
    "Failed and rejected tasks in retained history": TASKS_FAILED,
    "Manager dockerd CPU": MANAGER_CPU,
    "Manager dockerd memory (RSS)": MANAGER_MEMORY,
    "ARP table overflows (table_fulls increase)": ARP_TABLE_FULLS,
    "Phase events": PHASE_EVENTS,
}
"""Title → InfluxQL of every panel, for tests that run the queries against a real InfluxDB."""


def _datasource() -> dashboard_model.DataSourceRef:
    return dashboard_model.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


def _series_panel(title: str, alias: str, unit: str, width: int = 12) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .datasource(_datasource())
        .with_target(InfluxQL(PANEL_QUERIES[title]).alias(alias))
        .unit(unit)
        .height(8)
        .span(width)
    )


def build_dashboard(title: str = "Swarmlab: swarm under test") -> dashboard_model.Dashboard:
    """Build the run dashboard: nodes, tasks, throughput, manager load, ARP overflows, phases."""
    panels: list[Any] = [
        stat.Panel()
        .title("Nodes ready now")
        .datasource(_datasource())
        .with_target(InfluxQL(NODES_READY_NOW))
        .height(8)
        .span(4),
        _series_panel("Nodes ready", "$tag_role ($tag_availability)", "short", 8),
        _series_panel("Tasks running and desired per service", "$tag_service $col", "short"),
        _series_panel(
            "Scheduling throughput (tasks reaching running per second)", "$tag_service", "short"
        ),
        _series_panel("Failed and rejected tasks in retained history", "$tag_service", "short"),
        _series_panel("Manager dockerd CPU", "$tag_node", "percent"),
        _series_panel("Manager dockerd memory (RSS)", "$tag_node", "bytes"),
        _series_panel("ARP table overflows (table_fulls increase)", "$tag_node", "short"),
        table.Panel()
        .title("Phase events")
        .datasource(_datasource())
        .with_target(InfluxQL(PHASE_EVENTS).table())
        .height(8)
        .span(12),
    ]
    builder = (
        dashboard_builder.Dashboard(title)
        .uid(DASHBOARD_UID)
        .tags(["swarmlab", "docker-swarm"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("utc")
        .readonly()
    )
    # Explicit panel ids: Grafana keys panel links and per-panel state by them.
    for panel_id, panel in enumerate(panels, start=1):
        builder.with_panel(panel.id(panel_id))
    return builder.build()


def dashboard_json(dashboard: dashboard_model.Dashboard | None = None) -> str:
    """Return the dashboard as the JSON text Grafana's file provider loads."""
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard or build_dashboard())


def datasource_provisioning(
    *,
    influxdb_url: str,
    database: str,
    username: str,
    password_file: str = f"{SECRETS_DIR}/{INFLUXDB_PASSWORD_SECRET}",
    time_interval_seconds: float = 5.0,
) -> dict[str, Any]:
    """Build the data source provisioning document (InfluxDB, InfluxQL, read-only user).

    Args:
        influxdb_url: InfluxDB as Grafana's server reaches it, e.g. ``http://swarmlab-influxdb:8086``.
        database: the run's database.
        username: an InfluxDB user with READ on ``database``.
        password_file: where the user's password is mounted; Grafana reads it at load time.
        time_interval_seconds: the observer's sampling interval, Grafana's lower bound for
            ``$__interval`` so panels do not ask for buckets finer than the data.
    """
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "swarmlab InfluxDB",
                "uid": DATASOURCE_UID,
                "type": DATASOURCE_TYPE,
                "access": "proxy",
                "url": influxdb_url,
                "user": username,
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "version": "InfluxQL",
                    "dbName": database,
                    "httpMode": "POST",
                    "timeInterval": f"{max(1, round(time_interval_seconds))}s",
                },
                "secureJsonData": {"password": f"$__file{{{password_file}}}"},
            }
        ],
    }


def dashboard_provider_provisioning(folder: str = DASHBOARD_FOLDER) -> dict[str, Any]:
    """Build the dashboard provider document: load dashboards read-only from ``folder``."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "swarmlab",
                "orgId": 1,
                "folder": "swarmlab",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": folder, "foldersFromFilesStructure": False},
            }
        ],
    }


@dataclass(frozen=True)
class GrafanaFiles:
    """The three provisioning files' contents and where Grafana reads each one."""

    datasource_yaml: str
    provider_yaml: str
    dashboard_json: str

    def targets(self) -> dict[str, str]:
        """Map each file's path inside the Grafana container to its content."""
        return {
            f"{PROVISIONING_ROOT}/{DATASOURCE_FILE}": self.datasource_yaml,
            f"{PROVISIONING_ROOT}/{PROVIDER_FILE}": self.provider_yaml,
            f"{DASHBOARD_FOLDER}/{DASHBOARD_FILE}": self.dashboard_json,
        }


def grafana_files(
    *, influxdb_url: str, database: str, username: str = "grafana", interval_seconds: float = 5.0
) -> GrafanaFiles:
    """Build all Grafana provisioning files for a run."""
    datasource = datasource_provisioning(
        influxdb_url=influxdb_url,
        database=database,
        username=username,
        time_interval_seconds=interval_seconds,
    )
    return GrafanaFiles(
        datasource_yaml=yaml.safe_dump(datasource, sort_keys=False),
        provider_yaml=yaml.safe_dump(dashboard_provider_provisioning(), sort_keys=False),
        dashboard_json=dashboard_json(),
    )


def write_grafana_files(folder: str | Path, files: GrafanaFiles) -> dict[str, Path]:
    """Write the files under ``folder`` in Grafana's layout (``provisioning/…``, ``dashboards/…``).

    Returns:
        ``{path inside the container: path written}``.
    """
    folder = Path(folder)
    written = {}
    for target, content in files.targets().items():
        path = folder / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written[target] = path
    return written


def load_dashboard(text: str) -> dashboard_model.Dashboard:
    """Parse dashboard JSON into the SDK's model (InfluxDB targets as :class:`InfluxQLQuery`)."""
    return dashboard_model.Dashboard.from_json(json.loads(text))
