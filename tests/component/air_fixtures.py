"""An air-quality hub part with data in it, for the API tests (matrix, schemathesis, air routes).

Readings go through the real job (stages, calibration, index) from a SQLite
telemetry store of their own, so the API suites' own seeded telemetry stays
as their tests expect it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from roadside.cloud.air.config import AirConfig
from roadside.cloud.air.processor import AirProcessor
from roadside.cloud.air.queries import AirQueries
from roadside.cloud.air.store import AirStore
from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.schemas import SensorReading

LOCATION = "main-5th"
PM_SENSOR = "cam-1.pm-1.pm25"
NO2_SENSOR = "cam-1.gas-1.no2"

CONFIG = {
    "standard": "us-epa",
    "locations": [{
        "id": LOCATION, "name": "Main St & 5th Ave", "site": "site-a", "timezone": "America/New_York",
        "latitude": 40.7506, "longitude": -73.9935,
        "sensors": [
            {"device": "cam-1", "sensor": "pm-1", "period_s": 60, "parameters": ["pm25", "rh"]},
            {"device": "cam-1", "sensor": "gas-1", "period_s": 60, "parameters": ["no2"]},
        ],
    }],
    "calibrations": [{"sensor": "cam-1.pm-1", "quantity": "pm25_cf1", "output": "pm25", "version": 1,
                      "method": "us-epa-pm25"}],
    "limits": {"no2": 100.0},
}  # fmt: skip


def seeded_air(folder: Path, end: datetime | None = None, hours: int = 3) -> tuple[AirQueries, AirStore]:
    """Air queries over an air store holding ``hours`` of one-minute readings up to ``end`` (now)."""
    end = (end or datetime.now(UTC)).replace(second=0, microsecond=0)
    start = end - timedelta(hours=hours)
    readings = []
    for i in range(hours * 60):
        ts = start + timedelta(minutes=i)
        pm = 12.0 + (i % 60) / 6
        readings += [
            SensorReading(ts=ts, sensor="pm-1", quantity="pm25_cf1", value=pm, unit="ug/m3"),
            SensorReading(ts=ts, sensor="pm-1", quantity="rh", value=55.0, unit="%"),
            SensorReading(ts=ts, sensor="gas-1", quantity="no2", value=40.0 + i % 7, unit="ppb",
                          quality="spike" if i == 30 else "ok"),
        ]  # fmt: skip
    config = AirConfig.model_validate(CONFIG)
    telemetry = SqliteStore(folder / "air-telemetry.db")
    store = AirStore(folder / "air.db")
    try:
        telemetry.write([IngestBatch(Origin("cam-1", "site-a", 1), sensors=readings)])
        AirProcessor(config, telemetry, store, lambda _o, _e: None, clock=end.timestamp).run_once()
    finally:
        telemetry.close()
    return AirQueries(config, store), store
