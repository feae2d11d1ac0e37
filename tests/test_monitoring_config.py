"""Generated monitoring configuration: Telegraf TOML, Grafana provisioning, credentials, images."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
import tomllib
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from grafana_foundation_sdk.models import dashboard as dashboard_model

from swarmlab.metrics import MetricsStore
from swarmlab.monitoring import grafana, telegraf
from swarmlab.monitoring.credentials import (
    DEFAULT_PASSWORDS,
    MonitoringCredentials,
    generate_password,
)
from swarmlab.monitoring.influx_image import (
    CONFIG_PATH,
    IMPORT_CHANGES,
    build_influxdb_rootfs_tar,
    import_command,
    shared_libraries,
)
from swarmlab.monitoring.services import (
    grafana_service,
    influxdb_service,
    telegraf_services,
)
from swarmlab.spec import MonitoringSpec
from tests.influx_fixture import influx_url  # noqa: F401

# Option names of each Telegraf plugin, from the plugins' README and sample.conf files in
# influxdata/telegraf (plugins/inputs/<name>/, plugins/outputs/influxdb/,
# plugins/secretstores/docker/) and docs/CONFIGURATION.md for [agent] and the options every
# plugin takes. A generated option outside these sets is a typo Telegraf would reject.
AGENT_OPTIONS = {
    "interval", "round_interval", "metric_batch_size", "metric_buffer_limit",
    "collection_jitter", "collection_offset", "flush_interval", "flush_jitter", "precision",
    "debug", "quiet", "logtarget", "logfile", "logfile_rotation_interval",
    "logfile_rotation_max_size", "logfile_rotation_max_archives", "log_with_timezone",
    "hostname", "omit_hostname", "snmp_translator", "statefile", "always_include_local_tags",
    "always_include_global_tags", "skip_processors_after_aggregators", "buffer_strategy",
    "buffer_directory",
}
FILTER_OPTIONS = {
    "namepass", "namedrop", "fieldpass", "fielddrop", "fieldinclude", "fieldexclude",
    "tagpass", "tagdrop", "taginclude", "tagexclude", "metricpass",
}
COMMON_INPUT_OPTIONS = {
    "alias", "interval", "precision", "collection_jitter", "collection_offset",
    "name_override", "name_prefix", "name_suffix", "tags", "log_level",
} | FILTER_OPTIONS
COMMON_OUTPUT_OPTIONS = {
    "alias", "flush_interval", "flush_jitter", "metric_batch_size", "metric_buffer_limit",
    "name_override", "name_prefix", "name_suffix", "log_level",
} | FILTER_OPTIONS
TLS_OPTIONS = {"tls_ca", "tls_cert", "tls_key", "insecure_skip_verify"}
PLUGIN_OPTIONS = {
    ("inputs", "cpu"): {"percpu", "totalcpu", "collect_cpu_time", "report_active", "core_tags"},
    ("inputs", "mem"): {"collect_extended"},
    ("inputs", "net"): {"interfaces", "ignore_protocol_stats"},
    ("inputs", "netstat"): set(),
    ("inputs", "conntrack"): {"files", "dirs"},
    ("inputs", "docker"): {
        "endpoint", "gather_services", "source_tag", "container_name_include",
        "container_name_exclude", "container_state_include", "container_state_exclude",
        "timeout", "perdevice", "perdevice_include", "total", "total_include",
        "docker_label_include", "docker_label_exclude", "tag_env",
    } | TLS_OPTIONS,
    ("inputs", "procstat"): {
        "pid_file", "exe", "pattern", "user", "systemd_unit", "include_systemd_children",
        "cgroup", "supervisor_units", "win_service", "process_name", "prefix", "mode",
        "tag_with", "properties", "pid_finder",
    },
    ("outputs", "influxdb"): {
        "urls", "local_address", "database", "database_tag", "exclude_database_tag",
        "skip_database_creation", "retention_policy", "retention_policy_tag",
        "exclude_retention_policy_tag", "write_consistency", "timeout", "username",
        "password", "user_agent", "udp_payload", "http_proxy", "http_headers",
        "content_encoding", "influx_uint_support", "influx_omit_timestamp",
    } | TLS_OPTIONS,
    ("secretstores", "docker"): {"id", "path", "dynamic"},
}
REQUIRED_INPUTS = {"cpu", "mem", "net", "netstat", "conntrack", "docker", "procstat"}


@pytest.fixture(scope="module")
def telegraf_files(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("telegraf")
    paths = telegraf.write_telegraf_configs(
        folder, influxdb_url="http://10.0.0.5:8086", database="swarm3k", interval_seconds=5
    )
    return {name: tomllib.loads(path.read_text()) for name, path in paths.items()}


def test_telegraf_writes_two_configs(telegraf_files):
    assert set(telegraf_files) == {"telegraf-manager.conf", "telegraf-node.conf"}


def test_telegraf_gather_services_only_for_manager(telegraf_files):
    manager = telegraf_files["telegraf-manager.conf"]["inputs"]["docker"]
    node = telegraf_files["telegraf-node.conf"]["inputs"]["docker"]

    assert [instance["gather_services"] for instance in manager] == [True]
    assert [instance["gather_services"] for instance in node] == [False]


@pytest.mark.parametrize("name", ["telegraf-manager.conf", "telegraf-node.conf"])
def test_telegraf_options_are_documented(telegraf_files, name):
    config = telegraf_files[name]

    assert set(config) <= {"agent", "global_tags", "inputs", "outputs", "secretstores"}
    assert set(config["agent"]) <= AGENT_OPTIONS
    assert set(config["inputs"]) == REQUIRED_INPUTS
    for section in ("inputs", "outputs", "secretstores"):
        for plugin, instances in config[section].items():
            assert isinstance(instances, list), f"{section}.{plugin} must be [[{section}.{plugin}]]"
            common = {"inputs": COMMON_INPUT_OPTIONS, "outputs": COMMON_OUTPUT_OPTIONS}
            allowed = PLUGIN_OPTIONS[(section, plugin)] | common.get(section, set())
            for instance in instances:
                unknown = set(instance) - allowed
                assert not unknown, f"{section}.{plugin}: undocumented options {unknown}"


def test_telegraf_plugins_are_array_tables():
    text = telegraf.render(
        telegraf.telegraf_config(influxdb_url="http://x:8086", database="d", gather_services=False)
    )

    # Telegraf's loader rejects plugins written as arrays of inline tables.
    for plugin in REQUIRED_INPUTS:
        assert f"[[inputs.{plugin}]]" in text
    assert "[[outputs.influxdb]]" in text
    assert "[[secretstores.docker]]" in text
    assert not re.search(r"^\w+ = \[\s*\{", text, flags=re.MULTILINE)


def test_telegraf_credentials_not_in_clear(telegraf_files):
    output = telegraf_files["telegraf-node.conf"]["outputs"]["influxdb"][0]
    stores = telegraf_files["telegraf-node.conf"]["secretstores"]["docker"]
    store_ids = [store["id"] for store in stores]

    assert output["username"] == "${INFLUXDB_USER}"
    match = re.fullmatch(r"@\{(\w+):(\w+)\}", output["password"])
    assert match, output["password"]
    assert match.group(1) in store_ids
    assert match.group(2) == telegraf.PASSWORD_SECRET
    assert output["skip_database_creation"] is True


def test_telegraf_rejects_bad_secret_name():
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        telegraf.telegraf_config(
            influxdb_url="http://x:8086", database="d", gather_services=False,
            password_secret="influxdb-password",
        )


def test_generate_password_random_and_strong():
    passwords = {generate_password() for _ in range(50)}

    assert len(passwords) == 50
    for password in passwords:
        assert len(password) >= 32
        assert password not in DEFAULT_PASSWORDS
        assert re.fullmatch(r"[A-Za-z0-9_-]+", password)
    with pytest.raises(ValueError, match="at least 16"):
        generate_password(8)


def test_credentials_not_default_and_hidden():
    first, second = MonitoringCredentials.generate(), MonitoringCredentials.generate()

    for user, password in (
        (first.influxdb_admin_user, first.influxdb_admin),
        (first.grafana_admin_user, first.grafana_admin),
    ):
        assert (user, password) not in {("admin", "admin"), ("root", "root")}
        assert password not in DEFAULT_PASSWORDS
    assert len(set(first.secrets().values())) == 4
    assert set(first.secrets().values()).isdisjoint(second.secrets().values())
    for password in first.secrets().values():
        assert password not in repr(first)


def test_dashboard_validates_with_sdk_model():
    text = grafana.dashboard_json()
    raw = json.loads(text)

    parsed = grafana.load_dashboard(text)

    assert isinstance(parsed, dashboard_model.Dashboard)
    # A field the SDK's model does not know would be lost here.
    assert json.loads(grafana.dashboard_json(parsed)) == raw
    assert parsed.uid == grafana.DASHBOARD_UID
    ids = [panel.id_val for panel in parsed.panels]
    assert len(ids) == len(set(ids))
    for panel in parsed.panels:
        assert panel.datasource.uid == grafana.DATASOURCE_UID
        assert panel.grid_pos.x + panel.grid_pos.w <= 24
        assert panel.targets, panel.title
        for target in panel.targets:
            assert isinstance(target, grafana.InfluxQLQuery)
            assert target.datasource_uid == grafana.DATASOURCE_UID


def test_dashboard_has_required_panels():
    titles = " | ".join(panel.title for panel in grafana.build_dashboard().panels)

    for words in (
        "Nodes ready",
        "Tasks running and desired per service",
        "Scheduling throughput",
        "Manager dockerd CPU",
        "Manager dockerd memory",
        "ARP table overflows",
    ):
        assert words in titles


def test_dashboard_queries_run_on_influxdb(influx_url):  # noqa: F811
    parts = urlsplit(influx_url)
    store = MetricsStore(parts.hostname, parts.port, database="t_" + uuid.uuid4().hex[:12])
    store.setup()
    now = time.time_ns()
    for step, moment in enumerate((now - 20_000_000_000, now - 10_000_000_000, now)):
        store.write("nodes", {"state": "ready", "role": "worker", "availability": "active"},
                    {"count": 3 + step}, moment)
        store.write("tasks", {"service": "web"},
                    {"running": 10 * step, "desired": 30, "failed": step}, moment)
        store.write("manager", {"node": "m1"},
                    {"cpu_percent": 12.5 + step, "rss_bytes": 100_000_000}, moment)
        store.write("arp_cache", {"node": "m1"}, {"table_fulls": 5 * step}, moment)
    store.events("scale", "start", now - 15_000_000_000)

    for title, query in grafana.PANEL_QUERIES.items():
        influxql = query.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "10s")
        frame = store.query_frame(influxql)
        assert not frame.empty, f"panel {title!r} returned nothing for: {influxql}"


def test_datasource_reads_password_from_secret_file():
    files = grafana.grafana_files(influxdb_url="http://swarmlab-influxdb:8086", database="swarm3k")
    document = yaml.safe_load(files.datasource_yaml)

    (source,) = document["datasources"]
    assert document["apiVersion"] == 1
    assert source["type"] == "influxdb"
    assert source["uid"] == grafana.DATASOURCE_UID
    assert source["jsonData"]["version"] == "InfluxQL"
    assert source["jsonData"]["dbName"] == "swarm3k"
    assert source["secureJsonData"]["password"] == (
        "$__file{/run/secrets/" + grafana.INFLUXDB_PASSWORD_SECRET + "}"
    )
    assert "password" not in source


def test_dashboard_provider_points_at_dashboard_folder():
    files = grafana.grafana_files(influxdb_url="http://i:8086", database="d")
    (provider,) = yaml.safe_load(files.provider_yaml)["providers"]
    targets = files.targets()

    assert provider["type"] == "file"
    dashboard_paths = [path for path in targets if path.endswith(".json")]
    assert [str(Path(path).parent) for path in dashboard_paths] == [provider["options"]["path"]]


def test_grafana_service_mounts_files_and_secrets():
    credentials = MonitoringCredentials.generate()
    definition = grafana_service(MonitoringSpec(), credentials, prefix="run1")

    targets = {config.target for config in definition.configs}
    assert targets == set(
        grafana.grafana_files(influxdb_url="http://x", database="d").targets()
    )
    secret_targets = {secret.target: secret.data for secret in definition.secrets}
    assert secret_targets[grafana.ADMIN_PASSWORD_SECRET] == credentials.grafana_admin.encode()
    assert secret_targets[grafana.INFLUXDB_PASSWORD_SECRET] == credentials.influxdb_grafana.encode()
    assert definition.env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        f"/run/secrets/{grafana.ADMIN_PASSWORD_SECRET}"
    )
    assert definition.env["GF_SECURITY_ADMIN_USER"] != "admin"
    assert_no_password_outside_secrets(definition, credentials)


def test_telegraf_services_one_per_node():
    credentials = MonitoringCredentials.generate()
    manager, node = telegraf_services(
        MonitoringSpec(), credentials, manager_node_id="abc123",
        influxdb_url="http://10.0.0.5:8086", prefix="run1",
    )

    assert (manager.mode, manager.replicas, manager.constraints) == (
        "replicated", 1, ["node.id == abc123"]
    )
    assert (node.mode, node.constraints) == ("global", ["node.id != abc123"])
    assert b"gather_services = true" in manager.configs[0].data
    assert b"gather_services = false" in node.configs[0].data
    assert [secret.target for secret in manager.secrets] == [telegraf.PASSWORD_SECRET]
    for definition in (manager, node):
        assert_no_password_outside_secrets(definition, credentials)


def test_influxdb_service_images_and_auth():
    spec = MonitoringSpec()

    lab = influxdb_service(spec, lab=True, prefix="run1", node_id="n1")
    cloud = influxdb_service(spec, lab=False, prefix="run1")

    assert lab.image == spec.influxdb.lab_image
    assert cloud.image == spec.influxdb.image
    assert lab.env["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    assert lab.constraints == ["node.id == n1"]
    assert cloud.constraints == ["node.role == manager"]
    kwargs = lab.create_kwargs({}, {})
    assert kwargs["endpoint_spec"]["Ports"][0]["PublishMode"] == "host"
    assert (kwargs["mode"].mode, kwargs["mode"].replicas) == ("replicated", 1)


def test_secret_data_hidden_in_repr():
    credentials = MonitoringCredentials.generate()
    definition = grafana_service(MonitoringSpec(), credentials)

    assert credentials.grafana_admin not in repr(definition)


def assert_no_password_outside_secrets(definition, credentials) -> None:
    visible = json.dumps(definition.env) + json.dumps(definition.labels)
    visible += "".join(config.data.decode() for config in definition.configs)
    for password in credentials.secrets().values():
        assert password not in visible


@pytest.fixture(scope="module")
def influx_rootfs(tmp_path_factory) -> Path:
    if not Path("/usr/bin/influxd").exists():
        pytest.skip("influxd is not installed (apt-get install influxdb)")
    return build_influxdb_rootfs_tar(tmp_path_factory.mktemp("image") / "influxdb-rootfs.tar")


def test_influx_rootfs_holds_influxd_and_libraries(influx_rootfs):
    with tarfile.open(influx_rootfs) as tar:
        members = {member.name: member for member in tar.getmembers()}
        config = tomllib.loads(tar.extractfile(CONFIG_PATH.lstrip("/")).read().decode())

    influxd = members["usr/bin/influxd"]
    assert influxd.isfile()
    assert influxd.mode & 0o111
    assert influxd.size == Path("/usr/bin/influxd").stat().st_size
    for library in shared_libraries("/usr/bin/influxd"):
        assert str(library).lstrip("/") in members
    assert config["http"]["auth-enabled"] is True
    assert config["reporting-disabled"] is True
    assert members["var/lib/influxdb"].uid != 0


def test_influx_rootfs_is_reproducible(influx_rootfs, tmp_path):
    again = build_influxdb_rootfs_tar(tmp_path / "again.tar")

    assert again.read_bytes() == influx_rootfs.read_bytes()


def test_influx_rootfs_runs_in_chroot(influx_rootfs, tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    with tarfile.open(influx_rootfs) as tar:
        tar.extractall(root, filter="tar")  # noqa: S202 - the tar this test just built

    result = subprocess.run(
        ["chroot", str(root), "/usr/bin/influxd", "version"],
        capture_output=True, text=True, timeout=30, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "InfluxDB v1.6" in result.stdout


def test_import_command_carries_changes(influx_rootfs):
    command = import_command(influx_rootfs)

    assert command.startswith("docker import ")
    assert command.endswith(f"swarmlab/influxdb:1.6.7 < {influx_rootfs}")
    for change in IMPORT_CHANGES:
        assert change.split()[0] in command
