"""Regions, sizes and images the local server offers, as API response objects."""

from __future__ import annotations

from functools import cache

from swarmlab.doapi.catalog import SIZES, SizeInfo

REGION_FEATURES = [
    "private_networking",
    "backups",
    "ipv6",
    "metadata",
    "install_agent",
    "storage",
    "image_transfer",
]

# Slug, name, available. nyc2 takes no new droplets, like a closed region of the real API.
REGIONS = (
    ("nyc1", "New York 1", True),
    ("nyc2", "New York 2", False),
    ("nyc3", "New York 3", True),
    ("sfo3", "San Francisco 3", True),
    ("ams3", "Amsterdam 3", True),
    ("fra1", "Frankfurt 1", True),
    ("lon1", "London 1", True),
    ("sgp1", "Singapore 1", True),
    ("tor1", "Toronto 1", True),
    ("blr1", "Bangalore 1", True),
    ("syd1", "Sydney 1", True),
)

# Sizes offered in only some regions, so a test can ask for a size its region lacks.
LIMITED_SIZES = {"m-32vcpu-256gb": ("nyc1", "nyc3", "fra1", "tor1")}

# Slug, id, name, distribution, min disk size in GB, image size in GB, type.
IMAGES = (
    ("debian-12-x64", 152131482, "12 x64", "Debian", 10, 0.99, "base"),
    ("debian-11-x64", 131545000, "11 x64", "Debian", 10, 0.98, "base"),
    ("ubuntu-24-04-x64", 160232537, "24.04 (LTS) x64", "Ubuntu", 7, 2.34, "base"),
    ("ubuntu-22-04-x64", 129211873, "22.04 (LTS) x64", "Ubuntu", 7, 2.21, "base"),
    ("docker-20-04", 123456789, "Docker on Ubuntu 20.04", "Ubuntu", 25, 4.3, "snapshot"),
)

IMAGE_CREATED_AT = "2024-01-15T10:00:00Z"


def region_slugs() -> list[str]:
    return [slug for slug, _, _ in REGIONS]


def size_regions(slug: str) -> list[str]:
    return list(LIMITED_SIZES.get(slug, region_slugs()))


# The body builders are cached: droplet listings embed the same size, region and image objects
# thousands of times. Callers must not change the dicts they get.


@cache
def size_body(size: SizeInfo) -> dict:
    return {
        "slug": size.slug,
        "memory": size.memory,
        "vcpus": size.vcpus,
        "disk": size.disk,
        "transfer": size.transfer,
        "price_monthly": size.price_monthly,
        "price_hourly": size.price_hourly,
        "regions": size_regions(size.slug),
        "available": True,
        "description": size.description,
        "disk_info": [{"type": "local", "size": {"amount": size.disk, "unit": "gib"}}],
    }


@cache
def region_body(slug: str) -> dict:
    for region_slug, name, available in REGIONS:
        if region_slug == slug:
            sizes = [size for size in SIZES if slug in size_regions(size)] if available else []
            return {
                "name": name,
                "slug": slug,
                "features": list(REGION_FEATURES),
                "available": available,
                "sizes": sizes,
            }
    raise KeyError(slug)


@cache
def image_body(slug_or_id: str) -> dict:
    """Return the image with this slug or id; raises KeyError if there is none."""
    for slug, image_id, name, distribution, min_disk, gigabytes, kind in IMAGES:
        if slug_or_id in (slug, str(image_id)):
            return {
                "id": image_id,
                "name": name,
                "distribution": distribution,
                "slug": slug,
                "public": True,
                "regions": [slug for slug, _, available in REGIONS if available],
                "created_at": IMAGE_CREATED_AT,
                "type": kind,
                "min_disk_size": min_disk,
                "size_gigabytes": gigabytes,
                "description": f"{distribution} {name}",
                "tags": [],
                "status": "available",
                "error_message": "",
            }
    raise KeyError(slug_or_id)


def all_images() -> list[dict]:
    return [image_body(slug) for slug, *_ in IMAGES]
