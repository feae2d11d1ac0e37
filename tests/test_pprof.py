"""Tests of analysis.pprof against `go tool pprof` (Debian's golang-go) as the oracle."""

from __future__ import annotations

import gzip
import random
import re
import shutil
import struct
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.pprof import (
    TOP_COLUMNS,
    Profile,
    ProfileError,
    folded_stacks,
    read_folded,
    read_profile,
    top_table,
)
from tests.shared_data import shared_data

SAMPLE_CPU = shared_data("pprof", "sample.cpu")
LARGE_CPU = shared_data("pprof", "large.cpu")


# --- the oracle ------------------------------------------------------------------------------


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.fail("`go` not found: install Debian's golang-go, the oracle for these tests")
    return go


def _run_pprof(*args: str) -> str:
    result = subprocess.run(
        [_go(), "tool", "pprof", "-symbolize=none", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"go tool pprof {args} failed: {result.stderr}"
    return result.stdout


def _strip_inline_label(name: str) -> str:
    return re.sub(r" \((?:partial-)?inline\)$", "", name)


def go_top(path: Path, sample_index: str) -> dict[str, tuple[int, int, float, float]]:
    """Return {function: (flat, cum, flat%, cum%)} from `go tool pprof -top`.

    `-unit=ns` for CPU time and `-unit=minimum` for counts make pprof print plain integers
    ("1280000000ns", "128") instead of scaled values such as "1.28s".
    """
    unit = "ns" if sample_index == "cpu" else "minimum"
    output = _run_pprof(
        "-top",
        "-nodecount=1000000",
        "-nodefraction=0",
        "-edgefraction=0",
        f"-sample_index={sample_index}",
        f"-unit={unit}",
        str(path),
    )
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["flat", "flat%"])

    rows: dict[str, tuple[int, int, float, float]] = {}
    for line in lines[header + 1 :]:
        flat, flat_pct, _, cum, cum_pct, name = line.split(None, 5)
        name = _strip_inline_label(name)
        assert name not in rows, f"pprof printed {name!r} twice"
        rows[name] = (
            int(flat.removesuffix("ns")),
            int(cum.removesuffix("ns")),
            float(flat_pct.rstrip("%")),
            float(cum_pct.rstrip("%")),
        )
    return rows


def go_traces(path: Path, sample_index: str) -> Counter:
    """Return a Counter of (root-first stack, value) from `go tool pprof -traces`."""
    unit = "ns" if sample_index == "cpu" else "minimum"
    output = _run_pprof("-traces", f"-sample_index={sample_index}", f"-unit={unit}", str(path))
    traces: Counter = Counter()
    for block in output.split("-----------+" + "-" * 55)[1:]:
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        value_text, leaf = lines[0].split(None, 1)
        frames = [_strip_inline_label(leaf.strip())]
        frames += [_strip_inline_label(line.strip()) for line in lines[1:]]
        traces[(tuple(reversed(frames)), int(value_text.removesuffix("ns")))] += 1
    return traces


def our_top(profile: Profile, sample_index: str) -> dict[str, tuple[int, int]]:
    table = top_table(profile, sample_index)
    return {row.function: (row.flat, row.cum) for row in table.itertuples()}


@pytest.fixture(scope="module")
def sample_profile() -> Profile:
    return read_profile(SAMPLE_CPU)


@pytest.fixture(scope="module")
def large_profile() -> Profile:
    return read_profile(LARGE_CPU)


# --- a profile.proto encoder for hand-made profiles ---------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_packed(number: int, values: list[int]) -> bytes:
    return _field_bytes(number, b"".join(_varint(value) for value in values))


class ProfileBuilder:
    """Encode hand-made profile.proto messages, one field at a time."""

    def __init__(self, sample_types=(("samples", "count"), ("cpu", "nanoseconds"))):
        self.strings = [""]
        self.sample_types = [(self.string(t), self.string(u)) for t, u in sample_types]
        self.functions: dict[str, int] = {}
        self.mappings: list[bytes] = []
        self.locations: list[bytes] = []
        self.samples: list[bytes] = []
        self.extra = b""

    def string(self, text: str) -> int:
        if text not in self.strings:
            self.strings.append(text)
        return self.strings.index(text)

    def function(self, name: str) -> int:
        if name not in self.functions:
            self.functions[name] = len(self.functions) + 1
        return self.functions[name]

    def mapping(self, filename: str) -> int:
        mapping_id = len(self.mappings) + 1
        self.mappings.append(
            _field_int(1, mapping_id)
            + _field_int(2, 0x400000)
            + _field_int(3, 0x800000)
            + _field_int(5, self.string(filename))
            + _field_int(7, 1)
        )
        return mapping_id

    def location(self, *names: str, mapping_id: int = 0, address: int = 0) -> int:
        """Add a location whose lines call `names`, innermost (inlined) first."""
        location_id = len(self.locations) + 1
        message = _field_int(1, location_id)
        if mapping_id:
            message += _field_int(2, mapping_id) + _field_int(3, address)
        for name in names:
            message += _field_bytes(4, _field_int(1, self.function(name)) + _field_int(2, 10))
        self.locations.append(message)
        return location_id

    def sample(self, location_ids: list[int], values: list[int], packed: bool = True) -> None:
        if packed:
            message = _field_packed(1, location_ids)
        else:
            message = b"".join(_field_int(1, location_id) for location_id in location_ids)
        message += _field_packed(2, values)
        self.samples.append(message)

    def encode(self) -> bytes:
        out = b"".join(
            _field_bytes(1, _field_int(1, t) + _field_int(2, u)) for t, u in self.sample_types
        )
        out += b"".join(_field_bytes(2, sample) for sample in self.samples)
        out += b"".join(_field_bytes(3, mapping) for mapping in self.mappings)
        out += b"".join(_field_bytes(4, location) for location in self.locations)
        for name, function_id in self.functions.items():
            out += _field_bytes(5, _field_int(1, function_id) + _field_int(2, self.string(name)))
        out += self.extra
        out += b"".join(_field_bytes(6, text.encode()) for text in self.strings)
        out += _field_int(9, 1_700_000_000_000_000_000) + _field_int(10, 2_000_000_000)
        out += _field_bytes(11, _field_int(1, self.string("cpu")) + _field_int(2, self.string(
            "nanoseconds")))
        out += _field_int(12, 10_000_000)
        return out

    def set_drop_frames(self, drop: str, keep: str = "") -> None:
        # The string indices must exist before encode() writes the string table.
        self.extra = _field_int(7, self.string(drop))
        if keep:
            self.extra += _field_int(8, self.string(keep))


def tricky_profile() -> ProfileBuilder:
    """Inlined frames, recursion, unpacked ids, an unsymbolised frame, a zero sample."""
    builder = ProfileBuilder()
    binary = builder.mapping("/usr/bin/dockerd")
    leaf = builder.location("main.c")
    inlined = builder.location("main.inl", "main.b")
    middle = builder.location("main.a")
    root = builder.location("main.main")
    recursive = builder.location("main.rec")
    anonymous = builder.location(mapping_id=binary, address=0x401234)
    builder.sample([leaf, inlined, middle, root], [3, 30_000_000])
    builder.sample([inlined, middle, root], [1, 10_000_000], packed=False)
    builder.sample([recursive, recursive, recursive, middle, root], [2, 20_000_000])
    builder.sample([anonymous, root], [1, 10_000_000])
    builder.sample([middle, root], [0, 0])
    builder.sample([inlined, middle, root], [5, 50_000_000])
    return builder


# --- agreement with go tool pprof ----------------------------------------------------------


@pytest.mark.parametrize("sample_index", ["samples", "cpu"])
def test_top_sample_cpu_matches_go(sample_profile, sample_index):
    expected = go_top(SAMPLE_CPU, sample_index)
    ours = our_top(sample_profile, sample_index)
    assert ours == {name: (flat, cum) for name, (flat, cum, _, _) in expected.items()}


def test_top_percentages_match_go(sample_profile):
    expected = go_top(SAMPLE_CPU, "cpu")
    table = top_table(sample_profile, "cpu").set_index("function")
    for name, (_, _, flat_pct, cum_pct) in expected.items():
        assert table.loc[name, "flat_pct"] == pytest.approx(flat_pct, abs=0.006), name
        assert table.loc[name, "cum_pct"] == pytest.approx(cum_pct, abs=0.006), name


@pytest.mark.parametrize("sample_index", ["samples", "cpu"])
def test_top_large_cpu_matches_go(large_profile, sample_index):
    expected = go_top(LARGE_CPU, sample_index)
    ours = our_top(large_profile, sample_index)
    assert len(ours) == len(expected) == 23038
    mismatched = {
        name: (expected.get(name, (None, None))[:2], ours.get(name))
        for name in set(expected) | set(ours)
        if expected.get(name, (None, None))[:2] != ours.get(name)
    }
    examples = list(mismatched.items())[:5]
    assert not mismatched, f"{len(mismatched)} functions differ, e.g. {examples}"


def test_top_default_is_go_default(large_profile):
    table = top_table(large_profile)
    assert table.attrs["unit"] == "nanoseconds"
    assert table.attrs["total"] == 240_290_000_000
    assert list(table.columns) == TOP_COLUMNS
    assert table.iloc[0]["function"] == "time.Now"


def test_top_ordered_like_go(sample_profile):
    expected = list(go_top(SAMPLE_CPU, "samples"))
    assert top_table(sample_profile, "samples")["function"].tolist() == expected


@pytest.mark.parametrize("path", [SAMPLE_CPU, LARGE_CPU], ids=["sample.cpu", "large.cpu"])
def test_stacks_match_go_traces(path, sample_profile, large_profile):
    profile = sample_profile if path == SAMPLE_CPU else large_profile
    expected = go_traces(path, "samples")
    ours = Counter(
        (stack, value)
        for stack, value in zip(profile.stacks["stack"], profile.stacks["samples"], strict=True)
        if value
    )
    assert ours == expected


def test_metadata_matches_go_raw(sample_profile):
    raw = _run_pprof("-raw", str(SAMPLE_CPU))
    time_text = re.search(r"^Time: (\S+ \S+)", raw, re.MULTILINE).group(1)
    seconds, _, fraction = time_text.partition(".")
    start = datetime.strptime(seconds, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    expected_nanos = int(start.timestamp()) * 10**9 + int(fraction.ljust(9, "0"))

    assert sample_profile.time_nanos == expected_nanos
    assert sample_profile.duration_nanos / 1e9 == pytest.approx(2.00, abs=0.005)
    assert sample_profile.period == int(re.search(r"^Period: (\d+)", raw, re.MULTILINE).group(1))
    assert sample_profile.period_type == ("cpu", "nanoseconds")
    assert sample_profile.sample_types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert len(sample_profile.stacks) == 76


@pytest.mark.parametrize("sample_index", ["samples", "cpu"])
def test_tricky_profile_matches_go(tmp_path, sample_index):
    path = tmp_path / "tricky.pb.gz"
    path.write_bytes(gzip.compress(tricky_profile().encode()))
    profile = read_profile(path)
    assert our_top(profile, sample_index) == {
        name: (flat, cum) for name, (flat, cum, _, _) in go_top(path, sample_index).items()
    }


def test_tricky_profile_stacks():
    profile = read_profile(tricky_profile().encode())
    stacks = profile.stacks["stack"].tolist()
    assert stacks[0] == ("main.main", "main.a", "main.b", "main.inl", "main.c")
    assert stacks[1] == ("main.main", "main.a", "main.b", "main.inl")
    assert stacks[2] == ("main.main", "main.a", "main.rec", "main.rec", "main.rec")
    assert stacks[3] == ("main.main", "[dockerd]")
    cum = top_table(profile, "samples").set_index("function")["cum"]
    # Recursion: main.rec counts once per sample, not three times.
    assert cum["main.rec"] == 2


@pytest.mark.parametrize(
    ("drop", "keep"), [("main.b", ""), ("main.inl", ""), ("main\\..*", "main.a|main.main")]
)
def test_drop_frames_match_go(tmp_path, drop, keep):
    builder = tricky_profile()
    builder.set_drop_frames(drop, keep)
    path = tmp_path / "dropped.pb"
    path.write_bytes(builder.encode())
    profile = read_profile(path)
    assert profile.drop_frames == drop
    assert our_top(profile, "samples") == {
        name: (flat, cum) for name, (flat, cum, _, _) in go_top(path, "samples").items()
    }


# --- folded stacks -------------------------------------------------------------------------


def test_folded_round_trip(sample_profile):
    text = folded_stacks(sample_profile, "samples")
    assert text.splitlines()[0] == "runtime.main;main.main;main.busyLoop 15"
    folded = read_folded(text)
    expected = sample_profile.stacks.groupby("stack")["samples"].sum()
    assert folded.set_index("stack")["samples"].sort_index().equals(
        expected[expected > 0].sort_index()
    )


def test_folded_sums_to_total(large_profile):
    folded = read_folded(folded_stacks(large_profile))
    assert folded["samples"].sum() == large_profile.stacks["cpu"].sum()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a;b;c\n", "no value"),
        ("a;b 1.5\n", "not an integer"),
        ("a;;b 3\n", "empty frame"),
    ],
)
def test_read_folded_rejects_bad_lines(text, message):
    with pytest.raises(ProfileError, match=message):
        read_folded(text)


def test_read_folded_keeps_spaces_in_names():
    folded = read_folded("main;func literal (closure) 4\n\n")
    assert folded["stack"].tolist() == [("main", "func literal (closure)")]
    assert folded["samples"].tolist() == [4]


# --- empty and bad input -------------------------------------------------------------------


def test_empty_profile_gives_empty_result():
    profile = read_profile(ProfileBuilder().encode())
    assert profile.stacks.empty
    assert list(profile.stacks.columns) == ["stack", "samples", "cpu"]
    table = top_table(profile)
    assert table.empty
    assert list(table.columns) == TOP_COLUMNS
    assert folded_stacks(profile) == ""


def test_empty_profile_gzipped_gives_empty_result():
    profile = read_profile(gzip.compress(ProfileBuilder().encode()))
    assert profile.stacks.empty


def _legacy_cpu_profile() -> bytes:
    # Go's legacy CPU profile: header words 0, 3, 0, period (us), 0; records of
    # (count, depth, pcs...); trailer 0, 1, 0.
    words = [0, 3, 0, 10_000, 0, 1, 2, 0x401000, 0x402000, 0, 1, 0]
    return struct.pack(f"<{len(words)}Q", *words)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is a text file\nnot a profile\n", "text"),
        (b"heap profile: 1: 2 [3: 4] @ heap/1048576\n", "legacy"),
        (b"--- contention:\ncycles/second=2000000000\n", "legacy"),
        (_legacy_cpu_profile(), "legacy binary CPU profile"),
        (gzip.compress(_legacy_cpu_profile()), "legacy binary CPU profile"),
        (gzip.compress(b"\x00" * 64), "not a"),
        (b"\x1f\x8b\x08\x00garbage after the gzip magic", "gzip"),
    ],
    ids=["empty", "text", "legacy-heap", "legacy-contention", "legacy-cpu", "legacy-cpu-gz",
         "zeros-gz", "bad-gzip"],
)
def test_bad_input_raises_profile_error(data, message):
    with pytest.raises(ProfileError, match=message):
        read_profile(data)


def test_truncated_gzip_raises_profile_error():
    data = LARGE_CPU.read_bytes()
    with pytest.raises(ProfileError, match="gzip"):
        read_profile(data[: len(data) // 2])


def test_truncated_protobuf_raises_profile_error():
    raw = gzip.decompress(SAMPLE_CPU.read_bytes())
    for cut in (1, 2, 5, len(raw) // 3, len(raw) // 2, len(raw) - 700):
        with pytest.raises(ProfileError):
            read_profile(raw[:cut])


def test_every_prefix_raises_profile_error():
    # sample.cpu ends with its string table and uses every string in it, so no proper
    # prefix is a complete profile: each must be rejected, and by ProfileError only.
    raw = gzip.decompress(SAMPLE_CPU.read_bytes())
    accepted = []
    for cut in range(len(raw)):
        try:
            read_profile(raw[:cut])
        except ProfileError:
            continue
        accepted.append(cut)
    assert accepted == []


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_raise_profile_error(seed):
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(1, 4096))
    with pytest.raises(ProfileError):
        read_profile(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_other_errors(data):
    try:
        profile = read_profile(data)
    except ProfileError:
        return
    assert isinstance(profile.stacks, pd.DataFrame)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=3000), st.integers(min_value=0, max_value=255))
def test_corrupted_byte_never_raises_other_errors(position, value):
    raw = bytearray(gzip.decompress(SAMPLE_CPU.read_bytes()))
    raw[position % len(raw)] = value
    try:
        read_profile(bytes(raw))
    except ProfileError:
        pass


def test_corrupt_references_raise_profile_error():
    builder = ProfileBuilder()
    root = builder.location("main.main")
    builder.sample([root, 99], [1, 10])
    with pytest.raises(ProfileError, match="missing location 99"):
        read_profile(builder.encode())

    builder = ProfileBuilder()
    builder.sample([], [1])
    with pytest.raises(ProfileError, match="1 values"):
        read_profile(builder.encode())


def test_negative_and_oversized_values():
    """int64 values are two's complement; bits past 64 in a 10-byte varint are dropped."""
    builder = ProfileBuilder()
    root = builder.location("main.main")
    builder.sample([root], [1, -5])
    oversized = b"\xff" * 9 + b"\x7f"  # 70 one-bits: -1 once cut to 64 bits
    builder.samples.append(
        _field_packed(1, [root]) + _varint(2 << 3) + b"\x02" + _varint(2 << 3) + oversized
    )
    profile = read_profile(builder.encode())
    assert profile.stacks["cpu"].tolist() == [-5, -1]
    assert profile.stacks["samples"].tolist() == [1, 2]


def test_unknown_sample_type_raises_profile_error(sample_profile):
    with pytest.raises(ProfileError, match="not found; the profile has: samples, cpu"):
        top_table(sample_profile, "alloc_space")
    with pytest.raises(ProfileError, match="outside"):
        top_table(sample_profile, 5)


def test_read_profile_accepts_paths_and_str(sample_profile):
    from_str = read_profile(str(SAMPLE_CPU))
    assert from_str.stacks["stack"].tolist() == sample_profile.stacks["stack"].tolist()
    with pytest.raises(FileNotFoundError):
        read_profile(SAMPLE_CPU.with_name("missing.cpu"))
