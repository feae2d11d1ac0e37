"""Attribute CPU samples of a swarm manager's dockerd to categories by their stacks.

Each frame (function name) maps to at most one category by the rules in `FRAME_RULES`.
Everything up to the last `/vendor/` in a name is dropped first, so the rules match the
vendored paths of older builds (`github.com/docker/docker/vendor/github.com/coreos/etcd/raft`)
as well as Go module paths (`github.com/moby/swarmkit/v2/...`, `go.etcd.io/raft/v3...`,
`github.com/moby/moby/v2/daemon/...`).

Exclusive share: each sample goes to exactly one category, so the shares add up to 100%.
The first of these steps that finds something decides:

1. go_gc, if any frame is garbage-collector work (background mark workers, mark assists,
   sweeping, write-barrier flushes): GC CPU is GC whichever goroutine pays for it.
2. The swarm component nearest the leaf: frames are searched from the leaf to the root for
   scheduler, orchestrator, allocator, dispatcher, raft, store, gossip or agent_executor.
   The frame nearest the leaf is the most specific: a dispatcher handler reading the store
   counts as store, raft sending over gRPC counts as raft.
3. The service layer nearest the leaf: grpc, engine_api or libnetwork. These count only
   when no swarm component is in the stack, so that they measure transport and API work
   of their own.
4. allocation, if any frame is the Go allocator (mallocgc and its callers).
5. syscalls, if any frame makes a system call (package syscall, x/sys/unix, the runtime's
   futex, epoll and similar).
6. other: the Go scheduler, timers, code outside Go, and everything unmatched.

Inclusive share: a sample counts for every category found anywhere in its stack (by the
same frame rules; "other" only when nothing matched), so the shares add up to more than
100%. It answers "how much CPU ran under X", including what X called.
"""

from __future__ import annotations

import argparse
import re
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

__all__ = [
    "BREAKDOWN_COLUMNS",
    "CATEGORY_ORDER",
    "FRAME_RULES",
    "categorize",
    "classify_stack",
    "derive_swarm3k_baseline",
    "frame_category",
    "stack_categories",
    "swarm3k_baseline",
]

CATEGORY_ORDER = [
    "scheduler",
    "orchestrator",
    "allocator",
    "dispatcher",
    "raft",
    "store",
    "gossip",
    "grpc",
    "engine_api",
    "agent_executor",
    "libnetwork",
    "go_gc",
    "allocation",
    "syscalls",
    "other",
]

BREAKDOWN_COLUMNS = ["category", "exclusive", "exclusive_pct", "inclusive", "inclusive_pct"]

# Precedence steps 2 and 3 of the module docstring.
SWARM_COMPONENTS = frozenset(
    {"scheduler", "orchestrator", "allocator", "dispatcher", "raft", "store", "gossip",
     "agent_executor"}
)
SERVICE_LAYERS = frozenset({"grpc", "engine_api", "libnetwork"})

_SWARMKIT = r"github\.com/(?:docker|moby)/swarmkit(?:/v2)?/"
_ENGINE = r"github\.com/(?:docker/docker|moby/moby(?:/v2)?)/"
_LIBNETWORK = rf"(?:github\.com/docker/libnetwork|{_ENGINE}(?:daemon/)?libnetwork)"
_ETCD = r"(?:github\.com/coreos/etcd|go\.etcd\.io/etcd(?:/server/v3|/raft/v3)?)"
# A package path ends where the function name starts ("."), or a subpackage follows ("/").
_END = r"[./]"

# (category, pattern) in match order: a frame takes the category of the first pattern that
# matches the start of its normalised name. Order matters where paths nest: networkdb lives
# inside libnetwork, which lives inside the engine; raft and store live inside swarmkit's
# manager/state.
FRAME_RULES: list[tuple[str, str]] = [
    # Garbage collector: runtime names of Go 1.7 (the Swarm3k graphs) and Go 1.19.
    ("go_gc", r"runtime\.(?:gc[A-Z]\w*|gchelper|gcmarkwb_m|gcstopm|_GC)(?:\.|$)"),
    ("go_gc", r"runtime\.\(\*(?:gcWork|gcControllerState|gcCPULimiterState)\)\."),
    ("go_gc", r"runtime\.(?:bgsweep|bgscavenge|sweepone|gosweepone|deductSweepCredit)(?:\.|$)"),
    ("go_gc", r"runtime\.(?:markroot\w*|scanobject|scanblock|scanstack|scanframeworker|"
              r"greyobject|shade|scang|wbBufFlush\w*|writebarrierptr\w*|forcegchelper|GC)"
              r"(?:\.|$)"),
    ("go_gc", r"runtime\.\(\*(?:mspan|sweepLocked)\)\.sweep"),
    ("go_gc", r"runtime\.\(\*mheap\)\.reclaim"),
    ("go_gc", r"runtime\.mSpan_Sweep"),
    # Swarm components.
    ("scheduler", rf"{_SWARMKIT}manager/scheduler{_END}"),
    ("orchestrator", rf"{_SWARMKIT}manager/orchestrator{_END}"),
    ("allocator", rf"{_SWARMKIT}manager/(?:allocator|deallocator){_END}"),
    ("dispatcher", rf"{_SWARMKIT}manager/dispatcher{_END}"),
    ("raft", rf"{_SWARMKIT}manager/state/raft{_END}"),
    ("raft", r"(?:github\.com/coreos/etcd|go\.etcd\.io/etcd|go\.etcd\.io)/raft(?:/v3)?[./]"),
    ("raft", rf"{_ETCD}/(?:wal|snap|storage/wal|etcdserver/api/snap){_END}"),
    # The store: swarmkit's memdb-backed state, its watch queues (go-events) and memdb.
    ("store", rf"{_SWARMKIT}manager/state/store{_END}"),
    ("store", rf"{_SWARMKIT}manager/state/watch{_END}"),
    ("store", rf"{_SWARMKIT}manager/state\."),
    ("store", rf"{_SWARMKIT}watch{_END}"),
    ("store", r"github\.com/hashicorp/go-(?:memdb|immutable-radix)[./]"),
    ("store", r"github\.com/docker/go-events[./]"),
    ("gossip", r"github\.com/hashicorp/(?:memberlist|serf)[./]"),
    ("gossip", rf"{_LIBNETWORK}/networkdb{_END}"),
    ("agent_executor", rf"{_SWARMKIT}agent{_END}"),
    ("agent_executor", rf"{_ENGINE}daemon/cluster/executor{_END}"),
    # Service layers.
    ("grpc", r"google\.golang\.org/grpc[./]"),
    ("grpc", r"golang\.org/x/net/http2[./]"),
    ("libnetwork", rf"{_LIBNETWORK}{_END}"),
    ("engine_api", rf"{_SWARMKIT}manager/controlapi{_END}"),
    ("engine_api", rf"{_ENGINE}"),
    ("engine_api", r"github\.com/gorilla/mux[./]"),
    # Runtime leaf work.
    ("allocation", r"runtime\.(?:mallocgc\w*|largeAlloc|newobject|newarray|makeslice\w*|"
                   r"growslice\w*|makemap\w*|makechan|rawstring\w*|rawbyteslice|"
                   r"rawruneslice|persistentalloc|mProf_Malloc|profilealloc)(?:\.|$)"),
    ("allocation", r"runtime\.\(\*(?:mcache|mcentral|fixalloc)\)\."),
    ("allocation", r"runtime\.\(\*mheap\)\.alloc"),
    ("syscalls", r"syscall\.|golang\.org/x/sys/unix\.|internal/syscall/"),
    ("syscalls", r"runtime\.(?:futex|epollwait|epollctl|epollcreate\w*|usleep|osyield|"
                 r"nanosleep|madvise|mmap|munmap|read|write1?|open|closefd|"
                 r"rtsigprocmask|sigprocmask|tgkill|raise|clone|sched_getaffinity)$"),
    ("syscalls", r"runtime/internal/syscall\."),
]

_COMPILED_RULES = [(category, re.compile(pattern)) for category, pattern in FRAME_RULES]
_VENDOR_PREFIX = re.compile(r"^[^(\[]*/vendor/")

_BASELINE_RESOURCE = "swarm3k_baseline.csv"
BASELINE_PROFILES = ["001.svg", "002.svg", "003.svg"]
POOLED = "pooled"


@lru_cache(maxsize=65536)
def frame_category(function_name: str) -> str | None:
    """Return the category of one frame by `FRAME_RULES`, or None if no rule matches.

    Example:
        >>> frame_category("github.com/docker/docker/vendor/go.etcd.io/raft/v3.(*node).run")
        'raft'
    """
    name = _VENDOR_PREFIX.sub("", function_name)
    for category, pattern in _COMPILED_RULES:
        if pattern.match(name):
            return category
    return None


@lru_cache(maxsize=65536)
def classify_stack(stack: tuple[str, ...]) -> str:
    """Return the exclusive category of a root-first stack (precedence in the module doc)."""
    categories = [frame_category(name) for name in stack]
    if "go_gc" in categories:
        return "go_gc"
    for tier in (SWARM_COMPONENTS, SERVICE_LAYERS):
        for category in reversed(categories):
            if category in tier:
                return category
    for category in ("allocation", "syscalls"):
        if category in categories:
            return category
    return "other"


@lru_cache(maxsize=65536)
def stack_categories(stack: tuple[str, ...]) -> frozenset[str]:
    """Return every category present in a stack: {"other"} when no frame matches."""
    found = {frame_category(name) for name in stack} - {None}
    return frozenset(found) if found else frozenset({"other"})


def categorize(stacks: pd.DataFrame, value_column: str = "samples") -> pd.DataFrame:
    """Break samples down by category, exclusively and inclusively.

    Args:
        stacks: a DataFrame with a `stack` column (tuples of function names, root first)
            and a value column, such as `Profile.stacks`, `read_folded` or
            `read_flamegraph` output.
        value_column: the column to sum ("samples", or "cpu" for nanoseconds).

    Returns:
        One row per category of `CATEGORY_ORDER`, in that order, with columns category,
        exclusive, exclusive_pct, inclusive, inclusive_pct. Percentages are of the total
        of `value_column` (0 when the total is 0), and `df.attrs["total"]` is that total.

    Raises:
        KeyError: `stacks` lacks the `stack` column or `value_column`.
    """
    for column in ("stack", value_column):
        if column not in stacks.columns:
            raise KeyError(
                f"column {column!r} missing; the stacks have: {list(stacks.columns)}"
            )

    exclusive = dict.fromkeys(CATEGORY_ORDER, 0)
    inclusive = dict.fromkeys(CATEGORY_ORDER, 0)
    total = 0
    for stack, value in zip(stacks["stack"].tolist(), stacks[value_column].tolist(), strict=True):
        if not value:
            continue
        stack = tuple(stack)
        total += value
        exclusive[classify_stack(stack)] += value
        for category in stack_categories(stack):
            inclusive[category] += value

    table = pd.DataFrame(
        {
            "category": CATEGORY_ORDER,
            "exclusive": [exclusive[category] for category in CATEGORY_ORDER],
            "inclusive": [inclusive[category] for category in CATEGORY_ORDER],
        }
    )
    scale = 100.0 / total if total else 0.0
    table["exclusive_pct"] = table["exclusive"] * scale
    table["inclusive_pct"] = table["inclusive"] * scale
    table = table[BREAKDOWN_COLUMNS]
    table.attrs["total"] = total
    return table


def derive_swarm3k_baseline(svg_dir: str | Path) -> pd.DataFrame:
    """Categorise the Swarm3k manager flame graphs (001.svg-003.svg) in `svg_dir`.

    Returns:
        A long table with a `profile` column ("001.svg", "002.svg", "003.svg", and
        "pooled" for the three summed sample by sample) followed by `BREAKDOWN_COLUMNS`,
        with percentages rounded to 4 decimals. This is what
        analysis/data/swarm3k_baseline.csv contains.
    """
    # Imported here: flamegraph needs defusedxml, which loading the shipped CSV does not.
    from analysis.flamegraph import read_flamegraph

    svg_dir = Path(svg_dir)
    frames = []
    pooled = []
    for name in BASELINE_PROFILES:
        stacks = read_flamegraph(svg_dir / name)
        pooled.append(stacks)
        frames.append(categorize(stacks).assign(profile=name))
    frames.append(categorize(pd.concat(pooled, ignore_index=True)).assign(profile=POOLED))

    table = pd.concat(frames, ignore_index=True)[["profile", *BREAKDOWN_COLUMNS]]
    for column in ("exclusive_pct", "inclusive_pct"):
        table[column] = table[column].round(4)
    return table


def swarm3k_baseline(profile: str = POOLED) -> pd.DataFrame:
    """Load the Swarm3k manager CPU breakdown shipped with the package.

    Derived by `derive_swarm3k_baseline` from three flame graphs of a Swarm3k manager's
    dockerd (Docker 1.12.3, November 2016); analysis/data/README.md gives the source.

    Args:
        profile: "pooled" (all three graphs summed, the default) or one of
            "001.svg", "002.svg", "003.svg".

    Returns:
        A table shaped like `categorize` output (columns `BREAKDOWN_COLUMNS`, rows in
        `CATEGORY_ORDER`). `df.attrs["total"]` is its sample count.

    Raises:
        ValueError: unknown `profile`.
    """
    with resources.files("analysis").joinpath("data", _BASELINE_RESOURCE).open() as handle:
        table = pd.read_csv(handle)
    if profile not in set(table["profile"]):
        raise ValueError(
            f"baseline profile {profile!r} not found; choose one of "
            f"{sorted(set(table['profile']))}"
        )
    selected = table[table["profile"] == profile][BREAKDOWN_COLUMNS].reset_index(drop=True)
    selected.attrs["total"] = int(selected["exclusive"].sum())
    return selected


def main(argv: list[str] | None = None) -> int:
    """Regenerate the baseline CSV: `python -m analysis.categories SVG_DIR OUTPUT.csv`."""
    parser = argparse.ArgumentParser(
        description="Derive the Swarm3k CPU category baseline from its flame-graph SVGs."
    )
    parser.add_argument("svg_dir", type=Path, help="folder holding 001.svg, 002.svg, 003.svg")
    parser.add_argument("output", type=Path, help="CSV file to write")
    args = parser.parse_args(argv)

    table = derive_swarm3k_baseline(args.svg_dir)
    table.to_csv(args.output, index=False)
    pooled = table[table["profile"] == POOLED]
    print(pooled[BREAKDOWN_COLUMNS].to_string(index=False), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
