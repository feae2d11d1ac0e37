"""Images built on this machine for lab nodes: no registry is reachable, so nothing is pulled.

An image is a root filesystem packed as a tar and loaded with ``docker import``. Tars are cached
by the hash of their recipe, so every node gets the same bytes and a second run builds nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class ImageRecipe:
    """A locally built image: ``build(path)`` writes the rootfs tar; ``changes`` are Dockerfile lines."""

    reference: str
    version: str
    build: Callable[[Path], None]
    changes: tuple[str, ...] = field(default=())

    def digest(self) -> str:
        return hashlib.sha256(f"{self.reference}|{self.version}|{self.changes}".encode()).hexdigest()[:12]


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def build_busybox_rootfs(path: Path) -> None:
    """Write a tar of a busybox root filesystem (Debian's busybox-static) with every applet linked."""
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing; install Debian's busybox-static")
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    with tarfile.open(path, "w") as tar:
        for folder in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root"):
            _add_dir(tar, folder, 0o1777 if folder == "tmp" else 0o755)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet == "bin/busybox":
                continue
            link = tarfile.TarInfo(applet)
            link.type = tarfile.SYMTYPE
            link.linkname = "/bin/busybox"
            tar.addfile(link)
        _add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        _add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")


TINY = ImageRecipe(
    reference="swarmlab/tiny:latest",
    version="busybox-1",
    build=build_busybox_rootfs,
    changes=('CMD ["sleep", "1000000"]',),
)


def cached_tar(recipe: ImageRecipe, cache_dir: Path) -> Path:
    """Build the recipe's tar once; later calls return the cached file."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = recipe.reference.replace("/", "_").replace(":", "_")
    path = cache_dir / f"{name}-{recipe.digest()}.tar"
    if not path.exists():
        partial = path.with_suffix(".partial")
        recipe.build(partial)
        partial.rename(path)
        log.info("lab: built image %s (%d KiB)", recipe.reference, path.stat().st_size // 1024)
    return path


def import_image(socket: Path, recipe: ImageRecipe, tar_path: Path) -> bool:
    """Import the image into the engine behind ``socket`` unless it is there; True if imported."""
    import docker

    client = docker.APIClient(base_url=f"unix://{socket}", version="1.41", timeout=120)
    try:
        try:
            client.inspect_image(recipe.reference)
            return False
        except docker.errors.ImageNotFound:
            pass
        repository, _, tag = recipe.reference.rpartition(":")
        client.import_image_from_file(
            str(tar_path), repository=repository, tag=tag, changes=list(recipe.changes) or None
        )
        return True
    finally:
        client.close()
