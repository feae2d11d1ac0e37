"""Providers create, list and destroy the nodes of a run; see :mod:`swarmlab.providers.base`."""

from __future__ import annotations

import os

from swarmlab.spec import ExperimentSpec


def get_provider(spec: ExperimentSpec, **options):
    """Return the provider the spec names (``lab`` or ``digitalocean``)."""
    if spec.provider.kind == "lab":
        from swarmlab.providers.lab import LabProvider

        return LabProvider(spec, **options)
    from swarmlab.providers.digitalocean import DigitalOceanProvider

    if "token" not in options and not os.environ.get("DIGITALOCEAN_ACCESS_TOKEN"):
        options["token"] = secret_token()
    return DigitalOceanProvider(spec, **options)


TOKEN_BLOCK = "digitalocean-token"  # noqa: S105 - the name of a Secret block, not a token


def secret_token() -> str | None:
    """The API token from the Prefect Secret block ``digitalocean-token``, if there is one."""
    try:
        from prefect.blocks.system import Secret

        return Secret.load(TOKEN_BLOCK).get()
    except (ImportError, ValueError, RuntimeError):
        return None
