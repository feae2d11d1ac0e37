"""Droplet sizes with their list prices, for the cost plan and the local API server.

The live API is the authority (``GET /v2/sizes`` returns ``price_hourly``); this table lets the
plan run offline. The ``s-`` prices are DigitalOcean's Basic list prices from July 2022.
NOTE: the dedicated-CPU prices (``c-``, ``g-``, ``m-``) and all transfer allowances are estimates
from the same period, scaled per vCPU from the 2-vCPU plans. Set
``provider.digitalocean.prices_per_hour`` in the spec to override them.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICE_LIST_DATE = "2022-07"

# DigitalOcean caps a month at 672 billed hours (28 days); hourly price = monthly / 672.
HOURS_PER_BILLED_MONTH = 672


@dataclass(frozen=True)
class SizeInfo:
    """One droplet size: vCPUs, memory in MiB, disk in GB, transfer in TB, USD per month."""

    slug: str
    vcpus: int
    memory: int
    disk: int
    transfer: float
    price_monthly: float
    description: str

    @property
    def price_hourly(self) -> float:
        return round(self.price_monthly / HOURS_PER_BILLED_MONTH, 5)


SIZES: dict[str, SizeInfo] = {
    size.slug: size
    for size in (
        SizeInfo("s-1vcpu-512mb-10gb", 1, 512, 10, 0.5, 4.0, "Basic"),
        SizeInfo("s-1vcpu-1gb", 1, 1024, 25, 1.0, 6.0, "Basic"),
        SizeInfo("s-1vcpu-2gb", 1, 2048, 50, 2.0, 12.0, "Basic"),
        SizeInfo("s-2vcpu-2gb", 2, 2048, 60, 3.0, 18.0, "Basic"),
        SizeInfo("s-2vcpu-4gb", 2, 4096, 80, 4.0, 24.0, "Basic"),
        SizeInfo("s-4vcpu-8gb", 4, 8192, 160, 5.0, 48.0, "Basic"),
        SizeInfo("s-8vcpu-16gb", 8, 16384, 320, 6.0, 96.0, "Basic"),
        SizeInfo("c-16", 16, 32768, 200, 9.0, 336.0, "CPU-Optimized"),
        SizeInfo("c-32", 32, 65536, 400, 10.0, 672.0, "CPU-Optimized"),
        SizeInfo("g-16vcpu-64gb", 16, 65536, 200, 9.0, 504.0, "General Purpose"),
        SizeInfo("m-16vcpu-128gb", 16, 131072, 400, 9.0, 672.0, "Memory-Optimized"),
        SizeInfo("m-32vcpu-256gb", 32, 262144, 800, 10.0, 1344.0, "Memory-Optimized"),
    )
}
