"""Dry-run plan of a DigitalOcean experiment: droplets, cost, API requests and time. Creates nothing.

:func:`make_plan` needs only the spec: prices come from the built-in list in
:mod:`swarmlab.doapi.catalog` (dated, overridable by ``provider.digitalocean.prices_per_hour``),
and the request budget follows the provider's method: ten names per create, one paginated
listing (200 droplets per page) per poll, delete by tag. Times are estimates at the API's rate
limit of 250 requests per minute and 5,000 per hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swarmlab.doapi.catalog import PRICE_LIST_DATE, SIZES
from swarmlab.spec import ExperimentSpec

PER_MINUTE_BUDGET = 245  # the rate limiter keeps 5 of the API's 250 per minute unused
PER_HOUR_BUDGET = 4950  # and 50 of its 5,000 per hour
PER_PAGE = 200
DEFAULT_DROPLET_LIMIT = 25

# Estimates, not measurements: a droplet's boot until ``active``, the time one create request
# takes to respond, and one listing page.
BOOT_SECONDS = 60.0
CREATE_SECONDS = 1.5
PAGE_SECONDS = 0.5
# Listings while waiting for ``active``: one right after the creates, one after the newest
# droplet had as long to boot as the newest active one. Uneven boot times add listings.
EXPECTED_POLLS = 2


@dataclass(frozen=True)
class NodeGroup:
    """Droplets of one role: how many, which size, and the USD per hour of one (None if unknown)."""

    role: str
    count: int
    size: str
    price_per_hour: float | None
    price_source: str

    @property
    def cost_per_hour(self) -> float | None:
        return None if self.price_per_hour is None else self.count * self.price_per_hour


@dataclass(frozen=True)
class RequestBudget:
    """API requests of one provision and one teardown, by step."""

    preflight: int
    first_listing: int
    creates: int
    polls: int
    pages_per_poll: int
    teardown: int

    @property
    def poll_requests(self) -> int:
        return self.polls * self.pages_per_poll

    @property
    def provision(self) -> int:
        return self.preflight + self.first_listing + self.creates + self.poll_requests

    @property
    def total(self) -> int:
        return self.provision + self.teardown


@dataclass(frozen=True)
class Plan:
    """The dry run of one spec on DigitalOcean."""

    experiment: str
    provider_kind: str
    region: str
    image: str
    groups: tuple[NodeGroup, ...]
    expected_hours: float
    budget: RequestBudget
    create_seconds: float
    boot_seconds: float
    poll_seconds: float

    @property
    def droplets(self) -> int:
        return sum(group.count for group in self.groups)

    @property
    def unpriced_sizes(self) -> list[str]:
        return sorted({g.size for g in self.groups if g.price_per_hour is None})

    @property
    def cost_per_hour(self) -> float | None:
        costs = [group.cost_per_hour for group in self.groups]
        return None if None in costs else sum(costs)

    @property
    def cost_expected(self) -> float | None:
        cost = self.cost_per_hour
        return None if cost is None else cost * self.expected_hours

    @property
    def requests_per_droplet(self) -> float:
        return self.budget.provision / max(1, self.droplets)

    @property
    def provisioning_seconds(self) -> float:
        return self.create_seconds + self.boot_seconds + self.poll_seconds

    def to_markdown(self) -> str:
        """Render the plan as a markdown report (tables for droplets, cost and requests)."""
        lines = [f"# Plan: {self.experiment} on DigitalOcean ({self.region}, {self.image})", ""]
        if self.provider_kind != "digitalocean":
            lines += [
                f"The spec selects the `{self.provider_kind}` provider; these figures are for its "
                "`provider.digitalocean` settings.",
                "",
            ]
        lines += [
            "| role | droplets | size | USD/hour each | USD/hour | price |",
            "| --- | ---: | --- | ---: | ---: | --- |",
        ]
        for group in self.groups:
            lines.append(
                f"| {group.role} | {group.count:,} | `{group.size}` | {_money(group.price_per_hour, 5)} "
                f"| {_money(group.cost_per_hour)} | {group.price_source} |"
            )
        lines.append(f"| total | {self.droplets:,} | | | {_money(self.cost_per_hour)} | |")
        lines.append("")
        if self.unpriced_sizes:
            lines.append(
                f"No price for {', '.join(self.unpriced_sizes)}: set "
                "`provider.digitalocean.prices_per_hour` to complete the cost."
            )
        else:
            lines.append(
                f"Cost for {self.expected_hours:g} hours (`expected_hours`): **{_money(self.cost_expected)}**."
            )
        lines += [
            "",
            "| API requests | count |",
            "| --- | ---: |",
            f"| preflight (account, regions, sizes, image, SSH keys, droplet count) | {self.budget.preflight} |",
            f"| listing the run's tag before creating | {self.budget.first_listing} |",
            f"| creates (up to 10 names each) | {self.budget.creates} |",
            f"| polls ({self.budget.polls} listings of {self.budget.pages_per_poll} pages) "
            f"| {self.budget.poll_requests} |",
            f"| provision total | {self.budget.provision} ({self.requests_per_droplet:.3f} per droplet) |",
            f"| teardown (listing, delete by tag, listing) | {self.budget.teardown} |",
            "",
            f"Provisioning takes about {_duration(self.provisioning_seconds)}: creates "
            f"{_duration(self.create_seconds)} (at most {PER_MINUTE_BUDGET} requests per minute, "
            f"{PER_HOUR_BUDGET:,} per hour), boot {_duration(self.boot_seconds)}, polls "
            f"{_duration(self.poll_seconds)}. Boot and request times are estimates.",
            "",
            f"The account needs a `droplet_limit` of at least {self.droplets:,} plus the droplets it "
            f"already runs (the default limit is {DEFAULT_DROPLET_LIMIT}).",
            "",
            f"Prices: built-in list of {PRICE_LIST_DATE} unless marked `spec`; `GET /v2/sizes` has the current ones.",
        ]
        return "\n".join(lines) + "\n"


def make_plan(spec: ExperimentSpec) -> Plan:
    """Plan ``spec`` on DigitalOcean without touching the API."""
    settings = spec.provider.digitalocean
    groups = (
        _group("manager", spec.managers.count, settings.manager_size, settings.prices_per_hour),
        _group("worker", spec.workers.count, settings.worker_size, settings.prices_per_hour),
    )
    droplets = spec.managers.count + spec.workers.count
    batch = settings.create_batch
    creates = math.ceil(spec.managers.count / batch) + math.ceil(spec.workers.count / batch)
    pages = max(1, math.ceil(droplets / PER_PAGE))
    budget = RequestBudget(
        preflight=5 + len(settings.ssh_keys),
        first_listing=1,
        creates=creates,
        polls=EXPECTED_POLLS,
        pages_per_poll=pages,
        teardown=pages + 2,
    )

    before_polls = budget.preflight + budget.first_listing + budget.creates
    create_seconds = max(
        _seconds_at_rate_limit(before_polls),
        creates * CREATE_SECONDS / settings.create_concurrency,
    )
    return Plan(
        experiment=spec.name,
        provider_kind=spec.provider.kind,
        region=settings.region,
        image=settings.image,
        groups=groups,
        expected_hours=settings.expected_hours,
        budget=budget,
        create_seconds=create_seconds,
        boot_seconds=BOOT_SECONDS,
        poll_seconds=budget.poll_requests * PAGE_SECONDS,
    )


def _group(role: str, count: int, size: str, overrides: dict[str, float]) -> NodeGroup:
    if size in overrides:
        return NodeGroup(role, count, size, overrides[size], "spec")
    info = SIZES.get(size)
    if info is None:
        return NodeGroup(role, count, size, None, "unknown")
    return NodeGroup(role, count, size, info.price_hourly, PRICE_LIST_DATE)


def _seconds_at_rate_limit(requests: int) -> float:
    """Return the least time ``requests`` take under the sliding per-minute and per-hour limits.

    A sliding window lets the first full budget through at once; each further budget's worth
    waits one window.
    """
    minute_windows = max(0, math.ceil(requests / PER_MINUTE_BUDGET) - 1)
    hour_windows = max(0, math.ceil(requests / PER_HOUR_BUDGET) - 1)
    return max(minute_windows * 60.0, hour_windows * 3600.0)


def _money(value: float | None, digits: int = 2) -> str:
    return "unknown" if value is None else f"${value:,.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
