"""The compact counts encoding (ADR 0033): the same records as JSON, every bound of
``CountRecord`` held, and any other bytes refused with a ``SchemaError``."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.shared import compact
from roadside.shared.compact import CompactCounts, CountColumns, decode_any, decode_counts, encode_counts
from roadside.shared.errors import SchemaError
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import MAX_RECORDS, CountRecord, CountsMessage, encode
from tests.support.strategies import count_records

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)

names = st.text(alphabet="abcXYZ019_.:-", min_size=1, max_size=64)
times = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2261, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7))]),
)
records = count_records(times, st.integers(1, 86400), names)


def record(**overrides: object) -> CountRecord:
    fields: dict[str, object] = {
        "interval_start": T0, "interval_s": 60, "line": "stopbar", "cls": "car", "direction": "in",
        "count": 3, "lane": None, "model_version": "1.2.0",
    }  # fmt: skip
    return CountRecord.model_validate(fields | overrides)


@settings(max_examples=200, deadline=None)
@given(st.lists(records, min_size=1, max_size=40))
def test_compact_and_json_give_the_same_columns(batch: list[CountRecord]) -> None:
    via_json = decode_any("counts", encode(CountsMessage(records=batch)))
    via_compact = decode_any("counts", encode_counts(batch))
    assert isinstance(via_json, CountsMessage)
    assert isinstance(via_compact, CompactCounts)
    assert via_compact.columns == CountColumns.of(via_json.records)
    # and what the stores get is the same either way
    origin = Origin("dev-1", "main-st", 7)
    assert IngestBatch(origin, counts=via_compact.columns) == IngestBatch(origin, counts=via_json.records)


def test_rows_are_in_column_order_and_times_are_utc_microseconds() -> None:
    east = datetime(2026, 12, 5, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    columns = decode_counts(encode_counts([record(interval_start=east, lane=3, direction="out", count=9)]))
    assert list(columns.rows()) == [("1.2.0", to_epoch_us(east), 60, "stopbar", "car", "out", 3, 9)]
    assert columns.interval_start_us[0] == to_epoch_us(datetime(2026, 12, 5, 8, 0, 0, 123456, tzinfo=UTC))


def test_a_message_is_a_fifth_of_its_json() -> None:
    batch = [record(line=f"line{i % 2}", cls=("car", "truck")[i % 2], count=i) for i in range(10)]
    assert len(encode_counts(batch)) * 4 < len(encode(CountsMessage(records=batch)))


def test_a_payload_of_another_kind_in_the_compact_form_is_refused() -> None:
    with pytest.raises(SchemaError, match="counts only"):
        decode_any("events", encode_counts([record()]))


def test_json_of_old_agents_still_decodes() -> None:
    raw = json.dumps({"schema": 1, "kind": "counts", "records": [json.loads(record().model_dump_json())]})
    assert isinstance(decode_any("counts", raw.encode()), CountsMessage)


def _layout(
    n_strings: int, strings: bytes, n: int, columns: bytes, *, version: int = 1, kind: int = 1
) -> bytes:
    return (
        b"\x00RC"
        + bytes((version, kind))
        + struct.pack(">H", n_strings)
        + strings
        + struct.pack(">H", n)
        + columns
    )


def _one(
    *, start: int = 1_764_000_000_000_000, interval_s: int = 60, idx: tuple[int, int, int] = (0, 1, 2),
    direction: int = 0, lane: int = 255, count: int = 3,
) -> bytes:  # fmt: skip
    return struct.pack(">qIHHHBBI", start, interval_s, *idx, direction, lane, count)


TABLE = b"\x031.0\x04line\x03car"


def test_the_hand_built_layout_decodes() -> None:
    columns = decode_counts(_layout(3, TABLE, 1, _one()))
    assert list(columns.rows()) == [("1.0", 1_764_000_000_000_000, 60, "line", "car", "in", None, 3)]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x00R", "too short"),
        (b"\x00RX\x01\x01\x00\x00", "unknown format"),
        (_layout(3, TABLE, 1, _one(), version=2), "unknown format"),
        (_layout(3, TABLE, 1, _one(), kind=2), "unknown format"),
        (_layout(3, TABLE[:-1], 1, _one()), "is not 1-64|truncated|bytes of records"),
        (_layout(4, TABLE, 1, _one()), "is not 1-64|truncated|bytes of records"),
        (_layout(3, TABLE, 0, b""), "0 records"),
        (_layout(3, TABLE, MAX_RECORDS + 1, _one() * (MAX_RECORDS + 1)), "records, not"),
        (_layout(3, TABLE, 2, _one()), "bytes of records"),
        (_layout(3, TABLE, 1, _one() + b"\x00"), "bytes of records"),
        (_layout(3, TABLE, 1, _one(start=-1)), "1970-2262"),
        (_layout(3, TABLE, 1, _one(start=to_epoch_us(datetime(2262, 1, 1, tzinfo=UTC)))), "1970-2262"),
        (_layout(3, TABLE, 1, _one(interval_s=0)), "interval_s"),
        (_layout(3, TABLE, 1, _one(interval_s=86401)), "interval_s"),
        (_layout(3, TABLE, 1, _one(idx=(0, 1, 3))), "string index"),
        (_layout(3, TABLE, 1, _one(direction=2)), "direction"),
        (_layout(3, TABLE, 1, _one(lane=65)), "lane"),
        (_layout(3, TABLE, 1, _one(lane=254)), "lane"),
        (_layout(3, TABLE, 1, _one(count=1_000_001)), "count above"),
        (_layout(3, b"\x031.0\x04li e\x03car", 1, _one()), "is not 1-64"),
        (_layout(3, b"\x031.0\x04lin\xc3\x03car", 1, _one()), "is not 1-64"),
        (_layout(3, b"\x031.0\x00\x03car", 1, _one()), "is not 1-64"),
        (_layout(3, b"\x031.0\x03car\x03car", 1, _one()), "twice"),
    ],
)
def test_bad_compact_bytes_are_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(SchemaError, match=why):
        decode_any("counts", raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_after_the_lead_are_decoded_or_refused(tail: bytes) -> None:
    try:
        columns = decode_counts(b"\x00RC" + tail)
    except SchemaError:
        return
    assert 0 < len(columns) <= MAX_RECORDS
    assert all(0 < s <= 86400 for s in columns.interval_s)
    assert all(0 <= n <= 1_000_000 for n in columns.count)


def test_the_checked_string_tables_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compact, "_TABLES_MAX", 8)
    monkeypatch.setattr(compact, "_tables", {})
    for i in range(50):
        decode_counts(encode_counts([record(line=f"line{i}")]))
        assert len(compact._tables) <= 8


def test_a_cached_table_is_not_a_way_past_the_name_check() -> None:
    decode_counts(_layout(3, TABLE, 1, _one()))  # cached
    with pytest.raises(SchemaError, match="is not 1-64"):
        decode_counts(_layout(3, b"\x031.0\x04li e\x03car", 1, _one()))


def test_columns_of_unequal_length_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        CountColumns(("1.0",), (0,), (60,), ("l",), ("car",), ("in",), (None,), (1, 2))


def test_encoding_checks_its_record_count() -> None:
    with pytest.raises(ValueError, match="1 to"):
        encode_counts([])
