"""Lab images of the workload phases: build time, size, and `docker import` time into lab nodes.

    .venv/bin/python bench/bench_lab_images.py --nodes 4 --write

Builds (or finds in the cache) the four image kinds of ``swarmlab/lab/recipes.py``, plus one
combined image holding every kind's packages and files. It then boots lab nodes on prefix
``swkb`` (bridge ``swkb0``, subnet 10.213.77.0/24) and measures the import time:

- one node, one image at a time: each separate image, then the combined image, then the
  combined tar again under a second name (what a second tag costs with ``docker import``);
- the other nodes at once: all four separate images on each node, then the combined image.

Ratios are combined against separate, measured in the same run. The lab is removed at the end.
The combined image's tars stay in the image cache, so that a re-run skips its build. Delete
``combined-*.tar`` in ``/var/lib/swarmlab/image-cache`` to free about 1 GiB.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402
from swarmlab.lab import Lab, NodePlan  # noqa: E402
from swarmlab.lab.images import ImageRecipe, import_image  # noqa: E402
from swarmlab.lab.recipes import CACHE_FOLDER, KINDS, ImageBuilder, ImageKind  # noqa: E402
from swarmlab.spec import LabSettings  # noqa: E402

LAB = LabSettings(prefix="swkb", bridge="swkb0", subnet="10.213.77.0/24")


def combined_kind() -> ImageKind:
    packages: list[str] = []
    files = []
    for kind in KINDS.values():
        packages += [p for p in kind.packages if p not in packages]
        files += [f for f in kind.files if f not in files]
    return ImageKind("combined", tuple(packages), tuple(files), command=("sleep", "infinity"))


def timed_import(lab: Lab, node: str, reference: str, tar: Path, changes: tuple[str, ...]) -> float:
    recipe = ImageRecipe(reference, "bench", lambda path: None, changes)
    started = time.monotonic()
    if not import_image(lab.node(node).docker_socket, recipe, tar):
        raise RuntimeError(f"{reference} was already on {node}; the lab was not fresh")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4, help="lab nodes to boot, at least 2 (default 4)")
    parser.add_argument("--state-dir", default=LAB.state_dir, help="folder holding image-cache/")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if args.nodes < 2:
        parser.error("--nodes must be at least 2: one for the one-at-a-time imports, the rest at once")

    builder = ImageBuilder(Path(args.state_dir) / CACHE_FOLDER)
    kinds = [*KINDS.values(), combined_kind()]
    tars: dict[str, Path] = {}
    built: dict[str, float] = {}
    for kind in kinds:
        started = time.monotonic()
        tars[kind.name] = builder.image_tar(kind)
        built[kind.name] = time.monotonic() - started
    separate = [k for k in kinds if k.name != "combined"]
    combined = kinds[-1]

    lab = Lab(LAB)
    lab.down()
    names = [f"n{i}" for i in range(args.nodes)]
    try:
        lab.up([NodePlan(n, "worker", i, i) for i, n in enumerate(names)], "bench", "bench", tiny_image=False)
        one_node = {k.name: timed_import(lab, names[0], f"bench/{k.name}:a", tars[k.name], k.changes) for k in kinds}
        second_name = timed_import(lab, names[0], "bench/combined:b", tars["combined"], combined.changes)

        def import_separate(node: str) -> float:
            return sum(timed_import(lab, node, f"bench/{k.name}:a", tars[k.name], k.changes) for k in separate)

        def import_combined(node: str) -> float:
            return timed_import(lab, node, "bench/combined:a", tars["combined"], combined.changes)

        others = names[1:]
        with ThreadPoolExecutor(max_workers=len(others)) as pool:
            started = time.monotonic()
            list(pool.map(import_separate, others))
            many_separate = time.monotonic() - started
            started = time.monotonic()
            list(pool.map(import_combined, others))
            many_combined = time.monotonic() - started
    finally:
        leftovers = lab.down()
        if not leftovers.empty():
            print(f"lab down left: {leftovers.describe()}", file=sys.stderr)

    size = {name: path.stat().st_size / 2**20 for name, path in tars.items()}
    one_separate = sum(one_node[k.name] for k in separate)
    load = os.getloadavg()[0]
    body = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, load average "
        f"{load:.1f} at the end); `bench/bench_lab_images.py --nodes {args.nodes}`; one run.",
        "",
        "| image | tar size | build now (0 = cached) | import, one node |",
        "|---|---:|---:|---:|",
        *[f"| {k.name} | {size[k.name]:.0f} MiB | {built[k.name]:.0f} s | {one_node[k.name]:.1f} s |" for k in kinds],
        f"| combined, again under a second name | | | {second_name:.1f} s |",
        "",
        "| comparison | separate (4 images) | combined (1 image) | ratio combined/separate |",
        "|---|---:|---:|---:|",
        f"| size | {sum(size[k.name] for k in separate):.0f} MiB | {size['combined']:.0f} MiB | "
        f"{size['combined'] / sum(size[k.name] for k in separate):.2f} |",
        f"| import, one node | {one_separate:.1f} s | {one_node['combined']:.1f} s | "
        f"{one_node['combined'] / one_separate:.2f} |",
        f"| import, {len(others)} nodes at once | {many_separate:.1f} s | {many_combined:.1f} s | "
        f"{many_combined / many_separate:.2f} |",
        "",
        f"A second name for the combined image costs {second_name / one_node['combined']:.2f} of its first import: "
        "`docker import` extracts the whole tar again, so four references to one combined tar would cost "
        "four imports.",
    ]
    print("\n".join(body))
    if args.write:
        update_section(REPO / "docs" / "benchmarks.md", "Lab workload images (build and import)", "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
