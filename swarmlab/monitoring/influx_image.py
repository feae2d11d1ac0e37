"""A lab image of InfluxDB built from the control host's own ``influxd`` (Debian's 1.6.7).

Lab nodes reach no image registry, so the image is a root filesystem packed as a tar stream:
``influxd``, the shared libraries ``ldd`` lists for it, a minimal ``/etc/influxdb/influxdb.conf``
and an unprivileged ``influxdb`` user. :func:`import_command` gives the ``docker import`` command
line for a node; from Python, pass :data:`IMPORT_CHANGES` as the ``changes`` of
``client.api.import_image``.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import tomli_w

INFLUXD = "/usr/bin/influxd"
CONFIG_PATH = "/etc/influxdb/influxdb.conf"
DATA_ROOT = "/var/lib/influxdb"
HTTP_PORT = 8086
# uid and gid of the influxdb user inside the image; the data folder belongs to it.
INFLUXDB_UID = 999
INFLUXDB_GID = 999

INFLUXD_COMMAND = ["/usr/bin/influxd", "run", "-config", CONFIG_PATH]
IMPORT_CHANGES = [
    f"CMD {json.dumps(INFLUXD_COMMAND)}",
    f"USER {INFLUXDB_UID}:{INFLUXDB_GID}",
    f"EXPOSE {HTTP_PORT}/tcp",
    f"VOLUME {DATA_ROOT}",
]

# ldd prints "name => /path (0x...)" for a resolved library and "/path (0x...)" for the loader.
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


class ImageBuildError(RuntimeError):
    """The rootfs could not be assembled; the message names the missing file or tool."""


def influxdb_config(auth_enabled: bool = True) -> dict:
    """Return the image's ``influxdb.conf`` as a dict (TOML via ``tomli_w``).

    HTTP listens on every interface of the container; the RPC service used by
    ``influxd backup`` stays on loopback, so it is never published.
    """
    return {
        # Upstream 1.x reads reporting-disabled; Debian's 1.6.7 build reads reporting-enabled.
        "reporting-disabled": True,
        "reporting-enabled": False,
        "bind-address": "127.0.0.1:8088",
        "meta": {"dir": f"{DATA_ROOT}/meta"},
        "data": {
            "dir": f"{DATA_ROOT}/data",
            "wal-dir": f"{DATA_ROOT}/wal",
            "query-log-enabled": False,
        },
        "http": {
            "bind-address": f":{HTTP_PORT}",
            "auth-enabled": auth_enabled,
            "log-enabled": False,
        },
        "monitor": {"store-enabled": False},
    }


def shared_libraries(binary: str | Path) -> list[Path]:
    """List the shared libraries ``ldd`` resolves for ``binary``, the dynamic loader included.

    Raises:
        ImageBuildError: ``ldd`` is missing, fails, or names a library it cannot find.
    """
    ldd = shutil.which("ldd")
    if ldd is None:
        raise ImageBuildError("ldd not found; install libc-bin")
    result = subprocess.run([ldd, str(binary)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = result.stderr.strip() or result.stdout.strip()
        raise ImageBuildError(f"ldd {binary} failed: {output}")
    libraries = []
    for line in result.stdout.splitlines():
        if "not found" in line:
            raise ImageBuildError(f"ldd {binary}: a library is missing: {line.strip()}")
        match = _LDD_PATH.search(line)
        if match:
            libraries.append(Path(match.group(1)))
    return libraries


def build_influxdb_rootfs_tar(path: str | Path, influxd: str | Path = INFLUXD) -> Path:
    """Write the InfluxDB image's root filesystem as a tar file for ``docker import``.

    The tar contains ``/usr/bin/influxd``, its shared libraries at the paths ``ldd`` gives,
    ``/etc/influxdb/influxdb.conf``, ``/etc/passwd`` and ``/etc/group`` with the ``influxdb``
    user, ``/etc/nsswitch.conf``, ``/tmp`` and ``/var/lib/influxdb`` owned by ``influxdb``.
    Entries are sorted, owned by root (but the data folder) and dated 0, so the same host
    files give the same tar.

    Args:
        path: the tar file to write; its folder must exist.
        influxd: the binary to pack.

    Returns:
        ``path`` as a Path.

    Raises:
        ImageBuildError: ``influxd`` or one of its libraries is missing.
    """
    path = Path(path)
    influxd = Path(influxd)
    if not influxd.is_file():
        raise ImageBuildError(f"{influxd} not found; install Debian's influxdb package")

    files: dict[str, bytes | Path] = {"usr/bin/influxd": influxd}
    for library in shared_libraries(influxd):
        # The content is the file a symlink points at, stored under the name ldd printed.
        files[str(library).lstrip("/")] = library.resolve()
    files[CONFIG_PATH.lstrip("/")] = tomli_w.dumps(influxdb_config()).encode()
    files["etc/passwd"] = (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"influxdb:x:{INFLUXDB_UID}:{INFLUXDB_GID}:InfluxDB:{DATA_ROOT}:/sbin/nologin\n"
    ).encode()
    files["etc/group"] = f"root:x:0:\ninfluxdb:x:{INFLUXDB_GID}:\n".encode()
    files["etc/nsswitch.conf"] = b"hosts: files dns\n"
    folders = {"tmp": 0o1777, DATA_ROOT.lstrip("/"): 0o750}

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        parents = set()
        for name in sorted([*files, *folders]):
            parts = Path(name).parts
            parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        for folder in sorted(parents - set(folders)):
            tar.addfile(_entry(folder, tarfile.DIRTYPE, 0o755))
        for folder, mode in sorted(folders.items()):
            owner = (INFLUXDB_UID, INFLUXDB_GID) if folder == DATA_ROOT.lstrip("/") else (0, 0)
            tar.addfile(_entry(folder, tarfile.DIRTYPE, mode, owner))
        for name, source in sorted(files.items()):
            data = source.read_bytes() if isinstance(source, Path) else source
            executable = name.startswith("usr/bin/") or ".so" in name or name.startswith("lib64/")
            info = _entry(name, tarfile.REGTYPE, 0o755 if executable else 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _entry(name: str, kind: bytes, mode: int, owner: tuple[int, int] = (0, 0)) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = owner
    info.mtime = 0
    return info


def import_command(tar_path: str | Path, reference: str = "swarmlab/influxdb:1.6.7") -> str:
    """Return the shell command that imports the tar as ``reference`` with the image changes."""
    changes = " ".join(f"--change {shlex.quote(change)}" for change in IMPORT_CHANGES)
    return f"docker import {changes} - {shlex.quote(reference)} < {shlex.quote(str(tar_path))}"
