"""Wire schemas: valid payloads pass, bad ones are refused with a clear message."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from roadside.shared.errors import SchemaError
from roadside.shared.schemas import (
    CountRecord,
    CountsMessage,
    Health,
    HealthMessage,
    decode_command,
    decode_uplink,
    encode,
)

TS = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def counts_payload(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "interval_start": TS.isoformat(),
        "interval_s": 60,
        "line": "l1",
        "cls": "car",
        "direction": "in",
        "count": 3,
        "model_version": "v1",
    }
    record.update(overrides)
    return {"schema": 1, "kind": "counts", "records": [record]}


def test_counts_round_trip() -> None:
    message = CountsMessage(
        records=[
            CountRecord(
                interval_start=TS,
                interval_s=60,
                line="l1",
                cls="car",
                direction="out",
                count=2,
                model_version="v1",
            )
        ]
    )
    assert decode_uplink("counts", encode(message)) == message


def test_health_round_trip() -> None:
    message = HealthMessage(
        health=Health(
            ts=TS, uptime_s=1, model_version="v1", provider="CPUExecutionProvider", outbox_backlog=0
        )
    )
    assert decode_uplink("health", encode(message)) == message


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"count": -1}, "count"),
        ({"direction": "sideways"}, "direction"),
        ({"interval_start": "2026-11-23T10:00:00"}, "interval_start"),  # naive time: ambiguous, refused
        ({"line": "a/b#"}, "line"),  # would be unsafe in a tag or topic
        ({"interval_s": 0}, "interval_s"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_records_are_refused_naming_the_field(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(SchemaError, match=needle):
        decode_uplink("counts", json.dumps(counts_payload(**overrides)).encode())


def test_wrong_schema_version_is_refused() -> None:
    payload = counts_payload()
    payload["schema"] = 2
    with pytest.raises(SchemaError):
        decode_uplink("counts", json.dumps(payload).encode())


def test_kind_must_match_the_envelope() -> None:
    with pytest.raises(SchemaError, match="does not match"):
        decode_uplink("events", json.dumps(counts_payload()).encode())


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[]", b"{}", b'{"kind": "counts", "records": []}', b"\xff\xfe"]
)
def test_malformed_payloads_are_refused(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_uplink("counts", raw)


def test_too_many_records_are_refused() -> None:
    payload = counts_payload()
    payload["records"] = payload["records"] * 2001  # type: ignore[operator]
    with pytest.raises(SchemaError, match="records"):
        decode_uplink("counts", json.dumps(payload).encode())


def test_non_finite_sensor_values_are_refused() -> None:
    payload = {
        "schema": 1,
        "kind": "sensors",
        "records": [
            {
                "ts": TS.isoformat(),
                "sensor": "aq1",
                "quantity": "pm25",
                "value": float("nan"),
                "unit": "ug/m3",
            }
        ],
    }
    with pytest.raises(SchemaError, match="value"):
        decode_uplink("sensors", json.dumps(payload).encode())


def test_command_decodes_and_refuses_unknown_types() -> None:
    good = {
        "schema": 1,
        "command_id": str(uuid.uuid4()),
        "type": "ping",
        "issued_at": TS.isoformat(),
        "args": {},
    }
    assert decode_command(json.dumps(good).encode()).type == "ping"
    with pytest.raises(SchemaError, match="type"):
        decode_command(json.dumps({**good, "type": "format_disk"}).encode())
