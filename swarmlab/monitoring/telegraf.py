"""Telegraf configuration for cloud runs: one file for the chosen manager, one for all other nodes.

Telegraf's ``inputs.docker`` with ``gather_services = true`` reports every service's desired and
running replicas; run on several managers it reports each service once per manager. So there
are two files: ``telegraf-manager.conf`` (with ``gather_services``) for exactly one manager and
``telegraf-node.conf`` (without) for every other node. Both collect CPU, memory, network,
TCP socket and conntrack figures of the host, container stats, and the dockerd process.

No credential is written in clear. The InfluxDB user name comes from the environment
(``${INFLUXDB_USER}``, which Telegraf substitutes when it loads the file). The password comes
from the Docker secret mounted under ``/run/secrets``, read through Telegraf's
``secretstores.docker`` plugin (Telegraf 1.27 or later).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

MANAGER_CONFIG = "telegraf-manager.conf"
NODE_CONFIG = "telegraf-node.conf"
SECRET_STORE_ID = "swarmlab_secrets"  # noqa: S105 - a store id, not a password
PASSWORD_SECRET = "influxdb_telegraf_password"  # noqa: S105 - the secret's file name
USERNAME_ENV = "INFLUXDB_USER"
# Where the Telegraf service mounts the host's /proc and /sys (see services.telegraf_services);
# gopsutil, under Telegraf's host inputs, reads HOST_PROC and HOST_SYS.
HOST_PROC = "/hostfs/proc"
HOST_SYS = "/hostfs/sys"
DOCKER_SOCKET = "unix:///var/run/docker.sock"
# Top-level tables whose entries are plugin instances, each written as [[section.plugin]].
PLUGIN_SECTIONS = ("secretstores", "inputs", "outputs", "processors", "aggregators")


def telegraf_config(
    *,
    influxdb_url: str,
    database: str,
    gather_services: bool,
    interval_seconds: float = 10.0,
    secret_store_id: str = SECRET_STORE_ID,
    password_secret: str = PASSWORD_SECRET,
    username_env: str = USERNAME_ENV,
) -> dict[str, Any]:
    """Build one Telegraf configuration as a dict ready for ``tomli_w.dumps``.

    Args:
        influxdb_url: the run's InfluxDB as the Telegraf containers reach it, e.g.
            ``http://10.0.0.5:8086``.
        database: the run's database, created beforehand by ``MetricsStore.setup``; Telegraf
            does not try to create it (its user may only write).
        gather_services: True only in the configuration for exactly one manager.
        interval_seconds: collection and flush interval; Telegraf rounds to whole seconds.
        secret_store_id: id of the ``secretstores.docker`` instance; letters, digits and
            underscores only.
        password_secret: file name of the password under ``/run/secrets``, which is also the key
            Telegraf looks it up by (letters, digits and underscores only).
        username_env: environment variable holding the InfluxDB user name.

    Raises:
        ValueError: an id or secret name Telegraf cannot reference.
    """
    names = {"secret_store_id": secret_store_id, "password_secret": password_secret}
    for label, value in names.items():
        if not value.replace("_", "").isalnum() or not value.isascii():
            raise ValueError(
                f"{label} {value!r} may hold only letters, digits and underscores "
                "(Telegraf's secret reference syntax)"
            )
    interval = f"{max(1, round(interval_seconds))}s"

    docker_input: dict[str, Any] = {
        "endpoint": DOCKER_SOCKET,
        "gather_services": gather_services,
        "timeout": "5s",
        # Per-container totals only: per-CPU and per-device series multiply the series count
        # by the node's cores and disks for little insight at swarm scale.
        "perdevice_include": [],
        "total_include": ["cpu", "blkio", "network"],
    }
    return {
        "agent": {
            "interval": interval,
            "round_interval": True,
            "metric_batch_size": 1000,
            "metric_buffer_limit": 100_000,
            "collection_jitter": "0s",
            "flush_interval": interval,
            "flush_jitter": "2s",
            "precision": "1s",
            "omit_hostname": False,
        },
        "secretstores": {"docker": [{"id": secret_store_id}]},
        "inputs": {
            "cpu": [{"percpu": False, "totalcpu": True, "report_active": True}],
            "mem": [{}],
            "net": [{"ignore_protocol_stats": True}],
            "netstat": [{}],
            # The service runs in the host's network namespace, so its own /proc/sys/net shows
            # the host's conntrack table.
            "conntrack": [
                {
                    "files": ["nf_conntrack_count", "nf_conntrack_max"],
                    "dirs": ["/proc/sys/net/netfilter"],
                }
            ],
            "docker": [docker_input],
            "procstat": [{"exe": "dockerd", "pid_finder": "native"}],
        },
        "outputs": {
            "influxdb": [
                {
                    "urls": [influxdb_url],
                    "database": database,
                    "skip_database_creation": True,
                    "timeout": "5s",
                    "username": f"${{{username_env}}}",
                    "password": f"@{{{secret_store_id}:{password_secret}}}",
                    "content_encoding": "gzip",
                }
            ]
        },
    }


def render(config: dict[str, Any]) -> str:
    """Return the TOML text of a configuration from :func:`telegraf_config`.

    Telegraf's own TOML loader accepts plugins only as arrays of tables (``[[inputs.cpu]]``),
    not as arrays of inline tables, which ``tomli_w`` picks for short ones. So every plugin
    instance gets its ``[[kind.name]]`` header here and ``tomli_w`` writes its options.

    Raises:
        ValueError: a plugin option is itself a table, which this layout cannot express.
    """
    chunks = []
    for section, body in config.items():
        if section in PLUGIN_SECTIONS:
            for plugin, instances in body.items():
                for options in instances:
                    nested = [key for key, value in options.items() if isinstance(value, dict)]
                    if nested:
                        raise ValueError(
                            f"{section}.{plugin}: nested tables {nested} are not supported"
                        )
                    chunks.append(f"[[{section}.{plugin}]]\n" + tomli_w.dumps(options))
        else:
            chunks.append(tomli_w.dumps({section: body}))
    return "\n".join(chunks)


def write_telegraf_configs(
    folder: str | Path, *, influxdb_url: str, database: str, interval_seconds: float = 10.0
) -> dict[str, Path]:
    """Write ``telegraf-manager.conf`` and ``telegraf-node.conf`` into ``folder``.

    Returns:
        ``{file name: path}`` of the two files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, gather_services in ((MANAGER_CONFIG, True), (NODE_CONFIG, False)):
        config = telegraf_config(
            influxdb_url=influxdb_url,
            database=database,
            gather_services=gather_services,
            interval_seconds=interval_seconds,
        )
        path = folder / name
        path.write_text(render(config))
        written[name] = path
    return written
