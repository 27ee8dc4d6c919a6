"""The console over HTTP without a browser: headers, static files, links, sessions, admin, air quality.

The browser journeys are in ``tests/console``; these check what a browser
cannot show, against the real app on a real SQLite registry and store.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from roadside.cloud.api.alerting import hub_alerts
from roadside.cloud.api.app import create_app
from roadside.cloud.console import install_console
from roadside.cloud.console.links import issue
from roadside.cloud.console.web import ConsoleState
from roadside.cloud.fleet.alerts import AlertPolicy
from roadside.cloud.registry import Registry
from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.keys import KeyPair
from roadside.shared.schemas import CountRecord, DetectionEvent, Health, StreamHealth
from tests.component.air_fixtures import LOCATION, seeded_air

KEY = b"k" * 32


@dataclass
class Console:
    client: TestClient
    registry: Registry
    state: ConsoleState
    admin: str
    viewer: str
    store: SqliteStore


def _console(tmp_path: Path, **app_options: object) -> Generator[Console]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    store = SqliteStore(tmp_path / "store.db")
    app = create_app(store=store, registry=registry, metrics_registry=CollectorRegistry(), **app_options)  # type: ignore[arg-type]
    state = install_console(app, link_key=KEY)
    admin = registry.api_clients.create("ops", ["admin"])
    viewer = registry.api_clients.create("viewer", ["read:telemetry"])
    try:
        with TestClient(app, base_url="http://testserver") as client:
            yield Console(client, registry, state, admin, viewer, store)
    finally:
        store.close()
        registry.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    yield from _console(tmp_path)


def _login_csrf(client: TestClient, path: str = "/ui/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match is not None
    return match.group(1)


def sign_in(client: TestClient, token: str) -> str:
    """Sign in; returns the session's CSRF token."""
    answer = client.post("/ui/login", data={"csrf_token": _login_csrf(client), "token": token})
    assert answer.status_code == 200, answer.text
    match = re.search(r'"X-CSRF-Token": "([^"]+)"', answer.text)
    assert match is not None
    return match.group(1)


def test_pages_carry_strict_headers_and_assets_are_cached_by_hash(console: Console) -> None:
    sign_in(console.client, console.admin)
    page = console.client.get("/ui/overview")
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    scripts = re.findall(r'src="(/ui/static/[^"]+)"', page.text)
    assert len(scripts) == 3
    asset = console.client.get(scripts[0])
    assert asset.status_code == 200
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert asset.headers["content-type"].startswith("text/javascript")
    stale = re.sub(r"/static/[0-9a-f]+/", "/static/0000000000000000/", scripts[0])
    assert console.client.get(stale).status_code == 404
    assert "<script>" not in page.text, "no inline script: the policy forbids it"


def test_the_console_is_not_in_the_api_schema(console: Console) -> None:
    paths = console.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_signed_out_pages_redirect_and_fragments_tell_htmx(console: Console) -> None:
    page = console.client.get("/ui/fleet", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?notice=expired&next=/ui/fleet"
    fragment = console.client.get("/ui/overview/figures", headers={"HX-Request": "true"})
    assert fragment.status_code == 401
    assert fragment.headers["hx-redirect"].startswith("/ui/login")


def test_sign_in_refuses_bad_tokens_and_forged_forms(console: Console) -> None:
    csrf = _login_csrf(console.client)
    assert console.client.post("/ui/login", data={"csrf_token": csrf, "token": "rs_nope"}).status_code == 401
    assert (
        console.client.post("/ui/login", data={"csrf_token": "forged", "token": console.admin}).status_code
        == 403
    )
    assert "rs_session" not in console.client.cookies


def test_next_never_leaves_the_console(console: Console) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/x", "/ui\\@evil", "/ui/../api"):
        csrf = _login_csrf(console.client)
        answer = console.client.post(
            "/ui/login",
            data={"csrf_token": csrf, "token": console.admin, "next": target},
            follow_redirects=False,
        )
        assert answer.headers["location"] == "/ui/overview"


def test_a_link_is_shown_before_it_is_spent_and_is_spent_once(console: Console) -> None:
    token = issue(KEY, "viewer", time.time())
    for _ in range(2):  # a preview opening the link does not spend it
        assert "Sign in as viewer" in console.client.get(f"/ui/link/{token}").text
    csrf = _login_csrf(console.client, f"/ui/link/{token}")
    first = console.client.post(
        "/ui/link", data={"csrf_token": csrf, "link_token": token}, follow_redirects=False
    )
    assert first.status_code == 303
    csrf = _login_csrf(console.client, f"/ui/link/{token}")
    again = console.client.post("/ui/link", data={"csrf_token": csrf, "link_token": token})
    assert again.status_code == 401
    assert "already used" in again.text
    audit = [e.action for e in console.registry.audit.entries(limit=None)]
    assert audit.count("console.signin") == 1


def test_a_link_for_a_revoked_client_or_from_elsewhere_is_refused(console: Console) -> None:
    console.registry.api_clients.revoke("viewer")
    for token in (issue(KEY, "viewer", time.time()), issue(b"o" * 32, "ops", time.time())):
        csrf = _login_csrf(console.client)  # each refusal draws a fresh form
        answer = console.client.post("/ui/link", data={"csrf_token": csrf, "link_token": token})
        assert answer.status_code == 401


def test_revoking_a_token_ends_its_sessions_at_once(console: Console, tmp_path: Path) -> None:
    viewer = TestClient(console.client.app, base_url="http://testserver")
    sign_in(viewer, console.viewer)
    assert viewer.get("/ui/overview").status_code == 200
    csrf = sign_in(console.client, console.admin)
    revoked = console.client.post(
        "/ui/admin/tokens/viewer/revoke", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert revoked.status_code == 303
    assert viewer.get("/ui/overview", follow_redirects=False).status_code == 303
    assert console.registry.api_clients.get("viewer") is None


def test_a_new_token_is_shown_once_and_works(console: Console) -> None:
    csrf = sign_in(console.client, console.admin)
    answer = console.client.post(
        "/ui/admin/tokens",
        data={
            "csrf_token": csrf,
            "name": "signal-ops",
            "department": "signals",
            "scope": ["read:telemetry", "write:rollouts"],
        },
    )
    token = re.search(r'data-testid="new-token">([^<]+)<', answer.text)
    assert token is not None
    client = console.registry.api_clients.authenticate(token.group(1))
    assert client is not None
    assert client.scopes == {"read:telemetry", "write:rollouts"}
    assert token.group(1) not in console.client.get("/ui/admin").text
    bad = console.client.post("/ui/admin/tokens", data={"csrf_token": csrf, "name": "x y", "scope": "admin"})
    assert bad.status_code == 422


def test_an_admin_cannot_revoke_the_client_they_are_signed_in_with(console: Console) -> None:
    csrf = sign_in(console.client, console.admin)
    assert console.client.post("/ui/admin/tokens/ops/revoke", data={"csrf_token": csrf}).status_code == 409
    assert console.registry.api_clients.get("ops") is not None


def test_actions_on_unknown_rollouts_are_404_even_with_oversized_fields(console: Console) -> None:
    csrf = sign_in(console.client, console.admin)
    answer = console.client.post("/ui/rollouts/999/pause", data={"csrf_token": csrf, "reason": "x" * 5000})
    assert answer.status_code == 404
    assert console.client.get("/ui/rollouts/999").status_code == 404


def test_air_quality_page_without_and_with_air(console: Console, tmp_path: Path) -> None:
    sign_in(console.client, console.viewer)
    assert "not configured" in console.client.get("/ui/air").text
    air, store = seeded_air(tmp_path / "air")
    try:
        (tmp_path / "with-air").mkdir()
        for ready in _console(tmp_path / "with-air", air=air):
            sign_in(ready.client, ready.viewer)
            page = ready.client.get("/ui/air").text
            assert LOCATION in page
            assert re.search(r'class="aq aq-\d">(Good|Moderate)<', page)
    finally:
        store.close()


def test_signals_page_lists_each_signal_and_its_channels(console: Console) -> None:
    from roadside.cloud.signals.channel_map import ChannelMap

    sign_in(console.client, console.viewer)
    assert "No signals yet" in console.client.get("/ui/signals").text
    channel_map = ChannelMap.model_validate(
        {"channels": [{"channel": 2, "device": "cam-1", "stream": "north", "zone": "stopbar-n", "phase": 2}]}
    )
    console.registry.signals.set_map("main-5th", channel_map, name="Main & 5th")
    page = console.client.get("/ui/signals").text
    assert "Main &amp; 5th" in page
    assert "stopbar-n" in page
    assert 'href="/ui/signals/main-5th"' in page
    assert console.client.get("/ui/signals/elsewhere").status_code == 404


def test_a_signal_page_streams_its_calls_and_shows_its_phases(tmp_path: Path) -> None:
    from roadside.cloud.signals.calls import build_call
    from roadside.cloud.signals.channel_map import ChannelMap
    from roadside.cloud.storage.signals import ControllerEvent
    from roadside.shared.schemas import DetectorChange

    opened = _console(tmp_path, sse_max_duration_s=1.0)
    console = next(opened)
    channel_map = ChannelMap.model_validate(
        {"channels": [{"channel": 2, "device": "cam-1", "stream": "north", "zone": "stopbar-n", "phase": 2}]}
    )
    console.registry.signals.set_map("main-5th", channel_map, name="Main & 5th")
    sign_in(console.client, console.viewer)
    page = console.client.get("/ui/signals/main-5th").text
    assert '<tr data-channel="2">' in page
    assert 'data-stream="/ui/signals/main-5th/calls"' in page
    assert "No phase events in the last 10 minutes" in page
    now = datetime.now(UTC) - timedelta(seconds=30)
    console.store.write_controller_events("main-5th", [
        ControllerEvent(now, 1, 2), ControllerEvent(now + timedelta(seconds=20), 8, 2),  # phase 2: green, yellow
        ControllerEvent(now, 1, 4), ControllerEvent(now + timedelta(seconds=1), 43, 4),  # phase 4: green, called
    ])  # fmt: skip
    phases = console.client.get("/ui/signals/main-5th").text
    rows = re.findall(
        r'<tr data-phase="(\d)">.*?class="signal-light ([a-z-]+)".*?<td>(yes|no)</td></tr>', phases, re.S
    )
    assert rows == [("2", "yellow", "no"), ("4", "green", "yes")]
    feed = console.client.app.state.resources.signal_calls.feed  # type: ignore[attr-defined]
    change = DetectorChange(ts=now, stream="north", zone="stopbar-n", zone_kind="presence", state="on")
    call = build_call("main-5th", channel_map.channels[0], "cam-1", change, datetime.now(UTC), 7)
    with console.client.stream("GET", "/ui/signals/main-5th/calls") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 5
        while feed.subscribers() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        feed.offer("main-5th", [call])
        body = "".join(stream.iter_text())
    assert "event: call" in body
    assert '"channel":2' in body
    assert '"called":true' in body
    # The phases come on the same stream, once (they did not change while it ran).
    (sent,) = re.findall(r"event: phases\ndata: (.*)\n", body)
    assert [(p["phase"], p["interval"], p["called"]) for p in json.loads(sent)] == [
        (2, "yellow", False),
        (4, "green", True),
    ]
    opened.close()


def _health(at: datetime, **values: Any) -> Health:
    fields: dict[str, Any] = {"ts": at, "uptime_s": 60.0, "model_version": "det-1", "provider": "CPUExecutionProvider",
                              "outbox_backlog": 0, **values}  # fmt: skip
    return Health(**fields)


def test_the_device_page_charts_its_health_history(console: Console) -> None:
    console.registry.devices.enroll("cam-1", "main-st", KeyPair.generate().public())
    sign_in(console.client, console.viewer)
    assert "No health reports in this window" in console.client.get("/ui/fleet/cam-1").text
    now = datetime.now(UTC).replace(microsecond=0)
    reports = [_health(now - timedelta(minutes=50 - 10 * i), cpu_percent=20.0 + i, outbox_backlog=i,
                       streams={"north": StreamHealth(fps=10.0, dropped_frames=0),
                                "south": StreamHealth(fps=5.5, dropped_frames=0)})
               for i in range(5)]  # fmt: skip
    console.store.write(
        [IngestBatch(Origin("cam-1", "main-st", i + 1), health=h) for i, h in enumerate(reports)]
    )
    page = console.client.get("/ui/fleet/cam-1", params={"window": "1h"})
    assert 'data-points="5"' in page.text
    data = json.loads(re.search(r'id="health-data">(.*?)</script>', page.text, re.S).group(1))  # type: ignore[union-attr]
    series = {s["label"]: s["values"] for s in data["series"]}
    assert series["CPU"] == [20.0, 21.0, 22.0, 23.0, 24.0]
    assert series["Outbox"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert series["Frames per second"] == [15.5] * 5  # every stream of the device together
    assert series["Temperature"] == [None] * 5  # not reported: a gap, not a zero
    assert data["t"][0] == reports[0].ts.isoformat()
    # An unknown window falls back to a day; the 6 h window thins to the latest report per 72 s step.
    assert 'data-points="5"' in console.client.get("/ui/fleet/cam-1", params={"window": "bogus"}).text
    assert "the latest of every 72 s" in console.client.get("/ui/fleet/cam-1", params={"window": "6h"}).text


def test_the_overview_lists_open_alerts_and_an_operator_acknowledges_one(tmp_path: Path) -> None:
    opened = _console(tmp_path, alert_policy=AlertPolicy(offline_after_s=0.001))
    console = next(opened)
    console.registry.devices.enroll("cam-1", "main-st", KeyPair.generate().public())
    csrf = sign_in(console.client, console.viewer)
    page = console.client.get("/ui/overview").text
    assert '<span class="figure" data-testid="alerts-open">1</span>' in page
    assert "cam-1 never reported since enrollment" in page
    assert "Acknowledge</button>" not in page  # a viewer may not
    (alert,) = hub_alerts(console.client.app.state.resources)  # type: ignore[attr-defined]
    refused = console.client.post("/ui/alerts/ack", data={"csrf_token": csrf, "alert_id": alert.id})
    assert refused.status_code == 403
    console.client.cookies.clear()
    csrf = sign_in(console.client, console.admin)
    assert (
        console.client.post("/ui/alerts/ack", data={"alert_id": alert.id}).status_code == 403
    )  # no CSRF token
    done = console.client.post("/ui/alerts/ack", data={"csrf_token": csrf, "alert_id": alert.id})
    assert "Alert acknowledged" in done.text
    assert "by console:ops" in done.text
    assert '<span class="figure" data-testid="alerts-open">0</span>' in done.text
    assert [e.subject for e in console.registry.audit.entries(limit=None) if e.action == "alert.ack"] == [
        alert.id
    ]
    gone = console.client.post(
        "/ui/alerts/ack", data={"csrf_token": csrf, "alert_id": "device_offline:cam-9:1"}
    )
    assert "has closed meanwhile" in gone.text
    opened.close()


def test_the_traffic_page_shows_speeds_per_site_line_and_class_and_the_newest_redacted_sample(
    tmp_path: Path,
) -> None:
    from roadside.cloud.dataset.store import DatasetStore
    from tests.unit.test_dataset_store import example, jpeg

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    store = SqliteStore(tmp_path / "store.db")
    samples = DatasetStore(tmp_path / "dataset")
    app = create_app(store=store, registry=registry, metrics_registry=CollectorRegistry())
    install_console(app, samples=samples)
    for device_id, site in (("cam-1", "main-st"), ("cam-2", "main-st"), ("cam-3", "park")):
        registry.devices.enroll(device_id, site, KeyPair.generate().public())
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

    def crossing(device: str, site: str, seq: int, speed: float | None, cls: str = "car") -> IngestBatch:
        event = DetectionEvent(event_id=uuid.uuid4(), ts=now, type="line_crossing", stream="cam0", cls=cls,
                               line="north", direction="in", track_id=seq, confidence=0.8, speed_kmh=speed,
                               model_version="det-1")  # fmt: skip
        count = CountRecord(interval_start=now.replace(second=0), interval_s=60, line="north", cls=cls,
                            direction="in", count=1, model_version="det-1")  # fmt: skip
        return IngestBatch(Origin(device, site, seq), counts=[count], events=[event])

    # main-st's cars: 30, 40, 50 (two devices together), one without a speed; park's bus: 20.
    store.write([crossing("cam-1", "main-st", 1, 30.0), crossing("cam-2", "main-st", 2, 40.0),
                 crossing("cam-1", "main-st", 3, 50.0), crossing("cam-2", "main-st", 4, None),
                 crossing("cam-3", "park", 5, 20.0, "bus")])  # fmt: skip
    samples.add("cam-1", [example(1)])
    samples.add("cam-3", [example(2)])
    token = registry.api_clients.create("viewer", ["read:telemetry"])
    try:
        with TestClient(app, base_url="http://testserver") as client:
            sign_in(client, token)
            page = client.get("/ui/traffic").text
            speeds = re.search(r'<table id="speeds">.*?</table>', page, re.S).group(0)  # type: ignore[union-attr]
            cells = [
                re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr><td.*?</tr>", speeds)
            ]
            assert cells == [
                ["main-st", "north", "car", "3", "40.0", "50.0"],
                ["park", "north", "bus", "1", "20.0", "20.0"],
            ]
            # The newest sample of all, then of a site and of a device; the image itself, only signed in.
            newest = re.search(r'<img src="(/ui/samples/[0-9a-f]{64}\.jpg)"[^>]*alt="([^"]+)"', page)
            assert newest is not None
            assert "from cam-3" in newest.group(2)
            image = client.get(newest.group(1))
            assert image.headers["content-type"] == "image/jpeg"
            assert image.content == jpeg(2)
            main_st = client.get("/ui/traffic", params={"site": "main-st"}).text
            assert "from cam-1" in main_st
            assert "Newest sample image" not in client.get("/ui/traffic", params={"device": "cam-2"}).text
            assert client.get("/ui/samples/" + "0" * 64 + ".jpg").status_code == 404
            assert client.get("/ui/samples/nothex.jpg").status_code == 422
            client.cookies.clear()
            assert client.get(newest.group(1), follow_redirects=False).status_code == 303
    finally:
        samples.close()
        store.close()
        registry.close()


def test_sessions_in_the_registry_survive_a_restart_and_are_shared_by_hubs(tmp_path: Path) -> None:
    from roadside.cloud.console.registry_sessions import RegistrySessions

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    store = SqliteStore(tmp_path / "store.db")
    token = registry.api_clients.create("ops", ["admin"])

    def hub() -> TestClient:
        app = create_app(store=store, registry=registry, metrics_registry=CollectorRegistry())
        install_console(app, session_backend=RegistrySessions(registry.console_sessions))
        return TestClient(app, base_url="http://testserver")

    try:
        with hub() as first:
            csrf = sign_in(first, token)
            cookie = first.cookies["rs_session"]
        assert registry.console_sessions.count() == 1
        # The row holds the cookie's digest, never the cookie.
        with registry.engine.connect() as db:
            (digest,) = db.exec_driver_sql("SELECT digest FROM console_sessions").one()
        assert digest != cookie
        assert len(digest) == 64
        with hub() as second, hub() as third:  # "restarted", and a second hub beside it
            second.cookies.set("rs_session", cookie)
            third.cookies.set("rs_session", cookie)
            assert second.get("/ui/overview").status_code == 200
            assert third.get("/ui/audit").status_code == 200
            signed_out = third.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
            assert signed_out.status_code == 303
            assert second.get("/ui/overview", follow_redirects=False).status_code == 303  # ended everywhere
        assert registry.console_sessions.count() == 0
    finally:
        store.close()
        registry.close()
