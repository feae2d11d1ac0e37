"""Cloud-init user data for swarm droplets, with pre-generated SSH host keys.

One create request carries up to ten droplet names and a single ``user_data`` for all of them,
so the user data of a batch contains the ed25519 host key of every droplet in the batch. At first
boot cloud-init writes them to ``/run/swarmlab/host-keys/`` (a tmpfs), and its ``ssh`` module
deletes the image's host keys and generates none. A ``runcmd`` step then removes any host key
still there, installs the key named after the droplet's hostname (DigitalOcean sets the hostname
to the droplet name), deletes the other keys and restarts sshd. Until then sshd has no key and
does not start, so the public keys kept in the inventory pin every connection. An image whose
sshd unit generates keys by itself (Debian's does not) would serve such a key until that step,
and the pinned client rejects it.

NOTE: the metadata service keeps serving the raw user data to root on each droplet, so a droplet
can read the private host keys of its nine batch mates. The pin proves "a droplet of this batch
of this run", which all belong to the same operator; one create request per droplet would lift
this at ten times the create requests.

The same user data sets the spec's sysctls (persisted in ``/etc/sysctl.d`` when
``tuning.persist`` is on) and installs Docker from the image's package repository.
:func:`parse_user_data` reads it back, so a backend that stands in for droplets (the local API
server's lab backend) applies the same keys and sysctls without a cloud-init of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_USER_DATA_BYTES = 64 * 1024
HOST_KEY_DIR = "/run/swarmlab/host-keys"
SYSCTL_FILE = "/etc/sysctl.d/60-swarmlab.conf"
DOCKER_PACKAGE = "docker.io"

# Any host key the image made for itself goes too, so sshd offers only the pinned one.
_INSTALL_HOST_KEY = (
    f"set -e; key={HOST_KEY_DIR}/$(hostname); test -f \"$key\"; "
    "rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; "
    'install -m 600 -o root -g root "$key" /etc/ssh/ssh_host_ed25519_key; '
    "ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key.pub; "
    f"rm -rf {HOST_KEY_DIR}; systemctl restart ssh || systemctl restart sshd"
)


@dataclass(frozen=True)
class HostKey:
    """An ed25519 SSH host key: the OpenSSH private key text and the ``type base64`` public key."""

    private_openssh: str
    public: str

    def __repr__(self) -> str:
        return f"HostKey(public={self.public!r})"


def generate_host_key() -> HostKey:
    """Generate a fresh ed25519 host key with the ``cryptography`` package."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return HostKey(private_openssh=private, public=public)


def public_key_of(private_openssh: str) -> str:
    """Return the ``type base64`` public key of an OpenSSH private key text."""
    key = serialization.load_ssh_private_key(private_openssh.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def build_user_data(
    host_keys: dict[str, HostKey],
    sysctls: dict[str, int | str],
    *,
    persist_sysctls: bool = True,
    extra_runcmd: list[str] | tuple[str, ...] = (),
    header: str = "",
) -> str:
    """Render the cloud-config of one create request.

    Args:
        host_keys: droplet name to its host key, for every name of the request.
        sysctls: sysctl name to value, applied at boot.
        persist_sysctls: write them to ``/etc/sysctl.d`` so they survive a reboot.
        extra_runcmd: shell commands run after Docker is installed, in order.
        header: a comment line (no newline) naming the experiment and run.

    Returns:
        The ``#cloud-config`` document; check its size against :data:`MAX_USER_DATA_BYTES`.
    """
    files = []
    runcmd: list = []
    if sysctls and persist_sysctls:
        lines = "".join(f"{name} = {value}\n" for name, value in sorted(sysctls.items()))
        files.append({"path": SYSCTL_FILE, "permissions": "0644", "content": lines})
        runcmd.append(["sysctl", "--load", SYSCTL_FILE])
    elif sysctls:
        runcmd.extend(["sysctl", "-w", f"{name}={value}"] for name, value in sorted(sysctls.items()))

    for name, key in sorted(host_keys.items()):
        files.append(
            {
                "path": f"{HOST_KEY_DIR}/{name}",
                "permissions": "0600",
                "content": key.private_openssh,
            }
        )
    if host_keys:
        runcmd.insert(0, ["sh", "-c", _INSTALL_HOST_KEY])

    runcmd.append(["systemctl", "enable", "--now", "docker"])
    runcmd.extend(extra_runcmd)

    config = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "package_update": True,
        "packages": [DOCKER_PACKAGE],
        "write_files": files,
        "runcmd": runcmd,
    }
    body = yaml.dump(config, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False, width=1000)
    comment = f"# {header}\n" if header else ""
    return f"#cloud-config\n{comment}{body}"


class _LiteralDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Dump multi-line strings (keys, sysctl files) as literal blocks, as people write them.

    libyaml's emitter, where PyYAML has it, is about ten times faster than the pure-Python one.
    """


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


@dataclass(frozen=True)
class BootConfig:
    """Boot configuration of one droplet, read back from its user data."""

    host_key: HostKey | None
    sysctls: dict[str, str]
    persist_sysctls: bool
    packages: tuple[str, ...]
    extra_runcmd: tuple[str, ...]


def parse_user_data(user_data: str, name: str) -> BootConfig:
    """Read droplet ``name``'s boot configuration from :func:`build_user_data` output.

    Raises:
        ValueError: the text is not such a cloud-config document.
    """
    if not user_data.startswith("#cloud-config"):
        raise ValueError("user data is not a #cloud-config document")
    config = yaml.safe_load(user_data)
    if not isinstance(config, dict):
        raise ValueError("user data is not a cloud-config mapping")

    host_key = None
    sysctls: dict[str, str] = {}
    persist = False
    for item in config.get("write_files", []):
        if item["path"] == f"{HOST_KEY_DIR}/{name}":
            private = item["content"]
            host_key = HostKey(private_openssh=private, public=public_key_of(private))
        elif item["path"] == SYSCTL_FILE:
            persist = True
            for line in item["content"].splitlines():
                key, _, value = line.partition("=")
                sysctls[key.strip()] = value.strip()

    extra: list[str] = []
    for command in config.get("runcmd", []):
        if isinstance(command, list) and command[:2] == ["sysctl", "-w"]:
            key, _, value = command[2].partition("=")
            sysctls[key] = value
        elif isinstance(command, str):
            extra.append(command)
    return BootConfig(
        host_key=host_key,
        sysctls=sysctls,
        persist_sysctls=persist,
        packages=tuple(config.get("packages", [])),
        extra_runcmd=tuple(extra),
    )
