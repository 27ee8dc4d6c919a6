"""JSON readings of local MQTT sensors (edge.sensors.mqtt_local.parse_payload)."""

from __future__ import annotations

import json

import pytest

from roadside.edge.sensors.mqtt_local import PayloadError, parse_payload

UNITS = {"pm25": "ug/m3", "noise": "dB(A)"}


def test_one_reading_with_defaults_filled_in() -> None:
    [s] = parse_payload(b'{"quantity": "pm25", "value": 12.5}', "aq0", UNITS, received=1000.0)
    assert (s.ts, s.sensor, s.quantity, s.value, s.unit) == (1000.0, "aq0", "pm25", 12.5, "ug/m3")


def test_an_array_with_own_sensor_time_and_unit() -> None:
    raw = json.dumps(
        [
            {"quantity": "noise", "value": 61, "ts": 1718000000.5, "sensor": "mic1"},
            {"quantity": "no2", "value": 40.0, "unit": "ppb", "ts": "2024-06-10T06:13:20+00:00"},
        ]
    ).encode()
    a, b = parse_payload(raw, "aq0", UNITS, received=0.0)
    assert (a.ts, a.sensor, a.value, a.unit) == (1718000000.5, "mic1", 61.0, "dB(A)")
    assert (b.ts, b.sensor, b.unit) == (1718000000.0, "aq0", "ppb")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "json"),
        (b'{"quantity": "pm25", "value": "12.5"}', "fields"),  # a string is not a measurement
        (b'{"quantity": "pm25", "value": NaN}', "fields"),
        (b'{"quantity": "pm25"}', "fields"),
        (b'{"quantity": "pm 25", "value": 1}', "fields"),
        (b'{"quantity": "pm25", "value": 1, "extra": true}', "fields"),
        (b'{"quantity": "pm25", "value": 1, "ts": "2024-06-10T06:13:20"}', "fields"),  # no zone
        (b"[]", "fields"),
        (b"[" + b'{"quantity": "a", "value": 1},' * 2000 + b"{}]", "fields"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_payload(raw, "aq0", UNITS, received=0.0)
    assert caught.value.reason == reason
