"""Open alerts: what an operator should look at now, derived from the state the hub already has.

A pure function (:func:`open_alerts`) over a snapshot (:class:`HubState`): the
devices with their liveness, each device's latest health report, the rollouts,
the ingest rejections of the last few minutes and the air-quality indices. No
alert is stored; each is recomputed from that state, so it closes by itself
when its cause goes (the device reconnects, the camera's frames come back).

=====================  ========================================================  ========
kind                   open while                                                severity
=====================  ========================================================  ========
``device_offline``     an active device has not been heard from for              warning
                       ``offline_after_s`` (15 minutes), or never since it was
                       enrolled that long ago
``stream_down``        an online device reports a camera stream not ``up`` for   warning
                       ``stream_down_after_s`` (2 minutes)
``ingest_rejections``  at least ``rejections_spike`` messages (20) of one reason  warning
                       were refused over the last ``rejections_window_s`` (5 min)
``rollout_failed``     a rollout is rolling back or rolled back (a gate failed,  critical
                       or an operator pulled it) within ``rollout_kept_s`` (24 h)
``air_exceedance``     a location's latest index is at ``air_min_level`` (3:     warning
                       EPA "Unhealthy", EAQI "Poor") or worse
=====================  ========================================================  ========

An alert's ``id`` names one *occurrence* (kind, subject and when it began), so an
operator's acknowledgement hides that occurrence only; the next outage of the same
device is a new alert. A rollout fails once: its id is the rollout's. Rejection
spikes have no durable start: their occurrence is the clock hour they were seen in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from roadside.cloud.registry.records import RolloutRecord
from roadside.shared.schemas import Health

AlertKind = Literal["device_offline", "stream_down", "ingest_rejections", "rollout_failed", "air_exceedance"]
Severity = Literal["critical", "warning"]
ALERT_KINDS: Final[tuple[AlertKind, ...]] = (
    "device_offline",
    "stream_down",
    "ingest_rejections",
    "rollout_failed",
    "air_exceedance",
)
_SEVERITY_ORDER: Final[dict[str, int]] = {"critical": 0, "warning": 1}
FAILED_ROLLOUT_STATES: Final = frozenset({"rolling_back", "rolled_back"})


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When a state becomes an alert (docs/console.md, Alerts)."""

    offline_after_s: float = 900.0
    stream_down_after_s: float = 120.0
    rejections_spike: int = 20
    rejections_window_s: float = 300.0
    rollout_kept_s: float = 86_400.0
    air_min_level: int = 3

    def __post_init__(self) -> None:
        if (
            min(self.offline_after_s, self.stream_down_after_s, self.rejections_window_s, self.rollout_kept_s)
            <= 0
        ):
            raise ValueError("alert thresholds must be positive durations")
        if self.rejections_spike < 1 or self.air_min_level < 1:
            raise ValueError("rejections_spike and air_min_level must be at least 1")


@dataclass(frozen=True, slots=True)
class DeviceState:
    device_id: str
    site: str
    active: bool  # False: revoked (a revoked device raises no alert)
    online: bool
    last_seen_at: datetime | None
    enrolled_at: datetime


@dataclass(frozen=True, slots=True)
class AirState:
    """A location's latest index: its category's place on the standard's scale (0 best) and since
    when the location has been at ``air_min_level`` or worse without a break (``None``: it is not)."""

    location_id: str
    name: str
    category: str
    level: int
    exceeding_since: datetime | None


@dataclass(frozen=True, slots=True)
class HubState:
    now: datetime
    devices: Sequence[DeviceState] = ()
    health: Mapping[str, Health] = field(default_factory=dict)  # latest report per device id
    rollouts: Sequence[RolloutRecord] = ()
    rejections: Mapping[str, float] | None = None  # per reason over the window; None: not measured yet
    air: Sequence[AirState] = ()


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    kind: AlertKind
    severity: Severity
    subject: str  # the device, "device/stream", the rejection reason, the rollout id or the location
    site: str | None
    since: datetime
    summary: str  # what happened and what to do
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_by is not None


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def offline_alerts(state: HubState, policy: AlertPolicy) -> list[Alert]:
    alerts = []
    for device in state.devices:
        if not device.active or device.online:
            continue
        since = device.last_seen_at or device.enrolled_at
        silent_s = (state.now - since).total_seconds()
        if silent_s < policy.offline_after_s:
            continue
        heard = "never reported since enrollment" if device.last_seen_at is None else "not heard from"
        alerts.append(
            Alert(
                id=f"device_offline:{device.device_id}:{_epoch(since)}",
                kind="device_offline",
                severity="warning",
                subject=device.device_id,
                site=device.site,
                since=since,
                summary=f"{device.device_id} {heard} for {_ago(silent_s)}: check its power and uplink "
                "(roadside agent doctor on the device).",
            )
        )
    return alerts


def stream_alerts(state: HubState, policy: AlertPolicy) -> list[Alert]:
    """Streams an online device reports as not ``up`` (reconnecting or down) for long enough."""
    sites = {d.device_id: d.site for d in state.devices if d.active and d.online}
    alerts = []
    for device_id, site in sites.items():
        health = state.health.get(device_id)
        if health is None:
            continue
        for name, stream in sorted(health.streams.items()):
            if stream.state in (None, "up"):
                continue
            age = stream.last_frame_age_s
            # Down for at least as long as the last frame is old; a stream without that figure counts
            # from the report itself (it is already not up at the report's time).
            since = health.ts - timedelta(seconds=age or 0.0)
            down_s = (state.now - since).total_seconds()
            if down_s < policy.stream_down_after_s:
                continue
            alerts.append(
                Alert(
                    id=f"stream_down:{device_id}:{name}:{_epoch(since) // 60 * 60}",
                    kind="stream_down",
                    severity="warning",
                    subject=f"{device_id}/{name}",
                    site=site,
                    since=since,
                    summary=f"Camera stream {name} of {device_id} is {stream.state} for {_ago(down_s)} "
                    f"({stream.reconnects or 0} reconnects): check the camera, its cable and its URL.",
                )
            )
    return alerts


def rejection_alerts(state: HubState, policy: AlertPolicy) -> list[Alert]:
    if not state.rejections:
        return []
    hour = state.now.replace(minute=0, second=0, microsecond=0)
    minutes = int(policy.rejections_window_s // 60)
    return [
        Alert(
            id=f"ingest_rejections:{reason}:{_epoch(hour)}",
            kind="ingest_rejections",
            severity="warning",
            subject=reason,
            site=None,
            since=state.now - timedelta(seconds=policy.rejections_window_s),
            summary=f"{int(count)} messages refused as {reason} in the last {minutes} min: "
            f"see roadside deadletters list --reason {reason}.",
        )
        for reason, count in sorted(state.rejections.items())
        if count >= policy.rejections_spike
    ]


def rollout_alerts(state: HubState, policy: AlertPolicy) -> list[Alert]:
    alerts = []
    for rollout in state.rollouts:
        if rollout.status not in FAILED_ROLLOUT_STATES:
            continue
        if (state.now - rollout.updated_at).total_seconds() > policy.rollout_kept_s:
            continue
        doing = "is rolling back" if rollout.status == "rolling_back" else "was rolled back"
        reason = f": {rollout.reason}" if rollout.reason else ""
        alerts.append(
            Alert(
                id=f"rollout_failed:{rollout.id}",  # a rollout fails once; rolling back -> rolled back keeps it
                kind="rollout_failed",
                severity="critical",
                subject=str(rollout.id),
                site=None,
                since=rollout.updated_at,
                summary=f"Rollout {rollout.id} of {rollout.model_name}:{rollout.model_version} {doing}"
                f"{reason}. Its page shows each device's gate verdict.",
            )
        )
    return alerts


def air_alerts(state: HubState, policy: AlertPolicy) -> list[Alert]:
    return [
        Alert(
            id=f"air_exceedance:{air.location_id}:{_epoch(air.exceeding_since)}",
            kind="air_exceedance",
            severity="warning",
            subject=air.location_id,
            site=None,
            since=air.exceeding_since,
            summary=f"Air quality at {air.name} is {air.category}: tell the public-health contact.",
        )
        for air in state.air
        if air.exceeding_since is not None and air.level >= policy.air_min_level
    ]


def exceeding_since(levels: Sequence[tuple[datetime, int]], min_level: int) -> datetime | None:
    """The start of the newest unbroken run of indices at ``min_level`` or worse (oldest first in,
    ``None`` when the newest index is below it)."""
    since = None
    for when, level in reversed(levels):
        if level < min_level:
            break
        since = when
    return since


def mark_acknowledged(
    alerts: Sequence[Alert], acknowledged: Mapping[str, tuple[str, datetime]]
) -> list[Alert]:
    """The alerts with who acknowledged each and when (``acknowledged`` maps an alert id to that),
    critical first, then the oldest first."""
    marked = [replace(a, acknowledged_by=acknowledged[a.id][0], acknowledged_at=acknowledged[a.id][1])
              if a.id in acknowledged else a for a in alerts]  # fmt: skip
    return sorted(marked, key=lambda a: (_SEVERITY_ORDER[a.severity], a.since.astimezone(UTC), a.id))


def open_alerts(state: HubState, policy: AlertPolicy | None = None) -> list[Alert]:
    """Every open alert of ``state``, critical first, then the oldest first."""
    policy = policy or AlertPolicy()
    alerts = [
        *offline_alerts(state, policy),
        *stream_alerts(state, policy),
        *rejection_alerts(state, policy),
        *rollout_alerts(state, policy),
        *air_alerts(state, policy),
    ]
    return mark_acknowledged(alerts, {})
