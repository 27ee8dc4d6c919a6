"""``/v1/air`` over real stores: OpenAQ's shapes, stages with flags and lineage, means with coverage, CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from roadside.cloud.air.queries import AirQueries
from roadside.cloud.api.app import create_app
from roadside.cloud.registry import Registry
from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.schemas import CountRecord
from tests.component.air_fixtures import LOCATION, NO2_SENSOR, PM_SENSOR, seeded_air

END = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = {"from": "2025-05-01T09:00:00Z", "to": "2025-05-01T12:00:00Z"}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, dict[str, str]]]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    store = SqliteStore(tmp_path / "telemetry.db")
    air, air_store = seeded_air(tmp_path, END)
    common: dict[str, Any] = {"store": store, "registry": registry, "rate_limit": None}
    with_air = create_app(**common, metrics_registry=CollectorRegistry(), air=air)
    without = create_app(**common, metrics_registry=CollectorRegistry())
    token = registry.api_clients.create("portal", ["read:telemetry"])
    with TestClient(with_air) as a, TestClient(without) as b:
        yield a, b, {"Authorization": f"Bearer {token}"}
    air_store.close()
    store.close()
    registry.close()


def test_locations_in_openaq_shape_with_the_index(hub: tuple[TestClient, TestClient, dict[str, str]]) -> None:
    client, _, auth = hub
    body = client.get("/v1/air/locations", headers=auth).json()
    (location,) = body["results"]
    assert location["id"] == LOCATION
    assert location["timezone"] == "America/New_York"
    assert location["coordinates"] == {"latitude": 40.7506, "longitude": -73.9935}
    sensors = {s["id"]: s["parameter"] for s in location["sensors"]}
    assert sensors[PM_SENSOR] == {"name": "pm25", "units": "ug/m3", "displayName": "PM2.5"}
    assert sensors[NO2_SENSOR]["units"] == "ppb"
    index = location["index"]
    assert index["standard"] == "us-epa"
    assert index["responsible"] in ("pm25", "no2")
    assert set(index["by_pollutant"]) == {"pm25", "no2"}
    assert client.get(f"/v1/air/locations/{LOCATION}", headers=auth).json() == location
    # Recorded in the hour it was computed in: 12:00-13:00.
    later = {"from": "2025-05-01T09:00:00Z", "to": "2025-05-01T13:00:00Z"}
    history = client.get(f"/v1/air/locations/{LOCATION}/index", headers=auth, params=later).json()
    assert [h["overall"] for h in history["results"]] == [index["overall"]]


def test_measurements_by_stage_with_flags_and_calibration(
    hub: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    client, _, auth = hub
    raw = client.get(f"/v1/air/sensors/{NO2_SENSOR}/measurements", headers=auth,
                     params={**WINDOW, "stage": "cleaned", "limit": 40}).json()  # fmt: skip
    assert raw["truncated"] is True
    assert len(raw["results"]) == 40
    spike = raw["results"][30]
    assert (spike["flags"], spike["valid"], spike["stage"]) == (["spike"], False, "cleaned")
    assert spike["period"]["datetimeFrom"]["local"].endswith("-04:00")  # New York, daylight time
    calibrated = client.get(f"/v1/air/sensors/{PM_SENSOR}/measurements", headers=auth, params=WINDOW).json()
    first = calibrated["results"][0]
    assert first["calibration"] == "cam-1.pm-1/pm25_cf1/v1"
    assert first["value"] == pytest.approx(0.524 * 12.0 - 0.0862 * 55.0 + 5.75)
    # The corrected parameter's input, the sensor's CF=1 PM2.5, is a sensor of its own: raw as reported.
    cf1 = client.get("/v1/air/sensors/cam-1.pm-1.pm25_cf1/measurements", headers=auth,
                     params={**WINDOW, "stage": "raw"}).json()  # fmt: skip
    assert cf1["results"][0]["value"] == 12.0
    assert cf1["sensor"]["parameter"]["name"] == "pm25_cf1"


def test_hourly_and_daily_means_with_coverage(hub: tuple[TestClient, TestClient, dict[str, str]]) -> None:
    client, _, auth = hub
    hours = client.get(f"/v1/air/sensors/{NO2_SENSOR}/hours", headers=auth, params=WINDOW).json()["results"]
    assert len(hours) == 3
    assert hours[0]["coverage"]["expectedCount"] == 60
    assert hours[0]["coverage"]["observedCount"] == 59  # the spike does not count
    assert hours[0]["period"]["label"] == "1hour"
    assert hours[0]["valid"] is True
    # Cut in local hours, the bounds are still served in UTC beside the local time.
    assert hours[0]["period"]["datetimeFrom"] == {
        "utc": "2025-05-01T09:00:00Z",
        "local": "2025-05-01T05:00:00-04:00",
    }
    days = client.get(f"/v1/air/sensors/{NO2_SENSOR}/days", headers=auth, params=WINDOW).json()["results"]
    (day,) = days
    assert day["period"]["datetimeFrom"]["local"] == "2025-05-01T00:00:00-04:00"
    assert (day["coverage"]["expectedCount"], day["coverage"]["observedCount"], day["valid"]) == (
        24,
        3,
        False,
    )


def test_csv_exports(hub: tuple[TestClient, TestClient, dict[str, str]]) -> None:
    client, _, auth = hub
    response = client.get(f"/v1/air/sensors/{PM_SENSOR}/measurements", headers=auth,
                          params={**WINDOW, "format": "csv", "limit": 2})  # fmt: skip
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["calibration"] for r in rows] == ["cam-1.pm-1/pm25_cf1/v1"] * 2
    hours = client.get(
        f"/v1/air/sensors/{PM_SENSOR}/hours", headers={**auth, "Accept": "text/csv"}, params=WINDOW
    )
    assert next(csv.DictReader(io.StringIO(hours.text)))["expected"] == "60"


def test_unknown_things_and_a_hub_without_air(hub: tuple[TestClient, TestClient, dict[str, str]]) -> None:
    client, without, auth = hub
    assert client.get("/v1/air/locations/nowhere", headers=auth).status_code == 404
    assert client.get("/v1/air/sensors/x.y.z/hours", headers=auth).status_code == 404
    too_long = {"from": (END - timedelta(days=40)).isoformat(), "to": END.isoformat()}
    assert client.get(f"/v1/air/sensors/{PM_SENSOR}/hours", headers=auth, params=too_long).status_code == 422
    # Local hours and days near the ends of Python's calendar would overflow: a 422, not a 500.
    for path in (f"/v1/air/sensors/{PM_SENSOR}/days", f"/v1/air/locations/{LOCATION}/traffic"):
        for edge in ({"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z"},
                     {"from": "9999-12-30T00:00:00Z", "to": "9999-12-31T00:00:00Z"}):  # fmt: skip
            assert client.get(path, headers=auth, params=edge).status_code == 422, (path, edge)
    response = without.get("/v1/air/locations", headers=auth)
    assert response.status_code == 501
    assert "air" in response.json()["detail"]


def test_traffic_beside_the_air_with_correlation_and_emissions(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    store = SqliteStore(tmp_path / "telemetry.db")
    seeded, air_store = seeded_air(tmp_path, END)
    try:
        # Counts at the location's site: more cars in the hours the seeded NO2 is higher.
        counts = [
            CountRecord(interval_start=END - timedelta(hours=3 - h, minutes=-m), interval_s=60, line="north",
                        cls=cls, direction="in", count=n * (h + 1), model_version="det-1")
            for h in range(3) for m in range(0, 60, 15) for cls, n in (("car", 10), ("truck", 1))
        ]  # fmt: skip
        store.write([IngestBatch(Origin("cam-1", "site-a", 1), counts=counts)])
        config = seeded.config.model_copy(update={"emission_factors": {"nox": {"car": 0.3, "truck": 4.0}}})
        app = create_app(store=store, registry=registry, metrics_registry=CollectorRegistry(), rate_limit=None,
                         air=AirQueries(config, air_store, store))  # fmt: skip
        token = registry.api_clients.create("portal", ["read:telemetry"])
        with TestClient(app) as client:
            body = client.get(
                f"/v1/air/locations/{LOCATION}/traffic",
                params=WINDOW,
                headers={"Authorization": f"Bearer {token}"},
            ).json()
    finally:
        air_store.close()
        store.close()
        registry.close()
    assert [h["total"] for h in body["hours"]] == [44, 88, 132]  # 4 × (10 + 1) × hour
    assert body["hours"][0]["counts"] == {"car": 40, "truck": 4}
    assert all(h["no2"] is not None and h["pm25"] is not None for h in body["hours"])
    assert set(body["correlation"]) == {"no2", "pm25"}
    # (240 cars × 0.3 + 24 trucks × 4.0) g/km × 0.1 km
    assert body["emissions_g"] == {"nox": pytest.approx((240 * 0.3 + 24 * 4.0) * 0.1)}
