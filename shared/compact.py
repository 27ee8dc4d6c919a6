"""The compact encoding of a ``counts`` message, and count records as columns.

Counts are most of what a fleet sends. As JSON a message of ten records is about
1.4 kB, and validating it and turning its records into rows was a fifth of the
hub's work per message (docs/performance.md). The compact form carries the same
records in about 280 bytes, laid out so that the hub checks every bound with a
few ``min``/``max`` calls and builds its rows with ``zip``, never a Python object
per record (ADR 0033).

Layout (integers big-endian)::

    0x00 "RC" | format (1 byte, = 1) | kind (1 byte, 1 = counts)
    | strings (u16) | each string: length (u8), ASCII bytes
    | records n (u16) | n × interval start (i64, µs since 1970, UTC) | n × interval_s (u32)
    | n × model version (u16, string index) | n × line (u16) | n × class (u16)
    | n × direction (u8: 0 in, 1 out) | n × lane (u8, 255: none) | n × count (u32)

A JSON plaintext starts with ``{``, so the first byte tells the two apart: the
envelope and the outbox need no flag, and an old agent's JSON keeps working.
Every bound is that of :class:`~roadside.shared.schemas.CountRecord`; a test holds
the two decoders equal on the same records. Pure: bytes in, columns or
:class:`~roadside.shared.errors.SchemaError` out.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from roadside.shared.errors import SchemaError
from roadside.shared.limits import EARLIEST_US, LATEST_US, to_epoch_us
from roadside.shared.schemas import MAX_RECORDS, CountRecord, UplinkPayload, decode_uplink

LEAD: Final = b"\x00RC"
FORMAT: Final = 1
KIND_COUNTS: Final = 1
_PREFIX = struct.Struct(">3sBBH")  # lead, format, kind, number of strings
_COUNT = struct.Struct(">H")
_NO_LANE: Final = 255
_MAX_LANE: Final = 64  # CountRecord.lane
_MAX_INTERVAL_S: Final = 86400  # CountRecord.interval_s
_MAX_COUNT: Final = 1_000_000  # CountRecord.count
_DIRECTIONS: Final = ("in", "out")
_DIRECTION_CODES: Final = {"in": 0, "out": 1}
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # schemas.Name
# A device sends the same few names in every message: a string table already checked is
# found by its bytes. Bounded: cleared when full (a hostile device can only cost re-checks).
_TABLES_MAX: Final = 4096
_tables: dict[bytes, tuple[str, ...]] = {}
_layouts: dict[int, struct.Struct] = {}

CountRow = tuple[str, int, int, str, str, str, int | None, int]


@dataclass(frozen=True, slots=True)
class CountColumns:
    """Count records as one tuple per field, in the order of :data:`CountRow`.

    The hub's stores build their rows from these with ``zip``; :meth:`of` takes
    validated :class:`CountRecord` objects (the JSON path), :func:`decode_counts`
    the compact bytes.
    """

    model_version: tuple[str, ...] = ()
    interval_start_us: tuple[int, ...] = ()
    interval_s: tuple[int, ...] = ()
    line: tuple[str, ...] = ()
    cls: tuple[str, ...] = ()
    direction: tuple[str, ...] = ()
    lane: tuple[int | None, ...] = ()
    count: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.count)
        if not (
            len(self.model_version) == len(self.interval_start_us) == len(self.interval_s) == len(self.line)
            == len(self.cls) == len(self.direction) == len(self.lane) == n
        ):  # fmt: skip
            raise ValueError("count columns differ in length")

    def __len__(self) -> int:
        return len(self.count)

    def rows(self) -> Iterator[CountRow]:
        """One tuple per record: (model version, interval start µs, interval s, line, class,
        direction, lane, count)."""
        return zip(
            self.model_version,
            self.interval_start_us,
            self.interval_s,
            self.line,
            self.cls,
            self.direction,
            self.lane,
            self.count,
            strict=True,
        )

    @classmethod
    def of(cls, records: Sequence[CountRecord]) -> CountColumns:
        return cls(
            tuple(r.model_version for r in records),
            tuple(to_epoch_us(r.interval_start) for r in records),
            tuple(r.interval_s for r in records),
            tuple(r.line for r in records),
            tuple(r.cls for r in records),
            tuple(r.direction for r in records),
            tuple(r.lane for r in records),
            tuple(r.count for r in records),
        )


NO_COUNTS: Final = CountColumns()


@dataclass(frozen=True, slots=True)
class CompactCounts:
    """A ``counts`` message that arrived in the compact encoding."""

    columns: CountColumns
    kind: Literal["counts"] = "counts"


def is_compact(raw: bytes) -> bool:
    return raw[:1] == LEAD[:1]


def decode_any(kind: str, raw: bytes) -> UplinkPayload | CompactCounts:
    """An uplink plaintext in either encoding; :class:`SchemaError` if it is neither valid."""
    if is_compact(raw):
        if kind != "counts":
            raise SchemaError(f"the compact encoding carries counts only, not {kind!r}")
        return CompactCounts(decode_counts(raw))
    return decode_uplink(kind, raw)


def encode_counts(records: Sequence[CountRecord]) -> bytes:
    """The compact form of a ``counts`` message of ``records`` (1 to ``MAX_RECORDS`` of them)."""
    n = len(records)
    if not 0 < n <= MAX_RECORDS:
        raise ValueError(f"a counts message holds 1 to {MAX_RECORDS} records, not {n}")
    c = CountColumns.of(records)  # the one conversion of records, shared with the JSON path
    index: dict[str, int] = {}
    model_version = [index.setdefault(name, len(index)) for name in c.model_version]
    line = [index.setdefault(name, len(index)) for name in c.line]
    cls = [index.setdefault(name, len(index)) for name in c.cls]
    out = bytearray(_PREFIX.pack(LEAD, FORMAT, KIND_COUNTS, len(index)))
    for name in index:  # names are ASCII of 1-64 characters (CountRecord validated them)
        raw = name.encode("ascii")
        out += bytes((len(raw),)) + raw
    out += _COUNT.pack(n)
    out += _layout(n).pack(
        *c.interval_start_us,
        *c.interval_s,
        *model_version,
        *line,
        *cls,
        *(_DIRECTION_CODES[d] for d in c.direction),
        *(_NO_LANE if lane is None else lane for lane in c.lane),
        *c.count,
    )
    return bytes(out)


def decode_counts(raw: bytes) -> CountColumns:
    """Columns of a compact ``counts`` message, every field checked as ``CountRecord`` checks it."""
    if len(raw) < _PREFIX.size:
        raise SchemaError("compact counts: too short")
    lead, version, kind, n_strings = _PREFIX.unpack_from(raw)
    if lead != LEAD or version != FORMAT or kind != KIND_COUNTS:
        raise SchemaError(f"compact counts: unknown format {version} or kind {kind}")
    strings, offset = _strings(raw, n_strings)
    if len(raw) < offset + _COUNT.size:
        raise SchemaError("compact counts: truncated before the records")
    (n,) = _COUNT.unpack_from(raw, offset)
    offset += _COUNT.size
    if not 0 < n <= MAX_RECORDS:
        raise SchemaError(f"compact counts: {n} records, not 1 to {MAX_RECORDS}")
    layout = _layout(n)
    if len(raw) - offset != layout.size:
        raise SchemaError(f"compact counts: {len(raw) - offset} bytes of records, not {layout.size}")
    v = layout.unpack_from(raw, offset)
    start, interval_s, model_version, line, cls = (
        v[:n],
        v[n : 2 * n],
        v[2 * n : 3 * n],
        v[3 * n : 4 * n],
        v[4 * n : 5 * n],
    )
    direction, lane, count = v[5 * n : 6 * n], v[6 * n : 7 * n], v[7 * n :]
    if min(start) < EARLIEST_US or max(start) >= LATEST_US:
        raise SchemaError("compact counts: an interval start lies outside 1970-2262")
    if min(interval_s) < 1 or max(interval_s) > _MAX_INTERVAL_S:
        raise SchemaError(f"compact counts: interval_s must lie in 1..{_MAX_INTERVAL_S}")
    if max(model_version + line + cls) >= n_strings:
        raise SchemaError("compact counts: a string index past the table")
    if max(direction) > 1:
        raise SchemaError("compact counts: a direction other than in (0) or out (1)")
    if max(count) > _MAX_COUNT:
        raise SchemaError(f"compact counts: a count above {_MAX_COUNT}")
    name = strings.__getitem__
    return CountColumns(
        tuple(map(name, model_version)),
        start,
        interval_s,
        tuple(map(name, line)),
        tuple(map(name, cls)),
        tuple(map(_DIRECTIONS.__getitem__, direction)),
        _lanes(lane),
        count,
    )


def _lanes(lane: tuple[int, ...]) -> tuple[int | None, ...]:
    if min(lane) == _NO_LANE:  # the usual case: no lane anywhere
        return (None,) * len(lane)
    if max(lane) <= _MAX_LANE:
        return lane
    if any(_MAX_LANE < x < _NO_LANE for x in lane):
        raise SchemaError(f"compact counts: a lane above {_MAX_LANE}")
    return tuple(None if x == _NO_LANE else x for x in lane)


def _strings(raw: bytes, n: int) -> tuple[tuple[str, ...], int]:
    """The string table and the offset after it; each name as ``schemas.Name`` allows."""
    offset = _PREFIX.size
    for _ in range(n):
        if offset >= len(raw):
            raise SchemaError("compact counts: truncated string table")
        offset += 1 + raw[offset]
    if offset > len(raw):
        raise SchemaError("compact counts: truncated string table")
    table = raw[_PREFIX.size : offset]
    strings = _tables.get(table)
    if strings is None:
        strings = _parse_table(table, n)
        if len(_tables) >= _TABLES_MAX:
            _tables.clear()
        _tables[table] = strings
    return strings, offset


def _parse_table(table: bytes, n: int) -> tuple[str, ...]:
    names = []
    at = 0
    for _ in range(n):
        size = table[at]
        name = table[at + 1 : at + 1 + size].decode("ascii", errors="replace")
        if _NAME.fullmatch(name) is None:
            raise SchemaError(f"compact counts: name {name[:64]!r} is not 1-64 of A-Z a-z 0-9 _ . : -")
        names.append(name)
        at += 1 + size
    if len(set(names)) != len(names):
        raise SchemaError("compact counts: a name twice in the string table")
    return tuple(names)


def _layout(n: int) -> struct.Struct:
    layout = _layouts.get(n)
    if layout is None:
        layout = _layouts[n] = struct.Struct(f">{n}q{n}I{n}H{n}H{n}H{n}B{n}B{n}I")
    return layout
