"""The hub API against a real SqliteStore and a real Registry, each in a file under tmp_path.

Telemetry goes in through ``SqliteStore.write`` (as ingest writes it) and comes
out through HTTP; API keys come from ``Registry.create_api_client``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter

from cloud.api.app import create_app
from cloud.api.models import CountSeries, DeviceDetail, DeviceList, EventList, HubHealth, parse_bucket
from cloud.registry import Registry
from cloud.storage.base import IngestBatch, Origin
from cloud.storage.sqlite import SqliteStore
from shared.keys import KeyPair
from shared.schemas import CountRecord, DetectionEvent, EventType, Health, StreamHealth

PROBLEM = "application/problem+json"
T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
WINDOW = {"from": "2025-05-01T08:00:00Z", "to": "2025-05-01T10:00:00Z"}
V1_ROUTES = ["/v1/devices", "/v1/devices/cam-1", "/v1/counts", "/v1/events"]


@dataclass(frozen=True)
class Keys:
    reader: str
    admin: str
    rollouts_only: str
    devices_only: str


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    for device_id, site in [("cam-1", "site-a"), ("cam-2", "site-a"), ("cam-3", "site-b")]:
        registry.enroll(device_id, site, KeyPair.generate().public())
    yield registry
    registry.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "telemetry.db")
    yield store
    store.close()


@pytest.fixture
def metrics_registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def app(store: SqliteStore, registry: Registry, metrics_registry: CollectorRegistry) -> FastAPI:
    return create_app(
        store=store,
        registry=registry,
        metrics_registry=metrics_registry,
        version="9.9.9-test",
        max_body_bytes=1024,
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def keys(registry: Registry) -> Keys:
    return Keys(
        reader=registry.create_api_client("dashboard", ["read:telemetry"], department="traffic"),
        admin=registry.create_api_client("ops", ["admin"]),
        rollouts_only=registry.create_api_client("release-bot", ["write:rollouts"]),
        devices_only=registry.create_api_client("installer", ["write:devices"]),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def count(
    minute: int, n: int, *, line: str = "north", cls: str = "car", direction: Literal["in", "out"] = "in"
) -> CountRecord:
    return CountRecord(
        interval_start=T0 + timedelta(minutes=minute),
        interval_s=60,
        line=line,
        cls=cls,
        direction=direction,
        count=n,
        model_version="det-1",
    )


def event(ts: datetime, type_: EventType = "wrong_way") -> DetectionEvent:
    return DetectionEvent(
        event_id=uuid.uuid4(),
        ts=ts,
        type=type_,
        stream="north",
        cls="car",
        model_version="det-1",
    )


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"]
    assert "Traceback" not in response.text
    assert "rs_" not in response.text
    return body


# Authorization ----------------------------------------------------------------


@pytest.mark.parametrize("path", V1_ROUTES)
def test_v1_route_without_a_key_is_401_with_a_bearer_challenge(client: TestClient, path: str) -> None:
    response = client.get(path)
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert body["type"] == "/problems/unauthorized"


@pytest.mark.parametrize("path", V1_ROUTES)
@pytest.mark.parametrize(
    "authorization", ["Bearer rs_not-a-real-key", "Bearer nonsense", "Basic dXNlcjpwYXNz"]
)
def test_v1_route_with_an_invalid_key_is_401(client: TestClient, path: str, authorization: str) -> None:
    response = client.get(path, headers={"Authorization": authorization})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "not-a-real-key" not in response.text


@pytest.mark.parametrize("path", V1_ROUTES)
@pytest.mark.parametrize("holder", ["rollouts_only", "devices_only"])
def test_v1_route_with_a_key_lacking_the_scope_is_403(
    client: TestClient, keys: Keys, path: str, holder: str
) -> None:
    token = getattr(keys, holder)
    response = client.get(path, headers=bearer(token))
    body = assert_problem(response, 403)
    assert body["required_scope"] == "read:telemetry"
    assert "read:telemetry" in body["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert token not in response.text


@pytest.mark.parametrize("path", V1_ROUTES)
@pytest.mark.parametrize("holder", ["reader", "admin"])
def test_v1_route_with_the_scope_or_admin_is_200(
    client: TestClient, keys: Keys, path: str, holder: str
) -> None:
    response = client.get(path, headers=bearer(getattr(keys, holder)))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"


def test_auth_is_checked_before_parameters(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/v1/counts", params={"bucket": "nonsense"}), 401)
    assert_problem(
        client.get("/v1/counts", params={"bucket": "nonsense"}, headers=bearer(keys.rollouts_only)), 403
    )


# Devices ------------------------------------------------------------------------


def test_devices_list_shows_online_from_last_seen(client: TestClient, keys: Keys, registry: Registry) -> None:
    now = datetime.now(UTC)
    registry.mark_seen([("cam-1", now - timedelta(seconds=10)), ("cam-2", now - timedelta(hours=1))])

    response = client.get("/v1/devices", headers=bearer(keys.reader))

    devices = {d.device_id: d for d in DeviceList.model_validate(response.json()).devices}
    assert list(devices) == ["cam-1", "cam-2", "cam-3"]
    assert devices["cam-1"].online
    assert devices["cam-1"].site == "site-a"
    assert not devices["cam-2"].online
    assert devices["cam-2"].last_seen_at is not None
    assert not devices["cam-3"].online
    assert devices["cam-3"].last_seen_at is None
    assert devices["cam-1"].status == "active"
    assert devices["cam-1"].enrolled_at <= now


def test_devices_list_filters_by_site(client: TestClient, keys: Keys) -> None:
    response = client.get("/v1/devices", params={"site": "site-b"}, headers=bearer(keys.reader))
    assert [d["device_id"] for d in response.json()["devices"]] == ["cam-3"]


def test_device_detail_carries_the_latest_health(client: TestClient, keys: Keys, store: SqliteStore) -> None:
    def health(minute: int, version: str) -> Health:
        return Health(
            ts=T0 + timedelta(minutes=minute),
            uptime_s=60.0 * minute,
            model_version=version,
            provider="CPUExecutionProvider",
            streams={"north": StreamHealth(fps=15.0, dropped_frames=0)},
            outbox_backlog=0,
        )

    store.write([IngestBatch(Origin("cam-1", "site-a", 1), health=health(1, "det-1"))])
    store.write([IngestBatch(Origin("cam-1", "site-a", 2), health=health(2, "det-2"))])

    response = client.get("/v1/devices/cam-1", headers=bearer(keys.reader))

    detail = DeviceDetail.model_validate(response.json())
    assert detail.device_id == "cam-1"
    assert detail.health is not None
    assert detail.health.model_version == "det-2"
    assert client.get("/v1/devices/cam-2", headers=bearer(keys.reader)).json()["health"] is None


def test_unknown_device_is_a_404_problem(client: TestClient, keys: Keys) -> None:
    body = assert_problem(client.get("/v1/devices/cam-99", headers=bearer(keys.reader)), 404)
    assert body["type"] == "/problems/not-found"
    assert "cam-99" in body["detail"]
    assert body["instance"] == "/v1/devices/cam-99"


def test_malformed_device_id_is_a_422_problem(client: TestClient, keys: Keys) -> None:
    body = assert_problem(client.get("/v1/devices/bad%20id", headers=bearer(keys.reader)), 422)
    assert body["invalid_params"][0] == {
        "name": "device_id",
        "in": "path",
        "reason": body["invalid_params"][0]["reason"],
    }


# Counts -------------------------------------------------------------------------


@pytest.fixture
def counted(store: SqliteStore) -> None:
    """cam-1 and cam-2 at site-a, cam-3 at site-b; one-minute records over two hours."""
    store.write(
        [
            IngestBatch(Origin("cam-1", "site-a", 1), counts=[count(m, 1) for m in range(0, 60)]),
            # A second envelope into the same hour: sums across envelopes, not only within one.
            IngestBatch(Origin("cam-1", "site-a", 2), counts=[count(30, 5), count(75, 2)]),
            IngestBatch(Origin("cam-1", "site-a", 3), counts=[count(5, 3, direction="out")]),
            IngestBatch(Origin("cam-1", "site-a", 4), counts=[count(10, 4, line="south", cls="bicycle")]),
            IngestBatch(Origin("cam-2", "site-a", 1), counts=[count(20, 7)]),
            IngestBatch(Origin("cam-3", "site-b", 1), counts=[count(40, 11)]),
        ]
    )


def get_counts(client: TestClient, token: str, **params: str) -> CountSeries:
    response = client.get("/v1/counts", params={**WINDOW, **params}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return CountSeries.model_validate(response.json())


@pytest.mark.usefixtures("counted")
def test_counts_sum_records_into_hourly_buckets(client: TestClient, keys: Keys) -> None:
    series = get_counts(client, keys.reader, bucket="1h", device="cam-1", line="north", direction="in")

    assert series.bucket_s == 3600
    assert [(r.bucket_start, r.count) for r in series.rows] == [(T0, 60 + 5), (T0 + timedelta(hours=1), 2)]
    assert {(r.device, r.site, r.line, r.cls, r.direction) for r in series.rows} == {
        ("cam-1", "site-a", "north", "car", "in")
    }


@pytest.mark.usefixtures("counted")
def test_counts_sum_into_quarter_hours(client: TestClient, keys: Keys) -> None:
    series = get_counts(client, keys.reader, bucket="15m", device="cam-1", line="north", direction="in")

    starts = [T0 + timedelta(minutes=15 * i) for i in range(4)] + [T0 + timedelta(minutes=75)]
    assert [(r.bucket_start, r.count) for r in series.rows] == list(
        zip(starts, [15, 15, 20, 15, 2], strict=True)
    )


@pytest.mark.usefixtures("counted")
def test_counts_filter_by_device_site_line_class_direction(client: TestClient, keys: Keys) -> None:
    def total(**params: str) -> int:
        return sum(r.count for r in get_counts(client, keys.reader, bucket="1d", **params).rows)

    assert total() == 60 + 7 + 3 + 4 + 7 + 11
    assert total(device="cam-2") == 7
    assert total(site="site-b") == 11
    assert total(site="site-a") == 60 + 7 + 3 + 4 + 7
    assert total(line="south") == 4
    assert total(cls="bicycle") == 4
    assert total(direction="out") == 3
    assert total(device="cam-1", line="north", direction="in", cls="car") == 67


@pytest.mark.usefixtures("counted")
def test_counts_echo_the_window_in_utc_and_default_to_the_last_day(client: TestClient, keys: Keys) -> None:
    series = get_counts(
        client, keys.reader, **{"from": "2025-05-01T10:00:00+02:00", "to": "2025-05-01T12:00:00+02:00"}
    )
    assert (series.start, series.end) == (T0, T0 + timedelta(hours=2))
    assert series.model_dump(by_alias=True).keys() >= {"from", "to", "bucket_s", "rows"}
    assert sum(r.count for r in series.rows) == 92

    default = client.get("/v1/counts", headers=bearer(keys.reader)).json()
    start, end = datetime.fromisoformat(default["from"]), datetime.fromisoformat(default["to"])
    assert end - start == timedelta(hours=24)
    assert abs(end - datetime.now(UTC)) < timedelta(minutes=1)
    assert default["bucket_s"] == 3600
    assert default["rows"] == []


def test_an_unencoded_plus_in_an_offset_is_understood(client: TestClient, keys: Keys) -> None:
    # '+' in a raw query string decodes to a space; the API puts it back.
    url = "/v1/counts?from=2025-05-01T10:00:00+02:00&to=2025-05-01T11:00:00+02:00"
    response = client.get(url, headers=bearer(keys.reader))
    assert response.status_code == 200, response.text
    assert datetime.fromisoformat(response.json()["from"]) == T0


@pytest.mark.parametrize(
    ("params", "invalid"),
    [
        ({"bucket": "fortnight"}, "bucket"),
        ({"bucket": "0s"}, "bucket"),
        ({"bucket": "2d"}, "bucket"),
        ({"bucket": "-5"}, "bucket"),
        ({"bucket": "1s", "from": "2025-05-01T00:00:00Z", "to": "2025-05-02T00:00:00Z"}, "bucket"),
        ({"from": "2025-05-01T10:00:00Z", "to": "2025-05-01T09:00:00Z"}, "to"),
        ({"from": "2025-05-01T10:00:00Z", "to": "2025-05-01T10:00:00Z"}, "to"),
        ({"from": "2025-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"}, "to"),
        ({"from": "2025-05-01T08:00:00"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"direction": "sideways"}, "direction"),
        ({"device": "cam 1"}, "device"),
        ({"devcie": "cam-1"}, "devcie"),
    ],
)
def test_invalid_count_parameters_are_a_422_problem(
    client: TestClient, keys: Keys, params: dict[str, str], invalid: str
) -> None:
    body = assert_problem(client.get("/v1/counts", params=params, headers=bearer(keys.reader)), 422)
    assert body["type"] == "/problems/invalid-parameters"
    assert [p["name"] for p in body["invalid_params"]] == [invalid]
    assert body["invalid_params"][0]["in"] == "query"
    assert body["invalid_params"][0]["reason"]
    assert invalid in body["detail"]


def test_naive_datetime_is_refused_with_a_reason(client: TestClient, keys: Keys) -> None:
    response = client.get(
        "/v1/counts",
        params={"from": "2025-05-01T08:00:00", "to": "2025-05-01T09:00:00Z"},
        headers=bearer(keys.reader),
    )
    reason = assert_problem(response, 422)["invalid_params"][0]["reason"]
    assert "timezone" in reason


@pytest.mark.parametrize(
    ("given", "seconds"), [("60", 60), ("60s", 60), ("15m", 900), ("1h", 3600), ("1d", 86400), (30, 30)]
)
def test_bucket_durations(given: str | int, seconds: int) -> None:
    assert parse_bucket(given) == seconds


# Events -------------------------------------------------------------------------


@pytest.fixture
def five_events(store: SqliteStore) -> list[DetectionEvent]:
    events = [
        event(T0 + timedelta(minutes=i), "stopped_vehicle" if i == 2 else "wrong_way") for i in range(5)
    ]
    store.write([IngestBatch(Origin("cam-1", "site-a", 10), events=events[:3])])
    store.write([IngestBatch(Origin("cam-3", "site-b", 10), events=events[3:])])
    return events


def get_events(client: TestClient, token: str, **params: str) -> EventList:
    response = client.get("/v1/events", params={**WINDOW, **params}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return EventList.model_validate(response.json())


def test_events_are_oldest_first_and_limited(
    client: TestClient, keys: Keys, five_events: list[DetectionEvent]
) -> None:
    page = get_events(client, keys.reader, limit="3")
    assert [e.event_id for e in page.events] == [e.event_id for e in five_events[:3]]
    assert page.truncated
    assert page.limit == 3

    everything = get_events(client, keys.reader, limit="5")
    assert len(everything.events) == 5
    assert not everything.truncated
    assert everything.events[3].device == "cam-3"
    assert everything.events[3].site == "site-b"
    assert everything.events[0].stream == "north"
    assert everything.events[0].model_version == "det-1"


@pytest.mark.usefixtures("five_events")
def test_events_filter_by_type_device_and_site(client: TestClient, keys: Keys) -> None:
    assert [e.type for e in get_events(client, keys.reader, type="stopped_vehicle").events] == [
        "stopped_vehicle"
    ]
    assert len(get_events(client, keys.reader, device="cam-1").events) == 3
    assert len(get_events(client, keys.reader, site="site-b").events) == 2


def test_events_default_to_the_last_day(client: TestClient, keys: Keys, store: SqliteStore) -> None:
    recent = event(datetime.now(UTC) - timedelta(hours=1))
    store.write([IngestBatch(Origin("cam-1", "site-a", 1), events=[recent, event(T0)])])
    response = client.get("/v1/events", headers=bearer(keys.reader))
    assert [e["event_id"] for e in response.json()["events"]] == [str(recent.event_id)]


@pytest.mark.parametrize(
    ("params", "invalid"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"type": "ufo"}, "type"),
    ],
)
def test_invalid_event_parameters_are_a_422_problem(
    client: TestClient, keys: Keys, params: dict[str, str], invalid: str
) -> None:
    body = assert_problem(client.get("/v1/events", params=params, headers=bearer(keys.reader)), 422)
    assert [p["name"] for p in body["invalid_params"]] == [invalid]


# System -------------------------------------------------------------------------


def test_healthz_is_ok_without_a_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert HubHealth.model_validate(response.json()) == HubHealth(
        status="ok", version="9.9.9-test", checks={"store": "ok"}
    )


def test_a_closed_store_is_degraded_health_and_503_problems(
    client: TestClient, keys: Keys, store: SqliteStore
) -> None:
    store.close()

    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json() == {
        "status": "degraded",
        "version": "9.9.9-test",
        "checks": {"store": "unreachable"},
    }
    response = client.get("/v1/counts", headers=bearer(keys.reader))
    body = assert_problem(response, 503)
    assert body["type"] == "/problems/store-unavailable"
    assert response.headers["retry-after"]
    assert "telemetry.db" not in response.text


def test_metrics_serve_the_given_registry_and_http_requests(
    client: TestClient, keys: Keys, metrics_registry: CollectorRegistry
) -> None:
    ingested = Counter(
        "roadside_test_ingested_total", "Records ingested in this test", registry=metrics_registry
    )
    ingested.inc(3)
    client.get("/v1/devices/cam-1", headers=bearer(keys.reader))
    client.get("/v1/devices/cam-2", headers=bearer(keys.reader))
    client.get("/v1/devices/cam-2")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "roadside_test_ingested_total 3.0" in text
    assert (
        'roadside_api_requests_total{method="GET",route="/v1/devices/{device_id}",status="200"} 2.0' in text
    )
    assert (
        'roadside_api_requests_total{method="GET",route="/v1/devices/{device_id}",status="401"} 1.0' in text
    )
    assert (
        'roadside_api_request_duration_seconds_count{method="GET",route="/v1/devices/{device_id}"} 3.0'
        in text
    )


# Errors and limits ----------------------------------------------------------------


def test_oversize_body_is_a_413_problem(client: TestClient, keys: Keys) -> None:
    response = client.post("/v1/devices", content=b"x" * 4096, headers=bearer(keys.admin))
    body = assert_problem(response, 413)
    assert body["type"] == "/problems/content-too-large"


def test_oversize_chunked_body_is_a_413_problem(app: FastAPI, client: TestClient) -> None:
    @app.post("/test-echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    def chunks(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"y" * 512

    assert client.post("/test-echo", content=chunks(1)).json() == {"received": 512}
    assert_problem(client.post("/test-echo", content=chunks(8)), 413)


def test_unknown_path_and_wrong_method_are_problems(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/v2/nothing"), 404)
    response = client.delete("/v1/devices", headers=bearer(keys.admin))
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


def test_unexpected_errors_are_a_500_problem_without_details(app: FastAPI) -> None:
    @app.get("/test-boom")
    def boom() -> None:
        raise RuntimeError("secret detail rs_leaked")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/test-boom")
    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert body["type"] == "/problems/internal"


# OpenAPI --------------------------------------------------------------------------


def test_openapi_documents_security_examples_and_problems(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    assert spec["info"]["title"]
    assert spec["info"]["version"] == "9.9.9-test"
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "rs_…",
        "description": spec["components"]["securitySchemes"]["apiKey"]["description"],
    }
    operations = [(path, op) for path, item in spec["paths"].items() for op in item.values()]
    assert {path for path, _ in operations} >= {
        *V1_ROUTES[:1],
        "/v1/devices/{device_id}",
        "/v1/counts",
        "/v1/events",
        "/healthz",
        "/metrics",
    }
    for path, op in operations:
        assert op["summary"], path
        assert op["description"], path
        ok = op["responses"]["200"]["content"]
        assert any("example" in media for media in ok.values()), path
        if path.startswith("/v1/"):
            assert op["security"] == [{"apiKey": ["read:telemetry"]}], path
            for status in ("401", "403", "422"):
                assert list(op["responses"][status]["content"]) == [PROBLEM], (path, status)
    counts_params = {p["name"] for p in spec["paths"]["/v1/counts"]["get"]["parameters"]}
    assert counts_params == {"from", "to", "bucket", "device", "site", "line", "cls", "direction"}
    count_series = spec["components"]["schemas"]["CountSeries"]["properties"]
    assert {"from", "to", "bucket_s", "rows"} <= set(count_series)
