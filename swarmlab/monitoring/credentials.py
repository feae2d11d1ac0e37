"""Generated credentials for the monitoring services.

The 2016 Swarm3k setup ran InfluxDB as root/root and Grafana as admin/admin. Here every password
is generated per run with :mod:`secrets` and reaches services only as Docker secrets.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

# Names an attacker tries first; a generated password is never one of them.
DEFAULT_PASSWORDS = frozenset({"", "admin", "root", "password", "grafana", "influxdb", "telegraf"})
PASSWORD_BYTES = 24


def generate_password(nbytes: int = PASSWORD_BYTES) -> str:
    """Return a random URL-safe password of ``nbytes`` random bytes (32 characters by default).

    URL-safe characters (letters, digits, ``-`` and ``_``) need no quoting in a URL, a TOML or
    YAML string, or an InfluxQL string literal.

    Raises:
        ValueError: ``nbytes`` below 16 (128 bits).
    """
    if nbytes < 16:
        raise ValueError(f"nbytes is {nbytes}; use at least 16 (128 random bits)")
    while True:
        password = secrets.token_urlsafe(nbytes)
        # A leading '-' reads as an option to command-line tools that get it as an argument.
        if password not in DEFAULT_PASSWORDS and not password.startswith("-"):
            return password


@dataclass(frozen=True)
class MonitoringCredentials:
    """The generated passwords of one run's monitoring services; ``repr`` shows none of them.

    ``influxdb_admin`` is the admin user the pipeline (observer, report) writes and queries as;
    ``influxdb_telegraf`` may only write, ``influxdb_grafana`` may only read.
    """

    influxdb_admin_user: str = "swarmlab"
    influxdb_admin: str = field(default="", repr=False)
    influxdb_telegraf_user: str = "telegraf"
    influxdb_telegraf: str = field(default="", repr=False)
    influxdb_grafana_user: str = "grafana"
    influxdb_grafana: str = field(default="", repr=False)
    grafana_admin_user: str = "swarmlab"
    grafana_admin: str = field(default="", repr=False)

    @classmethod
    def generate(cls) -> MonitoringCredentials:
        """Return credentials with a fresh random password for every user."""
        return cls(
            influxdb_admin=generate_password(),
            influxdb_telegraf=generate_password(),
            influxdb_grafana=generate_password(),
            grafana_admin=generate_password(),
        )

    def secrets(self) -> dict[str, str]:
        """Map each password's field name to the password, e.g. to store them as Prefect Secrets."""
        return {
            "influxdb_admin": self.influxdb_admin,
            "influxdb_telegraf": self.influxdb_telegraf,
            "influxdb_grafana": self.influxdb_grafana,
            "grafana_admin": self.grafana_admin,
        }
