"""Lab images of the workload phases, built on this machine from Debian bookworm packages.

Lab nodes reach no registry, so each image is a root filesystem tar for ``docker import``. Four
kinds exist: ``nginx``, ``etcd``, ``mariadb-galera`` and ``wordpress``. Each is built in three
stages, and every stage's tar is cached by the hash of what went into it:

1. ``debootstrap --variant=minbase`` of bookworm from the mirror this machine's apt uses
   (shared by every kind);
2. that base plus the kind's Debian packages, installed with ``apt-get`` in a chroot;
3. those packages plus the kind's scripts and configuration files from ``deployments/images/``.

Editing a script therefore rebuilds only stage 3 (2 s to 30 s on a 2-core machine). The stage cache lives in
``<state_dir>/image-cache`` (``/var/lib/swarmlab/image-cache`` by default), outside every lab's
own folder, so it survives ``Lab.down()`` and is shared by labs with other prefixes. Delete the
folder to force a rebuild, e.g. to pick up Debian security updates. A lab links the final tar
into its images folder, where :func:`swarmlab.lab.images.cached_tar` finds it.

Build the images ahead of a run (and see their sizes) with ``python -m swarmlab.lab.recipes``.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from swarmlab.lab.images import ImageRecipe
from swarmlab.spec import ExperimentSpec, load_spec

log = logging.getLogger(__name__)

SUITE = "bookworm"
SUITES = (SUITE, f"{SUITE}-updates", f"{SUITE}-security")
IMAGE_FILES = Path(__file__).resolve().parents[2] / "deployments" / "images"
APT_SOURCE_PATHS = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# Bump a stage's number after changing how that stage is built: it and later stages rebuild.
STAGE_VERSIONS = {"base": "1", "packages": "1", "files": "3"}
CACHE_FOLDER = "image-cache"
# Files the image does not need at run time: documentation, manual pages, translations.
PRUNED_PATHS = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/linda",
)
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(RuntimeError):
    """An image could not be built; the message names the step, the tool and what to do."""


@dataclass(frozen=True)
class ImageFile:
    """A file from ``deployments/images/`` copied into an image at ``target``."""

    source: str
    target: str
    mode: int = 0o644


@dataclass(frozen=True)
class ImageKind:
    """Contents of one kind of image: Debian packages, files from this repository and the default command."""

    name: str
    packages: tuple[str, ...]
    files: tuple[ImageFile, ...] = ()
    command: tuple[str, ...] = ()

    @property
    def changes(self) -> tuple[str, ...]:
        """Dockerfile lines for ``docker import --change``."""
        return (f"CMD {json.dumps(list(self.command))}", "ENV LANG=C.UTF-8")


KINDS: dict[str, ImageKind] = {
    kind.name: kind
    for kind in (
        # nginx_mesh hands nginx its configuration as a Docker config, so the image is plain.
        ImageKind("nginx", ("nginx",), command=("nginx", "-g", "daemon off;")),
        ImageKind("etcd", ("etcd-server", "etcd-client"), command=("etcd",)),
        ImageKind(
            "mariadb-galera",
            ("mariadb-server", "galera-4", "rsync", "etcd-client", "iproute2", "procps"),
            (
                ImageFile("mariadb-galera/swarmlab-galera", "/usr/local/bin/swarmlab-galera", 0o755),
                ImageFile("mariadb-galera/99-swarmlab-galera.cnf", "/etc/mysql/mariadb.conf.d/99-swarmlab-galera.cnf"),
            ),
            command=("swarmlab-galera",),
        ),
        ImageKind(
            "wordpress",
            # php and systemd-standalone-tmpfiles come before wordpress so that apt satisfies
            # wordpress's "libapache2-mod-php | php" and php-fpm's "systemd | systemd-tmpfiles"
            # without Apache or systemd.
            (
                "nginx",
                "php8.2-fpm",
                "php",
                "php8.2-mysql",
                "systemd-standalone-tmpfiles",
                "curl",
                "wordpress",
                "wordpress-theme-twentytwentythree",
            ),
            (
                ImageFile("wordpress/swarmlab-wordpress", "/usr/local/bin/swarmlab-wordpress", 0o755),
                ImageFile("wordpress/wordpress-install.php", "/usr/local/lib/swarmlab/wordpress-install.php"),
                ImageFile("wordpress/nginx.conf", "/etc/swarmlab/nginx-wordpress.conf"),
                ImageFile("wordpress/php-fpm.conf", "/etc/swarmlab/php-fpm.conf"),
            ),
            command=("swarmlab-wordpress",),
        ),
    )
}


# -- apt sources of this machine -------------------------------------------------------------


def apt_sources(paths: Iterable[Path] = APT_SOURCE_PATHS) -> dict[str, str]:
    """Map each of the bookworm suites to the first ``deb`` mirror URI this machine's apt names.

    Reads one-line ``.list`` files and deb822 ``.sources`` files. Only sources with the ``main``
    component count.

    Raises:
        ImageBuildError: no source for ``bookworm`` itself.
    """
    found: dict[str, str] = {}
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources"))
        elif path.is_file():
            files.append(path)
    for file in files:
        text = file.read_text(errors="replace")
        entries = _deb822_entries(text) if file.suffix == ".sources" else _one_line_entries(text)
        for uris, suites, components in entries:
            if "main" not in components:
                continue
            for suite in suites:
                if suite in SUITES and uris:
                    found.setdefault(suite, uris[0].rstrip("/"))
    if SUITE not in found:
        raise ImageBuildError(
            f"no apt source for Debian {SUITE} main in {', '.join(str(p) for p in paths)}; "
            f"add one, e.g. `deb http://deb.debian.org/debian {SUITE} main`"
        )
    return found


def _one_line_entries(text: str) -> Iterator[tuple[list[str], list[str], list[str]]]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 3:
            yield [words[0]], [words[1]], words[2:]


def _deb822_entries(text: str) -> Iterator[tuple[list[str], list[str], list[str]]]:
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in paragraph.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        yield fields.get("uris", "").split(), fields.get("suites", "").split(), fields.get("components", "").split()


# -- the builder -----------------------------------------------------------------------------


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ImageBuilder:
    """Builds the image kinds into ``cache_dir``, one stage at a time, each stage cached.

    Args:
        cache_dir: where stage tars and the shared apt download cache live.
        sources: suite to mirror URI, as :func:`apt_sources` returns; read from this machine
            when None.
        image_files: folder holding the files the kinds copy in (``deployments/images``).
    """

    def __init__(self, cache_dir: Path, sources: dict[str, str] | None = None, image_files: Path = IMAGE_FILES):
        self.cache_dir = Path(cache_dir)
        self.sources = dict(sources) if sources is not None else apt_sources()
        self.image_files = image_files

    # -- cache keys --------------------------------------------------------------------------

    def base_key(self) -> str:
        return _digest(STAGE_VERSIONS["base"], SUITE, "minbase", self.sources[SUITE])

    def packages_key(self, kind: ImageKind) -> str:
        return _digest(STAGE_VERSIONS["packages"], self.base_key(), sorted(self.sources.items()), kind.packages)

    def image_key(self, kind: ImageKind) -> str:
        files = [(f.target, f.mode, hashlib.sha256(self._source(f).read_bytes()).hexdigest()) for f in kind.files]
        return _digest(STAGE_VERSIONS["files"], self.packages_key(kind), files)

    def _source(self, file: ImageFile) -> Path:
        path = self.image_files / file.source
        if not path.is_file():
            raise ImageBuildError(f"image file {path} is missing; it belongs to the repository's deployments/images")
        return path

    # -- public ------------------------------------------------------------------------------

    def recipe(self, kind_name: str, reference: str) -> ImageRecipe:
        """Return the :class:`ImageRecipe` of ``kind_name`` imported as ``reference``."""
        kind = KINDS[kind_name]
        return ImageRecipe(
            reference=reference,
            version=f"{SUITE}-{kind.name}-{self.image_key(kind)}",
            build=functools.partial(self.build_into, kind),
            changes=kind.changes,
        )

    def build_into(self, kind: ImageKind, path: Path) -> None:
        """Write the image tar of ``kind`` to ``path``: a hard link into the cache where possible."""
        source = self.image_tar(kind)
        path = Path(path)
        path.unlink(missing_ok=True)
        try:
            os.link(source, path)
        except OSError:
            shutil.copyfile(source, path)

    def image_tar(self, kind: ImageKind) -> Path:
        """Return the cached stage-3 tar of ``kind``, building whatever stage is missing."""
        target = self.cache_dir / f"{kind.name}-image-{self.image_key(kind)}.tar"
        with self._locked():
            if not target.exists():
                packages = self._packages_tar(kind)
                started = time.monotonic()
                if kind.files:
                    self._add_files(packages, target, kind)
                else:
                    # Nothing to add: the stage-2 tar is the image.
                    os.link(packages, target)
                self._prune(f"{kind.name}-image-", target)
                log.info(
                    "images: %s image built in %.1fs (%d MiB)",
                    kind.name,
                    time.monotonic() - started,
                    target.stat().st_size >> 20,
                )
        return target

    # -- stages ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # One build at a time per cache folder, across processes: labs with other prefixes
        # share the cache.
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _base_tar(self) -> Path:
        target = self.cache_dir / f"debian-{SUITE}-minbase-{self.base_key()}.tar"
        if target.exists():
            return target
        if shutil.which("debootstrap") is None:
            raise ImageBuildError("debootstrap is not installed; run `apt-get install debootstrap`")
        started = time.monotonic()
        with self._workdir() as work:
            rootfs = work / "rootfs"
            _run(
                ["debootstrap", "--variant=minbase", SUITE, str(rootfs), self.sources[SUITE]],
                "debootstrap",
                timeout=1800,
            )
            _pack(rootfs, target)
        self._prune(f"debian-{SUITE}-minbase-", target)
        log.info(
            "images: debootstrap of %s minbase in %.1fs (%d MiB)",
            SUITE,
            time.monotonic() - started,
            target.stat().st_size >> 20,
        )
        return target

    def _packages_tar(self, kind: ImageKind) -> Path:
        target = self.cache_dir / f"{kind.name}-packages-{self.packages_key(kind)}.tar"
        if target.exists():
            return target
        base = self._base_tar()
        started = time.monotonic()
        archives = self.cache_dir / "apt-archives"
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        with self._workdir() as work:
            rootfs = work / "rootfs"
            rootfs.mkdir()
            _run(["tar", "--numeric-owner", "-xpf", str(base), "-C", str(rootfs)], "unpack the base image")
            lines = [f"deb {self.sources[suite]} {suite} main" for suite in SUITES if suite in self.sources]
            (rootfs / "etc/apt/sources.list").write_text("\n".join(lines) + "\n")
            # A policy-rc.d that exits 101 stops package scripts from starting services in the chroot.
            policy = rootfs / "usr/sbin/policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            resolv = rootfs / "etc/resolv.conf"
            resolv.unlink(missing_ok=True)
            resolv.write_text(Path("/etc/resolv.conf").read_text())
            with _chroot_mounts(rootfs, archives):
                env = ["/usr/bin/env", "-i", f"PATH={CHROOT_PATH}", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"]
                _run(["chroot", str(rootfs), *env, "apt-get", "-q", "update"], "apt-get update", timeout=600)
                _run(
                    [
                        "chroot",
                        str(rootfs),
                        *env,
                        "apt-get",
                        "-q",
                        "-y",
                        "--no-install-recommends",
                        "install",
                        *kind.packages,
                    ],
                    f"apt-get install for the {kind.name} image",
                    timeout=1800,
                )
            for relative in PRUNED_PATHS:
                _empty_folder(rootfs / relative)
            for locale in (rootfs / "usr/share/locale").glob("*"):
                if locale.is_dir() and not locale.name.startswith("en"):
                    shutil.rmtree(locale)
            # mariadb-server's package script initialises a data folder; the entrypoint makes its own.
            _empty_folder(rootfs / "var/lib/mysql")
            for logfile in (rootfs / "var/log").rglob("*"):
                if logfile.is_file():
                    logfile.unlink()
            policy.unlink()
            resolv.write_text("")
            _pack(rootfs, target)
        self._prune(f"{kind.name}-packages-", target)
        log.info(
            "images: %s packages installed in %.1fs (%d MiB)",
            kind.name,
            time.monotonic() - started,
            target.stat().st_size >> 20,
        )
        return target

    def _add_files(self, packages: Path, target: Path, kind: ImageKind) -> None:
        """Write ``target``: the stage-2 tar with the kind's files added or replaced.

        ``docker import`` rejects a tar that names one path twice, so the files are not appended:
        the tree is unpacked, the files copied in and the tree packed again.
        """
        with self._workdir() as work:
            rootfs = work / "rootfs"
            rootfs.mkdir()
            _run(["tar", "--numeric-owner", "-xpf", str(packages), "-C", str(rootfs)], "unpack the packages image")
            for file in kind.files:
                destination = rootfs / file.target.lstrip("/")
                destination.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                destination.unlink(missing_ok=True)
                destination.write_bytes(self._source(file).read_bytes())
                destination.chmod(file.mode)
            _pack(rootfs, target)

    @contextmanager
    def _workdir(self) -> Iterator[Path]:
        work = Path(tempfile.mkdtemp(prefix="build-", dir=self.cache_dir))
        try:
            yield work
        finally:
            _remove_build_folder(work)

    def _prune(self, prefix: str, keep: Path) -> None:
        """Delete older tars of the same stage and kind; running labs keep theirs through hard links."""
        for old in self.cache_dir.glob(f"{prefix}{'?' * 12}.tar"):
            if old != keep:
                old.unlink(missing_ok=True)


def _run(argv: list[str], step: str, timeout: float = 600) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{step} timed out after {timeout:.0f}s: {' '.join(argv[:6])} ...") from None
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise ImageBuildError(f"{step} failed (exit {result.returncode}): {tail}")


def _pack(rootfs: Path, target: Path) -> None:
    """Pack ``rootfs`` into ``target``, which appears only once complete."""
    partial = target.with_suffix(".partial")
    _run(
        ["tar", "--numeric-owner", "--sort=name", "-C", str(rootfs), "-cf", str(partial), "."],
        f"pack {target.name}",
        timeout=600,
    )
    partial.rename(target)


def _empty_folder(path: Path) -> None:
    if not path.is_dir() or path.is_symlink():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextmanager
def _chroot_mounts(rootfs: Path, archives: Path) -> Iterator[None]:
    """Mount /proc and the shared apt download cache into the chroot for the duration of a build."""
    mounted: list[Path] = []
    try:
        _run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], "mount /proc in the chroot")
        mounted.append(rootfs / "proc")
        cache = rootfs / "var/cache/apt/archives"
        cache.mkdir(parents=True, exist_ok=True)
        _run(["mount", "--bind", str(archives), str(cache)], "bind-mount the apt download cache")
        mounted.append(cache)
        yield
    finally:
        _kill_chroot_processes(rootfs)
        for point in reversed(mounted):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _kill_chroot_processes(rootfs: Path) -> None:
    # A package script may leave a daemon behind despite policy-rc.d, and it keeps the mounts busy.
    resolved = str(rootfs.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            root = os.readlink(entry / "root")
        except OSError:
            continue
        if root == resolved or root.startswith(resolved + "/"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _remove_build_folder(work: Path) -> None:
    # Never remove through a mount point: the apt download cache is bind-mounted during builds.
    prefix = str(work.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    busy = [m for m in mounts if m.startswith(prefix)]
    if busy:
        raise ImageBuildError(f"build folder {work} still has mounts ({', '.join(busy)}); unmount them and delete it")
    shutil.rmtree(work, ignore_errors=True)


# -- what a spec needs -----------------------------------------------------------------------


def image_kinds_for(spec: ExperimentSpec) -> dict[str, str]:
    """Map each image reference the spec's workload phases name to the kind built for it.

    Raises:
        ImageBuildError: one reference is named for two different kinds.
    """
    wanted: dict[str, tuple[str, str]] = {}

    def want(reference: str, kind: str, field: str) -> None:
        previous = wanted.setdefault(reference, (kind, field))
        if previous[0] != kind:
            raise ImageBuildError(
                f"{field} and {previous[1]} both name image {reference!r}, but they need different "
                f"images ({kind} and {previous[0]}); give each its own reference"
            )

    for phase in spec.phases:
        where = f"phases[{phase.name}]"
        if phase.kind == "nginx_mesh":
            want(phase.image, "nginx", f"{where}.image")
        elif phase.kind == "mysql_wordpress":
            want(phase.etcd_image, "etcd", f"{where}.etcd_image")
            want(phase.mariadb_image, "mariadb-galera", f"{where}.mariadb_image")
            want(phase.wordpress_image, "wordpress", f"{where}.wordpress_image")
    return {reference: kind for reference, (kind, _) in wanted.items()}


def recipes_for(spec: ExperimentSpec) -> tuple[ImageRecipe, ...]:
    """Return the image recipes the spec's workload phases need on lab nodes (empty for scale only).

    Nothing is built here; :func:`swarmlab.lab.images.cached_tar` builds on first use.
    """
    kinds = image_kinds_for(spec)
    if not kinds:
        return ()
    builder = ImageBuilder(Path(spec.provider.lab.state_dir) / CACHE_FOLDER)
    return tuple(builder.recipe(kind, reference) for reference, kind in kinds.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the lab images a spec's workload phases need.")
    parser.add_argument("--spec", help="experiment spec (YAML); default: build every image kind")
    parser.add_argument("--state-dir", default="/var/lib/swarmlab", help="lab state folder holding image-cache/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    builder = ImageBuilder(Path(args.state_dir) / CACHE_FOLDER)
    kinds = sorted(set(image_kinds_for(load_spec(args.spec)).values())) if args.spec else sorted(KINDS)
    for name in kinds:
        started = time.monotonic()
        path = builder.image_tar(KINDS[name])
        print(f"{name}: {path} {path.stat().st_size / 2**20:.0f} MiB ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
