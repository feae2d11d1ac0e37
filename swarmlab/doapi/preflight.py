"""Checks that a DigitalOcean plan fits the account, made before anything is created.

Each ``*_problems`` function returns one line per problem, naming the spec field and the fix;
the provider collects them all and raises one :class:`~swarmlab.doapi.errors.PreflightError`.
Failures that make every further check pointless (a rejected token, an unreachable API) raise
at once through :func:`call_or_fail`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import digitalocean

from swarmlab.doapi.client import DOClient
from swarmlab.doapi.cloudinit import MAX_USER_DATA_BYTES
from swarmlab.doapi.errors import ApiConnectionError, DOApiError, PreflightError
from swarmlab.spec import DigitalOceanSettings

TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_\-:]{1,255}$")

T = TypeVar("T")


@dataclass(frozen=True)
class PreflightReport:
    """Figures the preflight checked: the account's room and the plan's size."""

    droplet_limit: int
    account_droplets: int
    planned: int
    existing_in_run: int
    to_create: int
    user_data_bytes: int


def call_or_fail(client: DOClient, call: Callable[[], T], *, allow_missing: bool = False) -> T | None:
    """Run an API call whose failure stops the preflight at once.

    Returns:
        The call's result, or None for a 404 when ``allow_missing`` is set.

    Raises:
        PreflightError: the token was rejected, the API is unreachable, or the call failed
            after its retries.
    """
    try:
        return call()
    except DOApiError as error:
        if error.status == 404 and allow_missing:
            return None
        if error.status in (401, 403):
            raise PreflightError(
                [
                    f"DigitalOcean rejected the API token ({error.status} {error.error_id}: "
                    f"{error.message}); check DIGITALOCEAN_ACCESS_TOKEN or the Secret block, "
                    "and that the token has read and write scope"
                ]
            ) from None
        raise PreflightError([f"{error}; retry later or check the API status"]) from None
    except ApiConnectionError as error:
        raise PreflightError([f"cannot reach the DigitalOcean API at {client.end_point}: {error}"]) from None


def account_problems(account: digitalocean.Account) -> list[str]:
    if account.status == "active":
        return []
    return [
        f"the DigitalOcean account status is {account.status!r} "
        f"({account.status_message or 'no message'}); resolve it in the control panel"
    ]


def region_and_size_problems(client: DOClient, settings: DigitalOceanSettings) -> list[str]:
    """Check that the region exists and takes droplets, and that both sizes are offered there."""
    problems = []
    regions = {region.slug: region for region in call_or_fail(client, client.regions)}
    sizes = {size.slug: size for size in call_or_fail(client, client.sizes)}

    region = regions.get(settings.region)
    if region is None:
        problems.append(
            f"provider.digitalocean.region: {settings.region!r} does not exist; use one of {', '.join(sorted(regions))}"
        )
    elif not region.available:
        available = sorted(slug for slug, r in regions.items() if r.available)
        problems.append(
            f"provider.digitalocean.region: {settings.region!r} takes no new droplets; "
            f"use one of {', '.join(available)}"
        )

    for field_name in ("manager_size", "worker_size"):
        slug = getattr(settings, field_name)
        size = sizes.get(slug)
        if size is None:
            problems.append(
                f"provider.digitalocean.{field_name}: size {slug!r} does not exist; "
                f"GET /v2/sizes lists them, e.g. s-1vcpu-1gb, s-2vcpu-4gb"
            )
        elif getattr(size, "available", True) is False:
            problems.append(f"provider.digitalocean.{field_name}: size {slug!r} is not available")
        elif region is not None and region.available and slug not in region.sizes:
            problems.append(
                f"provider.digitalocean.{field_name}: size {slug!r} is not offered in region "
                f"{settings.region!r}; pick another size or one of its regions: "
                f"{', '.join(sorted(size.regions))}"
            )
    return problems


def image_problems(client: DOClient, settings: DigitalOceanSettings) -> list[str]:
    if call_or_fail(client, lambda: client.image(settings.image), allow_missing=True) is not None:
        return []
    return [
        f"provider.digitalocean.image: {settings.image!r} was not found; use a public "
        "image slug such as debian-12-x64 or ubuntu-24-04-x64"
    ]


def ssh_key_problems(client: DOClient, settings: DigitalOceanSettings) -> list[str]:
    """Fetch each key by id or fingerprint; the key list allows only 10 requests per minute."""
    if not settings.ssh_keys:
        return [
            "provider.digitalocean.ssh_keys is empty; add the id or fingerprint of an SSH key "
            "registered on the account, or the pipeline cannot log in to the droplets"
        ]
    problems = []
    for key in settings.ssh_keys:
        if call_or_fail(client, lambda key=key: client.ssh_key(key), allow_missing=True) is None:
            problems.append(
                f"provider.digitalocean.ssh_keys: {key!r} is not registered on the account; "
                "add the key in the control panel or give its id or fingerprint"
            )
    return problems


def tag_problems(settings: DigitalOceanSettings) -> list[str]:
    return [
        f"provider.digitalocean.tags: {tag!r} is not a valid tag; use letters, digits, dashes, underscores and colons"
        for tag in settings.tags
        if not TAG_PATTERN.match(tag)
    ]


def user_data_problems(user_data_bytes: int) -> list[str]:
    if user_data_bytes <= MAX_USER_DATA_BYTES:
        return []
    return [
        f"the cloud-init user data of one create request is {user_data_bytes} bytes, over "
        f"DigitalOcean's limit of {MAX_USER_DATA_BYTES} (64 KiB); shorten "
        "provider.digitalocean.extra_runcmd or tuning.sysctls, or lower create_batch"
    ]


def droplet_limit_problems(limit: int, account_droplets: int, to_create: int) -> list[str]:
    if account_droplets + to_create <= limit:
        return []
    return [
        f"the plan needs {to_create} new droplets and the account already has "
        f"{account_droplets}, but its droplet_limit is {limit}; ask DigitalOcean support "
        f"to raise the limit to at least {account_droplets + to_create}, or lower "
        "workers.count"
    ]
