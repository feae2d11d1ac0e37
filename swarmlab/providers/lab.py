"""The ``lab`` provider: nodes are real dockerd+sshd namespaces on this machine."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from swarmlab.inventory import Inventory, node_name
from swarmlab.lab import Lab, LabError, NodePlan
from swarmlab.lab.images import TINY, ImageRecipe
from swarmlab.providers.base import ProvisionResult
from swarmlab.spec import ExperimentSpec

log = logging.getLogger(__name__)


def lab_images(spec: ExperimentSpec) -> list[ImageRecipe]:
    """Images the spec's phases need on lab nodes, besides the tiny image every node gets."""
    recipes: list[ImageRecipe] = []
    if spec.monitoring.enabled:
        from swarmlab.monitoring.influx_image import IMPORT_CHANGES, build_influxdb_rootfs_tar

        recipes.append(ImageRecipe(reference=spec.monitoring.influxdb.lab_image, version="influxd-debian-1",
                                   build=build_influxdb_rootfs_tar, changes=tuple(IMPORT_CHANGES)))
    if any(phase.kind != "scale" for phase in spec.phases):
        from swarmlab.lab.recipes import recipes_for

        recipes.extend(recipes_for(spec))
    return recipes


class LabProvider:
    kind = "lab"

    def __init__(self, spec: ExperimentSpec, extra_images=None):
        self.spec = spec
        self.lab = Lab(spec.provider.lab)
        self.extra_images = tuple(lab_images(spec) if extra_images is None else extra_images)

    @property
    def ssh_identity(self) -> Path:
        return self.lab.client_key

    def plans(self) -> list[NodePlan]:
        plans = [NodePlan(node_name(self.spec.name, "manager", i), "manager", i, i - 1)
                 for i in range(1, self.spec.managers.count + 1)]
        offset = self.spec.managers.count
        plans += [NodePlan(node_name(self.spec.name, "worker", i), "worker", i, offset + i - 1)
                  for i in range(1, self.spec.workers.count + 1)]
        return plans

    def list_nodes(self, run_id: str) -> Inventory:
        states = [s for s in self.lab.states() if s.run_id == run_id and self.lab.is_running(s.name)]
        order = {"manager": 0, "worker": 1}
        states.sort(key=lambda s: (order[s.role], s.index))
        return Inventory(tuple(self.lab.to_node(s) for s in states))

    def provision(self, run_id: str, progress=None) -> ProvisionResult:
        started = time.monotonic()
        existing = {node.name for node in self.list_nodes(run_id).nodes}
        plans = self.plans()
        missing = [p for p in plans if p.name not in existing]
        log.info("provision: %d nodes planned, %d running, %d to create", len(plans), len(existing), len(missing))
        if missing:
            self.lab.up(missing, run_id, self.spec.name, extra_images=self.extra_images)
        if existing:
            # Imports run after boot, so a node that was up when an earlier attempt was killed may
            # lack an image. An import skips the images a node already has.
            self.lab.import_images((TINY, *self.extra_images), sorted(existing))
        inventory = self.list_nodes(run_id)
        wanted = {p.name for p in plans}
        return ProvisionResult(
            inventory=Inventory(tuple(n for n in inventory.nodes if n.name in wanted)),
            created=tuple(p.name for p in missing),
            reused=tuple(sorted(existing & wanted)),
            seconds=time.monotonic() - started,
        )

    def teardown(self, run_id: str | None) -> list[str]:
        """Remove the lab if it belongs to ``run_id`` (any run when None); another run's lab is kept."""
        states = self.lab.states()
        owners = sorted({s.run_id for s in states})
        if run_id is not None and owners and owners != [run_id]:
            raise LabError(f"the lab {self.spec.provider.lab.prefix!r} belongs to run(s) {', '.join(owners)}, "
                           f"not {run_id}; nothing removed")
        names = [s.name for s in states]
        leftovers = self.lab.down()
        if not leftovers.empty():
            raise RuntimeError(f"lab teardown left: {leftovers.describe()}")
        return names

    def kernel_wide_tuning(self) -> bool:
        return True
