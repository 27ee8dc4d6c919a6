"""The hub API against a real SqliteStore and a real Registry, each in a file under tmp_path.

Telemetry goes in through ``SqliteStore.write`` (as ingest writes it) and comes
out through HTTP; API keys come from ``Registry.create_api_client``. Enrollment
and revocation go through a real hub home (CA, bundles, broker ACL) under tmp_path.
"""

from __future__ import annotations

import csv
import io
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Literal

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter
from pydantic import TypeAdapter

from roadside.cloud.air.queries import AirQueries
from roadside.cloud.api import export
from roadside.cloud.api.alerting import hub_alerts
from roadside.cloud.api.app import create_app
from roadside.cloud.api.ratelimit import RateLimit, TokenBuckets
from roadside.cloud.api.schemas import (
    CountSeries,
    DeviceDetail,
    DeviceList,
    EventList,
    FleetSummary,
    HubHealth,
    LatestSensors,
    SensorSeries,
    SpeedSeries,
    parse_bucket,
)
from roadside.cloud.api.webhooks import IPAddress, WebhookDestinations, WebhookStore
from roadside.cloud.fleet.alerts import AlertPolicy
from roadside.cloud.fleet.live import EventFilter, LiveFeed
from roadside.cloud.home import HubHome, enroll_device, init_home, write_acl
from roadside.cloud.registry import Registry
from roadside.cloud.release.controller import change_rollout, create_rollout
from roadside.cloud.release.rollouts import RolloutSpec
from roadside.cloud.signals.channel_map import parse_channel_map
from roadside.cloud.storage.base import (
    EventQuery,
    IngestBatch,
    Origin,
    SensorQuery,
    SpeedSample,
    StoredEvent,
    StoredReading,
    aggregate_speeds,
    nearest_rank,
)
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.keys import KeyPair, b64, key_registration_message
from roadside.shared.schemas import (
    CountRecord,
    DetectionEvent,
    EventType,
    Health,
    SensorReading,
    StreamHealth,
)
from tests.component.air_fixtures import LOCATION as AIR_LOCATION
from tests.component.air_fixtures import PM_SENSOR as AIR_SENSOR
from tests.component.air_fixtures import seeded_air

PROBLEM = "application/problem+json"

T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
WINDOW = {"from": "2025-05-01T08:00:00Z", "to": "2025-05-01T10:00:00Z"}
V1_ROUTES = ["/v1/devices", "/v1/devices/cam-1", "/v1/counts", "/v1/events"]
BROKER = BrokerAddress(host="mqtt.example", port=8883)


@dataclass(frozen=True)
class Keys:
    reader: str
    admin: str
    rollouts_only: str
    devices_only: str
    signals_only: str


@dataclass(frozen=True)
class Template:
    """A seeded registry database, hub home and API keys, built once per module; each test
    gets copies (a migrated registry and a CA take seconds, copying them milliseconds)."""

    registry_db: Path
    home: Path
    keys: Keys


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("api-template")
    registry = Registry(f"sqlite:///{root / 'registry.db'}")
    registry.create_schema()
    for device_id, site in [("cam-1", "site-a"), ("cam-2", "site-a"), ("cam-3", "site-b")]:
        registry.devices.enroll(device_id, site, KeyPair.generate().public())
    # Rollout 1 pending, rollout 2 paused: every rollout action has a rollout it applies to.
    registry.models.publish("detector", "1.0.0", "a" * 64, 1000)
    for _ in range(2):
        create_rollout(registry, RolloutSpec("detector", "1.0.0", "site:site-a", 1, (100,), 60.0))
    change_rollout(registry, 2, "pause")
    registry.signals.set_map("sig-1", parse_channel_map(SIGNAL_MAP))  # every signal route has a signal
    keys = Keys(
        reader=registry.api_clients.create("dashboard", ["read:telemetry"], department="traffic"),
        admin=registry.api_clients.create("ops", ["admin"]),
        rollouts_only=registry.api_clients.create("release-bot", ["write:rollouts"]),
        devices_only=registry.api_clients.create("installer", ["write:devices"]),
        signals_only=registry.api_clients.create("signal-controller", ["write:signals"]),
    )
    registry.close()
    home = init_home(root / "home", ["localhost"], ["127.0.0.1"])
    return Template(root / "registry.db", home.root, keys)


@pytest.fixture
def registry(tmp_path: Path, template: Template) -> Iterator[Registry]:
    for suffix in ("", "-wal", "-shm"):
        source = template.registry_db.with_name(template.registry_db.name + suffix)
        if source.exists():
            shutil.copyfile(source, tmp_path / ("registry.db" + suffix))
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
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
def home(tmp_path: Path, template: Template) -> HubHome:
    shutil.copytree(template.home, tmp_path / "home", symlinks=True)
    return HubHome(tmp_path / "home")


@dataclass
class Fleet:
    """The hub side of enrollment and revocation, as the hub wires it, with what it was asked."""

    home: HubHome
    registry: Registry
    revoked: list[tuple[str, str]] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)

    def enroll(self, device_id: str, site: str, *, actor: str) -> Mapping[str, Any]:
        bundle, _ = enroll_device(self.home, self.registry, device_id, site, BROKER, actor=actor)
        return bundle.model_dump()

    def revoke(self, device_id: str, *, actor: str) -> None:
        self.registry.devices.revoke(device_id, actor=actor)
        write_acl(self.home, self.registry)
        self.revoked.append((device_id, actor))


@pytest.fixture
def fleet(home: HubHome, registry: Registry) -> Fleet:
    return Fleet(home, registry)


def public_address(host: str, port: int) -> list[IPAddress]:
    """A stub resolver: every name is a global address (what a city system's would be)."""
    del host, port
    return [ip_address("93.184.215.14")]


@pytest.fixture
def webhooks(tmp_path: Path) -> Iterator[WebhookStore]:
    # *.example names are in no DNS here; a stub answers with a global address (the hub accepts those).
    webhooks = WebhookStore(
        tmp_path / "webhooks.db", destinations=WebhookDestinations(resolve=public_address)
    )
    yield webhooks
    webhooks.close()


@pytest.fixture(scope="module")
def air(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirQueries]:
    """Read-only in these tests: seeded once per module."""
    queries, air_store = seeded_air(tmp_path_factory.mktemp("air"), hours=1)
    yield queries
    air_store.close()


@pytest.fixture
def app(
    store: SqliteStore,
    registry: Registry,
    metrics_registry: CollectorRegistry,
    fleet: Fleet,
    webhooks: WebhookStore,
    air: AirQueries,
) -> FastAPI:
    return create_app(
        store=store,
        registry=registry,
        metrics_registry=metrics_registry,
        version="9.9.9-test",
        max_body_bytes=1024,
        live=LiveFeed(),
        webhooks=webhooks,
        enroll=fleet.enroll,
        revoke=fleet.revoke,
        device_status=fleet.status.get,
        rate_limit=None,
        sse_heartbeat_s=0.05,
        sse_max_duration_s=0.2,
        air=air,
        # The enrolled devices never report: each is an open "offline" alert at once, to acknowledge.
        alert_policy=AlertPolicy(offline_after_s=0.001),
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def keys(template: Template, registry: Registry) -> Keys:
    """The template's API keys, in this test's copy of its registry."""
    del registry
    return template.keys


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


# Authorization: every route × missing, invalid, wrong-scope and right key ------------------------

READ, WRITE_DEVICES, ADMIN, ROLLOUTS = "read:telemetry", "write:devices", "admin", "write:rollouts"
WRITE_SIGNALS = "write:signals"
HOLDER_SCOPES = {
    "reader": READ,
    "devices_only": WRITE_DEVICES,
    "rollouts_only": ROLLOUTS,
    "signals_only": WRITE_SIGNALS,
}
SIGNAL_MAP = {
    "channels": [{"channel": 1, "device": "cam-1", "stream": "north", "zone": "stop-1", "phase": 2}]
}


def new_public_keys(device_id: str = "cam-1", pair: KeyPair | None = None) -> dict[str, str]:
    """A key registration body, with the proof that the new Ed25519 key signed it for ``device_id``."""
    pair = pair or KeyPair.generate()
    public = pair.public()
    proof = pair.sign(key_registration_message(device_id, public))
    return {"x25519": b64(public.x25519), "ed25519": b64(public.ed25519), "proof": b64(proof)}


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # as the OpenAPI document names it
    scope: str
    path: str = ""  # concrete; ``{webhook_id}`` is filled in per test
    json: Callable[[], Any] | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = "application/json"

    @property
    def id(self) -> str:
        return f"{self.method} {self.path or self.template}"


ROUTES = [
    Route("GET", "/v1/devices", READ),
    Route("GET", "/v1/devices/{device_id}", READ, "/v1/devices/cam-1"),
    Route("GET", "/v1/devices/{device_id}/health", READ, "/v1/devices/cam-1/health"),
    Route("POST", "/v1/devices", WRITE_DEVICES, json=lambda: {"device_id": "cam-new", "site": "site-a"}),
    Route("POST", "/v1/devices/{device_id}/revoke", WRITE_DEVICES, "/v1/devices/cam-2/revoke"),
    Route(
        "POST", "/v1/devices/{device_id}/keys", WRITE_DEVICES, "/v1/devices/cam-1/keys", json=new_public_keys
    ),
    Route("GET", "/v1/fleet", READ),
    Route("GET", "/v1/alerts", READ),
    Route("POST", "/v1/alerts/{alert_id}/ack", WRITE_DEVICES, json=lambda: {"note": "crew on the way"}),
    Route("GET", "/v1/counts", READ),
    Route("GET", "/v1/speeds", READ),
    Route("GET", "/v1/events", READ),
    Route("GET", "/v1/events/stream", READ, media_type="text/event-stream"),
    Route("GET", "/v1/sensors", READ),
    Route("GET", "/v1/sensors/latest", READ),
    Route("GET", "/v1/webhooks", ADMIN),
    Route("POST", "/v1/webhooks", ADMIN, json=lambda: {"url": "https://city.example/hook"}),
    Route("GET", "/v1/webhooks/{webhook_id}", ADMIN, "/v1/webhooks/{webhook_id}"),
    Route("DELETE", "/v1/webhooks/{webhook_id}", ADMIN, "/v1/webhooks/{webhook_id}", media_type=None),
    Route("GET", "/v1/rollouts", ROLLOUTS),
    Route(
        "POST",
        "/v1/rollouts",
        ROLLOUTS,
        json=lambda: {"model": "detector:1.0.0", "target": "site:site-a", "canary": 1, "waves": [50, 100]},
    ),
    Route("GET", "/v1/rollouts/{rollout_id}", ROLLOUTS, "/v1/rollouts/1"),
    Route("POST", "/v1/rollouts/{rollout_id}/pause", ROLLOUTS, "/v1/rollouts/1/pause"),
    Route("POST", "/v1/rollouts/{rollout_id}/resume", ROLLOUTS, "/v1/rollouts/2/resume"),
    Route("POST", "/v1/rollouts/{rollout_id}/abort", ROLLOUTS, "/v1/rollouts/1/abort"),
    Route(
        "POST",
        "/v1/rollouts/{rollout_id}/rollback",
        ROLLOUTS,
        "/v1/rollouts/2/rollback",
        json=lambda: {"reason": "test"},
    ),
    Route("GET", "/v1/signals", READ),
    Route("GET", "/v1/signals/{signal}/channel-map", READ, "/v1/signals/sig-1/channel-map"),
    Route("PUT", "/v1/signals/{signal}/channel-map", WRITE_SIGNALS, "/v1/signals/sig-2/channel-map",
          json=lambda: SIGNAL_MAP),
    Route("DELETE", "/v1/signals/{signal}/channel-map/channels/{channel}", WRITE_SIGNALS,
          "/v1/signals/sig-1/channel-map/channels/1"),
    Route("GET", "/v1/signals/{signal}/events", READ, "/v1/signals/sig-1/events"),
    Route("POST", "/v1/signals/{signal}/events", WRITE_SIGNALS, "/v1/signals/sig-1/events",
          json=lambda: {"events": [{"ts": "2025-05-01T08:00:00Z", "code": 1, "param": 2}]}),
    Route("GET", "/v1/signals/{signal}/movements", READ, "/v1/signals/sig-1/movements"),
    Route("GET", "/v1/signals/{signal}/zones", READ, "/v1/signals/sig-1/zones"),
    Route("GET", "/v1/signals/{signal}/calls", READ, "/v1/signals/sig-1/calls", media_type="text/event-stream"),
    Route("GET", "/v1/air/locations", READ),
    Route("GET", "/v1/air/locations/{location_id}", READ, f"/v1/air/locations/{AIR_LOCATION}"),
    Route("GET", "/v1/air/locations/{location_id}/index", READ, f"/v1/air/locations/{AIR_LOCATION}/index"),
    Route("GET", "/v1/air/locations/{location_id}/traffic", READ, f"/v1/air/locations/{AIR_LOCATION}/traffic"),
    Route("GET", "/v1/air/sensors/{sensor_id}/measurements", READ, f"/v1/air/sensors/{AIR_SENSOR}/measurements"),
    Route("GET", "/v1/air/sensors/{sensor_id}/hours", READ, f"/v1/air/sensors/{AIR_SENSOR}/hours"),
    Route("GET", "/v1/air/sensors/{sensor_id}/days", READ, f"/v1/air/sensors/{AIR_SENSOR}/days"),
]  # fmt: skip


def _matrix(kind: Literal["wrong", "right"]) -> list[Any]:
    cases = []
    for route in ROUTES:
        if kind == "wrong":
            holders = [h for h, scope in HOLDER_SCOPES.items() if scope != route.scope]
        else:
            holders = [h for h, scope in HOLDER_SCOPES.items() if scope == route.scope] + ["admin"]
        cases += [pytest.param(route, holder, id=f"{route.id} as {holder}") for holder in holders]
    return cases


@pytest.fixture
def webhook_id(webhooks: WebhookStore) -> str:
    return webhooks.create("https://city.example/existing", EventFilter(), created_by="test").id


def call(client: TestClient, route: Route, token: str | None, webhook_id: str = "wh_0") -> Any:
    headers = bearer(token) if token is not None else {}
    path = (route.path or route.template).replace("{webhook_id}", webhook_id)
    if "{alert_id}" in path:  # an open alert of this test's hub: cam-1 has never reported
        path = path.replace("{alert_id}", hub_alerts(client.app.state.resources)[0].id)  # type: ignore[attr-defined]
    body = route.json() if route.json is not None else None
    return client.request(route.method, path, params=dict(route.params), json=body, headers=headers)


def test_the_matrix_covers_every_v1_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    documented = {
        (method.upper(), path, op["security"][0]["apiKey"][0])
        for path, item in spec["paths"].items()
        if path.startswith("/v1/")
        for method, op in item.items()
    }
    assert documented == {(r.method, r.template, r.scope) for r in ROUTES}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_every_route_without_a_key_is_401_with_a_bearer_challenge(client: TestClient, route: Route) -> None:
    response = call(client, route, None)
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="roadside"'
    assert body["type"] == "/problems/unauthorized"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
@pytest.mark.parametrize(
    "authorization", ["Bearer rs_not-a-real-key", "Bearer nonsense", "Basic dXNlcjpwYXNz"]
)
def test_every_route_with_an_invalid_key_is_401(client: TestClient, route: Route, authorization: str) -> None:
    path = (route.path or route.template).replace("{webhook_id}", "wh_0").replace("{alert_id}", "x")
    response = client.request(route.method, path, headers={"Authorization": authorization})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "not-a-real-key" not in response.text


@pytest.mark.parametrize(("route", "holder"), _matrix("wrong"))
def test_every_route_with_a_key_lacking_its_scope_is_403(
    client: TestClient, keys: Keys, route: Route, holder: str, webhook_id: str
) -> None:
    token = getattr(keys, holder)
    response = call(client, route, token, webhook_id)
    body = assert_problem(response, 403)
    assert body["required_scope"] == route.scope
    assert route.scope in body["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert token not in response.text


@pytest.mark.parametrize(("route", "holder"), _matrix("right"))
def test_every_route_with_its_scope_or_admin_succeeds(
    client: TestClient, keys: Keys, route: Route, holder: str, webhook_id: str
) -> None:
    response = call(client, route, getattr(keys, holder), webhook_id)
    assert 200 <= response.status_code < 300, response.text
    if route.media_type is None:
        assert response.content == b""
    else:
        assert response.headers["content-type"].split(";")[0] == route.media_type


def test_refusals_do_not_change_anything(
    client: TestClient, keys: Keys, registry: Registry, fleet: Fleet
) -> None:
    for token in (None, keys.reader, keys.rollouts_only):
        headers = bearer(token) if token else {}
        client.post("/v1/devices", json={"device_id": "cam-x", "site": "s"}, headers=headers)
        client.post("/v1/devices/cam-1/revoke", headers=headers)
    assert registry.devices.get("cam-x") is None
    assert fleet.revoked == []
    assert registry.devices.get("cam-1") is not None
    assert registry.devices.get("cam-1").status == "active"  # type: ignore[union-attr]


def test_auth_is_checked_before_parameters(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/v1/counts", params={"bucket": "nonsense"}), 401)
    assert_problem(
        client.get("/v1/counts", params={"bucket": "nonsense"}, headers=bearer(keys.rollouts_only)), 403
    )


# Devices ------------------------------------------------------------------------


def test_devices_list_shows_online_from_last_seen(client: TestClient, keys: Keys, registry: Registry) -> None:
    now = datetime.now(UTC)
    registry.devices.mark_seen([("cam-1", now - timedelta(seconds=10)), ("cam-2", now - timedelta(hours=1))])

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


def test_device_health_history_is_the_window_oldest_first_thinned_on_request(
    client: TestClient, keys: Keys, store: SqliteStore
) -> None:
    def health(minute: int) -> Health:
        return Health(ts=T0 + timedelta(minutes=minute), uptime_s=60.0 * minute, model_version="det-1",
                      provider="CPUExecutionProvider", outbox_backlog=minute, cpu_percent=10.0 + minute)  # fmt: skip

    store.write([IngestBatch(Origin("cam-1", "site-a", m + 1), health=health(m)) for m in range(6)])
    window = {"from": "2025-05-01T08:01:00Z", "to": "2025-05-01T08:05:00Z"}
    response = client.get("/v1/devices/cam-1/health", params=window, headers=bearer(keys.reader))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["device"], body["from"], body["step_s"]) == ("cam-1", "2025-05-01T08:01:00Z", 0)
    assert [r["outbox_backlog"] for r in body["reports"]] == [1, 2, 3, 4]
    thinned = client.get(
        "/v1/devices/cam-1/health", params={**window, "step": 120}, headers=bearer(keys.reader)
    )
    assert [r["outbox_backlog"] for r in thinned.json()["reports"]] == [
        1,
        3,
        4,
    ]  # the latest of 0-2, 2-4, 4-6
    newest = client.get(
        "/v1/devices/cam-1/health", params={**window, "limit": 2}, headers=bearer(keys.reader)
    )
    assert [r["outbox_backlog"] for r in newest.json()["reports"]] == [3, 4]
    assert (
        client.get("/v1/devices/cam-2/health", params=window, headers=bearer(keys.reader)).json()["reports"]
        == []
    )
    assert_problem(client.get("/v1/devices/cam-99/health", headers=bearer(keys.reader)), 404)
    assert_problem(
        client.get("/v1/devices/cam-1/health", params={"step": -1}, headers=bearer(keys.reader)), 422
    )


def test_alerts_list_and_acknowledge_audited(client: TestClient, keys: Keys, registry: Registry) -> None:
    body = client.get("/v1/alerts", headers=bearer(keys.reader)).json()
    assert [(a["kind"], a["subject"]) for a in body["alerts"]] == [
        ("device_offline", "cam-1"), ("device_offline", "cam-2"), ("device_offline", "cam-3")
    ]  # fmt: skip
    assert body["open"] == 3
    first = body["alerts"][0]
    assert first["acknowledged_by"] is None
    assert "never reported" in first["summary"]
    path = f"/v1/alerts/{first['id']}/ack"
    assert_problem(client.post(path, headers=bearer(keys.reader)), 403)
    acked = client.post(path, json={"note": "crew on the way"}, headers=bearer(keys.devices_only))
    assert acked.status_code == 200, acked.text
    assert acked.json()["acknowledged_by"] == "api:installer"
    again = client.post(path, headers=bearer(keys.admin)).json()  # the first acknowledgement stays
    assert again["acknowledged_by"] == "api:installer"
    entries = [e for e in registry.audit.entries(limit=None) if e.action == "alert.ack"]
    assert [(e.actor, e.subject, e.details["note"]) for e in entries] == [
        ("api:installer", first["id"], "crew on the way")
    ]
    listed = client.get("/v1/alerts", headers=bearer(keys.reader)).json()
    assert listed["open"] == 2
    assert listed["alerts"][0]["acknowledged_by"] == "api:installer"
    unacked = client.get("/v1/alerts", params={"acknowledged": "false"}, headers=bearer(keys.reader)).json()
    assert [a["subject"] for a in unacked["alerts"]] == ["cam-2", "cam-3"]
    assert (
        client.get("/v1/alerts", params={"kind": "stream_down"}, headers=bearer(keys.reader)).json()["alerts"]
        == []
    )
    assert_problem(client.get("/v1/alerts", params={"kind": "ufo"}, headers=bearer(keys.reader)), 422)
    assert_problem(client.post("/v1/alerts/device_offline:cam-9:1/ack", headers=bearer(keys.admin)), 404)
    assert_problem(client.post(path, json={"note": "x" * 600}, headers=bearer(keys.admin)), 422)


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
    assert {path for path, _ in operations} >= {r.template for r in ROUTES} | {"/healthz", "/metrics"}
    scopes = {(r.method, r.template): r.scope for r in ROUTES}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            where = (method.upper(), path)
            assert op["summary"], where
            assert op["description"], where
            success = next(status for status in op["responses"] if status.startswith("2"))
            for media_type, media in op["responses"][success].get("content", {}).items():
                assert "example" in media, (where, media_type)
            if "requestBody" in op:
                body_schema = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert spec["components"]["schemas"][body_schema.rsplit("/", 1)[1]]["examples"], where
            if path.startswith("/v1/"):
                for status, response in op["responses"].items():
                    if status[0] in "45":
                        assert list(response["content"]) == [PROBLEM], (where, status)
                assert op["security"] == [{"apiKey": [scopes[where]]}], where
                assert {"401", "403", "429"} <= set(op["responses"]), where
                if op.get("parameters") or "requestBody" in op:
                    assert "422" in op["responses"], where
    counts_params = {p["name"] for p in spec["paths"]["/v1/counts"]["get"]["parameters"]}
    assert counts_params == {"from", "to", "bucket", "device", "site", "line", "cls", "direction", "format"}
    count_series = spec["components"]["schemas"]["CountSeries"]["properties"]
    assert {"from", "to", "bucket_s", "rows"} <= set(count_series)


# Enrollment, revocation, key rotation ----------------------------------------------------


def test_enrolling_by_api_returns_the_bundle_once_and_audits_the_client(
    client: TestClient, keys: Keys, registry: Registry, home: HubHome
) -> None:
    response = client.post(
        "/v1/devices", json={"device_id": "cam-9", "site": "site-c"}, headers=bearer(keys.devices_only)
    )

    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["location"] == "/v1/devices/cam-9"
    bundle = EnrollmentBundle.model_validate(response.json()).check()
    assert (bundle.device_id, bundle.site, bundle.broker) == ("cam-9", "site-c", BROKER)
    assert bundle.keypair().public().kid == registry.devices.active_keys("cam-9")[0].kid
    # The broker's ACL patterns let the new name in: the file does not change (ADR 0022).
    assert "cam-9" not in home.acl_file.read_text()
    entry = registry.audit.entries()[-1]
    assert (entry.actor, entry.action, entry.subject) == ("api:installer", "device.enroll", "cam-9")

    listed = client.get("/v1/devices/cam-9", headers=bearer(keys.reader)).json()
    assert listed["status"] == "active"
    assert "client_key_pem" not in listed


def test_enrolling_an_enrolled_id_is_a_409_and_bad_bodies_are_422(client: TestClient, keys: Keys) -> None:
    token = bearer(keys.devices_only)
    body = assert_problem(
        client.post("/v1/devices", json={"device_id": "cam-1", "site": "x"}, headers=token), 409
    )
    assert "cam-1" in body["detail"]
    for bad in (
        {"device_id": "cam 1", "site": "x"},
        {"device_id": "cam-7"},
        {"device_id": "a", "site": "b", "x": 1},
    ):
        assert_problem(client.post("/v1/devices", json=bad, headers=token), 422)
    not_json = {**token, "Content-Type": "application/json"}
    body = assert_problem(client.post("/v1/devices", content=b"{not json", headers=not_json), 422)
    assert body["invalid_params"] == [{"name": "body", "in": "body", "reason": "JSON decode error"}]


def test_revoking_refuses_the_device_regenerates_the_acl_and_audits(
    client: TestClient, keys: Keys, registry: Registry, fleet: Fleet, home: HubHome
) -> None:
    kid = registry.devices.active_keys("cam-2")[0].kid
    write_acl(home, registry)
    assert "user cam-2" not in home.acl_file.read_text()  # devices have patterns, not rules

    response = client.post("/v1/devices/cam-2/revoke", headers=bearer(keys.devices_only))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked"
    assert fleet.revoked == [("cam-2", "api:installer")]
    assert registry.devices.key("cam-2", kid) is None
    assert "user cam-2\ntopic deny #\n" in home.acl_file.read_text()  # before any pattern
    entry = registry.audit.entries()[-1]
    assert (entry.actor, entry.action, entry.subject) == ("api:installer", "device.revoke", "cam-2")
    # Again: nothing more happens.
    assert client.post("/v1/devices/cam-2/revoke", headers=bearer(keys.admin)).status_code == 200
    assert len(fleet.revoked) == 1
    assert_problem(client.post("/v1/devices/cam-99/revoke", headers=bearer(keys.admin)), 404)


def test_adding_keys_lets_the_device_rotate_without_downtime(
    client: TestClient, keys: Keys, registry: Registry
) -> None:
    old_kid = registry.devices.active_keys("cam-1")[0].kid
    pair = KeyPair.generate()
    new = pair.public()
    body = new_public_keys("cam-1", pair)

    response = client.post("/v1/devices/cam-1/keys", json=body, headers=bearer(keys.devices_only))

    assert response.status_code == 201, response.text
    assert response.json() == {"device_id": "cam-1", "kid": new.kid, "active_keys": 2}
    assert registry.devices.key("cam-1", new.kid) is not None
    assert registry.devices.key("cam-1", old_kid) is not None  # both accepted while the device switches
    assert registry.audit.entries()[-1].actor == "api:installer"
    assert_problem(client.post("/v1/devices/cam-1/keys", json=body, headers=bearer(keys.admin)), 409)


@pytest.mark.parametrize(
    "body",
    [
        {"x25519": "bm90IGEga2V5", "ed25519": "bm90IGEga2V5"},
        {"x25519": "!" * 43 + "=", "ed25519": "A" * 43 + "="},
        {"x25519": "A" * 43 + "="},
    ],
)
def test_malformed_keys_are_a_422(client: TestClient, keys: Keys, body: dict[str, str]) -> None:
    assert_problem(client.post("/v1/devices/cam-1/keys", json=body, headers=bearer(keys.admin)), 422)


def test_keys_for_unknown_or_revoked_devices_are_refused(
    client: TestClient, keys: Keys, registry: Registry
) -> None:
    registry.devices.revoke("cam-2")
    token = bearer(keys.admin)
    assert_problem(client.post("/v1/devices/cam-99/keys", json=new_public_keys("cam-99"), headers=token), 404)
    assert_problem(client.post("/v1/devices/cam-2/keys", json=new_public_keys("cam-2"), headers=token), 409)


def test_keys_without_proof_of_possession_are_refused(
    client: TestClient, keys: Keys, registry: Registry
) -> None:
    token = bearer(keys.admin)
    someone_elses = KeyPair.generate()
    unsigned = {k: v for k, v in new_public_keys("cam-1", someone_elses).items() if k != "proof"}
    assert_problem(client.post("/v1/devices/cam-1/keys", json=unsigned, headers=token), 422)
    # A proof made for another device, or by another key, does not verify for these keys here.
    for_cam_2 = new_public_keys("cam-2", someone_elses)
    assert_problem(client.post("/v1/devices/cam-1/keys", json=for_cam_2, headers=token), 422)
    forged = {**new_public_keys("cam-1"), "ed25519": b64(someone_elses.public().ed25519)}
    assert_problem(client.post("/v1/devices/cam-1/keys", json=forged, headers=token), 422)
    assert len(registry.devices.active_keys("cam-1")) == 1


def test_fleet_writes_without_hub_hooks_are_501(store: SqliteStore, registry: Registry, keys: Keys) -> None:
    app = create_app(store=store, registry=registry, metrics_registry=CollectorRegistry())
    with TestClient(app) as plain:
        token = bearer(keys.admin)
        body = assert_problem(
            plain.post("/v1/devices", json={"device_id": "c", "site": "s"}, headers=token), 501
        )
        assert body["type"] == "/problems/not-configured"
        assert_problem(plain.post("/v1/devices/cam-1/revoke", headers=token), 501)
        assert_problem(plain.get("/v1/webhooks", headers=token), 501)


# Liveness and the fleet ----------------------------------------------------------------------


def test_the_last_will_decides_online_when_the_hub_knows_it(
    client: TestClient, keys: Keys, registry: Registry, fleet: Fleet
) -> None:
    now = datetime.now(UTC)
    registry.devices.mark_seen([("cam-1", now), ("cam-2", now - timedelta(hours=1))])
    fleet.status.update({"cam-1": "offline", "cam-2": "online"})

    devices = {
        d["device_id"]: d for d in client.get("/v1/devices", headers=bearer(keys.reader)).json()["devices"]
    }

    assert (devices["cam-1"]["connection"], devices["cam-1"]["online"]) == ("offline", False)
    assert (devices["cam-2"]["connection"], devices["cam-2"]["online"]) == ("online", True)
    assert (devices["cam-3"]["connection"], devices["cam-3"]["online"]) == (None, False)
    detail = client.get("/v1/devices/cam-1", headers=bearer(keys.reader)).json()
    assert detail["connection"] == "offline"


def test_device_lists_are_limited_and_page_by_id(client: TestClient, keys: Keys) -> None:
    first = DeviceList.model_validate(
        client.get("/v1/devices", params={"limit": "2"}, headers=bearer(keys.reader)).json()
    )
    assert [d.device_id for d in first.devices] == ["cam-1", "cam-2"]
    assert first.truncated
    rest = client.get(
        "/v1/devices", params={"limit": "2", "after": "cam-2"}, headers=bearer(keys.reader)
    ).json()
    assert [d["device_id"] for d in rest["devices"]] == ["cam-3"]
    assert not rest["truncated"]
    assert_problem(client.get("/v1/devices", params={"limit": "0"}, headers=bearer(keys.reader)), 422)


def test_fleet_summary_counts_devices_per_site(
    client: TestClient, keys: Keys, registry: Registry, fleet: Fleet
) -> None:
    seen = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
    registry.devices.mark_seen([("cam-1", seen), ("cam-3", seen - timedelta(minutes=5))])
    registry.devices.revoke("cam-2")
    fleet.status["cam-1"] = "online"

    summary = FleetSummary.model_validate(client.get("/v1/fleet", headers=bearer(keys.reader)).json())

    assert summary.devices.model_dump() == {"total": 3, "active": 2, "revoked": 1, "online": 1, "offline": 1}
    assert [(s.site, s.total, s.active, s.revoked, s.online, s.offline) for s in summary.sites] == [
        ("site-a", 2, 1, 1, 1, 0),
        ("site-b", 1, 1, 0, 0, 1),
    ]
    assert summary.last_ingest_at == seen


# Speeds ---------------------------------------------------------------------------------------


def speeding(minute: int, kmh: float, *, line: str = "north", cls: str = "car") -> DetectionEvent:
    return DetectionEvent(
        event_id=uuid.uuid4(),
        ts=T0 + timedelta(minutes=minute),
        type="line_crossing",
        stream="north",
        cls=cls,
        line=line,
        direction="in",
        speed_kmh=kmh,
        model_version="det-1",
    )


@pytest.fixture
def speeds_stored(store: SqliteStore) -> None:
    # 20 cars in the first hour at 31..50 km/h, 2 bicycles, 1 car in the second hour; one event without speed.
    cars = [speeding(i, 31.0 + i) for i in range(20)]
    store.write(
        [
            IngestBatch(Origin("cam-1", "site-a", 1), events=[*cars, event(T0 + timedelta(minutes=3))]),
            IngestBatch(
                Origin("cam-1", "site-a", 2),
                events=[speeding(5, 18.0, cls="bicycle"), speeding(6, 22.0, cls="bicycle")],
            ),
            IngestBatch(Origin("cam-1", "site-a", 3), events=[speeding(70, 44.0)]),
            IngestBatch(Origin("cam-3", "site-b", 1), events=[speeding(10, 60.0, line="south")]),
        ]
    )


@pytest.mark.usefixtures("speeds_stored")
def test_speeds_give_count_mean_and_p85_per_bucket_line_and_class(client: TestClient, keys: Keys) -> None:
    response = client.get(
        "/v1/speeds", params={**WINDOW, "bucket": "1h", "device": "cam-1"}, headers=bearer(keys.reader)
    )
    series = SpeedSeries.model_validate(response.json())

    rows = [(r.bucket_start, r.line, r.cls, r.count, r.mean_kmh, r.p85_kmh) for r in series.rows]
    assert rows == [
        (T0, "north", "bicycle", 2, 20.0, 22.0),
        (T0, "north", "car", 20, 40.5, 47.0),  # nearest rank: the 17th of 20
        (T0 + timedelta(hours=1), "north", "car", 1, 44.0, 44.0),
    ]
    assert series.bucket_s == 3600


@pytest.mark.usefixtures("speeds_stored")
def test_speeds_filter_like_counts(client: TestClient, keys: Keys) -> None:
    def rows(**params: str) -> list[tuple[str, str | None, int]]:
        body = client.get(
            "/v1/speeds", params={**WINDOW, "bucket": "1d", **params}, headers=bearer(keys.reader)
        ).json()
        return [(r["device"], r["cls"], r["count"]) for r in body["rows"]]

    assert rows(site="site-b") == [("cam-3", "car", 1)]
    assert rows(cls="bicycle") == [("cam-1", "bicycle", 2)]
    assert rows(line="south") == [("cam-3", "car", 1)]
    assert rows(direction="out") == []
    assert rows(type="wrong_way") == []


def test_nearest_rank_percentile_and_aggregation() -> None:
    assert nearest_rank([1.0], 0.85) == 1.0
    assert nearest_rank([float(v) for v in range(1, 101)], 0.85) == 85.0
    assert nearest_rank([10.0, 20.0, 30.0], 0.85) == 30.0
    samples = [SpeedSample(T0, "d", "s", None, "car", v) for v in (10.0, 20.0)]
    (bucket,) = aggregate_speeds(samples)
    assert (bucket.count, bucket.mean_kmh, bucket.p85_kmh, bucket.line) == (2, 15.0, 20.0, None)


# Event pages ------------------------------------------------------------------------------------


class CoreOnlyStore:
    """A store with only the core protocol (like the Influx adapters): the API falls back."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner

    def events(self, query: EventQuery) -> list[StoredEvent]:
        return self._inner.events(query)

    def sensor_series(self, query: SensorQuery) -> list[StoredReading]:
        return self._inner.sensor_series(query)

    def __getattr__(self, name: str) -> Any:
        if name in ("events_after", "latest_sensors", "speed_samples"):
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.fixture(params=["sqlite", "core-only"])
def paging_client(request: pytest.FixtureRequest, app: FastAPI, store: SqliteStore) -> Iterator[TestClient]:
    if request.param == "core-only":
        app.state.resources = replace(app.state.resources, store=CoreOnlyStore(store))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def tied_events(store: SqliteStore) -> list[DetectionEvent]:
    """25 events, many sharing a timestamp, from two devices in several envelopes."""
    events = [event(T0 + timedelta(minutes=i // 5)) for i in range(25)]
    store.write([IngestBatch(Origin("cam-1", "site-a", 20), events=events[:12])])
    store.write([IngestBatch(Origin("cam-3", "site-b", 20), events=events[12:])])
    return sorted(events, key=lambda e: (e.ts, str(e.event_id)))


def test_cursor_pages_are_stable_and_complete(
    paging_client: TestClient, keys: Keys, tied_events: list[DetectionEvent], store: SqliteStore
) -> None:
    seen: list[uuid.UUID] = []
    params: dict[str, str] = {**WINDOW, "limit": "4"}
    pages = 0
    while True:
        page = get_events(paging_client, keys.reader, **params)
        seen += [e.event_id for e in page.events]
        pages += 1
        if pages == 2:  # an event arriving mid-way, before the cursor, is not shown twice or shifted in
            store.write([IngestBatch(Origin("cam-1", "site-a", 99), events=[event(T0)])])
        if page.next_cursor is None:
            assert not page.truncated
            break
        assert page.truncated
        params = {"limit": "4", "cursor": page.next_cursor}
    assert seen == [e.event_id for e in tied_events]
    assert pages == 7


@pytest.mark.usefixtures("tied_events")
def test_cursor_keeps_its_window_and_filters(client: TestClient, keys: Keys) -> None:
    first = get_events(client, keys.reader, device="cam-1", limit="10")
    assert first.next_cursor is not None
    second = get_events(client, keys.reader, device="cam-1", limit="10", cursor=first.next_cursor)
    assert (second.start, second.end) == (first.start, first.end)
    assert [e.device for e in second.events] == ["cam-1", "cam-1"]

    response = client.get(
        "/v1/events", params={"cursor": first.next_cursor, "device": "cam-3"}, headers=bearer(keys.reader)
    )
    body = assert_problem(response, 422)
    assert body["invalid_params"][0]["name"] == "cursor"


@pytest.mark.parametrize("cursor", ["garbage", "WzFd", "W10", "x" * 600, "eyJhIjoxfQ"])
def test_malformed_cursors_are_a_422(client: TestClient, keys: Keys, cursor: str) -> None:
    body = assert_problem(
        client.get("/v1/events", params={"cursor": cursor}, headers=bearer(keys.reader)), 422
    )
    assert [p["name"] for p in body["invalid_params"]] == ["cursor"]


@pytest.mark.usefixtures("tied_events")
def test_the_next_page_is_also_a_link_header(client: TestClient, keys: Keys) -> None:
    response = client.get("/v1/events", params={**WINDOW, "limit": "20"}, headers=bearer(keys.reader))
    link = response.headers["link"]
    assert link.endswith('>; rel="next"')
    follow = client.get(link[1 : link.index(">")], headers=bearer(keys.reader)).json()
    assert len(follow["events"]) == 5
    assert "link" not in client.get(link[1 : link.index(">")], headers=bearer(keys.reader)).headers


# Sensors --------------------------------------------------------------------------------------------


def reading(minute: int, value: float, *, sensor: str = "air-1", quantity: str = "pm25") -> SensorReading:
    return SensorReading(
        ts=T0 + timedelta(minutes=minute), sensor=sensor, quantity=quantity, value=value, unit="ug/m3"
    )


@pytest.fixture
def sensed(store: SqliteStore) -> None:
    store.write(
        [
            IngestBatch(Origin("cam-1", "site-a", 30), sensors=[reading(m, 10.0 + m) for m in range(5)]),
            IngestBatch(Origin("cam-1", "site-a", 31), sensors=[reading(2, 40.0, quantity="no2")]),
            IngestBatch(Origin("cam-3", "site-b", 30), sensors=[reading(1, 7.0), reading(3, 8.0)]),
        ]
    )


@pytest.mark.usefixtures("sensed")
def test_sensor_series_are_oldest_first_filtered_and_limited(client: TestClient, keys: Keys) -> None:
    def series(**params: str) -> SensorSeries:
        response = client.get("/v1/sensors", params={**WINDOW, **params}, headers=bearer(keys.reader))
        return SensorSeries.model_validate(response.json())

    everything = series()
    assert len(everything.readings) == 8
    assert [r.ts for r in everything.readings] == sorted(r.ts for r in everything.readings)
    assert [r.value for r in series(device="cam-3").readings] == [7.0, 8.0]
    assert [r.value for r in series(quantity="no2").readings] == [40.0]
    limited = series(limit="3")
    assert (len(limited.readings), limited.truncated) == (3, True)
    assert limited.readings[0].site == "site-a"


@pytest.mark.usefixtures("sensed")
def test_latest_sensor_values_per_device_sensor_and_quantity(paging_client: TestClient, keys: Keys) -> None:
    response = paging_client.get("/v1/sensors/latest", params=WINDOW, headers=bearer(keys.reader))
    latest = LatestSensors.model_validate(response.json())
    assert [(r.device, r.quantity, r.value, r.ts) for r in latest.readings] == [
        ("cam-1", "no2", 40.0, T0 + timedelta(minutes=2)),
        ("cam-1", "pm25", 14.0, T0 + timedelta(minutes=4)),
        ("cam-3", "pm25", 8.0, T0 + timedelta(minutes=3)),
    ]
    site_b = paging_client.get(
        "/v1/sensors/latest", params={**WINDOW, "site": "site-b"}, headers=bearer(keys.reader)
    )
    assert [r["value"] for r in site_b.json()["readings"]] == [8.0]


# CSV ----------------------------------------------------------------------------------------------


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.usefixtures("counted")
@pytest.mark.parametrize("how", ["format", "accept"])
def test_counts_export_as_csv(client: TestClient, keys: Keys, how: str) -> None:
    params = {**WINDOW, "bucket": "1h", "device": "cam-1", "line": "north", "direction": "in"}
    headers = bearer(keys.reader)
    if how == "format":
        params["format"] = "csv"
    else:
        headers["Accept"] = "text/csv"
    response = client.get("/v1/counts", params=params, headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == 'attachment; filename="counts.csv"'
    rows = parse_csv(response.text)
    assert [(r["bucket_start"], r["count"]) for r in rows] == [
        ("2025-05-01T08:00:00Z", "65"),
        ("2025-05-01T09:00:00Z", "2"),
    ]
    assert list(rows[0]) == ["bucket_start", "device", "site", "line", "cls", "direction", "count"]


@pytest.mark.usefixtures("speeds_stored", "sensed", "tied_events")
@pytest.mark.parametrize(
    ("path", "columns"),
    [
        ("/v1/speeds", {"bucket_start", "p85_kmh"}),
        ("/v1/events", {"event_id", "ts", "speed_kmh"}),
        ("/v1/sensors", {"ts", "quantity", "value"}),
        ("/v1/sensors/latest", {"sensor", "value"}),
    ],
)
def test_every_series_exports_as_csv(client: TestClient, keys: Keys, path: str, columns: set[str]) -> None:
    response = client.get(path, params={**WINDOW, "format": "csv"}, headers=bearer(keys.reader))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = parse_csv(response.text)
    assert rows
    assert columns <= set(rows[0])


def test_json_stays_the_default(client: TestClient, keys: Keys) -> None:
    for accept in ("*/*", "application/json", "text/html,*/*;q=0.8", "text/csv;q=0.5, application/json"):
        response = client.get("/v1/counts", headers={**bearer(keys.reader), "Accept": accept})
        assert response.headers["content-type"] == "application/json", accept
    assert export.wants_csv("text/csv;q=0.9, application/json;q=0.5", None)
    assert not export.wants_csv("text/csv", "json")


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("-north", "'-north"),
        ("+1", "'+1"),
        ("@sum", "'@sum"),
        ("north", "north"),
        (-3.5, "-3.5"),
        (None, ""),
        (True, "true"),
        (datetime(2025, 5, 1, 10, 0, tzinfo=UTC), "2025-05-01T10:00:00Z"),
    ],
)
def test_csv_cells_never_run_as_spreadsheet_formulas(value: object, cell: str) -> None:
    assert export.cell(value) == cell


# Rate limits -------------------------------------------------------------------------------------


def test_each_api_key_has_a_token_bucket(store: SqliteStore, registry: Registry, keys: Keys) -> None:
    app = create_app(
        store=store,
        registry=registry,
        metrics_registry=CollectorRegistry(),
        rate_limit=RateLimit(per_s=0.5, burst=3),
    )
    with TestClient(app) as limited:
        statuses = [limited.get("/v1/devices", headers=bearer(keys.reader)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        response = limited.get("/v1/fleet", headers=bearer(keys.reader))
        body = assert_problem(response, 429)
        assert body["type"] == "/problems/rate-limited"
        assert int(response.headers["retry-after"]) >= 1
        # Another key has its own bucket; refusals before authentication take no token.
        assert limited.get("/v1/devices", headers=bearer(keys.admin)).status_code == 200
        assert limited.get("/v1/devices").status_code == 401


def test_token_buckets_refill_over_time() -> None:
    now = [0.0]
    buckets = TokenBuckets(RateLimit(per_s=2.0, burst=2), clock=lambda: now[0])
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("b") == 0.0
    now[0] = 100.0
    assert [buckets.take("a"), buckets.take("a"), buckets.take("a") > 0] == [0.0, 0.0, True]


def test_list_limits_are_enforced(client: TestClient, keys: Keys) -> None:
    for path, limit in (("/v1/events", "1001"), ("/v1/sensors", "10001"), ("/v1/devices", "10001")):
        assert_problem(client.get(path, params={"limit": limit}, headers=bearer(keys.reader)), 422)


def test_documented_examples_are_valid_answers_and_bodies() -> None:
    from fastapi.routing import APIRoute

    from roadside.cloud.api.routes import ROUTERS

    checked = 0
    for route in (route for router in ROUTERS for route in router.routes):
        if not isinstance(route, APIRoute) or route.response_model is None:
            continue
        status = route.status_code or 200
        example = route.responses[status]["content"]["application/json"]["example"]
        TypeAdapter(route.response_model).validate_python(example)
        checked += 1
        body = route.body_field
        if body is not None:
            model = body.field_info.annotation
            for body_example in model.model_config["json_schema_extra"]["examples"]:  # type: ignore[union-attr]
                model.model_validate(body_example)  # type: ignore[union-attr]
    assert checked >= 14


# Rollouts: refusals are problems that say what to change -------------------------------------


def test_rollout_refusals_are_clear_problems(client: TestClient, keys: Keys) -> None:
    headers = bearer(keys.rollouts_only)
    body = {"model": "detector:9.9.9", "target": "site:site-a", "waves": [100]}
    unpublished = assert_problem(client.post("/v1/rollouts", json=body, headers=headers), 422)
    assert "not published" in unpublished["detail"]
    body = {"model": "detector:1.0.0", "target": "site:nowhere", "waves": [100]}
    assert (
        "no active device"
        in assert_problem(client.post("/v1/rollouts", json=body, headers=headers), 422)["detail"]
    )
    body = {"model": "detector:1.0.0", "waves": [50, 20]}
    assert (
        "rising percentages"
        in assert_problem(client.post("/v1/rollouts", json=body, headers=headers), 422)["detail"]
    )
    assert_problem(client.get("/v1/rollouts/99", headers=headers), 404)
    resumed = assert_problem(client.post("/v1/rollouts/1/resume", headers=headers), 409)
    assert "it is pending" in resumed["detail"]


def test_a_rollout_created_through_the_api_is_audited_with_its_client(
    client: TestClient, keys: Keys, registry: Registry
) -> None:
    body = {"model": "detector:1.0.0", "target": "site:site-a", "canary": 1, "waves": [100], "soak": "30s"}
    response = client.post("/v1/rollouts", json=body, headers=bearer(keys.rollouts_only))
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/rollouts/{created['id']}"
    assert created["spec"]["soak_s"] == 30.0
    assert sum(w["devices"] for w in created["waves"]) == 2
    paused = client.post(
        f"/v1/rollouts/{created['id']}/pause", json={"reason": "storm"}, headers=bearer(keys.admin)
    ).json()
    assert paused["status"] == "paused"
    entries = [e for e in registry.audit.entries(limit=None) if e.subject == str(created["id"])]
    assert [(e.action, e.actor) for e in entries] == [
        ("rollout.create", "api:release-bot"),
        ("rollout.status", "api:ops"),
    ]
    assert entries[1].details["reason"] == "storm"
