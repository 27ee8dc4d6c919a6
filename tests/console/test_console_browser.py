"""The console in a real browser (Debian's Chromium through Playwright), one test per operator journey,
against a hub, a broker and two agents started by the module's fixtures (conftest.py)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from roadside.cloud.console.links import issue, load_or_create_key
from roadside.cloud.console.sessions import SessionPolicy
from tests.console.conftest import (
    AXE,
    DESKTOP,
    DEVICES,
    MODEL,
    PHONE,
    SPARE,
    ConsoleRig,
    csrf_of,
    sign_in,
    wait_for,
)

pytestmark = pytest.mark.slow


def _shot(page: Any, rig: ConsoleRig, name: str) -> Path:
    path = rig.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _online_count(rig: ConsoleRig) -> int:
    with rig.api() as api:
        return int(api.get("/v1/fleet").json()["devices"]["online"])


def test_sign_in_with_a_token_and_with_a_one_time_link(browser: Any, console_rig: ConsoleRig) -> None:
    context = browser.new_context(viewport=DESKTOP, base_url=console_rig.url)
    page = context.new_page()
    page.goto("/ui/fleet")
    assert "/ui/login" in page.url
    page.fill("#token", "rs_not-a-token")
    page.click("button[type=submit]")
    assert "unknown or revoked" in page.inner_text(".error")
    page.fill("#token", console_rig.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/fleet$"))  # back where the operator was going
    cookie = next(c for c in context.cookies() if c["name"] == "rs_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui"
    page.click("text=Sign out")
    page.wait_for_url(re.compile(r"/ui/login"))
    page.goto("/ui/overview")
    assert "/ui/login" in page.url, "signed out means signed out"
    context.close()

    token = issue(load_or_create_key(console_rig.home.root), "ops-viewer", time.time())
    context = browser.new_context(viewport=DESKTOP, base_url=console_rig.url)
    page = context.new_page()
    page.goto(f"/ui/link/{token}")
    page.click("text=Sign in as ops-viewer")
    page.wait_for_url(re.compile(r"/ui/overview$"))
    assert "ops-viewer" in page.inner_text("header")
    other = browser.new_context(viewport=DESKTOP, base_url=console_rig.url).new_page()
    other.goto(f"/ui/link/{token}")
    other.click("text=Sign in as ops-viewer")
    assert "already used" in other.inner_text(".error")
    other.context.close()
    context.close()


def test_overview_and_fleet_show_both_demo_devices_online(admin_page: Any, console_rig: ConsoleRig) -> None:
    wait_for(lambda: _online_count(console_rig) >= 2, 60, "both agents online")
    page = admin_page
    page.goto("/ui/overview")
    page.wait_for_selector("[data-testid=online]:text-is('2')")
    wait_for(lambda: page.inner_text("[data-testid=ingest-rate]") not in ("…", "0.0"), 30, "an ingest rate")
    _shot(page, console_rig, "overview")
    page.goto("/ui/fleet")
    for device_id, site in DEVICES:
        row = page.locator(f"tr[data-device={device_id}]")
        assert row.locator(".badge").inner_text() == "online"
        assert site in row.inner_text()
    _shot(page, console_rig, "fleet")
    page.goto(f"/ui/fleet/{DEVICES[0][0]}")

    def health_shown() -> bool:
        page.reload()
        return "cam0" in page.inner_text("main")

    wait_for(health_shown, 30, "a health report")
    _shot(page, console_rig, "device")


def test_traffic_table_and_chart_match_the_counts_api(admin_page: Any, console_rig: ConsoleRig) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def api_rows(end: datetime) -> list[dict[str, Any]]:
        with console_rig.api(console_rig.viewer_token) as api:
            params = {"from": start.isoformat(), "to": end.isoformat(), "bucket": "1m"}
            return list(api.get("/v1/counts", params=params).json()["rows"])

    def closed_window_end() -> datetime | None:
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=3)
        return end if api_rows(end) else None

    # A closed window, so page and API read the same rows: it ends in the past, after the agents'
    # first counts, and intervals that started before its end get time to land.
    end = wait_for(closed_window_end, 60, "counts from the agents")
    time.sleep(5)
    rows = api_rows(end)
    expected: dict[tuple[str, ...], int] = defaultdict(int)
    for row in rows:
        expected[(row["site"], row["line"], row["cls"], row["direction"])] += row["count"]
    page = admin_page
    query = f"from={start.isoformat()}&to={end.isoformat()}&bucket=1m".replace("+", "%2B")
    page.goto(f"/ui/traffic?{query}")
    shown = {
        tuple(cells[:4]): int(cells[4])
        for cells in (r.split("\t") for r in page.locator("#totals tbody tr").all_inner_texts())
    }
    assert shown == dict(expected)
    page.wait_for_selector("#chart[data-total]")
    assert int(page.get_attribute("#chart", "data-total")) == sum(expected.values())
    _shot(page, console_rig, "traffic")
    with page.expect_download() as download:
        page.click("text=Download CSV")
    lines = Path(download.value.path()).read_text().strip().splitlines()
    assert lines[0] == "bucket_start,device,site,line,cls,direction,count"
    assert sum(int(line.rsplit(",", 1)[1]) for line in lines[1:]) == sum(expected.values())
    page.goto("/ui/events")
    _shot(page, console_rig, "events")


def test_create_pause_and_resume_a_rollout_and_find_it_in_the_audit(
    admin_page: Any, console_rig: ConsoleRig
) -> None:
    page = admin_page
    page.goto("/ui/models")
    page.select_option("#model", f"{MODEL[0]}:{MODEL[1]}")
    page.fill("#target", f"devices:{SPARE[0]}")
    page.fill("#canary", "1")
    page.fill("#waves", "100")
    page.click("text=Create rollout")
    page.wait_for_url(re.compile(r"/ui/rollouts/\d+"))
    rollout_id = int(re.search(r"/ui/rollouts/(\d+)", page.url).group(1))  # type: ignore[union-attr]
    assert "Rollout created" in page.inner_text(".notice")
    page.click("#rollout-actions button:text-is('Pause')")
    page.wait_for_selector("[data-testid=rollout-state]:text-is('paused')")
    _shot(page, console_rig, "rollout")
    page.click("#rollout-actions button:text-is('Resume')")
    page.wait_for_selector("[data-testid=rollout-state]:text-is('running')")
    page.click("#rollout-actions button:text-is('Roll back')")  # no reason: refused, nothing changes
    assert "Say why" in page.inner_text(".error")
    page.goto("/ui/audit?q=rollout")
    assert "Chain verified" in page.inner_text("[data-testid=chain]")
    audited = page.locator("#audit tbody tr").all_inner_texts()
    mine = [r for r in audited if "console:ops-admin" in r and f"\t{rollout_id}\t" in r]
    assert [r.split("\t")[3] for r in mine][:3] == ["rollout.status", "rollout.status", "rollout.create"]
    assert any("paused" in r for r in mine)
    assert any("running" in r for r in mine)
    _shot(page, console_rig, "audit")


def test_revoke_a_device_and_see_it_leave_the_online_fleet(admin_page: Any, console_rig: ConsoleRig) -> None:
    device_id = DEVICES[1][0]
    wait_for(lambda: _online_count(console_rig) >= 2, 60, "both agents online")
    page = admin_page
    page.goto(f"/ui/fleet/{device_id}")
    # The browser will not send the form unconfirmed; the hub refuses it anyway.
    unconfirmed = page.request.post(
        f"/ui/fleet/{device_id}/revoke", form={"csrf_token": csrf_of(page), "reason": "pole knocked down"}
    )
    assert unconfirmed.status == 422
    assert "to confirm" in unconfirmed.text()
    page.fill("#reason", "pole knocked down")
    page.fill("#confirm", device_id)
    page.click(f"text=Revoke {device_id}")
    page.wait_for_url(re.compile(r"notice=revoked"))
    assert page.inner_text("[data-testid=device-state]") == "revoked"
    page.goto("/ui/overview")
    page.wait_for_selector("[data-testid=online]:text-is('1')")
    assert page.inner_text("[data-testid=revoked]") == "1"
    page.goto("/ui/fleet?state=online")
    assert page.locator(f"tr[data-device={device_id}]").count() == 0
    page.goto(f"/ui/audit?q={device_id}")
    rows = page.locator("#audit tbody tr").all_inner_texts()
    assert any("console.revoke" in r and "pole knocked down" in r for r in rows)
    assert any("device.revoke" in r and "console:ops-admin" in r for r in rows)


def test_a_viewer_sees_no_controls_and_its_forged_posts_are_refused(
    viewer_page: Any, console_rig: ConsoleRig
) -> None:
    page = viewer_page
    assert page.locator("nav >> text=Admin").count() == 0
    assert page.locator("nav >> text=Audit").count() == 0
    page.goto("/ui/models")
    assert page.locator("text=New rollout").count() == 0
    rollout_id = console_rig.registry.rollouts.list()[-1].id
    page.goto(f"/ui/rollouts/{rollout_id}")
    assert page.locator("#rollout-actions").count() == 0
    page.goto(f"/ui/fleet/{DEVICES[0][0]}")
    assert page.locator("text=Revoke this device").count() == 0
    _shot(page, console_rig, "viewer-device")
    token = csrf_of(page)
    before = console_rig.registry.rollouts.get(rollout_id)
    forged = page.request.post(f"/ui/rollouts/{rollout_id}/pause", form={"csrf_token": token, "reason": "x"})
    assert forged.status == 403
    forged = page.request.post(
        f"/ui/fleet/{DEVICES[0][0]}/revoke",
        form={"csrf_token": token, "reason": "x", "confirm": DEVICES[0][0]},
    )
    assert forged.status == 403
    assert page.request.get("/ui/admin").status == 403
    assert console_rig.registry.rollouts.get(rollout_id) == before
    assert console_rig.registry.devices.get(DEVICES[0][0]).status == "active"  # type: ignore[union-attr]


def test_state_changes_without_the_csrf_token_are_refused(admin_page: Any, console_rig: ConsoleRig) -> None:
    page = admin_page
    rollout_id = console_rig.registry.rollouts.list()[-1].id
    before = console_rig.registry.rollouts.get(rollout_id)
    assert page.request.post(f"/ui/rollouts/{rollout_id}/pause", form={"reason": "x"}).status == 403
    wrong = page.request.post(f"/ui/rollouts/{rollout_id}/pause", form={"csrf_token": "guess", "reason": "x"})
    assert wrong.status == 403
    elsewhere = page.request.post(
        f"/ui/rollouts/{rollout_id}/pause",
        form={"csrf_token": csrf_of(page)},
        headers={"Origin": "https://evil.example"},
    )
    assert elsewhere.status == 403
    assert page.request.post("/ui/admin/tokens", form={"name": "sneaky", "scope": "admin"}).status == 403
    assert console_rig.registry.rollouts.get(rollout_id) == before
    assert console_rig.registry.api_clients.get("sneaky") is None


def test_an_expired_session_returns_to_sign_in(browser: Any, console_rig: ConsoleRig) -> None:
    page = sign_in(browser, console_rig, console_rig.admin_token)
    sessions = console_rig.hub.console.sessions
    kept = sessions.policy
    sessions.policy = SessionPolicy(lifetime_s=1.0, idle_s=1.0)
    try:
        time.sleep(1.2)
        page.goto("/ui/fleet")
        assert "/ui/login" in page.url
        assert "session ended" in page.inner_text(".notice")
    finally:
        sessions.policy = kept
    page.fill("#token", console_rig.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/fleet$"))
    # A page left open: its next live refresh finds the session gone and goes to sign in by itself.
    page.goto("/ui/overview")
    sessions.policy = SessionPolicy(lifetime_s=1.0, idle_s=1.0)
    try:
        page.wait_for_url(re.compile(r"/ui/login"), timeout=15_000)
    finally:
        sessions.policy = kept
    assert "session ended" in page.inner_text(".notice")
    page.context.close()


SIGNAL = "main-st-1"


def test_alerts_device_health_history_and_a_signal_live(admin_page: Any, console_rig: ConsoleRig) -> None:
    """A rolled-back rollout is an alert on the overview, acknowledged there; a device page charts its
    health reports; a signal page shows a call as the hub sends it, and the controller's phases."""
    from roadside.cloud.signals.calls import build_call
    from roadside.cloud.signals.channel_map import ChannelMap
    from roadside.shared.schemas import DetectorChange

    page = admin_page
    with console_rig.api() as api:
        created = api.post("/v1/rollouts", json={"model": f"{MODEL[0]}:{MODEL[1]}", "target": f"site:{SPARE[1]}",
                                                 "waves": [100]})  # fmt: skip
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        assert (
            api.post(f"/v1/rollouts/{rollout_id}/rollback", json={"reason": "gate: fps fell"}).status_code
            == 200
        )
        channels = {
            "channels": [
                {"channel": 1, "device": DEVICES[0][0], "stream": "cam0", "zone": "stop-n", "phase": 2}
            ]
        }
        assert api.put(f"/v1/signals/{SIGNAL}/channel-map", json=channels).status_code in (200, 201)
        now = datetime.now(UTC)
        phases = [
            {"ts": now.isoformat(), "code": 1, "param": 2},
            {"ts": now.isoformat(), "code": 11, "param": 4},
        ]
        assert api.post(f"/v1/signals/{SIGNAL}/events", json={"events": phases}).status_code == 202
    page.goto("/ui/overview")
    row = page.locator(f"tr[data-alert='rollout_failed:{rollout_id}']")
    assert "gate: fps fell" in row.inner_text()
    row.get_by_role("button", name=re.compile("^Acknowledge")).click()
    page.wait_for_url(re.compile(r"notice=alert-ack"))
    assert (
        "by console:ops-admin" in page.locator(f"tr[data-alert='rollout_failed:{rollout_id}']").inner_text()
    )
    _shot(page, console_rig, "journey-alert-acknowledged")

    # The agents report health every 2 s: the page charts what arrived since they started.
    page.goto(f"/ui/fleet/{DEVICES[0][0]}?window=1h")

    def charted() -> bool:
        page.reload()
        charts = page.locator("#health-charts")
        return charts.count() > 0 and int(charts.get_attribute("data-points") or 0) >= 2

    wait_for(charted, 30, "two health reports on the device page")
    page.wait_for_selector("body[data-ready=true]")
    assert int(page.get_attribute("#health-charts", "data-charts") or 0) >= 3  # CPU, memory, FPS at least
    _shot(page, console_rig, "journey-device-health")

    page.goto(f"/ui/signals/{SIGNAL}")
    # The stream is open once the page says "Live: ..." (:has-text would also match the
    # "Connecting to the live call stream" it says before: case-blind, a substring).
    page.wait_for_selector("#calls-state:text-matches('^Live:')")
    assert page.locator("tr[data-phase='2'] .signal-light").inner_text() == "green"
    channel_map = ChannelMap.model_validate(channels)
    change = DetectorChange(
        ts=datetime.now(UTC), stream="cam0", zone="stop-n", zone_kind="presence", state="on"
    )
    call = build_call(SIGNAL, channel_map.channels[0], DEVICES[0][0], change, datetime.now(UTC), 1)
    console_rig.hub.signal_calls.feed.offer(SIGNAL, [call])
    page.wait_for_selector("tr[data-channel='1'] .call.called")
    assert page.locator("tr[data-channel='1'] .call").inner_text() == "called (on)"
    # The controller moves phase 2 to yellow: the page shows it from the same stream, without a reload.
    with console_rig.api() as api:
        yellow = [{"ts": datetime.now(UTC).isoformat(), "code": 8, "param": 2}]
        assert api.post(f"/v1/signals/{SIGNAL}/events", json={"events": yellow}).status_code == 202
    page.wait_for_selector("tr[data-phase='2'] .signal-light.yellow")
    _shot(page, console_rig, "journey-signal-live")


PAGES = (
    "overview",
    "fleet",
    f"fleet/{DEVICES[0][0]}",
    "traffic",
    "events",
    "signals",
    f"signals/{SIGNAL}",
    "air",
    "models",
    "rollouts/1",
    "audit",
    "admin",
)


def test_every_page_has_no_serious_accessibility_violations(browser: Any, console_rig: ConsoleRig) -> None:
    # bypass_csp: axe is injected as an inline script, which the console's own policy forbids.
    page = sign_in(browser, console_rig, console_rig.admin_token, bypass_csp=True)
    problems: dict[str, list[str]] = {}
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        for path in PAGES:
            page.goto(f"/ui/{path}")
            page.wait_for_selector("body[data-ready=true]")
            page.add_script_tag(path=str(AXE))
            found = page.evaluate(
                "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
                ".map(v => v.id + ': ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '))"
            )
            if found:
                problems[f"{size_name} /ui/{path}"] = found
            _shot(page, console_rig, f"{size_name}-{path.replace('/', '-')}")
    page.context.close()
    assert problems == {}
    assert console_rig.page_errors == [], "no script errors on any page in this module"
