"""Update one ``## `` section of docs/benchmarks.md, leaving the other sections as they are."""

from __future__ import annotations

from pathlib import Path


def update_section(path: Path, title: str, body: str) -> None:
    """Replace the section headed ``## {title}`` (or append it) with ``body``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = f"## {title}"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    section = [heading, "", *body.splitlines(), ""]
    if start is None:
        lines = [*lines, "", *section]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = [*lines[:start], *section, *lines[end:]]
    path.write_text("\n".join(lines).rstrip() + "\n")
