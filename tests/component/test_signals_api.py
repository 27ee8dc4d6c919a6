"""``/v1/signals`` against a real SqliteStore and Registry (issue 11, item 3).

Detector changes go in as ingest writes them, controller events through the
API; the ATSPM export comes out as CSV and is loaded, unchanged, into the
PyPI ``atspm`` package, which computes detector actuations from it.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from roadside.cloud.api.app import create_app
from roadside.cloud.registry import Registry
from roadside.cloud.signals.calls import CallDispatcher, CallFeed, CallMetrics, maps_of
from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.keys import KeyPair
from roadside.shared.schemas import DetectorChange, DetectorState, DetectorZoneKind, TurningMovement, ZoneStat
from roadside.shared.signals import decode_call

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 5, 7, 30, tzinfo=UTC)
WINDOW = {"from": "2026-12-05T07:00:00Z", "to": "2026-12-05T09:00:00Z"}
CHANNELS: list[dict[str, Any]] = [
    {"channel": 5, "device": "cam-1", "stream": "north", "zone": "nb-stop-1", "phase": 2, "approach": "north", "lane": 1},
    {"channel": 6, "device": "cam-1", "stream": "north", "zone": "nb-stop-2", "phase": 2, "approach": "north", "lane": 2},
    {"channel": 2, "kind": "pedestrian", "device": "cam-1", "stream": "north", "zone": "ped-ne", "phase": 4},
]  # fmt: skip
MAP: dict[str, Any] = {"name": "Main St & 5th Ave", "channels": CHANNELS}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    registry.devices.enroll("cam-1", "main-st", KeyPair.generate().public())
    yield registry
    registry.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "telemetry.db")
    yield store
    store.close()


@pytest.fixture
def dispatcher(registry: Registry) -> CallDispatcher:
    return CallDispatcher(lambda: maps_of(registry), None, CallFeed(), CallMetrics(CollectorRegistry()))


@pytest.fixture
def client(registry: Registry, store: SqliteStore, dispatcher: CallDispatcher) -> Iterator[TestClient]:
    app = create_app(
        store=store, registry=registry, metrics_registry=CollectorRegistry(), rate_limit=None,
        sse_heartbeat_s=0.05, sse_max_duration_s=5.0, signal_calls=dispatcher,
    )  # fmt: skip
    with TestClient(app) as client:
        yield client


@pytest.fixture
def tokens(registry: Registry) -> dict[str, str]:
    return {
        "reader": registry.api_clients.create("dashboard", ["read:telemetry"]),
        "writer": registry.api_clients.create("controller", ["write:signals"]),
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def change(
    second: float, zone: str, state: DetectorState, kind: DetectorZoneKind = "presence", **kw: Any
) -> DetectorChange:
    return DetectorChange(
        ts=T0 + timedelta(seconds=second), stream="north", zone=zone, zone_kind=kind, state=state, **kw
    )


def put_map(client: TestClient, tokens: dict[str, str]) -> dict[str, Any]:
    response = client.put("/v1/signals/main-5th/channel-map", json=MAP, headers=auth(tokens["writer"]))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_channel_map_put_get_refusals_and_audit(
    client: TestClient, tokens: dict[str, str], registry: Registry
) -> None:
    assert put_map(client, tokens)["version"] == 1
    got = client.get("/v1/signals/main-5th/channel-map", headers=auth(tokens["reader"])).json()
    assert [c["channel"] for c in got["channels"]] == [5, 6, 2]
    assert got["name"] == "Main St & 5th Ave"
    # Malformed maps are refused with the reason, and change nothing.
    twice = {"channels": [CHANNELS[0], {**CHANNELS[0], "zone": "other"}]}
    response = client.put("/v1/signals/main-5th/channel-map", json=twice, headers=auth(tokens["writer"]))
    assert response.status_code == 422
    assert "vehicle channel 5 is listed twice" in response.text
    same_zone = {"channels": [CHANNELS[0], {**CHANNELS[0], "channel": 9}]}
    response = client.put("/v1/signals/main-5th/channel-map", json=same_zone, headers=auth(tokens["writer"]))
    assert response.status_code == 422
    assert "one zone, one channel" in response.text
    bad_phase = {"channels": [{**CHANNELS[0], "phase": 17}]}
    assert (
        client.put(
            "/v1/signals/main-5th/channel-map", json=bad_phase, headers=auth(tokens["writer"])
        ).status_code
        == 422
    )
    stale = {**MAP, "expect_version": 0}
    response = client.put("/v1/signals/main-5th/channel-map", json=stale, headers=auth(tokens["writer"]))
    assert response.status_code == 409
    assert "version 1, not 0" in response.json()["detail"]
    # Unknown channels are refused with what the signal has.
    response = client.delete("/v1/signals/main-5th/channel-map/channels/7", headers=auth(tokens["writer"]))
    assert response.status_code == 404
    assert "unknown vehicle detector channel 7; this signal has [5, 6]" in response.json()["detail"]
    response = client.delete("/v1/signals/main-5th/channel-map/channels/6", headers=auth(tokens["writer"]))
    assert [c["channel"] for c in response.json()["channels"]] == [5, 2]
    # A reader may not change it; every change is audited.
    assert (
        client.put("/v1/signals/main-5th/channel-map", json=MAP, headers=auth(tokens["reader"])).status_code
        == 403
    )
    assert client.get("/v1/signals/nowhere/channel-map", headers=auth(tokens["reader"])).status_code == 404
    entries = [e for e in registry.audit.entries() if e.action == "signal.map"]
    assert [(e.actor, e.subject, e.details["version"]) for e in entries] == [
        ("api:controller", "main-5th", 1),
        ("api:controller", "main-5th", 2),
    ]


def write_detector(store: SqliteStore) -> None:
    changes = [
        change(0.12, "nb-stop-1", "on", occupants=1),
        change(2.47, "nb-stop-1", "off"),
        change(3.0, "nb-stop-2", "on"),
        change(3.05, "unmapped", "on"),  # a zone no channel names: stored, not in the log
        change(4.0, "ped-ne", "on", kind="pedestrian"),
        change(5.0, "nb-stop-2", "off"),
        change(6.0, "nb-stop-1", "on"),
        change(7.0, "nb-stop-1", "fault", reason="frozen"),
        change(7.0, "nb-stop-2", "fault", reason="lost"),
        change(9.0, "nb-stop-1", "restored"),
        change(9.0, "nb-stop-1", "off"),
    ]
    store.write([IngestBatch(Origin("cam-1", "main-st", 1), detector=changes)])
    store.write([IngestBatch(Origin("cam-1", "main-st", 1), detector=changes)])  # a redelivery: stored once


def test_atspm_log_merges_detectors_and_controller_events_and_pages(
    client: TestClient, tokens: dict[str, str], store: SqliteStore
) -> None:
    put_map(client, tokens)
    write_detector(store)
    phases = {"events": [{"ts": "2026-12-05T07:30:01Z", "code": 1, "param": 2},
                         {"ts": "2026-12-05T07:30:08Z", "code": 8, "param": 2}]}  # fmt: skip
    response = client.post("/v1/signals/main-5th/events", json=phases, headers=auth(tokens["writer"]))
    assert response.status_code == 202
    client.post("/v1/signals/main-5th/events", json=phases, headers=auth(tokens["writer"]))  # idempotent
    refused = {"events": [{"ts": "2026-12-05T07:30:01Z", "code": 82, "param": 5}]}
    response = client.post("/v1/signals/main-5th/events", json=refused, headers=auth(tokens["writer"]))
    assert response.status_code == 422
    assert "detector code" in response.text
    page = client.get("/v1/signals/main-5th/events", params=WINDOW, headers=auth(tokens["reader"])).json()
    rows = [(e["Timestamp"], e["EventCode"], e["EventParam"]) for e in page["events"]]
    assert rows == [
        ("2026-12-05 07:30:00.1", 82, 5),
        ("2026-12-05 07:30:01.0", 1, 2),
        ("2026-12-05 07:30:02.4", 81, 5),
        ("2026-12-05 07:30:03.0", 82, 6),
        ("2026-12-05 07:30:04.0", 90, 2),
        ("2026-12-05 07:30:05.0", 81, 6),
        ("2026-12-05 07:30:06.0", 82, 5),
        ("2026-12-05 07:30:07.0", 84, 5),
        ("2026-12-05 07:30:07.0", 85, 6),
        ("2026-12-05 07:30:08.0", 8, 2),
        ("2026-12-05 07:30:09.0", 81, 5),
        ("2026-12-05 07:30:09.0", 83, 5),
    ]
    # Pages of 5 through the cursor: every row exactly once, in order.
    seen: list[tuple[str, int, int]] = []
    params: dict[str, Any] = {**WINDOW, "limit": 5}
    while True:
        body = client.get("/v1/signals/main-5th/events", params=params, headers=auth(tokens["reader"])).json()
        seen += [(e["Timestamp"], e["EventCode"], e["EventParam"]) for e in body["events"]]
        if not body["truncated"]:
            break
        params = {"limit": 5, "cursor": body["next_cursor"]}
    assert seen == rows
    bad = client.get(
        "/v1/signals/main-5th/events", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=auth(tokens["reader"])
    )
    assert bad.status_code == 422


def test_the_csv_export_loads_unchanged_into_the_atspm_package(
    client: TestClient, tokens: dict[str, str], store: SqliteStore, tmp_path: Path
) -> None:
    atspm = pytest.importorskip("atspm")
    put_map(client, tokens)
    write_detector(store)
    response = client.get(
        "/v1/signals/main-5th/events", params=WINDOW, headers={**auth(tokens["reader"]), "Accept": "text/csv"}
    )
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.splitlines()[0] == "SignalID,Timestamp,EventCode,EventParam"
    path = tmp_path / "main-5th.csv"
    path.write_bytes(response.content)
    with atspm.SignalDataProcessor(
        raw_data=str(path), bin_size=15, verbose=0, aggregations=[{"name": "actuations", "params": {}}]
    ) as processor:
        processor.load()
        processor.aggregate()
        result = processor.conn.query(
            "SELECT DeviceId, Detector, Total FROM actuations ORDER BY Detector"
        ).fetchall()
    # Detector on (82) events per channel in the 07:30 bin: channel 5 twice, channel 6 once.
    assert [(str(d), int(det), int(n)) for d, det, n in result] == [("main-5th", 5, 2), ("main-5th", 6, 1)]


def test_movements_and_zone_statistics(
    client: TestClient, tokens: dict[str, str], store: SqliteStore
) -> None:
    put_map(client, tokens)

    def tm(minute: int, entry: str, exit_: str, cls: str, n: int, stream: str = "north") -> TurningMovement:
        return TurningMovement(interval_start=T0 + timedelta(minutes=minute), interval_s=300, stream=stream,
                               entry=entry, exit=exit_, cls=cls, count=n)  # fmt: skip

    movements = [tm(0, "north", "south", "car", 7), tm(5, "north", "south", "car", 3), tm(5, "north", "east", "car", 2),
                 tm(10, "east", "north", "truck", 1), tm(0, "north", "south", "car", 99, stream="elsewhere")]  # fmt: skip
    zones = [ZoneStat(interval_start=T0, interval_s=300, stream="north", zone="nb-stop-1", volume=12, occupancy=0.25,
                      mean_speed_kmh=31.5)]  # fmt: skip
    store.write([IngestBatch(Origin("cam-1", "main-st", 2), movements=movements, zone_stats=zones)])
    body = client.get("/v1/signals/main-5th/movements", params=WINDOW, headers=auth(tokens["reader"])).json()
    got = {(m["approach"], m["movement"], m["cls"]): m["count"] for m in body["movements"]}
    assert got == {
        ("north", "through", "car"): 10,
        ("north", "left", "car"): 2,
        ("east", "right", "truck"): 1,
    }
    # The bin length comes as a query string: ?interval=300 bins by 5 minutes, 301 is refused.
    body = client.get("/v1/signals/main-5th/movements", params={**WINDOW, "interval": "300"},
                      headers=auth(tokens["reader"])).json()  # fmt: skip
    binned = {(m["interval_start"], m["approach"], m["movement"]): m["count"] for m in body["movements"]}
    assert binned[("2026-12-05T07:30:00Z", "north", "through")] == 7
    assert binned[("2026-12-05T07:35:00Z", "north", "through")] == 3
    refused = client.get("/v1/signals/main-5th/movements", params={**WINDOW, "interval": "301"},
                         headers=auth(tokens["reader"]))  # fmt: skip
    assert refused.status_code == 422
    assert "interval" in refused.text
    response = client.get("/v1/signals/main-5th/movements", params={**WINDOW, "format": "csv"},
                          headers=auth(tokens["reader"]))  # fmt: skip
    [row] = list(csv.DictReader(io.StringIO(response.text)))
    assert row["interval_start"] == "2026-12-05T07:30:00Z"
    assert row["interval_minutes"] == "15"
    assert (row["north_car_through"], row["north_car_left"], row["east_truck_right"], row["total"]) == (
        "10",
        "2",
        "1",
        "13",
    )
    body = client.get("/v1/signals/main-5th/zones", params=WINDOW, headers=auth(tokens["reader"])).json()
    [zone] = body["zones"]
    assert (zone["channel"], zone["phase"], zone["volume"], zone["occupancy"], zone["mean_speed_kmh"]) == (
        5,
        2,
        12,
        0.25,
        31.5,
    )


def test_live_calls_over_sse_with_fail_safe_and_latency(
    client: TestClient, tokens: dict[str, str], dispatcher: CallDispatcher
) -> None:
    put_map(client, tokens)
    now = datetime.now(UTC)
    batch = IngestBatch(
        Origin("cam-1", "main-st", 3),
        detector=[
            DetectorChange(ts=now, stream="north", zone="nb-stop-1", zone_kind="presence", state="on"),
            DetectorChange(ts=now, stream="north", zone="unmapped", zone_kind="presence", state="on"),
            DetectorChange(
                ts=now, stream="north", zone="nb-stop-2", zone_kind="presence", state="fault", reason="dark"
            ),
        ],
    )
    lines: list[str] = []
    connected = threading.Event()

    def read() -> None:
        with client.stream("GET", "/v1/signals/main-5th/calls", headers=auth(tokens["reader"])) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                connected.set()
                lines.append(line)
                if sum(1 for x in lines if x.startswith("data: ")) >= 2:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert connected.wait(10)
    deadline = time.monotonic() + 10
    while not dispatcher.feed.subscribers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dispatcher.dispatch([batch]) == 2
    reader.join(10)
    calls = [decode_call(x.removeprefix("data: ")) for x in lines if x.startswith("data: ")]
    assert [(c.channel, c.state, c.called, c.event_code, c.phase) for c in calls] == [
        (5, "on", True, 82, 2),
        (6, "fault", True, 84, 2),  # fail safe: a failed zone calls
    ]
    assert [c.seq for c in calls] == [0, 1]
    assert "id: 0" in lines
    assert all(timedelta(0) <= c.hub_sent_at - c.captured_at < timedelta(seconds=30) for c in calls)


def test_retention_keeps_the_event_log_as_long_as_minute_rollups_and_summaries_as_hourly(
    store: SqliteStore,
) -> None:
    from roadside.cloud.storage.retention import RetentionPolicy
    from roadside.cloud.storage.signals import ControllerEvent, DetectorQuery, IntervalQuery

    policy = RetentionPolicy(raw_days=1, minute_days=10, hour_days=100)
    now = T0 + timedelta(days=50)
    movement = TurningMovement(interval_start=T0, interval_s=900, stream="north", entry="north", exit="south",
                               cls="car", count=1)  # fmt: skip
    store.write(
        [IngestBatch(Origin("cam-1", "main-st", 1), detector=[change(0, "z", "on")], movements=[movement])]
    )
    store.write_controller_events("main-5th", [ControllerEvent(T0, 1, 2)])
    report = store.apply_retention(policy, now)
    assert (report.deleted["detector_changes"], report.deleted["controller_events"]) == (1, 1)
    assert report.deleted["movements"] == 0
    window = (T0 - timedelta(days=1), now)
    assert store.detector_changes(DetectorQuery(*window, ("cam-1",))) == []
    assert len(store.turning_movements(IntervalQuery(*window, ("cam-1",)))) == 1
