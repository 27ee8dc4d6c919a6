"""What the InfluxDB adapters build, without a server: line protocol, InfluxQL, Flux.

The line-protocol parser below follows the rules InfluxDB 1.x applies (checked
against ``influxd`` 1.6.7 by hand and by ``tests/component/test_influx_v1.py``):
in measurements, tag keys, tag values and field keys a delimiter counts as
escaped when the character before it is a backslash, and only ``\\,``, ``\\=``
and ``\\ `` are unescaped; in string field values ``\\\\`` and ``\\"`` are.

``InfluxV2Store`` cannot be run against a 2.x server here, so its tests check
the Flux and parameters it builds and what it hands to ``influxdb_client``.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from influxdb_client.client.flux_table import FluxRecord, FluxTable, TableList

from roadside.cloud.storage import influx
from roadside.cloud.storage.base import ALL_DEVICES, CountBucket, CountQuery, EventQuery, IngestBatch, Origin
from roadside.cloud.storage.influx import (
    InfluxV2Store,
    LinePoint,
    batch_points,
    escape_key,
    escape_measurement,
    format_field,
    quote_ident,
    quote_literal,
    rows,
)
from roadside.shared.errors import ConfigError, SchemaError, TransportError
from roadside.shared.schemas import CountRecord, DetectionEvent, Health, SensorReading, StreamHealth

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
T0_NS = int(T0.timestamp()) * 1_000_000_000


# -- a parser with InfluxDB's rules -------------------------------------------------


def _split(text: str, delimiter: str) -> tuple[str, str]:
    """Split at the first ``delimiter`` not preceded by a backslash."""
    for i, char in enumerate(text):
        if char == delimiter and (i == 0 or text[i - 1] != "\\"):
            return text[:i], text[i + 1 :]
    return text, ""


def _split_all(text: str, delimiter: str) -> list[str]:
    parts = []
    while text:
        part, text = _split(text, delimiter)
        parts.append(part)
    return parts


def _unescape(text: str, specials: str) -> str:
    for char in specials:
        text = text.replace("\\" + char, char)
    return text


def _parse_field(raw: str) -> object:
    if raw.startswith('"'):
        body, out, i = raw[1:-1], [], 0
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '\\"':
                i += 1
            out.append(body[i])
            i += 1
        return "".join(out)
    if raw in ("true", "false"):
        return raw == "true"
    if raw.endswith("i"):
        return int(raw[:-1])
    return float(raw)


def _parse_fields(text: str) -> dict[str, object]:
    """Fields split at commas outside string values."""
    fields: dict[str, object] = {}
    while text:
        key, text = _split(text, "=")
        if text.startswith('"'):
            i = 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            raw, text = text[: i + 1], text[i + 2 :]
        else:
            raw, text = _split(text, ",")
        fields[_unescape(key, ",= ")] = _parse_field(raw)
    return fields


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    series, rest = _split(line, " ")
    measurement, tag_text = _split(series, ",")
    tags = {}
    for pair in _split_all(tag_text, ","):
        key, value = _split(pair, "=")
        tags[_unescape(key, ",= ")] = _unescape(value, ",= ")
    field_text, stamp = rest.rsplit(" ", 1)
    return _unescape(measurement, ", "), tags, _parse_fields(field_text), int(stamp)


# -- escaping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("two words", r"two\ words"),
        ("a,b=c", r"a\,b\=c"),
        (r"back\slash", r"back\slash"),
        (r"a\,b", r"a\\,b"),
        ('quo"te', 'quo"te'),
        ("µg/m³", "µg/m³"),
    ],
)
def test_tag_escaping_matches_known_examples(raw: str, escaped: str) -> None:
    assert escape_key(raw) == escaped


def test_measurement_escapes_commas_and_spaces_but_not_equals() -> None:
    assert escape_measurement("a b,c=d") == r"a\ b\,c=d"


@pytest.mark.parametrize("bad", ["", "ends\\", "new\nline", "carriage\rreturn"])
def test_unrepresentable_tag_values_are_refused(bad: str) -> None:
    with pytest.raises(SchemaError):
        escape_key(bad)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1i"),
        (-7, "-7i"),
        (True, "true"),
        (False, "false"),
        (1.5, "1.5"),
        (1.0, "1.0"),
        (1e-05, "1e-05"),
        (1e20, "1e+20"),
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("tag,like=chars here", '"tag,like=chars here"'),
    ],
)
def test_field_values_match_known_examples(value: object, text: str) -> None:
    assert format_field(value) == text  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(bad: float) -> None:
    with pytest.raises(SchemaError):
        format_field(bad)


def test_a_full_line() -> None:
    point = LinePoint("counts", (("device", "pole 7"), ("site", "a,b")), (("count", 3), ("note", 'x"y')), 5)
    assert point.to_line() == r'counts,device=pole\ 7,site=a\,b count=3i,note="x\"y" 5'


# Half the strings are made of the characters line protocol treats specially, the rest of anything.
_SPECIALS = " ,=\"\\'x=µ"
_any_char = st.characters(codec="utf-8")  # line protocol is UTF-8: no lone surrogates


def _texts(alphabet_extra: str, min_size: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.sampled_from(list(_SPECIALS + alphabet_extra)), min_size=min_size, max_size=20),
        st.text(_any_char, min_size=min_size, max_size=20),
    )


_keyish = _texts("", 1).filter(lambda s: not s.endswith("\\") and "\n" not in s and "\r" not in s)
_field_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    _texts("\n", 0),
)


@given(
    measurement=_keyish,
    tags=st.dictionaries(_keyish, _keyish, max_size=4),
    fields=st.dictionaries(_keyish, _field_values, min_size=1, max_size=4),
    time_ns=st.integers(min_value=0, max_value=2**62),
)
def test_escaping_round_trips_through_influxdb_parsing_rules(
    measurement: str, tags: dict[str, str], fields: dict[str, Any], time_ns: int
) -> None:
    point = LinePoint(measurement, tuple(sorted(tags.items())), tuple(sorted(fields.items())), time_ns)
    parsed = parse_line(point.to_line())
    assert parsed == (measurement, tags, fields, time_ns)


# -- the points of an envelope -------------------------------------------------------------


def _count(minute: int = 0, count: int = 3, **kw: Any) -> CountRecord:
    values = {
        "interval_start": T0 + timedelta(minutes=minute),
        "interval_s": 60,
        "line": "north",
        "cls": "car",
        "direction": "in",
        "count": count,
        "model_version": "det-1.0",
    }
    return CountRecord(**{**values, **kw})


def _event(ts: datetime = T0, **kw: Any) -> DetectionEvent:
    values = {
        "event_id": uuid.uuid4(),
        "ts": ts,
        "type": "line_crossing",
        "stream": "cam0",
        "cls": "car",
        "model_version": "det-1.0",
    }
    return DetectionEvent(**{**values, **kw})


def _points(batch: IngestBatch) -> list[tuple[str, dict[str, str], dict[str, object], int]]:
    return [parse_line(p.to_line()) for p in batch_points(batch, now_ns=T0_NS)]


def test_counts_are_tagged_with_origin_and_nudged_by_seq() -> None:
    batch = IngestBatch(Origin("pole-7", "main-st", 1234), counts=[_count(lane=2)])
    (counts, ingest) = _points(batch)
    assert counts == (
        "counts",
        {
            "device": "pole-7",
            "site": "main-st",
            "model_version": "det-1.0",
            "line": "north",
            "cls": "car",
            "direction": "in",
            "lane": "2",
            "interval_s": "60",
        },
        {"count": 3},
        T0_NS + 234,
    )
    assert ingest == (
        "ingest",
        {"device": "pole-7", "site": "main-st"},
        {"seq": 1234, "records": 1},
        T0_NS + 234,
    )


def test_the_same_envelope_always_gives_the_same_points() -> None:
    batch = IngestBatch(Origin("d", "s", 9), counts=[_count()], events=[_event()])
    assert batch_points(batch, now_ns=1) == batch_points(batch, now_ns=2)


def test_repeated_count_keys_in_one_envelope_are_summed() -> None:
    batch = IngestBatch(Origin("d", "s", 1), counts=[_count(count=2), _count(count=5), _count(minute=1)])
    counts = [p for p in _points(batch) if p[0] == "counts"]
    assert [p[2]["count"] for p in counts] == [7, 3]


def test_events_at_one_instant_stay_distinct_within_and_across_envelopes() -> None:
    one = batch_points(IngestBatch(Origin("d", "s", 1), events=[_event(), _event()]), now_ns=0)
    two = batch_points(IngestBatch(Origin("d", "s", 2), events=[_event()]), now_ns=0)
    identities = {(p.measurement, p.tags, p.time_ns) for p in one + two if p.measurement == "events"}
    assert len(identities) == 3


def test_the_nudge_stays_below_a_microsecond() -> None:
    ts = T0 + timedelta(microseconds=123_456)
    (event, _) = batch_points(IngestBatch(Origin("d", "s", 999_999), events=[_event(ts)]), now_ns=0)
    assert event.time_ns // 1000 == T0_NS // 1000 + 123_456


def test_an_empty_envelope_still_marks_its_sequence_number() -> None:
    (ingest,) = _points(IngestBatch(Origin("d", "s", 42)))
    assert ingest[0] == "ingest"
    assert ingest[2] == {"seq": 42, "records": 0}


def test_health_and_sensor_points_keep_float_fields_float() -> None:
    health = Health(
        ts=T0,
        uptime_s=5,
        model_version="det-1.0",
        provider="CPUExecutionProvider",
        outbox_backlog=0,
        streams={"cam0": StreamHealth(fps=10, dropped_frames=0)},
    )
    reading = SensorReading(ts=T0, sensor="aq1", quantity="pm25", value=12, unit="µg/m³")
    points = _points(IngestBatch(Origin("d", "s", 3), sensors=[reading], health=health))
    sensor, health_point = points[0], points[1]
    assert isinstance(sensor[2]["value"], float)
    assert sensor[2]["value"] == 12.0
    assert isinstance(health_point[2]["uptime_s"], float)
    assert health_point[2]["uptime_s"] == 5.0
    assert Health.model_validate_json(str(health_point[2]["report"])) == health


# -- InfluxQL ----------------------------------------------------------------------------


def test_influxql_quoting() -> None:
    assert quote_literal("it's a \\ test") == r"'it\'s a \\ test'"
    assert quote_ident('we"ird') == r'"we\"ird"'


def _plain(measurement: str) -> str:
    return quote_ident(measurement)


def test_count_query_groups_by_epoch_buckets_without_empty_rows() -> None:
    q = CountQuery(T0, T0 + timedelta(hours=2), bucket_s=900, device_id="o'neil", line="north")
    assert influx.count_buckets_influxql(q, _plain) == (
        'SELECT sum("count") AS "count" FROM "counts" WHERE time >= 1714550400000000000'
        " AND time < 1714557600000000000 AND \"device\" = 'o\\'neil' AND \"line\" = 'north'"
        ' GROUP BY time(900s), "device", "site", "line", "cls", "direction" fill(none)'
    )


def test_count_query_summed_over_devices_groups_without_the_device() -> None:
    q = CountQuery(T0, T0 + timedelta(hours=2), bucket_s=900, site="main-st", per_device=False)
    assert influx.count_buckets_influxql(q, _plain).endswith(
        """ AND "site" = 'main-st' GROUP BY time(900s), "site", "line", "cls", "direction" fill(none)"""
    )
    assert (
        '  |> group(columns: ["site", "line", "cls", "direction"])\n'
        in influx.count_buckets_flux(q, "rs").text
    )


def test_event_query_orders_by_time_and_limits() -> None:
    q = EventQuery(T0, T0 + timedelta(hours=1), type="wrong_way", limit=7)
    text = influx.events_influxql(q, _plain)
    assert text.endswith("AND \"type\" = 'wrong_way' ORDER BY time ASC LIMIT 7")


@pytest.mark.parametrize("bucket_s", [0, -60])
def test_bucket_width_must_be_positive(bucket_s: int) -> None:
    with pytest.raises(ValueError, match="bucket_s"):
        influx.count_buckets_influxql(CountQuery(T0, T0, bucket_s=bucket_s), _plain)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        influx.events_influxql(EventQuery(datetime(2024, 1, 1), T0), _plain)


@pytest.mark.parametrize(
    ("status", "message", "action", "error"),
    [
        (503, "busy", "write", TransportError),
        (429, "slow down", "write", TransportError),
        (401, "authorization failed", "query", ConfigError),
        (404, 'database not found: "x"', "write", ConfigError),
        (500, "retention policy not found: rp", "write", ConfigError),
        (400, "partial write: field type conflict", "write", SchemaError),
        (400, "error parsing query", "query", ConfigError),
    ],
)
def test_http_failures_map_onto_the_error_tree(
    status: int, message: str, action: str, error: type[Exception]
) -> None:
    rejection = rows.rejection(status, message, action)
    assert type(rejection) is error
    assert message in str(rejection)


# -- Flux and the 2.x client ------------------------------------------------------------------


def test_count_flux_takes_values_as_params_not_text() -> None:
    q = CountQuery(T0, T0 + timedelta(hours=1), bucket_s=300, device_id='evil") |> drop()', cls="car")
    flux = influx.count_buckets_flux(q, "roadside")
    assert 'evil"' not in flux.text
    assert flux.params == {
        "bucket": "roadside",
        "start": q.start,
        "stop": q.end,
        "tag_device": 'evil") |> drop()',
        "tag_cls": "car",
    }
    assert flux.text == (
        "from(bucket: params.bucket)\n"
        "  |> range(start: params.start, stop: params.stop)\n"
        '  |> filter(fn: (r) => r._measurement == "counts" and r._field == "count"'
        ' and r["device"] == params.tag_device and r["cls"] == params.tag_cls)\n'
        '  |> group(columns: ["device", "site", "line", "cls", "direction"])\n'
        '  |> aggregateWindow(every: 300s, fn: sum, createEmpty: false, timeSrc: "_start")'
    )


def test_event_flux_pivots_fields_sorts_and_limits() -> None:
    flux = influx.events_flux(EventQuery(T0, T0 + timedelta(hours=1), type="wrong_way", limit=5), "b")
    assert 'r["type"] == params.tag_type' in flux.text
    assert flux.text.endswith(
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        "  |> group()\n"
        '  |> sort(columns: ["_time"])\n'
        "  |> limit(n: 5)"
    )


def test_health_history_flux_takes_the_last_report_per_step_newest_first() -> None:
    from roadside.cloud.storage.base import HealthQuery
    from roadside.cloud.storage.influx.flux import health_history_flux

    flux = health_history_flux(HealthQuery("d1", T0, T0 + timedelta(hours=1), step_s=60, limit=7), "b")
    assert (
        'r._measurement == "health" and r._field == "report" and r["device"] == params.tag_device'
        in flux.text
    )
    assert flux.text.endswith(
        "  |> group()\n"
        "  |> aggregateWindow(every: 60s, fn: last, createEmpty: false)\n"
        '  |> sort(columns: ["_time"], desc: true)\n'
        "  |> limit(n: 7)"
    )
    every = health_history_flux(HealthQuery("d1", T0, T0 + timedelta(hours=1)), "b")
    assert "aggregateWindow" not in every.text
    assert every.params["tag_device"] == "d1"


def test_sequence_flux_reads_the_ingest_marks() -> None:
    flux = influx.seqs_above_flux("d1", 100, "b")
    assert "range(start: 1970-01-01T00:00:00Z)" in flux.text
    assert 'r._measurement == "ingest" and r._field == "seq"' in flux.text
    assert flux.params == {"bucket": "b", "tag_device": "d1", "floor": 100}


class _FakeWriteApi:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def write(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


class _FakeQueryApi:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def query(self, text: str, org: str, params: dict[str, Any]) -> TableList:
        self.calls.append((text, params))
        table = FluxTable()
        table.records = [FluxRecord(0, values=row) for row in self.rows]
        result = TableList()
        result.append(table)
        return result


@pytest.fixture
def v2_store() -> InfluxV2Store:
    # Building the client opens no connection; the write and query APIs are replaced below.
    return InfluxV2Store("http://127.0.0.1:1", token="t0ken", org="city", bucket="roadside")


def test_v2_writes_line_protocol_synchronously_in_ns(v2_store: InfluxV2Store) -> None:
    fake = _FakeWriteApi()
    v2_store._writer = fake  # type: ignore[assignment]
    batch = IngestBatch(Origin("d", "s", 1), counts=[_count()])
    v2_store.write([batch])
    (call,) = fake.calls
    assert (call["bucket"], call["org"], call["write_precision"]) == ("roadside", "city", "ns")
    assert call["record"] == [p.to_line() for p in batch_points(batch, now_ns=0)]


def test_v2_maps_flux_rows_to_count_buckets(v2_store: InfluxV2Store) -> None:
    rows = [
        {
            "_time": T0 + timedelta(hours=1),
            "_value": 4,
            "device": "d2",
            "site": "s",
            "line": "n",
            "cls": "car",
            "direction": "in",
        },
        {
            "_time": T0,
            "_value": 9,
            "device": "d1",
            "site": "s",
            "line": "n",
            "cls": "car",
            "direction": "out",
        },
    ]
    fake = _FakeQueryApi(rows)
    v2_store._reader = fake  # type: ignore[assignment]
    buckets = v2_store.count_buckets(CountQuery(T0, T0 + timedelta(hours=2), device_id="d1"))
    assert [(b.bucket_start, b.device_id, b.count) for b in buckets] == [
        (T0, "d1", 9),
        (T0 + timedelta(hours=1), "d2", 4),
    ]
    assert fake.calls[0][1]["tag_device"] == "d1"


def test_v2_maps_rows_summed_over_devices(v2_store: InfluxV2Store) -> None:
    # Grouped without the device, the rows Flux returns carry no device column.
    rows = [
        {
            "_time": T0 + timedelta(hours=1),
            "_value": 4,
            "site": "s",
            "line": "n",
            "cls": "car",
            "direction": "in",
        },
        {"_time": T0, "_value": 9, "site": "t", "line": "n", "cls": "car", "direction": "in"},
        {"_time": T0, "_value": 2, "site": "s", "line": "n", "cls": "car", "direction": "in"},
    ]
    fake = _FakeQueryApi(rows)
    v2_store._reader = fake  # type: ignore[assignment]
    buckets = v2_store.count_buckets(CountQuery(T0, T0 + timedelta(hours=2), per_device=False))
    assert buckets == [
        CountBucket(T0, ALL_DEVICES, "s", "n", "car", "in", 2),
        CountBucket(T0, ALL_DEVICES, "t", "n", "car", "in", 9),
        CountBucket(T0 + timedelta(hours=1), ALL_DEVICES, "s", "n", "car", "in", 4),
    ]
    assert '"device"' not in fake.calls[0][0]


def test_v2_maps_pivoted_rows_to_events(v2_store: InfluxV2Store) -> None:
    event = _event(T0 + timedelta(microseconds=5), track_id=3, confidence=0.9)
    row = {
        "_time": event.ts,
        "device": "d1",
        "site": "s",
        "model_version": "det-1.0",
        "type": event.type,
        "slot": "0",
        "event_id": str(event.event_id),
        "stream": "cam0",
        "cls": "car",
        "track_id": 3,
        "confidence": 0.9,
        "seq": 7,
    }
    v2_store._reader = _FakeQueryApi([row])  # type: ignore[assignment]
    (stored,) = v2_store.events(EventQuery(T0, T0 + timedelta(hours=1)))
    assert (stored.device_id, stored.event) == ("d1", event)
