"""What each console page shows, gathered from the registry, the store and the hub's hooks.

The same functions and repositories the API's routes use (``device_view``,
``tally``, ``rollout_status``, the registry's repositories, the store's
queries), shaped for a page; no HTML here, no HTTP.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from roadside.cloud.air.indexing import CATEGORY_ORDER
from roadside.cloud.air.store import StoredIndex
from roadside.cloud.api.alerting import hub_alerts
from roadside.cloud.api.deps import ApiResources
from roadside.cloud.api.routes.devices import device_view
from roadside.cloud.api.routes.fleet import tally
from roadside.cloud.api.schemas import Device, FleetCounts
from roadside.cloud.console.web import SampleImages
from roadside.cloud.fleet.alerts import Alert
from roadside.cloud.fleet.audit import AuditEntry, ChainReport
from roadside.cloud.registry import RolloutRecord
from roadside.cloud.storage.base import (
    SPEED_PERCENTILE,
    CountBucket,
    CountQuery,
    EventQuery,
    HealthQuery,
    SpeedQuery,
    StoredEvent,
    bucket_start,
    health_history,
    nearest_rank,
    speed_samples,
)
from roadside.shared.errors import TransportError
from roadside.shared.schemas import Health

if TYPE_CHECKING:  # the dataset package imports OpenCV; the console only names its record type
    from roadside.cloud.dataset.trust import InboxEntry

logger = logging.getLogger(__name__)

IN_PROGRESS: Final = frozenset({"pending", "running", "paused", "rolling_back"})
FLEET_PAGE: Final = 50
AUDIT_SCAN: Final = 5000
AUDIT_SHOWN: Final = 200
ALERTS_SHOWN: Final = 20
WINDOWS: Final = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24),
                  "7d": timedelta(days=7), "31d": timedelta(days=31)}  # fmt: skip
BUCKETS: Final = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86_400}


@dataclass(frozen=True, slots=True)
class Overview:
    fleet: FleetCounts
    sites: list[tuple[str, FleetCounts]]
    last_ingest_at: datetime | None
    ingest_per_s: float | None
    rejected: dict[str, float]
    rollouts: list[RolloutRecord]
    alerts: list[Alert]

    @property
    def open_alerts(self) -> int:
        return sum(not a.acknowledged for a in self.alerts)


def fleet_devices(resources: ApiResources, now: datetime) -> list[Device]:
    records = resources.registry.devices.list()
    return [device_view(r, resources.hooks, resources.settings, now) for r in records]


def device(resources: ApiResources, device_id: str) -> Device | None:
    """One device as the API shows it, or ``None`` if it is not enrolled."""
    record = resources.registry.devices.get(device_id)
    if record is None:
        return None
    return device_view(record, resources.hooks, resources.settings, datetime.now(UTC))


def overview(resources: ApiResources, ingest_per_s: float | None, rejected: dict[str, float]) -> Overview:
    now = datetime.now(UTC)
    devices = fleet_devices(resources, now)
    by_site: dict[str, list[Device]] = defaultdict(list)
    for device in devices:
        by_site[device.site].append(device)
    seen = [d.last_seen_at for d in devices if d.last_seen_at is not None]
    rollouts = [r for r in resources.registry.rollouts.list() if r.status in IN_PROGRESS]
    return Overview(
        fleet=tally(devices),
        sites=[(site, tally(by_site[site])) for site in sorted(by_site)],
        last_ingest_at=max(seen, default=None),
        ingest_per_s=ingest_per_s,
        rejected=dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        rollouts=rollouts,
        alerts=hub_alerts(resources, devices=devices, now=now),
    )


@dataclass(frozen=True, slots=True)
class FleetPage:
    devices: list[tuple[Device, Health | None]]
    sites: list[str]
    total: int
    page: int
    pages: int


def fleet_page(resources: ApiResources, site: str | None, state: str | None, page: int) -> FleetPage:
    """One page of devices (filtered by site and online/offline/revoked) with their latest health."""
    devices = fleet_devices(resources, datetime.now(UTC))
    sites = sorted({d.site for d in devices})
    chosen = [d for d in devices if (not site or d.site == site) and _in_state(d, state)]
    pages = max(1, -(-len(chosen) // FLEET_PAGE))
    page = min(max(page, 1), pages)
    shown = chosen[(page - 1) * FLEET_PAGE : page * FLEET_PAGE]
    return FleetPage(
        [(d, latest_health(resources, d.device_id)) for d in shown], sites, len(chosen), page, pages
    )


def _in_state(device: Device, state: str | None) -> bool:
    if not state:
        return True
    if state == "revoked":
        return device.status == "revoked"
    return device.status == "active" and device.online == (state == "online")


def latest_health(resources: ApiResources, device_id: str) -> Health | None:
    try:
        return resources.store.latest_health(device_id)
    except TransportError as exc:
        logger.warning("console: no health for %s: %s", device_id, exc)
        return None


HEALTH_WINDOWS: Final = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24),
                         "7d": timedelta(days=7)}  # fmt: skip
HEALTH_POINTS: Final = 300  # a chart's width in reports: longer windows are thinned to about this many


@dataclass(frozen=True, slots=True)
class HealthSeries:
    """A device's health over a window, one list per quantity (``None`` where a report lacks it)."""

    start: datetime
    end: datetime
    step_s: int
    times: list[datetime]
    series: list[tuple[str, str, list[float | None]]]  # (label, unit, values)

    def chart_data(self) -> dict[str, object]:
        return {"from": _iso(self.start), "to": _iso(self.end), "t": [_iso(t) for t in self.times],
                "series": [{"label": label, "unit": unit, "values": values} for label, unit, values in self.series]}  # fmt: skip


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _fps(report: Health) -> float | None:
    """Frames per second over every stream of the report (what the device processes in all)."""
    return round(sum(s.fps for s in report.streams.values()), 2) if report.streams else None


def health_series(resources: ApiResources, device_id: str, window: str) -> HealthSeries:
    """The device's health over ``window`` (a key of :data:`HEALTH_WINDOWS`), thinned for a chart."""
    end = datetime.now(UTC) + timedelta(seconds=1)
    span = HEALTH_WINDOWS.get(window, HEALTH_WINDOWS["24h"])
    step_s = 0 if span <= timedelta(hours=1) else -(-int(span.total_seconds()) // HEALTH_POINTS)
    reports = health_history(
        resources.store, HealthQuery(device_id, end - span, end, step_s=step_s, limit=2000)
    )
    return HealthSeries(
        end - span,
        end,
        step_s,
        [r.ts for r in reports],
        [
            ("CPU", "%", [_round(r.cpu_percent) for r in reports]),
            ("Memory", "MB", [_round(r.rss_mb) for r in reports]),
            ("Temperature", "°C", [_round(r.temperature_c) for r in reports]),
            ("Frames per second", "fps", [_fps(r) for r in reports]),
            ("Inference p95", "ms", [_round(r.inference_p95_ms) for r in reports]),
            ("Outbox", "messages", [float(r.outbox_backlog) for r in reports]),
        ],
    )


@dataclass(frozen=True, slots=True)
class TrafficTotals:
    """Counts over a window: per (site, line, class, direction) for the table, per bucket for the chart."""

    start: datetime
    end: datetime
    bucket_s: int
    rows: list[CountBucket]  # per bucket, site, line, class and direction: the devices summed by the store
    by_group: list[tuple[tuple[str, str, str, str], int]]
    by_bucket: list[tuple[datetime, int]]


def traffic(resources: ApiResources, query: CountQuery) -> TrafficTotals:
    """The page's totals. The store sums the devices (``per_device=False``): for an hour of 1,000
    devices it returns a site's share of the rows, not one per device (docs/console.md, Measured)."""
    rows = resources.store.count_buckets(replace(query, per_device=False))
    groups: dict[tuple[str, str, str, str], int] = defaultdict(int)
    buckets: dict[datetime, int] = defaultdict(int)
    for row in rows:
        groups[(row.site, row.line, row.cls, row.direction)] += row.count
        buckets[row.bucket_start] += row.count
    return TrafficTotals(
        query.start, query.end, query.bucket_s, rows, sorted(groups.items()), _every_bucket(query, buckets)
    )


TRAFFIC_SPEED_SAMPLES: Final = 50_000  # measured speeds a page reads at most (the API allows more)


@dataclass(frozen=True, slots=True)
class SpeedRow:
    site: str
    line: str
    cls: str
    count: int
    mean_kmh: float
    p85_kmh: float


@dataclass(frozen=True, slots=True)
class TrafficSpeeds:
    rows: list[SpeedRow]
    complete: bool  # False: more than TRAFFIC_SPEED_SAMPLES speeds in the window; nothing computed


def traffic_speeds(resources: ApiResources, query: CountQuery) -> TrafficSpeeds:
    """Speeds per (site, line, class) over the whole window, from the events that carry one
    (devices together: a mean and an 85th percentile over every vehicle measured there)."""
    span_s = max(1, int((query.end - query.start).total_seconds()))
    samples = speed_samples(resources.store, SpeedQuery(query.start, query.end, span_s, query.device_id, query.site,
                            query.line, query.cls, query.direction, max_samples=TRAFFIC_SPEED_SAMPLES))  # fmt: skip
    if samples is None:
        return TrafficSpeeds([], complete=False)
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for sample in samples:
        groups[(sample.site, sample.line or "", sample.cls or "")].append(sample.speed_kmh)
    rows = [SpeedRow(site, line, cls, len(v), round(math.fsum(v) / len(v), 1), nearest_rank(sorted(v), SPEED_PERCENTILE))
            for (site, line, cls), v in sorted(groups.items())]  # fmt: skip
    return TrafficSpeeds(rows, complete=True)


def newest_sample(
    resources: ApiResources, samples: SampleImages | None, device: str | None, site: str | None
) -> InboxEntry | None:
    """The newest redacted sample image from the devices the traffic page's filters select."""
    if samples is None:
        return None
    wanted: list[str] | None = None
    if device:
        wanted = [device]
    elif site:
        wanted = [d.device_id for d in resources.registry.devices.list(site)]
    found = samples.newest_images(wanted, 1)
    return found[0] if found else None


def _every_bucket(query: CountQuery, counts: dict[datetime, int]) -> list[tuple[datetime, int]]:
    """Each bucket of the window in order, empty ones as 0 (so the chart shows quiet time as quiet)."""
    step = timedelta(seconds=query.bucket_s)
    first = bucket_start(query.start, query.bucket_s)
    series: list[tuple[datetime, int]] = []
    when = first
    while when < query.end:
        series.append((when, counts.get(when, 0)))
        when += step
    return series


def recent_events(resources: ApiResources, query: EventQuery, shown: int = 100) -> list[StoredEvent]:
    """The newest ``shown`` events of the window, newest first.

    The store returns a window's *oldest* events first, up to its limit; when the limit is hit,
    the window is narrowed towards its end (each time to an eighth) until the newest fit.
    """
    events = resources.store.events(query)
    for _ in range(4):
        if len(events) < query.limit:
            break
        narrower = replace(query, start=query.end - (query.end - query.start) / 8)
        if narrower.end - narrower.start < timedelta(minutes=1):
            break
        query, events = narrower, resources.store.events(narrower)
    return list(reversed(events[-shown:]))


@dataclass(frozen=True, slots=True)
class AuditView:
    entries: list[AuditEntry]
    report: ChainReport
    head_seq: int
    scanned: int


def audit(resources: ApiResources, text: str) -> AuditView:
    """The newest entries (matching ``text`` in actor, action, subject or details), and the chain's verdict."""
    log = resources.registry.audit
    report = log.verify()
    head_seq, _ = log.head()
    entries = log.entries(since_seq=max(0, head_seq - AUDIT_SCAN), limit=None)
    needle = text.strip().lower()
    if needle:
        entries = [e for e in entries if needle in _searchable(e)]
    return AuditView(list(reversed(entries))[:AUDIT_SHOWN], report, head_seq, min(head_seq, AUDIT_SCAN))


def _searchable(entry: AuditEntry) -> str:
    return f"{entry.actor} {entry.action} {entry.subject} {dict(entry.details)}".lower()


def allowed_actions(status: str) -> Sequence[str]:
    """Operator actions a rollout in ``status`` takes (as the controller's moves allow)."""
    moves = {
        "pending": ("pause", "abort", "rollback"),
        "running": ("pause", "abort", "rollback"),
        "paused": ("resume", "abort", "rollback"),
        "completed": ("rollback",),
    }
    return moves.get(status, ())


@dataclass(frozen=True, slots=True)
class AirRow:
    """One air-quality location: its latest index with its place on the category scale, and the trend."""

    location_id: str
    name: str
    station: str
    timezone: str
    index: StoredIndex | None
    level: int  # 0 (best) .. 5 on the standard's category scale; -1 without an index
    trend: str  # "rising", "falling", "steady" or "" (too little history)


def air_quality(resources: ApiResources, trend_hours: int = 3) -> list[AirRow] | None:
    """Every configured location with its latest index and its trend over ``trend_hours``; ``None``
    when the hub has no air-quality section."""
    air = resources.air
    if air is None:
        return None
    now = datetime.now(UTC)
    rows = []
    for location in air.locations():
        latest = air.current_index(location)
        history = air.index_history(location, now - timedelta(hours=trend_hours + 1), now)
        rows.append(
            AirRow(location.id, location.name, location.station, location.timezone, latest,
                   _level(latest), _trend(history))
        )  # fmt: skip
    return rows


def _level(index: StoredIndex | None) -> int:
    if index is None:
        return -1
    scale = CATEGORY_ORDER.get(index.standard, ())  # type: ignore[call-overload]
    category = index.report.get("category")
    return scale.index(category) if category in scale else -1


def _trend(history: list[StoredIndex]) -> str:
    if len(history) < 2:
        return ""
    first, last = int(history[0].report["overall"]), int(history[-1].report["overall"])
    return "rising" if last > first else "falling" if last < first else "steady"
