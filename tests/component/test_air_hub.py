"""The hub's air job against a real SQLite telemetry store and air store: stages, lineage, index, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from roadside.cloud.air.config import AirConfig
from roadside.cloud.air.processor import AirProcessor
from roadside.cloud.air.store import AirStore
from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.air.standards import IndexReport
from roadside.shared.schemas import DetectionEvent, SensorReading

START = datetime(2024, 6, 3, 6, tzinfo=UTC)


def _config(**extra: Any) -> AirConfig:
    return AirConfig.model_validate(
        {
            "standard": "us-epa",
            "locations": [{
                "id": "main-5th", "name": "Main St & 5th Ave", "site": "site-a", "timezone": "America/New_York",
                "latitude": 40.75, "longitude": -73.99,
                "sensors": [
                    {"device": "cam-1", "sensor": "pm-1", "period_s": 60, "parameters": ["pm25", "rh"]},
                    {"device": "cam-1", "sensor": "gas-1", "period_s": 60, "parameters": ["no2"]},
                ],
            }],
            "calibrations": [{"sensor": "cam-1.pm-1", "quantity": "pm25_cf1", "output": "pm25", "version": 1,
                              "method": "us-epa-pm25"}],
            "limits": {"no2": 100.0},
            "rescan_s": 6 * 3600,
        } | extra
    )  # fmt: skip


def _readings(start: datetime, minutes: int, pm: float, no2: float) -> list[SensorReading]:
    out = []
    for i in range(minutes):
        ts = start + timedelta(minutes=i)
        out += [
            SensorReading(ts=ts, sensor="pm-1", quantity="pm25_cf1", value=pm, unit="ug/m3"),
            SensorReading(ts=ts, sensor="pm-1", quantity="pm25", value=pm * 0.8, unit="ug/m3"),
            SensorReading(ts=ts, sensor="pm-1", quantity="rh", value=50.0, unit="%"),
            SensorReading(ts=ts, sensor="gas-1", quantity="no2", value=no2, unit="ppb"),
            SensorReading(ts=ts, sensor="other", quantity="pm25", value=1.0, unit="ug/m3"),  # not configured
        ]
    return out


class Emitted:
    def __init__(self) -> None:
        self.events: list[tuple[Origin, DetectionEvent]] = []

    def __call__(self, origin: Origin, events: list[DetectionEvent]) -> None:
        self.events += [(origin, e) for e in events]


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    telemetry = SqliteStore(tmp_path / "telemetry.db")
    air = AirStore(tmp_path / "air.db")
    yield telemetry, air
    air.close()
    telemetry.close()


def test_stages_lineage_index_and_events(stores: tuple[SqliteStore, AirStore]) -> None:
    telemetry, air = stores
    # Three hours: clean air, then NO2 above its limit, then smoke.
    readings = _readings(START, 60, 10.0, 30.0) + _readings(START + timedelta(hours=1), 60, 10.0, 130.0)
    readings += _readings(START + timedelta(hours=2), 60, 80.0, 30.0)
    telemetry.write([IngestBatch(Origin("cam-1", "site-a", 1), sensors=readings)])
    emitted = Emitted()
    now = [(START + timedelta(hours=3, minutes=5)).timestamp()]
    processor = AirProcessor(_config(), telemetry, air, emitted, clock=lambda: now[0])

    report = processor.run_once()
    assert report.readings == 180 * 4  # the unconfigured sensor is left out
    assert (
        report.stored == 180 * 4 * 2 + 180 * 3
    )  # raw and cleaned of each; calibrated: pm25 (cf1's), rh, no2
    calibrated = air.measurements(stage="calibrated", start=0, end=now[0], location="main-5th")
    pm = [s for s in calibrated if s.measurement.parameter == "pm25"]
    assert len(pm) == 180  # the sensor's own pm25 (atm) is superseded by the corrected cf1 value
    assert {s.measurement.calibration for s in pm} == {"cam-1.pm-1/pm25_cf1/v1"}
    assert pm[0].measurement.value == pytest.approx(0.524 * 10 - 0.0862 * 50 + 5.75)
    assert pm[0].sensor_id == "cam-1.pm-1.pm25"
    raw = air.measurements(stage="raw", start=0, end=now[0], sensor_ids=["cam-1.pm-1.pm25_cf1"])
    assert [s.measurement.value for s in raw[:2]] == [10.0, 10.0]
    lineage = air.calibration("cam-1.pm-1/pm25_cf1/v1")
    assert lineage is not None
    assert lineage["method"] == {"variant": "us-epa-2022", "method": "us-epa-pm25"}

    index = report.indices["main-5th"]
    assert isinstance(index, IndexReport)
    # Corrected hourly means, latest first: 0.786 × 80 − 0.0862 × 50 + 5.75 = 64.32, then 6.68 twice.
    # NowCast: w = 0.5 → (64.32 + 6.68 × 0.5 + 6.68 × 0.25) / 1.75 = 39.6 → 49 / 19.9 × 4.1 + 101 = 111.
    assert index.by_pollutant["pm25"] == 111
    assert index.responsible == "pm25"
    assert index.category == "Unhealthy for Sensitive Groups"
    kinds = sorted((e.type, e.cls) for _, e in emitted.events)
    assert kinds == [("air_exceedance", "no2")]  # the first index is no worsening
    origin, event = emitted.events[0]
    assert (origin.device_id, origin.site, event.stream) == ("air-main-5th", "site-a", "main-5th")

    # Again, nothing new: nothing stored twice, no event twice.
    again = processor.run_once()
    assert (again.stored, again.events) == (0, [])

    # The index worsens in the next hour; the category event fires once.
    telemetry.write(
        [
            IngestBatch(
                Origin("cam-1", "site-a", 2), sensors=_readings(START + timedelta(hours=3), 60, 300.0, 30.0)
            )
        ]
    )
    now[0] = (START + timedelta(hours=4, minutes=5)).timestamp()
    worse = processor.run_once()
    assert [e.type for e in worse.events] == ["air_category_worsened"]
    assert len(air.index_history("main-5th", "us-epa", 0, now[0])) == 2


def test_a_value_keeps_its_calibration_after_the_configuration_changes(
    stores: tuple[SqliteStore, AirStore],
) -> None:
    telemetry, air = stores
    telemetry.write([IngestBatch(Origin("cam-1", "site-a", 1), sensors=_readings(START, 30, 20.0, 10.0))])
    now = [(START + timedelta(minutes=40)).timestamp()]
    AirProcessor(_config(), telemetry, air, Emitted(), clock=lambda: now[0]).run_once()

    v2 = {"sensor": "cam-1.pm-1", "quantity": "pm25_cf1", "output": "pm25", "version": 2, "method": "linear",
          "slope": 0.5, "valid_from": (START + timedelta(minutes=45)).isoformat()}  # fmt: skip
    changed = _config(calibrations=[_config().calibrations[0].model_dump(), v2])
    telemetry.write(
        [
            IngestBatch(
                Origin("cam-1", "site-a", 2), sensors=_readings(START + timedelta(minutes=50), 10, 20.0, 10.0)
            )
        ]
    )
    now[0] = (START + timedelta(minutes=70)).timestamp()
    AirProcessor(
        changed, telemetry, air, Emitted(), clock=lambda: now[0]
    ).run_once()  # rescans the old ones too

    pm = air.measurements(stage="calibrated", start=0, end=now[0], sensor_ids=["cam-1.pm-1.pm25"])
    labels = [(s.measurement.calibration, s.measurement.value) for s in pm]
    before = 0.524 * 20 - 0.0862 * 50 + 5.75
    assert {label for label, _ in labels[:30]} == {"cam-1.pm-1/pm25_cf1/v1"}
    assert [value for _, value in labels[:30]] == pytest.approx([before] * 30)
    assert labels[30:] == [("cam-1.pm-1/pm25_cf1/v2", 10.0)] * 10
    assert air.calibration("cam-1.pm-1/pm25_cf1/v2") is not None

    rewritten = {"sensor": "cam-1.pm-1", "quantity": "pm25_cf1", "output": "pm25", "version": 1,
                 "method": "linear", "slope": 0.9}  # fmt: skip
    with pytest.raises(ValueError, match="new version"):
        _config(calibrations=[_config().calibrations[0].model_dump(), {**rewritten, "version": 1}])


def test_config_refuses_unknown_sensors_and_zones() -> None:
    with pytest.raises(ValueError, match="no such sensor"):
        _config(calibrations=[{"sensor": "cam-9.pm-1", "quantity": "pm25", "version": 1, "method": "linear"}])
    with pytest.raises(ValueError, match="unknown time zone"):
        AirConfig.model_validate(
            {"locations": [{"id": "x", "name": "x", "site": "s", "timezone": "Mars/Olympus",
                            "sensors": [{"device": "d", "sensor": "s"}]}]}
        )  # fmt: skip


def test_passes_read_since_the_last_one_and_rescan_deep_now_and_then(
    stores: tuple[SqliteStore, AirStore],
) -> None:
    telemetry, air = stores
    now = [START.timestamp() + 10 * 3600]
    processor = AirProcessor(
        _config(late_s=300, deep_every_s=3600), telemetry, air, Emitted(), clock=lambda: now[0]
    )
    assert processor.window_start(now[0]) == (now[0] - 6 * 3600, True)  # the first pass looks back rescan_s
    processor.run_once()
    now[0] += 60
    assert processor.window_start(now[0]) == (now[0] - 60 - 300, False)  # since the last pass, late_s more
    processor.run_once()
    # A reading its outbox held back for an hour is found by the next deep rescan.
    late = _readings(datetime.fromtimestamp(now[0], UTC) - timedelta(minutes=70), 1, 10.0, 10.0)
    telemetry.write([IngestBatch(Origin("cam-1", "site-a", 9), sensors=late)])
    now[0] += 60
    assert processor.run_once().readings == 0
    # Told by ingest (the hub's listener), the next pass reads back to it at once.
    processor.note_stored(late)
    now[0] += 60
    assert processor.run_once().readings >= 4
    # Two hours more, and the deep pass an hour later finds them and the held-back reading.
    telemetry.write([IngestBatch(Origin("cam-1", "site-a", 10), sensors=_readings(
        datetime.fromtimestamp(now[0], UTC), 120, 30.0, 60.0))])  # fmt: skip
    now[0] += 3600
    assert processor.run_once().readings >= 4
    # A pass that reuses the last pass's hours gives the index a pass from scratch gives.
    now[0] += 60
    incremental = processor.run_once().indices["main-5th"]
    fresh = (
        AirProcessor(_config(), telemetry, air, Emitted(), clock=lambda: now[0])
        .run_once()
        .indices["main-5th"]
    )
    assert isinstance(incremental, IndexReport)
    assert incremental == fresh
