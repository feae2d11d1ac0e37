"""Read flame-graph SVGs (Brendan Gregg's FlameGraph and inferno) back into stacks.

A flame graph draws each frame as a `<g>` holding a `<title>` "function (N samples, P%)" and
a `<rect>`. The SVG does not store the call tree, so it is rebuilt from geometry: frames one
row apart are caller and callee when the caller's x-range contains the callee's. Each row is
one stack level; the root row is the one holding the widest frame ("all" in flamegraph.pl
output), at the bottom of a flame graph or the top of an icicle graph.

Positions are converted from pixels to sample offsets with the root's scale (root width /
root samples). flamegraph.pl prints rect x with one decimal but the label's x (rect x + 3)
with two, so the label gives the finer position when it is there. inferno writes exact
sample offsets in `fg:x`/`fg:w`, which are used when present.

Limits: flamegraph.pl leaves out frames narrower than `--minwidth` (0.1 px by default).
Their samples then count as their caller's own samples. Differential flame graphs (titles
with a delta) are not supported.
"""

from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeElementTree
import numpy as np
import pandas as pd
from defusedxml import DefusedXmlException

from analysis.pprof import ProfileError

__all__ = ["read_flamegraph"]

_SVG_NAMESPACE = "{http://www.w3.org/2000/svg}"
_INFERNO_NAMESPACE = "{http://github.com/jonhoo/inferno}"

# "name (1,234 samples, 5.67%)"; the count word is "samples" unless --countname changed it.
_TITLE = re.compile(r"^(?P<name>.*) \((?P<count>[\d,]+) (?P<unit>[^,()]+), (?P<pct>[\d.]+)%\)$")

# flamegraph.pl places a frame's label 3 px right of its rect.
_LABEL_OFFSET_PX = 3.0

# The name flamegraph.pl gives the synthetic root frame.
_ROOT_NAME = "all"


@dataclass
class _Frame:
    name: str
    samples: int
    x: float
    width: float
    y: float
    # Exact sample offset and width from inferno's fg:x/fg:w, when given.
    exact_offset: int | None = None
    offset: float = 0.0
    level: int = 0
    parent: _Frame | None = None
    child_samples: int = 0
    children: list[_Frame] = field(default_factory=list)


def read_flamegraph(source: bytes | str | os.PathLike) -> pd.DataFrame:
    """Rebuild the stacks and self-sample counts drawn in a flame-graph SVG.

    Args:
        source: the SVG's bytes, or the path of the file.

    Returns:
        A DataFrame with one row per drawn stack that has self samples: column `stack`
        (tuple of function names, root first, without flamegraph.pl's "all" frame) and
        column `samples` (int64, the samples whose leaf is that stack's last frame).
        Samples of the "all" frame not drawn in any callee get the empty stack `()`,
        so that `samples` always adds up to the root's count.
        `df.attrs["total"]` is the root's sample count and `df.attrs["unit"]` the
        count word of the titles ("samples").

    Raises:
        ProfileError: the SVG cannot be parsed, contains no frames, or a frame has no
            caller on the row below it.
    """
    if isinstance(source, str | os.PathLike):
        data = Path(source).read_bytes()
    else:
        data = bytes(source)

    frames, unit = _read_frames(data)
    roots = _assign_levels(frames)
    _link_parents(frames, roots)
    return _stacks_frame(frames, roots, unit)


def _read_frames(data: bytes) -> tuple[list[_Frame], str]:
    try:
        root = SafeElementTree.fromstring(data)
    except (ParseError, DefusedXmlException) as exc:
        raise ProfileError(f"flame graph is not valid or safe XML: {exc}") from exc

    frames: list[_Frame] = []
    units: set[str] = set()
    for group in root.iter(f"{_SVG_NAMESPACE}g"):
        title = group.find(f"{_SVG_NAMESPACE}title")
        rect = group.find(f"{_SVG_NAMESPACE}rect")
        if title is None or rect is None or title.text is None:
            continue
        match = _TITLE.match(title.text.strip())
        if match is None:
            raise ProfileError(
                f"flame graph frame title {title.text!r} is not 'name (N samples, P%)'"
            )
        units.add(match["unit"])

        try:
            frame = _Frame(
                name=match["name"],
                samples=int(match["count"].replace(",", "")),
                x=_pixels(rect.get("x")),
                width=_pixels(rect.get("width")),
                y=_pixels(rect.get("y")),
            )
        except (TypeError, ValueError) as exc:
            raise ProfileError(
                f"flame graph frame {match['name']!r} has an invalid rect: {exc}"
            ) from None

        exact_x = rect.get(f"{_INFERNO_NAMESPACE}x")
        if exact_x is not None:
            frame.exact_offset = int(exact_x)
        else:
            label = group.find(f"{_SVG_NAMESPACE}text")
            label_x = label.get("x") if label is not None else None
            if label_x:
                finer_x = float(label_x) - _LABEL_OFFSET_PX
                # Use the label only where it agrees with the rect's rounded x.
                if abs(finer_x - frame.x) <= 0.051:
                    frame.x = finer_x
        frames.append(frame)

    if not frames:
        raise ProfileError("flame graph contains no frames (<g> with <title> and <rect>)")
    if len(units) > 1:
        raise ProfileError(f"flame graph mixes count units: {sorted(units)}")
    return frames, units.pop()


def _pixels(value: str | None) -> float:
    if value is None:
        raise ValueError("attribute missing")
    # inferno writes x and width as percentages; those keep their scale, which
    # only has to be consistent between frames.
    return float(value.removesuffix("%"))


def _assign_levels(frames: list[_Frame]) -> list[_Frame]:
    """Set each frame's stack level and sample offset; return the root frames."""
    widest = max(frames, key=lambda frame: frame.width)
    root_y = widest.y
    row_ys = sorted({frame.y for frame in frames})
    steps = [b - a for a, b in zip(row_ys, row_ys[1:], strict=False) if b - a > 1e-6]
    row_step = min(steps) if steps else 1.0

    roots = [frame for frame in frames if abs(frame.y - root_y) < row_step / 2]
    root_samples = sum(frame.samples for frame in roots)
    if root_samples <= 0:
        raise ProfileError("flame graph root frames hold no samples")
    root_width = sum(frame.width for frame in roots)
    pixels_per_sample = root_width / root_samples
    left = min(frame.x for frame in roots)

    # Rows extend away from the root row: upwards in a flame graph, downwards in an icicle.
    direction = -1.0 if any(frame.y < root_y for frame in frames) else 1.0
    for frame in frames:
        distance = (frame.y - root_y) * direction
        level = round(distance / row_step)
        if level < 0 or abs(distance - level * row_step) > row_step / 4:
            raise ProfileError(
                f"flame graph frame {frame.name!r} at y={frame.y} is not on a row "
                f"of the graph (rows are {row_step} apart from y={root_y})"
            )
        frame.level = level
        if frame.exact_offset is not None:
            frame.offset = float(frame.exact_offset)
        else:
            frame.offset = (frame.x - left) / pixels_per_sample
    return roots


def _link_parents(frames: list[_Frame], roots: list[_Frame]) -> None:
    """Give every frame above the root row the caller whose range contains its middle."""
    rows: dict[int, list[_Frame]] = {}
    for frame in frames:
        rows.setdefault(frame.level, []).append(frame)
    for row in rows.values():
        row.sort(key=lambda frame: frame.offset)

    total = sum(frame.samples for frame in roots)
    # Positions carry the pixel rounding; a child may poke out of its caller by that much.
    tolerance = 0.5 if any(f.exact_offset is None for f in frames) else 1e-9
    for level in sorted(rows):
        if level == 0:
            continue
        callers = rows.get(level - 1)
        if not callers:
            raise ProfileError(f"flame graph has frames at level {level} but none below it")
        starts = [caller.offset for caller in callers]

        for frame in rows[level]:
            middle = frame.offset + frame.samples / 2
            index = bisect.bisect_right(starts, middle) - 1
            caller = callers[index] if index >= 0 else None
            if (
                caller is None
                or frame.offset < caller.offset - tolerance
                or frame.offset + frame.samples > caller.offset + caller.samples + tolerance
            ):
                raise ProfileError(
                    f"flame graph frame {frame.name!r} ({frame.samples} of {total} samples "
                    f"at offset {frame.offset:.2f}) has no caller on the row below it"
                )
            frame.parent = caller
            caller.children.append(frame)
            caller.child_samples += frame.samples

    for frame in frames:
        if frame.child_samples > frame.samples:
            raise ProfileError(
                f"flame graph frame {frame.name!r} has {frame.samples} samples but its "
                f"callees add up to {frame.child_samples}: the geometry is ambiguous"
            )


def _stacks_frame(frames: list[_Frame], roots: list[_Frame], unit: str) -> pd.DataFrame:
    # flamegraph.pl's single "all" root is not a function: leave it out of the stacks.
    synthetic_root = roots[0] if len(roots) == 1 and roots[0].name == _ROOT_NAME else None

    stacks: list[tuple[str, ...]] = []
    counts: list[int] = []
    for frame in frames:
        own = frame.samples - frame.child_samples
        if own <= 0:
            continue
        names: list[str] = []
        node: _Frame | None = frame
        while node is not None and node is not synthetic_root:
            names.append(node.name)
            node = node.parent
        stacks.append(tuple(reversed(names)))
        counts.append(own)

    stack_array = np.empty(len(stacks), dtype=object)
    for index, stack in enumerate(stacks):
        stack_array[index] = stack
    table = pd.DataFrame({"stack": stack_array, "samples": np.array(counts, dtype=np.int64)})
    table.attrs.update(total=sum(root.samples for root in roots), unit=unit)
    return table
