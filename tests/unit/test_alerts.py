"""Open alerts derived from the hub's state (roadside.cloud.fleet.alerts): pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from roadside.cloud.fleet.alerts import (
    AirState,
    AlertPolicy,
    DeviceState,
    HubState,
    exceeding_since,
    mark_acknowledged,
    open_alerts,
)
from roadside.cloud.registry.records import RolloutRecord
from roadside.shared.schemas import Health, StreamHealth

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


def device(
    device_id: str, *, online: bool = True, seen: datetime | None = NOW, active: bool = True
) -> DeviceState:
    return DeviceState(device_id, "main-st", active, online, seen, ago(days=30))


def health(at: datetime, **streams: StreamHealth) -> Health:
    return Health(ts=at, uptime_s=1.0, model_version="det-1", provider="CPUExecutionProvider",
                  streams=dict(streams), outbox_backlog=0)  # fmt: skip


def rollout(rollout_id: int, status: str, updated: datetime, reason: str = "") -> RolloutRecord:
    return RolloutRecord(rollout_id, "det", "2.0", "all", (), status, ago(days=2), updated, reason=reason)


def kinds(state: HubState, **policy: Any) -> list[tuple[str, str]]:
    return [(a.kind, a.subject) for a in open_alerts(state, AlertPolicy(**policy))]


def test_a_quiet_fleet_has_no_alerts() -> None:
    state = HubState(
        NOW,
        [device("cam-1")],
        {"cam-1": health(ago(seconds=20), north=StreamHealth(fps=9, dropped_frames=0, state="up"))},
    )
    assert open_alerts(state) == []


def test_offline_past_the_threshold_and_never_reporting_devices_alert_revoked_ones_do_not() -> None:
    state = HubState(NOW, [
        device("cam-1", online=False, seen=ago(minutes=16)),
        device("cam-2", online=False, seen=ago(minutes=14)),  # not long enough
        device("cam-3", online=False, seen=None),  # enrolled 30 days ago, never heard from
        device("cam-4", online=False, seen=ago(days=3), active=False),  # revoked
    ])  # fmt: skip
    alerts = open_alerts(state)
    assert [(a.kind, a.subject) for a in alerts] == [("device_offline", "cam-3"), ("device_offline", "cam-1")]
    assert alerts[1].id == f"device_offline:cam-1:{int(ago(minutes=16).timestamp())}"
    assert "16 min" in alerts[1].summary
    assert "never reported" in alerts[0].summary
    assert kinds(state, offline_after_s=60) == [("device_offline", "cam-3"), ("device_offline", "cam-1"),
                                                ("device_offline", "cam-2")]  # fmt: skip


def test_a_stream_not_up_long_enough_alerts_on_an_online_device_only() -> None:
    down = StreamHealth(fps=0, dropped_frames=0, state="reconnecting", last_frame_age_s=170, reconnects=4)
    fresh = StreamHealth(fps=0, dropped_frames=0, state="down", last_frame_age_s=30)
    state = HubState(NOW, [device("cam-1"), device("cam-2", online=False, seen=ago(minutes=1))],
                     {"cam-1": health(ago(seconds=10), north=down, south=fresh),
                      "cam-2": health(ago(minutes=1), north=down)})  # fmt: skip
    (alert,) = open_alerts(state)
    assert (alert.kind, alert.subject, alert.since) == ("stream_down", "cam-1/north", ago(seconds=180))
    assert "reconnecting for 3 min (4 reconnects)" in alert.summary
    # The id is stable across reports of the same outage (each report's ts - frame age is the same start).
    later = HubState(NOW + timedelta(seconds=30), state.devices,
                     {"cam-1": health(ago(seconds=-20), north=down.model_copy(update={"last_frame_age_s": 200}))})  # fmt: skip
    assert open_alerts(later)[0].id == alert.id


def test_rejection_spikes_alert_per_reason_at_the_threshold() -> None:
    state = HubState(NOW, rejections={"bad_tag": 20.0, "stale": 19.0, "replay": 250.0})
    alerts = open_alerts(state)
    assert [(a.subject, a.severity) for a in alerts] == [("bad_tag", "warning"), ("replay", "warning")]
    assert alerts[0].id == f"ingest_rejections:bad_tag:{int(NOW.replace(minute=0).timestamp())}"
    assert "roadside deadletters list --reason bad_tag" in alerts[0].summary
    assert open_alerts(HubState(NOW, rejections=None)) == []


def test_rolled_back_rollouts_alert_for_a_day_and_come_first() -> None:
    state = HubState(NOW, [device("cam-1", online=False, seen=ago(hours=2))], rollouts=[
        rollout(1, "rolled_back", ago(hours=3), "gate fps: 4.1 < 0.8 x 12.0"),
        rollout(2, "rolling_back", ago(minutes=1)),
        rollout(3, "rolled_back", ago(hours=25)),  # over a day ago
        rollout(4, "running", ago(minutes=5)),
        rollout(5, "aborted", ago(minutes=5)),
    ])  # fmt: skip
    alerts = open_alerts(state)
    assert [(a.kind, a.subject) for a in alerts] == [("rollout_failed", "1"), ("rollout_failed", "2"),
                                                     ("device_offline", "cam-1")]  # fmt: skip
    assert alerts[0].severity == "critical"
    assert "gate fps" in alerts[0].summary
    assert "is rolling back" in alerts[1].summary
    rolled = HubState(NOW, rollouts=[rollout(2, "rolled_back", NOW)])  # the rollback finished: same alert
    assert open_alerts(rolled)[0].id == alerts[1].id == "rollout_failed:2"


def test_air_exceedance_since_the_run_of_bad_hours_began() -> None:
    hours = [(ago(hours=h), level) for h, level in ((5, 3), (4, 1), (3, 3), (2, 4), (1, 3))]
    assert exceeding_since(hours, 3) == ago(hours=3)
    assert exceeding_since([*hours, (NOW, 2)], 3) is None
    assert exceeding_since([], 3) is None
    state = HubState(NOW, air=[AirState("main-5th", "Main & 5th", "Unhealthy", 3, ago(hours=3)),
                               AirState("park", "Park", "Moderate", 1, None)])  # fmt: skip
    (alert,) = open_alerts(state)
    assert (alert.kind, alert.subject, alert.since) == ("air_exceedance", "main-5th", ago(hours=3))
    assert "Unhealthy" in alert.summary
    assert open_alerts(state, AlertPolicy(air_min_level=4)) == []


def test_acknowledged_alerts_are_marked_and_stay_listed() -> None:
    alerts = open_alerts(HubState(NOW, [device("cam-1", online=False, seen=ago(hours=1))]))
    marked = mark_acknowledged(alerts, {alerts[0].id: ("console:ops", NOW)})
    assert marked[0].acknowledged
    assert marked[0].acknowledged_by == "console:ops"
    assert not alerts[0].acknowledged


def test_a_policy_refuses_nonsense_thresholds() -> None:
    with pytest.raises(ValueError, match="positive"):
        AlertPolicy(offline_after_s=0)
    with pytest.raises(ValueError, match="at least 1"):
        AlertPolicy(rejections_spike=0)


def test_rejections_over_the_window_come_from_the_ingest_counters() -> None:
    from prometheus_client import CollectorRegistry

    from roadside.cloud.api.rejections import RejectionWindow
    from roadside.cloud.ingest.metrics import IngestMetrics

    metrics = CollectorRegistry()
    ingest = IngestMetrics(metrics)
    ingest.rejected.labels("bad_tag").inc(3)  # before the window's first sample: not counted
    now = [0.0]
    window = RejectionWindow(metrics, window_s=300, clock=lambda: now[0])
    ingest.rejected.labels("bad_tag").inc(25)
    ingest.rejected.labels("stale").inc(2)
    now[0] = 100.0
    assert window.recent() == {"bad_tag": 25.0, "stale": 2.0}
    now[0] = 450.0  # the samples at 0 and 100 are older than the window; 100 stays as the base
    ingest.rejected.labels("stale").inc(1)
    assert window.recent() == {"stale": 1.0}
    assert kinds(HubState(NOW, rejections=window.recent())) == []
