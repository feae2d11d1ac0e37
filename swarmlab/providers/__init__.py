"""Providers create, list and destroy the nodes of a run; see :mod:`swarmlab.providers.base`."""

from __future__ import annotations

from swarmlab.spec import ExperimentSpec


def get_provider(spec: ExperimentSpec, **options):
    """Return the provider the spec names (``lab`` or ``digitalocean``)."""
    if spec.provider.kind == "lab":
        from swarmlab.providers.lab import LabProvider

        return LabProvider(spec, **options)
    from swarmlab.providers.digitalocean import DigitalOceanProvider

    return DigitalOceanProvider(spec, **options)
