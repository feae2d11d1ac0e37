"""Decode Go pprof profiles and summarise them the way `go tool pprof -top` does.

A pprof profile is a protobuf message (`profile.proto` in github.com/google/pprof), usually
gzip-compressed. No PyPI package parses it, so this module carries a small protobuf reader of
its own: it reads varint and length-delimited fields, packed or not, and skips the rest.

Stacks are tuples of function names, **root first** (outermost caller first, the sampled
function last), the same order as folded stacks and flame graphs. Inlined calls are expanded
into one entry per function, as `go tool pprof` does at its default `functions` granularity.

Example:
    profile = read_profile("cpu.pb.gz")
    top_table(profile).head()                 # flat/cum per function, in nanoseconds
    print(folded_stacks(profile, "samples"))  # "root;...;leaf COUNT" lines
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "TOP_COLUMNS",
    "Profile",
    "ProfileError",
    "folded_stacks",
    "read_folded",
    "read_profile",
    "top_table",
]

TOP_COLUMNS = ["function", "flat", "flat_pct", "cum", "cum_pct"]

_GZIP_MAGIC = b"\x1f\x8b"

# Protobuf wire types.
_VARINT = 0
_FIXED64 = 1
_LENGTH_DELIMITED = 2
_FIXED32 = 5

_INT64_SIGN = 1 << 63
_UINT64_RANGE = 1 << 64
_UINT64_MASK = _UINT64_RANGE - 1

# Text headers of the legacy (pre-protobuf) Go and gperftools profile formats.
_LEGACY_TEXT_PREFIXES = (
    b"heap profile:",
    b"heap_v2/",
    b"--- heapz",
    b"--- contention",
    b"--- mutex",
    b"--- symbol",
    b"goroutine profile:",
    b"threadcreate profile:",
    b"%%% ",
)

# Function-name parts that pprof's frame pruning keeps although they contain "(".
_RESERVED_NAME_PARTS = ("(anonymous namespace)", "operator()")


class ProfileError(ValueError):
    """Input that cannot be decoded: a bad pprof profile, folded-stack text or flame graph."""


@dataclass
class Profile:
    """A decoded pprof profile.

    Attributes:
        sample_types: (type, unit) per value column, e.g. [("samples", "count"),
            ("cpu", "nanoseconds")] for a Go CPU profile.
        period: sampling period, in `period_type` units (10,000,000 ns for 100 Hz).
        period_type: (type, unit) of the period, ("", "") when the profile has none.
        duration_nanos: wall time the profile covers.
        time_nanos: Unix time of the capture, in nanoseconds.
        stacks: one row per sample: column `stack` (tuple of function names, root first)
            and one integer column per sample type, named by the type (see `value_columns`).
        default_sample_type: the type the profile names as its default, "" if none.
        drop_frames, keep_frames: the profile's frame-pruning regular expressions, already
            applied to `stacks`.
        comments: free-form annotations stored in the profile.
    """

    sample_types: list[tuple[str, str]]
    period: int
    period_type: tuple[str, str]
    duration_nanos: int
    time_nanos: int
    stacks: pd.DataFrame
    default_sample_type: str = ""
    drop_frames: str = ""
    keep_frames: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def value_columns(self) -> list[str]:
        """Names of the value columns of `stacks`, in sample-type order."""
        return [column for column in self.stacks.columns if column != "stack"]

    def value_column(self, sample_type: str | int | None = None) -> str:
        """Resolve a sample type to its column in `stacks`.

        Args:
            sample_type: a type name ("cpu", "samples", "inuse_space"...), an index into
                `sample_types`, or None for the default: `default_sample_type` if set,
                else the last type, as `go tool pprof` chooses.

        Raises:
            ProfileError: the profile has no such sample type.
        """
        columns = self.value_columns
        if not columns:
            raise ProfileError("profile has no sample types")

        if sample_type is None:
            names = [name for name, _ in self.sample_types]
            if self.default_sample_type in names:
                return columns[names.index(self.default_sample_type)]
            return columns[-1]

        if isinstance(sample_type, int):
            if not 0 <= sample_type < len(columns):
                raise ProfileError(
                    f"sample type index {sample_type} is outside 0..{len(columns) - 1}"
                )
            return columns[sample_type]

        for column, (name, _) in zip(columns, self.sample_types, strict=True):
            if sample_type in (name, column):
                return column
        known = ", ".join(name for name, _ in self.sample_types)
        raise ProfileError(f"sample type {sample_type!r} not found; the profile has: {known}")

    def unit(self, sample_type: str | int | None = None) -> str:
        """Return the unit of a sample type ("nanoseconds", "count", "bytes"...)."""
        column = self.value_column(sample_type)
        return self.sample_types[self.value_columns.index(column)][1]


def read_profile(source: bytes | bytearray | memoryview | str | os.PathLike) -> Profile:
    """Decode a pprof profile, gzip-compressed or plain protobuf.

    Args:
        source: the profile's bytes, or the path of a file holding them.

    Returns:
        The decoded profile. A valid profile without samples gives a `Profile` whose
        `stacks` has no rows.

    Raises:
        ProfileError: the data is truncated, corrupt, not a profile, or a legacy
            (pre-protobuf) text or binary profile.
        OSError: the file cannot be read.
    """
    if isinstance(source, str | os.PathLike):
        data = Path(source).read_bytes()
    else:
        data = bytes(source)

    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise ProfileError(f"gzip data is truncated or corrupt: {exc}") from exc

    _reject_non_protobuf(data)
    try:
        return _decode_profile(data)
    except IndexError as exc:
        raise ProfileError("profile is truncated: a protobuf field runs past the end") from exc
    except (UnicodeDecodeError, re.error) as exc:
        raise ProfileError(f"profile is corrupt: {exc}") from exc


def top_table(profile: Profile, sample_type: str | int | None = None) -> pd.DataFrame:
    """Compute flat and cumulative values per function, as `go tool pprof -top` does.

    Flat is the value of the samples whose leaf (innermost, after inline expansion) is the
    function. Cum is the value of the samples whose stack contains the function, counted
    once per sample however often the function appears in it. Percentages are of the
    total of absolute sample values. Samples whose value is zero are skipped.

    Args:
        profile: a decoded profile.
        sample_type: which value to sum (see `Profile.value_column`); the default matches
            `go tool pprof`.

    Returns:
        A DataFrame with columns function, flat, flat_pct, cum, cum_pct, ordered by flat
        (descending), function name, then cum. Values are in the sample type's unit,
        given in `df.attrs["unit"]`; `df.attrs["total"]` is the total.
    """
    if not profile.value_columns:
        return _empty_top_table(unit="", total=0)

    column = profile.value_column(sample_type)
    unit = profile.unit(column)
    values = profile.stacks[column].tolist()
    total = sum(abs(value) for value in values)

    # Group stacks by sample value: within a group, counting is done by Counter in C.
    # CPU profiles have few distinct values (multiples of the sampling period).
    stacks_by_value: defaultdict[int, list[tuple[str, ...]]] = defaultdict(list)
    for stack, value in zip(profile.stacks["stack"].tolist(), values, strict=True):
        if value and stack:
            stacks_by_value[value].append(stack)
    if not stacks_by_value:
        return _empty_top_table(unit=unit, total=total)

    flat: defaultdict[str, int] = defaultdict(int)
    cum: defaultdict[str, int] = defaultdict(int)
    for value, stacks in stacks_by_value.items():
        for name, count in Counter(stack[-1] for stack in stacks).items():
            flat[name] += count * value
        # set(): a function counts once per sample, however often it recurs in the stack.
        for name, count in Counter(chain.from_iterable(map(set, stacks))).items():
            cum[name] += count * value

    functions = [name for name in cum if cum[name] or flat[name]]
    functions.sort(key=lambda name: (-abs(flat[name]), name, -abs(cum[name])))
    table = pd.DataFrame(
        {
            "function": functions,
            "flat": np.array([flat[name] for name in functions], dtype=np.int64),
            "cum": np.array([cum[name] for name in functions], dtype=np.int64),
        }
    )
    scale = 100.0 / total if total else 0.0
    table["flat_pct"] = table["flat"] * scale
    table["cum_pct"] = table["cum"] * scale
    table = table[TOP_COLUMNS]
    table.attrs.update(unit=unit, total=total)
    return table


def folded_stacks(profile: Profile, sample_type: str | int | None = None) -> str:
    """Render the profile as folded stacks, one "root;...;leaf VALUE" line per stack.

    Identical stacks are merged, zero values and empty stacks left out, lines sorted by
    stack (the order FlameGraph's stackcollapse tools produce).

    Args:
        profile: a decoded profile.
        sample_type: which value to write (see `Profile.value_column`); pass "samples"
            for sample counts of a Go CPU profile.

    Returns:
        The folded text, newline-terminated, or "" when nothing was sampled.
    """
    if not profile.value_columns or profile.stacks.empty:
        return ""
    column = profile.value_column(sample_type)

    value_by_stack: dict[tuple[str, ...], int] = {}
    for stack, value in zip(
        profile.stacks["stack"].tolist(), profile.stacks[column].tolist(), strict=True
    ):
        if value and stack:
            value_by_stack[stack] = value_by_stack.get(stack, 0) + value

    lines = [f"{';'.join(stack)} {value}" for stack, value in value_by_stack.items()]
    lines.sort()
    return "\n".join(lines) + "\n" if lines else ""


def read_folded(text: str) -> pd.DataFrame:
    """Parse folded stacks ("root;...;leaf VALUE" per line) into a stacks DataFrame.

    Blank lines are skipped. The value is the text after the last space, so frame names may
    contain spaces but not ";".

    Returns:
        A DataFrame with columns stack (tuple of names, root first) and samples (int64).

    Raises:
        ProfileError: a line has no value, a non-integer value or an empty frame.
    """
    stacks: list[tuple[str, ...]] = []
    counts: list[int] = []
    for line_number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue

        frames, _, count_text = line.rpartition(" ")
        if not frames:
            raise ProfileError(f"folded line {line_number}: no value after the stack: {line!r}")
        try:
            count = int(count_text)
        except ValueError:
            raise ProfileError(
                f"folded line {line_number}: value {count_text!r} is not an integer"
            ) from None

        stack = tuple(frames.split(";"))
        if "" in stack:
            raise ProfileError(f"folded line {line_number}: empty frame name in {frames!r}")
        stacks.append(stack)
        counts.append(count)

    return pd.DataFrame(
        {"stack": _object_array(stacks), "samples": np.array(counts, dtype=np.int64)}
    )


def _empty_top_table(unit: str, total: int) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "function": pd.Series([], dtype=object),
            "flat": pd.Series([], dtype=np.int64),
            "flat_pct": pd.Series([], dtype=float),
            "cum": pd.Series([], dtype=np.int64),
            "cum_pct": pd.Series([], dtype=float),
        }
    )
    table.attrs.update(unit=unit, total=total)
    return table


def _object_array(items: list) -> np.ndarray:
    # np.array(list_of_tuples) would build a 2-D array from equal-length tuples.
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


# --- input checks -----------------------------------------------------------------------


def _reject_non_protobuf(data: bytes) -> None:
    """Raise ProfileError for input that cannot be a protobuf profile, naming what it is."""
    if not data:
        raise ProfileError("profile is empty (0 bytes)")

    head = data[:64].lstrip()
    if head.startswith(_LEGACY_TEXT_PREFIXES):
        raise ProfileError(
            "legacy text profile format is not supported; fetch the profile from "
            "/debug/pprof/ without ?debug=N to get protobuf"
        )
    if _is_legacy_cpu_profile(data):
        raise ProfileError(
            "legacy binary CPU profile format (header words 0, 3, 0) is not supported; "
            "capture a protobuf profile instead"
        )
    if _looks_like_text(data):
        raise ProfileError(
            f"input is text, not a pprof protobuf profile (starts with {data[:40]!r})"
        )


def _is_legacy_cpu_profile(data: bytes) -> bool:
    # The legacy CPU profile starts with the header words 0 (header count), 3 (header
    # words), 0 (version), in 32- or 64-bit words of either byte order.
    for word_size in (8, 4):
        if len(data) < 3 * word_size:
            continue
        for byteorder in ("little", "big"):
            words = [
                int.from_bytes(data[i * word_size : (i + 1) * word_size], byteorder)
                for i in range(3)
            ]
            if words == [0, 3, 0]:
                return True
    return False


def _looks_like_text(data: bytes) -> bool:
    # A protobuf profile starts with a field key: 0x0a (sample_type) for every Go profile.
    # Printable ASCII with line breaks in the first kilobyte is a text file instead.
    head = data[:1024]
    if not head.isascii():
        return False
    printable = sum(1 for byte in head if 32 <= byte < 127 or byte in (9, 10, 13))
    return printable == len(head) and (b"\n" in head or len(data) == len(head))


# --- protobuf reading ---------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1

    result = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            # A 10-byte varint can carry bits past 64; protobuf decoders drop them.
            return result & _UINT64_MASK, pos
        shift += 7
        if shift > 63:
            raise ProfileError(
                f"not a pprof profile, or corrupt: a varint at byte {pos} is longer than 10 bytes"
            )


def _iter_fields(buf: bytes, pos: int, end: int):
    """Yield (field number, wire type, value, stop) for each field in buf[pos:end].

    Varint fields give their integer as value. Length-delimited fields give their start
    as value and their end as stop. Fixed-size fields, which profile.proto does not use,
    are skipped over.
    """
    while pos < end:
        # Single-byte keys and varints are the common case: read them without a call.
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(buf, pos)
        number = key >> 3
        wire_type = key & 7
        if number == 0:
            raise ProfileError(
                f"not a pprof profile, or corrupt: invalid protobuf field number 0 at byte {pos}"
            )

        if wire_type == _VARINT:
            value = buf[pos]
            if value < 0x80:
                pos += 1
            else:
                value, pos = _read_varint(buf, pos)
            yield number, _VARINT, value, pos
        elif wire_type == _LENGTH_DELIMITED:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _read_varint(buf, pos)
            stop = pos + length
            if stop > end:
                raise ProfileError(
                    f"profile is truncated: a {length}-byte field at byte {pos} "
                    f"runs past the end of its message at byte {end}"
                )
            yield number, _LENGTH_DELIMITED, pos, stop
            pos = stop
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise ProfileError(
                f"not a pprof profile, or corrupt: invalid wire type {wire_type} at byte {pos}"
            )

    if pos != end:
        raise ProfileError(f"profile is truncated: a field runs past byte {end}")


def _read_packed(buf: bytes, start: int, stop: int) -> list[int]:
    chunk = buf[start:stop]
    if not chunk:
        return []
    # Fast path: every value fits in one byte.
    if max(chunk) < 0x80:
        return list(chunk)

    values = []
    pos = start
    while pos < stop:
        value, pos = _read_varint(buf, pos)
        values.append(value)
    if pos != stop:
        raise ProfileError(f"profile is truncated: a packed varint runs past byte {stop}")
    return values


def _signed(value: int) -> int:
    return value - _UINT64_RANGE if value >= _INT64_SIGN else value


def _expect(wire_type: int, expected: int, what: str) -> None:
    if wire_type != expected:
        raise ProfileError(
            f"not a pprof profile: field {what} has wire type {wire_type}, expected {expected}"
        )


def _read_repeated_ints(buf, wire_type, value, stop, what) -> list[int]:
    if wire_type == _LENGTH_DELIMITED:
        return _read_packed(buf, value, stop)
    _expect(wire_type, _VARINT, what)
    return [value]


# --- profile decoding ---------------------------------------------------------------------


@dataclass
class _RawProfile:
    """Field values of a Profile message before string and id references are resolved."""

    sample_types: list[tuple[int, int]] = field(default_factory=list)
    sample_spans: list[tuple[int, int]] = field(default_factory=list)
    mapping_spans: list[tuple[int, int]] = field(default_factory=list)
    location_spans: list[tuple[int, int]] = field(default_factory=list)
    function_spans: list[tuple[int, int]] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)
    drop_frames: int = 0
    keep_frames: int = 0
    time_nanos: int = 0
    duration_nanos: int = 0
    period_type: tuple[int, int] = (0, 0)
    period: int = 0
    comments: list[int] = field(default_factory=list)
    default_sample_type: int = 0


def _decode_profile(buf: bytes) -> Profile:
    raw = _read_profile_fields(buf)
    strings = raw.strings
    if not strings or strings[0] != "":
        raise ProfileError(
            "not a pprof profile: the string table is missing or does not start with ''"
        )

    def text(index: int, what: str) -> str:
        if not 0 <= index < len(strings):
            raise ProfileError(
                f"profile is corrupt: {what} refers to string {index}, "
                f"but the string table has {len(strings)} entries"
            )
        return strings[index]

    sample_types = [
        (text(type_index, "sample_type"), text(unit_index, "sample_type"))
        for type_index, unit_index in raw.sample_types
    ]
    mapping_files = _read_mappings(buf, raw.mapping_spans, text)
    function_names = _read_functions(buf, raw.function_spans, text)
    locations = _read_locations(buf, raw.location_spans, function_names, mapping_files)

    drop_frames = text(raw.drop_frames, "drop_frames")
    keep_frames = text(raw.keep_frames, "keep_frames")
    pruner = _make_pruner(locations, drop_frames, keep_frames) if drop_frames else None

    id_fields, value_fields = _read_samples(buf, raw.sample_spans)
    stacks = _build_stacks_frame(id_fields, value_fields, sample_types, locations, pruner)
    return Profile(
        sample_types=sample_types,
        period=raw.period,
        period_type=(
            text(raw.period_type[0], "period_type"),
            text(raw.period_type[1], "period_type"),
        ),
        duration_nanos=raw.duration_nanos,
        time_nanos=raw.time_nanos,
        stacks=stacks,
        default_sample_type=text(raw.default_sample_type, "default_sample_type"),
        drop_frames=drop_frames,
        keep_frames=keep_frames,
        comments=[text(index, "comment") for index in raw.comments],
    )


def _read_profile_fields(buf: bytes) -> _RawProfile:
    raw = _RawProfile()
    strings = raw.strings
    for number, wire_type, value, stop in _iter_fields(buf, 0, len(buf)):
        if number == 6:  # string_table: the most frequent field, tested first
            _expect(wire_type, _LENGTH_DELIMITED, "string_table")
            strings.append(buf[value:stop].decode("utf-8"))
        elif number == 2:
            _expect(wire_type, _LENGTH_DELIMITED, "sample")
            raw.sample_spans.append((value, stop))
        elif number == 4:
            _expect(wire_type, _LENGTH_DELIMITED, "location")
            raw.location_spans.append((value, stop))
        elif number == 5:
            _expect(wire_type, _LENGTH_DELIMITED, "function")
            raw.function_spans.append((value, stop))
        elif number == 3:
            _expect(wire_type, _LENGTH_DELIMITED, "mapping")
            raw.mapping_spans.append((value, stop))
        elif number == 1:
            _expect(wire_type, _LENGTH_DELIMITED, "sample_type")
            raw.sample_types.append(_read_value_type(buf, value, stop))
        elif number == 11:
            _expect(wire_type, _LENGTH_DELIMITED, "period_type")
            raw.period_type = _read_value_type(buf, value, stop)
        elif number == 13:
            raw.comments.extend(_read_repeated_ints(buf, wire_type, value, stop, "comment"))
        elif number in (7, 8, 9, 10, 12, 14):
            _expect(wire_type, _VARINT, f"number {number}")
            if number == 7:
                raw.drop_frames = _signed(value)
            elif number == 8:
                raw.keep_frames = _signed(value)
            elif number == 9:
                raw.time_nanos = _signed(value)
            elif number == 10:
                raw.duration_nanos = _signed(value)
            elif number == 12:
                raw.period = _signed(value)
            else:
                raw.default_sample_type = _signed(value)
    return raw


def _read_value_type(buf: bytes, start: int, stop: int) -> tuple[int, int]:
    type_index = unit_index = 0
    for number, wire_type, value, _ in _iter_fields(buf, start, stop):
        if number == 1:
            _expect(wire_type, _VARINT, "ValueType.type")
            type_index = value
        elif number == 2:
            _expect(wire_type, _VARINT, "ValueType.unit")
            unit_index = value
    return type_index, unit_index


def _read_mappings(buf, spans, text) -> dict[int, str]:
    files: dict[int, str] = {}
    for start, stop in spans:
        mapping_id = file_index = 0
        for number, wire_type, value, _ in _iter_fields(buf, start, stop):
            if number == 1:
                _expect(wire_type, _VARINT, "Mapping.id")
                mapping_id = value
            elif number == 5:
                _expect(wire_type, _VARINT, "Mapping.filename")
                file_index = value
        files[mapping_id] = text(file_index, f"mapping {mapping_id}")
    return files


def _read_functions(buf, spans, text) -> dict[int, str]:
    """Map each function id to its name."""
    names: dict[int, str] = {}
    for start, stop in spans:
        function_id = name_index = 0
        for number, wire_type, value, _ in _iter_fields(buf, start, stop):
            if number == 1:
                _expect(wire_type, _VARINT, "Function.id")
                function_id = value
            elif number == 2:
                _expect(wire_type, _VARINT, "Function.name")
                name_index = value
        if function_id == 0:
            raise ProfileError("profile is corrupt: a function has id 0")
        names[function_id] = text(name_index, f"function {function_id}")
    return names


@dataclass
class _Location:
    # Function name per line, innermost (inlined callee) first as profile.proto orders
    # them; "" where a line has no function or the function has no name.
    function_names: list[str]
    # Name `go tool pprof -top` prints for a frame without a function name: the binary's
    # base name in brackets, or "<unknown>".
    anonymous_name: str

    def frame_names(self) -> list[str]:
        if not self.function_names:
            return [self.anonymous_name]
        return [name or self.anonymous_name for name in self.function_names]


def _read_locations(buf, spans, function_names, mapping_files) -> dict[int, _Location]:
    locations: dict[int, _Location] = {}
    for start, stop in spans:
        location_id = mapping_id = 0
        names: list[str] = []
        for number, wire_type, value, line_stop in _iter_fields(buf, start, stop):
            if number == 4:
                _expect(wire_type, _LENGTH_DELIMITED, "Location.line")
                names.append(_read_line_function(buf, value, line_stop, function_names))
            elif number == 1:
                _expect(wire_type, _VARINT, "Location.id")
                location_id = value
            elif number == 2:
                _expect(wire_type, _VARINT, "Location.mapping_id")
                mapping_id = value
        if location_id == 0:
            raise ProfileError("profile is corrupt: a location has id 0")
        if mapping_id and mapping_id not in mapping_files:
            raise ProfileError(
                f"profile is corrupt: location {location_id} refers to missing mapping "
                f"{mapping_id}"
            )

        mapping_file = mapping_files.get(mapping_id, "")
        anonymous = f"[{os.path.basename(mapping_file)}]" if mapping_file else "<unknown>"
        locations[location_id] = _Location(function_names=names, anonymous_name=anonymous)
    return locations


def _read_line_function(buf, start, stop, function_names) -> str:
    """Return the function name of one Location.line entry, "" if it has none."""
    for number, wire_type, value, _ in _iter_fields(buf, start, stop):
        if number != 1:
            continue
        _expect(wire_type, _VARINT, "Line.function_id")
        if value == 0:
            return ""
        try:
            return function_names[value]
        except KeyError:
            raise ProfileError(
                f"profile is corrupt: a location line refers to missing function {value}"
            ) from None
    return ""


def _read_samples(buf, spans) -> tuple[list[bytes | tuple[int, ...]], list[bytes | list[int]]]:
    """Return each sample's location ids (leaf first) and values, still encoded if packed.

    A sample whose ids (or values) are one packed field gets that field's bytes, which
    `_decode_varint_chunks` decodes for all samples at once. Samples written with unpacked
    or split fields get their decoded integers instead.
    """
    id_fields: list[bytes | tuple[int, ...]] = []
    value_fields: list[bytes | list[int]] = []
    for start, stop in spans:
        ids: list = []
        values: list = []
        for number, wire_type, value, field_stop in _iter_fields(buf, start, stop):
            if number == 1:
                if wire_type == _LENGTH_DELIMITED:
                    ids.append(buf[value:field_stop])
                else:
                    _expect(wire_type, _VARINT, "Sample.location_id")
                    ids.append(value)
            elif number == 2:
                if wire_type == _LENGTH_DELIMITED:
                    values.append(buf[value:field_stop])
                else:
                    _expect(wire_type, _VARINT, "Sample.value")
                    values.append(value)
        id_fields.append(ids[0] if _is_one_chunk(ids) else tuple(_decode_parts(ids)))
        value_fields.append(values[0] if _is_one_chunk(values) else _decode_parts(values))
    return id_fields, value_fields


def _is_one_chunk(parts: list) -> bool:
    return len(parts) == 1 and isinstance(parts[0], bytes)


def _decode_parts(parts: list) -> list[int]:
    decoded: list[int] = []
    for part in parts:
        if isinstance(part, bytes):
            decoded.extend(_read_packed(part, 0, len(part)))
        else:
            decoded.append(part)
    return decoded


def _decode_varint_chunks(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Decode many packed-varint chunks at once.

    Returns:
        All values as uint64 (reinterpret as int64 for signed fields) and the number of
        values in each chunk.

    Raises:
        ProfileError: a chunk ends inside a varint or a varint is longer than 10 bytes.
    """
    raw = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    chunk_stops = np.cumsum([len(chunk) for chunk in chunks], dtype=np.int64)
    if not raw.size:
        return np.zeros(0, dtype=np.uint64), np.zeros(len(chunks), dtype=np.int64)

    # Every non-empty chunk must end on a varint's last byte (high bit clear).
    nonempty_stops = chunk_stops[np.diff(chunk_stops, prepend=0) > 0]
    if (raw[nonempty_stops - 1] >= 0x80).any():
        raise ProfileError("profile is truncated: a packed varint field ends mid-value")

    ends = np.flatnonzero(raw < 0x80)
    counts = np.diff(np.searchsorted(ends, chunk_stops), prepend=0)
    if ends.size == raw.size:
        return raw[ends].astype(np.uint64), counts

    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise ProfileError("not a pprof profile, or corrupt: a varint is longer than 10 bytes")
    byte_index = np.arange(raw.size) - np.repeat(starts, lengths)
    payload = (raw & 0x7F).astype(np.uint64) << (byte_index * 7).astype(np.uint64)
    return np.add.reduceat(payload, starts), counts


def _split(values: list[int], counts: np.ndarray) -> list[list[int]]:
    parts = []
    offset = 0
    for count in counts.tolist():
        parts.append(values[offset : offset + count])
        offset += count
    return parts


def _decode_location_ids(id_fields) -> dict[bytes, tuple[int, ...]]:
    """Decode each distinct packed location-id field once."""
    unique = list(dict.fromkeys(chunk for chunk in id_fields if isinstance(chunk, bytes)))
    values, counts = _decode_varint_chunks(unique)
    decoded = _split(values.tolist(), counts)
    return {chunk: tuple(ids) for chunk, ids in zip(unique, decoded, strict=True)}


def _decode_values(value_fields, type_count: int) -> np.ndarray:
    """Return the sample values as an int64 matrix, one row per sample."""
    matrix = np.zeros((len(value_fields), type_count), dtype=np.int64)
    packed_rows = [row for row, chunk in enumerate(value_fields) if isinstance(chunk, bytes)]
    if packed_rows:
        values, counts = _decode_varint_chunks([value_fields[row] for row in packed_rows])
        if (counts != type_count).any():
            bad = int(counts[counts != type_count][0])
            raise ProfileError(
                f"profile is corrupt: a sample has {bad} values "
                f"but the profile declares {type_count} sample types"
            )
        matrix[packed_rows] = values.view(np.int64).reshape(len(packed_rows), type_count)

    for row, decoded in enumerate(value_fields):
        if isinstance(decoded, bytes):
            continue
        if len(decoded) != type_count:
            raise ProfileError(
                f"profile is corrupt: a sample has {len(decoded)} values "
                f"but the profile declares {type_count} sample types"
            )
        matrix[row] = [_signed(value) for value in decoded]
    return matrix


def _build_stacks_frame(id_fields, value_fields, sample_types, locations, pruner):
    ids_by_chunk = _decode_location_ids(id_fields)
    expand = _StackExpander(locations)

    stack_by_key: dict[bytes | tuple[int, ...], tuple[str, ...]] = {}
    stacks: list[tuple[str, ...]] = []
    for key in id_fields:
        stack = stack_by_key.get(key)
        if stack is None:
            ids = ids_by_chunk[key] if isinstance(key, bytes) else key
            if pruner is not None:
                ids = pruner(ids)
            stack = expand(ids)
            stack_by_key[key] = stack
        stacks.append(stack)

    matrix = _decode_values(value_fields, len(sample_types))
    columns: dict[str, object] = {"stack": _object_array(stacks)}
    for index, name in enumerate(_unique_column_names(sample_types)):
        columns[name] = matrix[:, index]
    return pd.DataFrame(columns)


class _StackExpander:
    """Expand leaf-first location ids into a tuple of function names, root first."""

    def __init__(self, locations: dict[int, _Location]):
        # Each location's frames, root first, so that a stack is a concatenation.
        self.frames = {
            location_id: tuple(reversed(location.frame_names()))
            for location_id, location in locations.items()
        }
        # Most locations hold one frame (no inlining): those stacks are built with one
        # itemgetter call, several times faster than concatenating tuples.
        self.single_frame = {
            location_id: frames[0]
            for location_id, frames in self.frames.items()
            if len(frames) == 1
        }
        self.multi_frame = set(self.frames) - set(self.single_frame)

    def __call__(self, location_ids: tuple[int, ...]) -> tuple[str, ...]:
        try:
            if not location_ids:
                return ()
            if len(location_ids) == 1:
                return self.frames[location_ids[0]]
            if self.multi_frame.isdisjoint(location_ids):
                return itemgetter(*location_ids[::-1])(self.single_frame)
            return tuple(chain.from_iterable(map(self.frames.__getitem__, location_ids[::-1])))
        except KeyError as exc:
            raise ProfileError(
                f"profile is corrupt: a sample refers to missing location {exc.args[0]}"
            ) from None


def _unique_column_names(sample_types: list[tuple[str, str]]) -> list[str]:
    names: list[str] = []
    for index, (name, _) in enumerate(sample_types):
        column = name or f"value{index}"
        while column in names or column == "stack":
            column = f"{column}_{index}"
        names.append(column)
    return names


# --- drop_frames / keep_frames -------------------------------------------------------------


def _simplify_function_name(name: str) -> str:
    """Cut a C++-style argument list off a name, as pprof does before matching drop_frames."""
    name = name.removeprefix(".")
    position = 0
    while True:
        paren = name.find("(", position)
        if paren < 0:
            return name
        reserved = next(
            (part for part in _RESERVED_NAME_PARTS if name.startswith(part, paren)), None
        )
        if reserved is None:
            return name[:paren]
        position = paren + len(reserved)


def _make_pruner(locations: dict[int, _Location], drop_frames: str, keep_frames: str):
    """Apply drop_frames/keep_frames to the locations and return a pruner of id lists.

    A frame whose simplified name fully matches drop_frames, and not keep_frames, is
    removed from every sample together with everything it called. Frames rootward of the
    first frame that does not match are never removed, so a sample keeps at least its
    root. This is the pruning `go tool pprof` applies when it loads a profile.
    """
    drop = re.compile(f"(?:{drop_frames})")
    keep = re.compile(f"(?:{keep_frames})") if keep_frames else None

    whole: set[int] = set()
    partial: set[int] = set()
    for location_id, location in locations.items():
        names = location.function_names
        # Scan from the outermost caller inwards and stop at the first dropped frame.
        for index in range(len(names) - 1, -1, -1):
            name = names[index]
            if not name:
                continue
            simplified = _simplify_function_name(name)
            if drop.fullmatch(simplified) and not (keep and keep.fullmatch(simplified)):
                if index == len(names) - 1:
                    whole.add(location_id)
                else:
                    partial.add(location_id)
                    location.function_names = names[index + 1 :]
                break

    def prune(ids: tuple[int, ...]) -> tuple[int, ...]:
        seen_kept_frame = False
        for index in range(len(ids) - 1, -1, -1):
            location_id = ids[index]
            if location_id not in whole and location_id not in partial:
                seen_kept_frame = True
                continue
            if not seen_kept_frame:
                continue
            if location_id in whole:
                return ids[index + 1 :]
            return ids[index:]
        return ids

    return prune
