"""Locate the reference data kept beside the repository, in ../shared/data."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Return the path of a reference file under ../shared/data.

    Raises:
        FileNotFoundError: the file is missing, with the folder that was searched.
    """
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"reference data {'/'.join(parts)} not found under {SHARED_DATA}; "
            "the shared data folder must sit beside the repository"
        )
    return path
