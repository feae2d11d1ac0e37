"""The experiment spec: one YAML file, validated into typed models before anything is created.

A bad spec raises :class:`SpecError` whose message names the field and the fix, one line per
problem, so the CLI can print it and stop without touching a provider.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}$"

# Sysctls that scale experiments tune, accepted even where the control host lacks them
# (a droplet's kernel may have modules loaded that this machine has not).
KNOWN_SYSCTLS = frozenset(
    {
        "net.ipv4.neigh.default.gc_thresh1",
        "net.ipv4.neigh.default.gc_thresh2",
        "net.ipv4.neigh.default.gc_thresh3",
        "net.ipv4.neigh.default.gc_interval",
        "net.ipv4.neigh.default.gc_stale_time",
        "net.ipv6.neigh.default.gc_thresh1",
        "net.ipv6.neigh.default.gc_thresh2",
        "net.ipv6.neigh.default.gc_thresh3",
        "net.core.somaxconn",
        "net.core.netdev_max_backlog",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.tcp_tw_reuse",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.ip_forward",
        "net.netfilter.nf_conntrack_max",
        "net.nf_conntrack_max",
        "fs.file-max",
        "fs.inotify.max_user_instances",
        "fs.inotify.max_user_watches",
        "kernel.pid_max",
        "kernel.threads-max",
        "vm.max_map_count",
        "vm.swappiness",
    }
)

# The neighbour-table thresholds exist once per kernel: in the lab they are a host-wide change.
KERNEL_WIDE_SYSCTL_PREFIXES = ("net.ipv4.neigh.default.", "net.ipv6.neigh.default.")

SWARM3K_SYSCTLS = {
    "net.ipv4.neigh.default.gc_thresh1": 30000,
    "net.ipv4.neigh.default.gc_thresh2": 32000,
    "net.ipv4.neigh.default.gc_thresh3": 32768,
}


class SpecError(ValueError):
    """A spec that cannot run; ``problems`` holds one ``(field, message)`` pair per problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {field}: {message}" for field, message in problems]
        super().__init__("\n".join(lines))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabSettings(_Model):
    """Settings of the local lab provider: real dockerd nodes in network namespaces."""

    subnet: str = Field(
        "10.213.0.0/24",
        description="Private IPv4 range for node addresses; nothing else on the machine may use it.",
    )
    # Lab names start with "sw" so that `lab down` can never match an interface or folder that
    # something else on the machine made (eth0, docker0, /var/lib/docker ...).
    bridge: str = Field("swl0", pattern=r"^sw[a-z0-9]{1,9}$")
    prefix: str = Field("swl", pattern=r"^sw[a-z0-9]{1,4}$", description="Namespace name prefix, e.g. swl.")
    state_dir: str = Field("/var/lib/swarmlab", pattern=r"^/", description="Where node folders live (absolute).")
    node_boot_timeout: float = Field(90.0, gt=0, le=1800)

    @field_validator("subnet")
    @classmethod
    def _check_subnet(cls, value: str) -> str:
        try:
            network = ipaddress.IPv4Network(value, strict=True)
        except ValueError as error:
            raise ValueError(f"not an IPv4 network in CIDR form ({error}); e.g. 10.213.0.0/24") from None
        private = [ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
        if not any(network.subnet_of(block) for block in private):
            raise ValueError("must lie in a private range (10/8, 172.16/12 or 192.168/16), e.g. 10.213.0.0/24")
        if network.prefixlen < 16:
            raise ValueError("is too large; use /16 or smaller so it cannot cover other networks")
        if network.prefixlen > 28:
            raise ValueError("is too small; use /28 or larger")
        return value


class DigitalOceanSettings(_Model):
    """Settings of the DigitalOcean provider."""

    region: str = "fra1"
    manager_size: str = "s-2vcpu-4gb"
    worker_size: str = "s-1vcpu-1gb"
    image: str = "debian-12-x64"
    ssh_keys: list[str] = Field(
        default_factory=list, description="SSH key ids or fingerprints registered on the account."
    )
    ssh_private_key: str = Field(
        "~/.ssh/id_ed25519",
        description="Private key matching one of ssh_keys, used to reach the droplets; $SWARMLAB_SSH_KEY overrides.",
    )
    tags: list[str] = Field(default_factory=list)
    vpc_uuid: str | None = None
    create_batch: int = Field(10, ge=1, le=10, description="Droplet names per create request.")
    active_deadline: float = Field(900.0, gt=0, description="Seconds to wait for droplets to be active.")
    poll_interval: float = Field(10.0, gt=0)
    prices_per_hour: dict[str, float] = Field(
        default_factory=dict, description="USD per hour by size slug; overrides the built-in table."
    )
    expected_hours: float = Field(2.0, gt=0, description="Expected run length, for the cost plan.")
    create_concurrency: int = Field(
        4, ge=1, le=16, description="Create requests in flight at once."
    )
    request_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds to connect and to read one API answer."
    )
    delete_deadline: float = Field(
        600.0, gt=0, description="Seconds to wait for deleted droplets to leave the listing."
    )
    extra_runcmd: list[str] = Field(
        default_factory=list,
        description="Shell commands appended to every droplet's cloud-init runcmd.",
    )


class ProviderSpec(_Model):
    kind: Literal["lab", "digitalocean"] = "lab"
    lab: LabSettings = LabSettings()
    digitalocean: DigitalOceanSettings = DigitalOceanSettings()


class RaftSpec(_Model):
    """Swarm Raft options, as ``docker swarm init`` takes them."""

    snapshot_interval: int = Field(10000, ge=1)
    keep_old_snapshots: int = Field(0, ge=0)
    log_entries_for_slow_followers: int = Field(500, ge=0)
    heartbeat_tick: int = Field(1, ge=1)
    election_tick: int = Field(10, ge=2)
    task_history_retention_limit: int = Field(5, ge=0)
    dispatcher_heartbeat_seconds: float = Field(5.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _election_after_heartbeat(self) -> RaftSpec:
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        return self


class ManagersSpec(_Model):
    count: int = Field(3, description="Odd, 1 to 7: an even count adds no fault tolerance.")
    raft: RaftSpec = RaftSpec()
    quorum_deadline: float = Field(120.0, gt=0, le=3600)

    @field_validator("count")
    @classmethod
    def _odd_count(cls, value: int) -> int:
        if not 1 <= value <= 7:
            raise ValueError(f"is {value}; use an odd number from 1 to 7")
        if value % 2 == 0:
            raise ValueError(
                f"is {value}, which is even; use {value - 1} or {value + 1} "
                "(an even count tolerates no more failures than the odd count below it)"
            )
        return value


class ExternalWorkers(_Model):
    """Contributor nodes that join by themselves, as in Swarm2k/Swarm3k."""

    expected: int = Field(0, ge=0)
    wait_seconds: float = Field(0.0, ge=0)


class WorkersSpec(_Model):
    count: int = Field(4, ge=1, le=100000)
    join_concurrency: int = Field(20, ge=1, le=1000)
    ready_deadline: float = Field(300.0, gt=0, le=86400)
    max_failed_fraction: float = Field(0.0, ge=0, le=1)
    external: ExternalWorkers = ExternalWorkers()

    @field_validator("count", mode="before")
    @classmethod
    def _positive_count(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"is {value}; a swarm experiment needs at least 1 worker")
        return value


class TuningSpec(_Model):
    sysctls: dict[str, int | str] = Field(default_factory=lambda: dict(SWARM3K_SYSCTLS))
    persist: bool = Field(True, description="Write /etc/sysctl.d/ so the values survive a reboot.")

    @field_validator("sysctls")
    @classmethod
    def _known_keys(cls, value: dict[str, int | str]) -> dict[str, int | str]:
        for key, setting in value.items():
            if not re.fullmatch(r"[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+", key):
                raise ValueError(f"{key!r} is not a sysctl name (dotted, e.g. net.core.somaxconn)")
            if key not in KNOWN_SYSCTLS and not Path("/proc/sys", *key.split(".")).exists():
                raise ValueError(
                    f"{key!r} is an unknown sysctl key; check the spelling "
                    "(`sysctl -a` lists the keys of a kernel)"
                )
            if isinstance(setting, str) and not re.fullmatch(r"[0-9 \t-]+", setting):
                raise ValueError(f"{key} = {setting!r}: a sysctl value must be numbers")
        return value


class InfluxDBSpec(_Model):
    image: str = "influxdb:1.8"
    lab_image: str = "swarmlab/influxdb:1.6.7"
    database: str = Field("swarm3k", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")
    retention: str = Field("30d", pattern=r"^(INF|[0-9]+[hdw])$")


class MonitoringSpec(_Model):
    enabled: bool = True
    interval_seconds: float = Field(5.0, ge=0.5, le=3600)
    influxdb: InfluxDBSpec = InfluxDBSpec()
    telegraf_image: str = "telegraf:1.30"
    grafana_image: str = "grafana/grafana:10.4.2"


class AbortCriteria(_Model):
    """Stop criteria of the scale phase; a missed one scales back and fails the phase."""

    min_throughput: float = Field(
        0.0, ge=0, description="Tasks reaching running per second, over a step; 0 disables."
    )
    max_manager_cpu: float = Field(
        0.0, ge=0, le=1000, description="Leader dockerd CPU percent (100 = one core); 0 disables."
    )
    max_failure_rate: float = Field(
        0.2, ge=0, le=1, description="Failed or rejected tasks per task started in a step."
    )


class ScalePhase(_Model):
    kind: Literal["scale"]
    name: str = Field("scale", pattern=NAME_PATTERN)
    image: str = "swarmlab/tiny:latest"
    command: list[str] = Field(default_factory=lambda: ["sleep", "1000000"])
    steps: list[Annotated[int, Field(le=10_000_000)]] = Field(default_factory=lambda: [50, 100, 200])
    step_deadline: float = Field(180.0, gt=0, le=86400)
    sample_interval: float = Field(1.0, gt=0, le=60)
    abort: AbortCriteria = AbortCriteria()
    keep: bool = False
    profile: bool = True

    @field_validator("steps")
    @classmethod
    def _increasing_steps(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("is empty; give at least one replica count, e.g. [50, 100]")
        for step in value:
            if step < 1:
                raise ValueError(f"contains {step}; every target must be a positive replica count")
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"{value} must increase step by step (large jumps broke Swarm3k)")
        return value


class NginxMeshPhase(_Model):
    kind: Literal["nginx_mesh"]
    name: str = Field("nginx-mesh", pattern=NAME_PATTERN)
    image: str = "swarmlab/nginx:latest"
    replicas: int = Field(4, ge=1, le=100000)
    published_port: int = Field(8080, ge=1024, le=65535)
    deadline: float = Field(180.0, gt=0)
    keep: bool = False
    profile: bool = True
    publish_mode: Literal["auto", "ingress", "host"] = Field(
        "auto",
        description="ingress: replicas behind the routing mesh (needs IPVS on every node); host: a global "
        "service publishing on each node; auto: ingress where every node has IPVS, host otherwise.",
    )
    requests_per_node: int = Field(
        20, ge=1, le=10000, description="HTTP requests sent to each node for the latency figures."
    )


class MysqlWordpressPhase(_Model):
    kind: Literal["mysql_wordpress"]
    name: str = Field("mysql-wordpress", pattern=NAME_PATTERN)
    etcd_image: str = "swarmlab/etcd:latest"
    mariadb_image: str = "swarmlab/mariadb-galera:latest"
    wordpress_image: str = "swarmlab/wordpress:latest"
    galera_size: int = Field(3, ge=1, le=15)
    wordpress_replicas: int = Field(1, ge=1, le=1000)
    published_port: int = Field(8081, ge=1024, le=65535)
    deadline: float = Field(600.0, gt=0)
    keep: bool = False
    profile: bool = True


WorkloadPhase = Annotated[
    ScalePhase | NginxMeshPhase | MysqlWordpressPhase, Field(discriminator="kind")
]


class ProfilingSpec(_Model):
    enabled: bool = True
    cpu_seconds: int = Field(30, ge=1, le=600)
    heap: bool = True
    goroutine: bool = True
    idle: bool = Field(True, description="Also capture one CPU profile before the workloads.")


class ExperimentSpec(_Model):
    """One experiment: the nodes, the phases and what counts as a pass."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    provider: ProviderSpec = ProviderSpec()
    managers: ManagersSpec = ManagersSpec()
    workers: WorkersSpec = WorkersSpec()
    tuning: TuningSpec = TuningSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    phases: list[WorkloadPhase] = Field(default_factory=list)
    profiling: ProfilingSpec = ProfilingSpec()
    teardown: Literal["always", "on_success", "never"] = "on_success"
    _source: dict | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique_phase_names(self) -> ExperimentSpec:
        names = [phase.name for phase in self.phases]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"phase names must be unique; {duplicated} appear more than once")
        return self

    @model_validator(mode="after")
    def _lab_fits_subnet(self) -> ExperimentSpec:
        if self.provider.kind == "lab":
            hosts = ipaddress.IPv4Network(self.provider.lab.subnet).num_addresses - 3
            nodes = self.managers.count + self.workers.count
            if nodes > hosts:
                raise ValueError(
                    f"{nodes} nodes do not fit in provider.lab.subnet {self.provider.lab.subnet} "
                    f"({hosts} addresses); use a larger subnet"
                )
        return self

    @property
    def node_count(self) -> int:
        return self.managers.count + self.workers.count

    def digest(self) -> str:
        """Return a short hash of the spec as written; a run is tied to the spec it started with.

        The hash covers the author's document, not the defaults filled in, so a release that adds
        a defaulted field does not orphan runs in progress.
        """
        source = self._source if self._source is not None else self.model_dump(mode="json")
        canonical = json.dumps(source, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _field_path(location: tuple[Any, ...], data: Any) -> str:
    """Turn a pydantic error location into the dotted path a spec author writes."""
    parts: list[str] = []
    node = data
    for item in location:
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and 0 <= item < len(node) and isinstance(node[item], dict):
                name = node[item].get("name") or node[item].get("kind")
            parts.append(f"[{item}]" if name is None else f"[{item}:{name}]")
        elif item in ("scale", "nginx_mesh", "mysql_wordpress") and parts and parts[-1].startswith("["):
            continue  # the discriminator tag pydantic inserts; the phase is already named
        else:
            parts.append(("." if parts else "") + str(item))
        node = node.get(item) if isinstance(node, dict) else (
            node[item] if isinstance(node, list) and isinstance(item, int) and item < len(node) else None
        )
    return "".join(parts) or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field; remove it or check the spelling"
    if error["type"] == "missing":
        return "missing; this field is required"
    if error["type"] == "union_tag_invalid":
        return (
            f"unknown phase kind {error.get('input', {}).get('kind')!r}; "
            "use one of scale, nginx_mesh, mysql_wordpress"
        )
    if error["type"] == "union_tag_not_found":
        return "phase has no 'kind'; add kind: scale, nginx_mesh or mysql_wordpress"
    return message


def parse_spec(data: Any, source: str = "spec") -> ExperimentSpec:
    """Validate ``data`` (the YAML document as Python objects) into an :class:`ExperimentSpec`.

    Raises:
        SpecError: one ``(field, message)`` per problem, e.g.
            ``lab.yaml: managers.count: is 4, which is even; use 3 or 5``.
    """
    if not isinstance(data, dict):
        raise SpecError(source, [("(top level)", "must be a mapping of fields, e.g. name: lab")])
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as error:
        problems = [(_field_path(e["loc"], data), _describe(e)) for e in error.errors()]
        raise SpecError(source, problems) from None
    spec._source = data
    return spec


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a spec file; raises :class:`SpecError` for a bad file or spec."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(str(path), [("(file)", f"cannot be read: {error.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise SpecError(str(path), [(where, f"is not valid YAML: {getattr(error, 'problem', error)}")]) from None
    return parse_spec(data, source=path.name)


DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "deployments" / "experiments" / "lab.yaml"
