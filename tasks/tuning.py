"""Tuning: the spec's sysctls on every node (or once on a shared host kernel)."""

from __future__ import annotations

from prefect import task

from swarmlab.cluster import Cluster
from swarmlab.inventory import Inventory
from swarmlab.phases.tuning import apply_tuning
from tasks.common import RESULT_STORAGE, RunHandle, phase_key, publish


@task(name="tuning", retries=2, retry_delay_seconds=5, timeout_seconds=1800,
      cache_key_fn=phase_key("tuning"), persist_result=True, result_serializer="json",
      result_storage=RESULT_STORAGE)
def tuning(run: RunHandle, inventory: Inventory) -> dict:
    provider = run.provider()
    host_tuner = provider.lab.set_host_sysctls if provider.kernel_wide_tuning() else None
    with Cluster(inventory, provider.ssh_identity) as cluster:
        result = apply_tuning(cluster, run.spec.tuning, host_tuner=host_tuner)
    rows = [{"where": "host (shared kernel)", "key": k, **v} for k, v in result["host"].get("values", {}).items()]
    for node, data in sorted(result["nodes"].items()):
        rows += [{"where": node, "key": k, "before": v["before"], "after": v["after"]}
                 for k, v in data["values"].items()]
    where = "once on the host kernel and per node" if result["kernel_wide_on_host"] else "on every node"
    summary = (f"{len(run.spec.tuning.sysctls)} sysctls applied {where}; {len(result['failed'])} nodes failed; "
               f"fan-out {result['fan_out_seconds']:.1f}s wall, {result['fan_out_client_cpu_seconds']:.2f}s client CPU")
    publish(run, "tuning", result, summary, rows=rows)
    return result
