"""Swarm service definitions of the monitoring stack: InfluxDB, Telegraf and Grafana.

Each definition is plain data (:class:`ServiceDefinition`); :meth:`ServiceDefinition.create_kwargs`
turns it into the keyword arguments of the Docker SDK's ``client.services.create`` once its
secrets and configs exist, and :func:`deploy_service` does all of that on a manager.

Passwords reach containers only as Docker secrets (files under ``/run/secrets``), and
configuration files as Docker configs. The InfluxDB admin user is created from the control
host with ``MetricsStore.ensure_admin`` right after the service starts. A fresh InfluxDB 1.x
with authentication on accepts exactly that one unauthenticated statement. So the admin
password needs no secret in the InfluxDB container, and the lab image needs no shell for an
init script.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import docker
from docker.types import (
    ConfigReference,
    EndpointSpec,
    RestartPolicy,
    SecretReference,
    ServiceMode,
)

from swarmlab.monitoring import grafana, telegraf
from swarmlab.monitoring.credentials import MonitoringCredentials
from swarmlab.monitoring.influx_image import DATA_ROOT, HTTP_PORT, INFLUXD_COMMAND
from swarmlab.spec import MonitoringSpec

log = logging.getLogger(__name__)

DIGEST_LABEL = "swarmlab.sha256"
TELEGRAF_CONFIG_PATH = "/etc/telegraf/telegraf.conf"
GRAFANA_PORT = 3000


class DeployError(RuntimeError):
    """A monitoring service could not be deployed; the message names the object and the fix."""


@dataclass(frozen=True)
class SecretFile:
    """A Docker secret and the file name it gets under ``/run/secrets``."""

    name: str
    target: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ConfigFile:
    """A Docker config and the absolute path it gets in the container."""

    name: str
    target: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class PublishedPort:
    """A published port; ``mode`` ``host`` binds on the node that runs the task only."""

    published: int
    target: int
    mode: Literal["host", "ingress"] = "host"


@dataclass(frozen=True)
class ServiceDefinition:
    """One swarm service as data; see :meth:`create_kwargs` for the Docker SDK call."""

    name: str
    image: str
    command: list[str] | None = None
    args: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    mode: Literal["replicated", "global"] = "replicated"
    replicas: int = 1
    constraints: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    ports: list[PublishedPort] = field(default_factory=list)
    secrets: list[SecretFile] = field(default_factory=list)
    configs: list[ConfigFile] = field(default_factory=list)
    hostname: str | None = None
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def create_kwargs(
        self, secret_ids: Mapping[str, str], config_ids: Mapping[str, str]
    ) -> dict[str, Any]:
        """Return the keyword arguments of ``client.services.create`` for this service.

        Args:
            secret_ids: Docker secret id by secret name, for every entry of ``secrets``.
            config_ids: Docker config id by config name, for every entry of ``configs``.

        Raises:
            KeyError: a secret or config has no id yet.
        """
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "env": [f"{key}={value}" for key, value in sorted(self.env.items())],
            "mode": ServiceMode(
                self.mode, replicas=self.replicas if self.mode == "replicated" else None
            ),
            "constraints": list(self.constraints),
            "mounts": list(self.mounts),
            "networks": list(self.networks),
            "labels": dict(self.labels),
            "restart_policy": RestartPolicy(condition="any", delay=5_000_000_000),
            "secrets": [
                SecretReference(secret_ids[secret.name], secret.name, filename=secret.target)
                for secret in self.secrets
            ],
            "configs": [
                ConfigReference(config_ids[config.name], config.name, filename=config.target)
                for config in self.configs
            ],
        }
        if self.command is not None:
            kwargs["command"] = list(self.command)
        if self.args is not None:
            kwargs["args"] = list(self.args)
        if self.hostname is not None:
            kwargs["hostname"] = self.hostname
        if self.user is not None:
            kwargs["user"] = self.user
        if self.ports:
            kwargs["endpoint_spec"] = EndpointSpec(
                ports={port.published: (port.target, "tcp", port.mode) for port in self.ports}
            )
        return kwargs


def network_name(prefix: str) -> str:
    return f"{prefix}-monitoring"


def influxdb_service_name(prefix: str) -> str:
    return f"{prefix}-influxdb"


def influxdb_service(
    spec: MonitoringSpec,
    *,
    lab: bool,
    prefix: str = "swarmlab",
    node_id: str | None = None,
    published_port: int = HTTP_PORT,
    publish_mode: Literal["host", "ingress"] = "host",
) -> ServiceDefinition:
    """Define the InfluxDB service: one replica, data on a named volume, auth on.

    Args:
        spec: the run's monitoring settings (images).
        lab: use ``spec.influxdb.lab_image`` (built by ``influx_image``) instead of
            ``spec.influxdb.image``.
        prefix: prefix of every name, e.g. ``swl-<run id>``, so runs do not collide.
        node_id: pin the task to this node, so a host-mode port has a known address; None
            places it on any manager.
        published_port, publish_mode: where the control host and Telegraf reach it. The lab
            kernel has no IPVS, so the routing mesh (``ingress``) does not accept connections
            there.
    """
    image = spec.influxdb.lab_image if lab else spec.influxdb.image
    return ServiceDefinition(
        name=influxdb_service_name(prefix),
        image=image,
        # The lab image has no entrypoint; the official image's entrypoint runs this too.
        command=list(INFLUXD_COMMAND) if lab else None,
        env={
            # influxd reads INFLUXDB_<SECTION>_<KEY> over its file, so both images get these.
            "INFLUXDB_HTTP_AUTH_ENABLED": "true",
            "INFLUXDB_HTTP_LOG_ENABLED": "false",
            "INFLUXDB_REPORTING_DISABLED": "true",
            "INFLUXDB_DATA_QUERY_LOG_ENABLED": "false",
        },
        constraints=[f"node.id == {node_id}"] if node_id else ["node.role == manager"],
        mounts=[f"{prefix}-influxdb-data:{DATA_ROOT}:rw"],
        networks=[network_name(prefix)],
        ports=[PublishedPort(published_port, HTTP_PORT, publish_mode)],
        labels={"swarmlab.component": "influxdb"},
    )


def telegraf_services(
    spec: MonitoringSpec,
    credentials: MonitoringCredentials,
    *,
    manager_node_id: str,
    influxdb_url: str,
    prefix: str = "swarmlab",
) -> list[ServiceDefinition]:
    """Define the two Telegraf services: one on ``manager_node_id``, one global on all others.

    Only the first gathers swarm services (``gather_services``), so each service is reported
    once. Together they run exactly one Telegraf per node. Telegraf runs in each node's host
    network namespace with the host's ``/proc`` and ``/sys`` mounted read-only, and as root
    (its entrypoint is bypassed) so that it can read the Docker socket and the secret.

    Args:
        manager_node_id: swarm node id of the manager that reports services.
        influxdb_url: InfluxDB as the nodes reach it, e.g. ``http://10.0.0.5:8086``.
    """
    password = SecretFile(
        f"{prefix}-influxdb-telegraf-password",
        telegraf.PASSWORD_SECRET,
        credentials.influxdb_telegraf.encode(),
    )
    common: dict[str, Any] = {
        "image": spec.telegraf_image,
        "command": ["telegraf", "--config", TELEGRAF_CONFIG_PATH],
        "env": {
            telegraf.USERNAME_ENV: credentials.influxdb_telegraf_user,
            "HOST_PROC": telegraf.HOST_PROC,
            "HOST_SYS": telegraf.HOST_SYS,
            "HOST_MOUNT_PREFIX": "/hostfs",
        },
        "mounts": [
            "/var/run/docker.sock:/var/run/docker.sock:ro",
            f"/proc:{telegraf.HOST_PROC}:ro",
            f"/sys:{telegraf.HOST_SYS}:ro",
        ],
        "networks": ["host"],
        "hostname": "{{.Node.Hostname}}",
        "user": "root",
        "secrets": [password],
        "labels": {"swarmlab.component": "telegraf"},
    }
    definitions = []
    for role, gather_services in (("manager", True), ("node", False)):
        config = telegraf.telegraf_config(
            influxdb_url=influxdb_url,
            database=spec.influxdb.database,
            gather_services=gather_services,
            interval_seconds=spec.interval_seconds,
        )
        content = telegraf.render(config).encode()
        config_file = ConfigFile(f"{prefix}-telegraf-{role}-conf", TELEGRAF_CONFIG_PATH, content)
        if gather_services:
            placement: dict[str, Any] = {
                "mode": "replicated",
                "constraints": [f"node.id == {manager_node_id}"],
            }
        else:
            placement = {"mode": "global", "constraints": [f"node.id != {manager_node_id}"]}
        definitions.append(
            ServiceDefinition(
                name=f"{prefix}-telegraf-{role}", configs=[config_file], **placement, **common
            )
        )
    return definitions


def grafana_service(
    spec: MonitoringSpec,
    credentials: MonitoringCredentials,
    *,
    prefix: str = "swarmlab",
    published_port: int = GRAFANA_PORT,
    publish_mode: Literal["host", "ingress"] = "host",
) -> ServiceDefinition:
    """Define the Grafana service with its provisioning files as configs, passwords as secrets.

    Grafana reaches InfluxDB by service name on the monitoring overlay network, as the
    read-only InfluxDB user.
    """
    files = grafana.grafana_files(
        influxdb_url=f"http://{influxdb_service_name(prefix)}:{HTTP_PORT}",
        database=spec.influxdb.database,
        username=credentials.influxdb_grafana_user,
        interval_seconds=spec.interval_seconds,
    )
    configs = [
        ConfigFile(f"{prefix}-grafana-{index}", target, content.encode())
        for index, (target, content) in enumerate(sorted(files.targets().items()))
    ]
    admin_file = f"{grafana.SECRETS_DIR}/{grafana.ADMIN_PASSWORD_SECRET}"
    return ServiceDefinition(
        name=f"{prefix}-grafana",
        image=spec.grafana_image,
        env={
            "GF_SECURITY_ADMIN_USER": credentials.grafana_admin_user,
            # Grafana reads any GF_* setting from a file when the name ends in __FILE.
            "GF_SECURITY_ADMIN_PASSWORD__FILE": admin_file,
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_AUTH_ANONYMOUS_ENABLED": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        },
        constraints=["node.role == manager"],
        networks=[network_name(prefix)],
        ports=[PublishedPort(published_port, GRAFANA_PORT, publish_mode)],
        secrets=[
            SecretFile(
                f"{prefix}-grafana-admin-password",
                grafana.ADMIN_PASSWORD_SECRET,
                credentials.grafana_admin.encode(),
            ),
            SecretFile(
                f"{prefix}-influxdb-grafana-password",
                grafana.INFLUXDB_PASSWORD_SECRET,
                credentials.influxdb_grafana.encode(),
            ),
        ],
        configs=configs,
        labels={"swarmlab.component": "grafana"},
    )


def ensure_network(client: docker.DockerClient, name: str) -> str:
    """Create the attachable overlay network ``name`` unless it exists; return its id."""
    for network in client.networks.list(names=[name]):
        if network.name == name:
            return network.id
    network = client.networks.create(name, driver="overlay", attachable=True, scope="swarm")
    log.info("monitoring: created overlay network %s", name)
    return network.id


def deploy_service(client: docker.DockerClient, definition: ServiceDefinition) -> Any:
    """Create the service's secrets, configs and (unless it exists) the service itself.

    Safe to repeat: an existing secret or config of the same name and content is reused, and an
    existing service of the same name is returned unchanged. The overlay networks the
    definition names must exist (see :func:`ensure_network`).

    Returns:
        The ``docker.models.services.Service``.

    Raises:
        DeployError: a secret or config of that name exists with other content (Docker secrets
            and configs cannot change; remove them or use another prefix).
        docker.errors.APIError: the manager refused a request.
    """
    existing = client.services.list(filters={"name": definition.name})
    for service in existing:
        if service.name == definition.name:
            log.info("monitoring: service %s exists; left as it is", definition.name)
            return service

    secret_ids = {
        secret.name: _ensure_object(client.secrets, secret.name, secret.data, "secret")
        for secret in definition.secrets
    }
    config_ids = {
        config.name: _ensure_object(client.configs, config.name, config.data, "config")
        for config in definition.configs
    }
    service = client.services.create(**definition.create_kwargs(secret_ids, config_ids))
    log.info("monitoring: created service %s (%s)", definition.name, definition.image)
    return service


def _ensure_object(collection: Any, name: str, data: bytes, kind: str) -> str:
    # With this label a re-run can check that the stored object has the same bytes. For a
    # secret it is a hash of a 192-bit random password, which cannot be reversed.
    digest = hashlib.sha256(data).hexdigest()
    for item in collection.list(filters={"name": name}):
        if item.name != name:
            continue
        if item.attrs.get("Spec", {}).get("Labels", {}).get(DIGEST_LABEL) == digest:
            return item.id
        raise DeployError(
            f"{kind} {name} exists with other content; Docker {kind}s cannot change, so remove "
            f"it (docker {kind} rm {name}) or deploy with another prefix"
        )
    return collection.create(name=name, data=data, labels={DIGEST_LABEL: digest}).id
