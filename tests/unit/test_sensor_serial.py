"""Serial line protocols (edge.sensors.serial): round trips, and corrupt lines rejected and counted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadside.edge.sensors.serial import (
    LineError,
    LineParser,
    LineSplitter,
    checksum,
    format_kv,
    format_nmea,
    parse_kv,
    parse_nmea,
)

names = st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True)
units = st.from_regex(r"[A-Za-z0-9/%()]{1,16}", fullmatch=True)
values = st.floats(allow_nan=False, allow_infinity=False)


def test_the_documented_sentence_parses() -> None:
    line = b"$RSAQ,pm25,12.3,ug/m3*" + f"{checksum(b'RSAQ,pm25,12.3,ug/m3'):02X}".encode() + b"\r\n"
    [v] = parse_nmea(line)
    assert (v.quantity, v.value, v.unit, v.ts) == ("pm25", 12.3, "ug/m3", None)


@given(st.lists(st.tuples(names, values, units), min_size=1, max_size=4))
def test_nmea_round_trip(triples: list[tuple[str, float, str]]) -> None:
    line = format_nmea(triples)
    parsed = parse_nmea(line)
    assert [(v.quantity, v.value, v.unit) for v in parsed] == triples


@given(st.dictionaries(names.filter(lambda n: n != "ts"), values, min_size=1, max_size=4), st.none() | values)
def test_kv_round_trip(readings: dict[str, float], ts: float | None) -> None:
    parsed = parse_kv(format_kv(readings, ts), {"pm25": "ug/m3"})
    assert {v.quantity: v.value for v in parsed} == readings
    assert all(v.ts == ts for v in parsed)
    assert all(v.unit == ("ug/m3" if v.quantity == "pm25" else "") for v in parsed)


GOOD = format_nmea([("pm25", 12.3, "ug/m3"), ("no2", 40.1, "ug/m3")])


def _with_checksum(body: str) -> bytes:
    return f"${body}*{checksum(body.encode()):02X}".encode()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (GOOD.replace(b"12.3", b"12.4"), "bad_checksum"),  # one digit flipped on the wire
        (GOOD[:20], "truncated"),  # cut mid-line by a disconnect
        (GOOD.rstrip()[:-1], "truncated"),  # half a checksum
        (GOOD[5:], "bad_start"),  # the start of the line was lost
        (_with_checksum("RSAQ,pm25,abc,ug/m3"), "non_numeric"),
        (_with_checksum("RSAQ,pm25,nan,ug/m3"), "non_numeric"),  # float() would take these three
        (_with_checksum("RSAQ,pm25,inf,ug/m3"), "non_numeric"),
        (_with_checksum("RSAQ,pm25,1_000,ug/m3"), "non_numeric"),
        (_with_checksum("RSAQ,pm25,12.3"), "bad_fields"),  # a triple short
        (_with_checksum("GPGGA,pm25,12.3,ug/m3"), "bad_fields"),  # someone else's sentence
        (_with_checksum("RSAQ,pm 25,12.3,ug/m3"), "bad_fields"),
        (b"$RSAQ,pm25,\xff,ug/m3*00", "encoding"),
        (b"$RSAQ," + b"1" * 300 + b"*00", "too_long"),
        (b"$RSAQ,pm25,12.3,ug/m3*ZZ", "truncated"),
    ],
)
def test_corrupt_nmea_lines_are_rejected_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_nmea(line)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"pm25=12.3,no2=", "non_numeric"),  # truncated inside the last pair
        (b"pm25=12.3,no2", "bad_fields"),
        (b"pm25=twelve", "non_numeric"),
        (b"pm25=1,pm25=2", "bad_fields"),
        (b"ts=1718000000", "bad_fields"),  # a time and nothing measured
        (b"=3", "bad_fields"),
    ],
)
def test_corrupt_kv_lines_are_rejected_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_kv(line, {})
    assert caught.value.reason == reason


def test_parser_counts_accepted_and_rejected_lines_and_skips_blank_ones() -> None:
    parser = LineParser("nmea")
    lines = [GOOD, b"\r\n", GOOD.replace(b"12.3", b"99.9"), GOOD[:15], b"garbage", GOOD]
    got = [v for line in lines for v in parser.parse(line)]
    assert len(got) == 4  # two good lines, two values each
    assert parser.accepted == 2
    assert parser.rejected == {"bad_checksum": 1, "truncated": 1, "bad_start": 1}


def test_splitter_reassembles_lines_split_across_reads() -> None:
    parser = LineParser("nmea")
    splitter = LineSplitter(parser)
    stream = GOOD * 3
    chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    assert [v.value for line in lines for v in parser.parse(line)] == [12.3, 40.1] * 3


def test_splitter_bounds_a_line_without_end_and_counts_a_cut_one() -> None:
    parser = LineParser("nmea")
    splitter = LineSplitter(parser)
    assert splitter.feed(b"x" * 1000) == []
    assert parser.rejected["too_long"] == 1
    splitter.feed(GOOD[:10])
    splitter.reset()  # the port went away mid-line
    assert parser.rejected["truncated"] == 1
    assert splitter.feed(GOOD) == [GOOD.rstrip(b"\n")]
