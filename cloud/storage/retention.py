"""Retention and downsampling: the policy and the statements that enforce it (pure; no I/O).

Telemetry lives in three tiers:

========= ========================= ==========================================================
tier      default                   what
========= ========================= ==========================================================
raw       7 days (``raw_days``)     every record as the device sent it
minute    90 days (``minute_days``) 1-minute rollups: count sums, sensor mean/min/max/n,
                                    event counts by type
hour      730 days (``hour_days``)  the same per hour
========= ========================= ==========================================================

Rollups keep the device, site and model version that produced each point (sensors have no
model). They drop the lane and the count interval; per-lane counts live as long as raw data.
Sensor rollups take only readings of quality ``ok``: a stuck or spiking sensor must not set
an hour's maximum.

A reader takes each part of a time window from the finest tier that still holds all of it
(:func:`plan_spans`). Tier boundaries are whole UTC hours, so a rollup bucket is never split
between two tiers; within a rollup tier a window is resolved to that tier's bucket (a rollup
row counts when its bucket *starts* inside the window).

Each store enforces the policy its own way: SQLite rolls up and deletes in
``SqliteStore.apply_retention``; InfluxDB 1.x uses retention policies and continuous queries
(:func:`retention_policy_statements`, :func:`continuous_query_influxql`); InfluxDB 2.x uses
bucket retention and tasks (:func:`downsampling_tasks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from roadside.cloud.storage.base import CountBucket
from roadside.shared.errors import ConfigError
from roadside.shared.limits import to_epoch_us

Tier = Literal["raw", "minute", "hour"]

RollupTier = Literal["minute", "hour"]
ROLLUP_TIERS: Final[tuple[RollupTier, ...]] = ("minute", "hour")

MINUTE: Final = timedelta(minutes=1)
HOUR: Final = timedelta(hours=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# InfluxDB 1.x retention policies of the rollup tiers; the raw tier's is "raw" unless the store
# was configured to write to another one.
RAW_RP: Final = "raw"
MINUTE_RP: Final = "minute"
HOUR_RP: Final = "hour"
# Prefixed so that ours never clobber an operator's own continuous queries or tasks.
JOB_PREFIX: Final = "roadside_"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each tier is kept, in whole days; ``raw <= minute <= hour``."""

    raw_days: int = 7
    minute_days: int = 90
    hour_days: int = 730

    def __post_init__(self) -> None:
        # The hour tier is rolled from raw data of closed hours, so raw must outlive an hour by
        # a margin; a day is the smallest unit the settings offer.
        if self.raw_days < 1:
            raise ConfigError(f"retention raw_days must be at least 1, not {self.raw_days}")
        if not self.raw_days <= self.minute_days <= self.hour_days:
            raise ConfigError(
                "retention must keep each tier at least as long as the finer one before it: "
                f"raw_days ({self.raw_days}) <= minute_days ({self.minute_days}) "
                f"<= hour_days ({self.hour_days})"
            )

    def days(self, tier: Tier) -> int:
        return {"raw": self.raw_days, "minute": self.minute_days, "hour": self.hour_days}[tier]

    def cut(self, tier: Tier, now: datetime) -> datetime:
        """The hour before which ``tier`` is deleted at ``now``: it keeps at least its days."""
        return floor_time(now - timedelta(days=self.days(tier)), HOUR)

    def server_coverage(self, now: datetime) -> Coverage:
        """Tier boundaries for a server that expires data itself (InfluxDB): rounded up to the
        hour, so each boundary falls where the finer tier surely still holds everything."""
        return Coverage(
            raw_from=ceil_time(now - timedelta(days=self.raw_days), HOUR),
            minute_from=ceil_time(now - timedelta(days=self.minute_days), HOUR),
        )


@dataclass(frozen=True, slots=True)
class Coverage:
    """Raw data is complete from ``raw_from`` on; the minute tier from ``minute_from`` to it;
    the hour tier before ``minute_from``. Both are whole UTC hours."""

    raw_from: datetime
    minute_from: datetime


@dataclass(frozen=True, slots=True)
class TierSpan:
    """Read ``[start, end)`` from ``tier``."""

    tier: Tier
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one retention run did. ``rolled`` and ``deleted`` count rows by table."""

    coverage: Coverage | None
    rolled: Mapping[str, int] = field(default_factory=dict)
    deleted: Mapping[str, int] = field(default_factory=dict)
    # True where the server rolls up and expires data itself (InfluxDB): the run only made sure
    # that its retention policies and continuous queries (or buckets and tasks) are in place.
    server_side: bool = False


def floor_time(when: datetime, step: timedelta) -> datetime:
    """``when`` rounded down to a multiple of ``step`` since the Unix epoch."""
    return when - (when - _EPOCH) % step


def ceil_time(when: datetime, step: timedelta) -> datetime:
    """``when`` rounded up to a multiple of ``step`` since the Unix epoch."""
    floored = floor_time(when, step)
    return floored if floored == when else floored + step


def plan_spans(start: datetime, end: datetime, coverage: Coverage | None) -> list[TierSpan]:
    """The parts of ``[start, end)`` and the tier each is read from, oldest first.

    Without coverage (retention never ran) raw data holds everything.
    """
    to_epoch_us(start), to_epoch_us(end)  # refuses naive datetimes before they are compared
    if coverage is None:
        spans = [TierSpan("raw", start, end)]
    else:
        spans = [
            TierSpan("hour", start, min(end, coverage.minute_from)),
            TierSpan("minute", max(start, coverage.minute_from), min(end, coverage.raw_from)),
            TierSpan("raw", max(start, coverage.raw_from), end),
        ]
    return [s for s in spans if s.start < s.end]


def merge_count_buckets(parts: Iterable[Iterable[CountBucket]]) -> list[CountBucket]:
    """Buckets read from several tiers, summed per key (a query bucket may straddle a tier
    boundary) and ordered as ``TimeSeriesStore.count_buckets`` promises."""
    totals: dict[tuple[datetime, str, str, str, str, str], int] = {}
    for part in parts:
        for b in part:
            key = (b.bucket_start, b.device_id, b.line, b.cls, b.direction, b.site)
            totals[key] = totals.get(key, 0) + b.count
    return [
        CountBucket(start, device, site, line, cls, direction, n)
        for (start, device, line, cls, direction, site), n in sorted(totals.items())
    ]


# -- the rollups ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rollup:
    """One rollup measurement: ``source`` aggregated per ``width`` and ``group_tags``."""

    name: str
    source: str
    tier: RollupTier
    aggregates: tuple[tuple[str, str], ...]  # (InfluxQL aggregate of "field", output field)
    group_tags: tuple[str, ...]
    quality_ok_only: bool = False

    @property
    def width(self) -> timedelta:
        return MINUTE if self.tier == "minute" else HOUR


_COUNT_TAGS: Final = ("device", "site", "model_version", "line", "cls", "direction")
_SENSOR_TAGS: Final = ("device", "site", "sensor", "quantity")
_EVENT_TAGS: Final = ("device", "site", "model_version", "type")
_COUNT_AGG: Final = (('sum("count")', "count"),)
_SENSOR_AGG: Final = (
    ('mean("value")', "mean"),
    ('min("value")', "min"),
    ('max("value")', "max"),
    ('count("value")', "n"),
    ('last("unit")', "unit"),
)
# Every event point has an event_id, so counting it counts events.
_EVENT_AGG: Final = (('count("event_id")', "count"),)


def _rollups() -> tuple[Rollup, ...]:
    tiers: tuple[tuple[RollupTier, str], ...] = (("minute", "1m"), ("hour", "1h"))
    made: list[Rollup] = []
    for tier, suffix in tiers:
        made += [
            Rollup(f"counts_{suffix}", "counts", tier, _COUNT_AGG, _COUNT_TAGS),
            Rollup(f"sensors_{suffix}", "sensors", tier, _SENSOR_AGG, _SENSOR_TAGS, quality_ok_only=True),
            Rollup(f"events_{suffix}", "events", tier, _EVENT_AGG, _EVENT_TAGS),
        ]
    return tuple(made)


ROLLUPS: Final = _rollups()


def rollup(name: str) -> Rollup:
    """The rollup called ``name`` (``counts_1m`` ...)."""
    for r in ROLLUPS:
        if r.name == name:
            return r
    raise KeyError(name)


def tier_rp(tier: Tier, raw_rp: str = RAW_RP) -> str:
    """The InfluxDB 1.x retention policy that holds ``tier``."""
    return {"raw": raw_rp, "minute": MINUTE_RP, "hour": HOUR_RP}[tier]


# -- InfluxQL for InfluxDB 1.x (pure) ------------------------------------------------------------

# How late data may arrive and still reach a rollup by itself. Envelopes are sealed when sent,
# so an agent's outbox backlog after an outage carries old records; continuous queries
# recompute the last FOR of buckets every EVERY. Later arrivals stay correct in raw data and
# reach the rollups with InfluxV1Store.backfill_rollups.
CQ_RESAMPLE: Final[Mapping[str, tuple[str, str]]] = {"minute": ("1m", "30m"), "hour": ("10m", "3h")}


def _ident(name: str) -> str:
    # Same rules as cloud.storage.influx.influxql.quote_ident; repeated so this module needs no vendor library.
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _influx_duration(days: int) -> str:
    return f"{int(days)}d"


def _shown_duration(days: int) -> str:
    """A duration as ``SHOW RETENTION POLICIES`` prints it (Go's time.Duration)."""
    return f"{int(days) * 24}h0m0s"


@dataclass(frozen=True, slots=True)
class ShownPolicy:
    """One row of ``SHOW RETENTION POLICIES``."""

    name: str
    duration: str  # "168h0m0s"; "0s" is infinite
    default: bool


def retention_policy_statements(
    database: str, policy: RetentionPolicy, shown: Sequence[ShownPolicy], raw_rp: str = RAW_RP
) -> list[str]:
    """The CREATE or ALTER statements that bring the database's policies to ``policy``: none
    when they already match. The raw policy becomes the default, so writes and reads that
    name no policy use it."""
    existing = {p.name: p for p in shown}
    statements = []
    for tier in ("raw", "minute", "hour"):
        name, days = tier_rp(tier, raw_rp), policy.days(tier)
        default = " DEFAULT" if tier == "raw" else ""
        current = existing.get(name)
        target = f"{_ident(name)} ON {_ident(database)} DURATION {_influx_duration(days)}"
        if current is None:
            statements.append(f"CREATE RETENTION POLICY {target} REPLICATION 1{default}")
        elif current.duration != _shown_duration(days) or (tier == "raw" and not current.default):
            # CREATE refuses an existing policy with other settings; ALTER keeps its shards.
            statements.append(f"ALTER RETENTION POLICY {target}{default}")
    return statements


def rollup_select_influxql(
    r: Rollup,
    database: str,
    raw_rp: str = RAW_RP,
    start: datetime | None = None,
    end: datetime | None = None,
) -> str:
    """The ``SELECT ... INTO`` of a rollup. A continuous query holds it without a time range
    (the server adds one each run); with ``start`` and ``end`` it backfills that window."""
    what = ", ".join(f"{agg} AS {_ident(out)}" for agg, out in r.aggregates)
    into = f"{_ident(database)}.{_ident(tier_rp(r.tier))}.{_ident(r.name)}"
    source = f"{_ident(database)}.{_ident(raw_rp)}.{_ident(r.source)}"
    terms = ["\"quality\" = 'ok'"] if r.quality_ok_only else []
    if start is not None and end is not None:
        # Integer times in InfluxQL are nanoseconds since the epoch.
        terms += [f"time >= {to_epoch_us(start) * 1000}", f"time < {to_epoch_us(end) * 1000}"]
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    width = "1m" if r.tier == "minute" else "1h"
    groups = ", ".join(_ident(t) for t in r.group_tags)
    # Tags named in GROUP BY stay tags in the INTO measurement; the others are summed over.
    return f"SELECT {what} INTO {into} FROM {source}{where} GROUP BY time({width}), {groups}"  # noqa: S608


def continuous_query_name(r: Rollup) -> str:
    return JOB_PREFIX + r.name


def continuous_query_influxql(r: Rollup, database: str, raw_rp: str = RAW_RP) -> str:
    """``CREATE CONTINUOUS QUERY`` for one rollup. InfluxDB 1.x accepts it again unchanged and
    refuses a changed one under the same name ("already exists"): drop and create then."""
    every, span = CQ_RESAMPLE[r.tier]
    return (
        f"CREATE CONTINUOUS QUERY {_ident(continuous_query_name(r))} ON {_ident(database)}"
        f" RESAMPLE EVERY {every} FOR {span}"
        f" BEGIN {rollup_select_influxql(r, database, raw_rp)} END"
    )


def drop_continuous_query_influxql(r: Rollup, database: str) -> str:
    return f"DROP CONTINUOUS QUERY {_ident(continuous_query_name(r))} ON {_ident(database)}"


# -- Flux tasks for InfluxDB 2.x (pure) ------------------------------------------------------------

# Same lateness as the 1.x continuous queries; tasks run every EVERY over the last RANGE.
TASK_SCHEDULE: Final[Mapping[str, tuple[str, str]]] = {"minute": ("1m", "30m"), "hour": ("10m", "3h")}
# Tasks start a little after the minute so that writes of the closing minute have landed.
_TASK_OFFSET: Final = "15s"


def flux_string(text: str) -> str:
    """A Flux string literal: backslash, quote and ``${`` (interpolation) escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + escaped.replace("\n", "\\n") + '"'


def rollup_bucket(bucket: str, tier: RollupTier) -> str:
    """The InfluxDB 2.x bucket of a rollup tier: ``roadside_1m`` next to ``roadside``."""
    return f"{bucket}_1m" if tier == "minute" else f"{bucket}_1h"


@dataclass(frozen=True, slots=True)
class FluxTask:
    name: str
    flux: str


def _flux_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(flux_string(i) for i in items) + "]"


def downsampling_task(r: Rollup, bucket: str, org: str) -> FluxTask:
    """The Flux task that writes one rollup from ``bucket`` into its rollup bucket.

    Each run recomputes the buckets of the last RANGE and overwrites them: one series and time
    is one point, so a rerun never double-counts.
    """
    every, span = TASK_SCHEDULE[r.tier]
    name = JOB_PREFIX + r.name
    header = f"option task = {{name: {flux_string(name)}, every: {every}, offset: {_TASK_OFFSET}}}\n\n"
    source = f"from(bucket: {flux_string(bucket)})\n  |> range(start: -{span})\n"
    sink = (
        f'  |> set(key: "_measurement", value: {flux_string(r.name)})\n'
        f"  |> to(bucket: {flux_string(rollup_bucket(bucket, r.tier))}, org: {flux_string(org)})\n"
    )
    if r.source == "sensors":
        return FluxTask(name, header + _sensor_flux(r, source) + sink)
    field_name, fn = ("count", "sum") if r.source == "counts" else ("event_id", "count")
    body = (
        source
        + f"  |> filter(fn: (r) => r._measurement == {flux_string(r.source)}"
        + f" and r._field == {flux_string(field_name)})\n"
        + f"  |> group(columns: {_flux_list(r.group_tags)})\n"
        + f"  |> {_flux_window(r, fn)}\n"
        + '  |> set(key: "_field", value: "count")\n'
    )
    return FluxTask(name, header + body + sink)


def _flux_window(r: Rollup, fn: str) -> str:
    width = "1m" if r.tier == "minute" else "1h"
    return f'aggregateWindow(every: {width}, fn: {fn}, createEmpty: false, timeSrc: "_start")'


def _sensor_flux(r: Rollup, source: str) -> str:
    # Quality is a field of its own in 2.x: pivot to see it beside the value. Keep only the
    # grouping tags, or to() would turn the leftover string columns (unit, quality) into tags.
    columns = _flux_list(("_start", "_stop", "_time", "_value", *r.group_tags))
    readings = (
        "readings = "
        + source
        + '  |> filter(fn: (r) => r._measurement == "sensors"'
        + ' and (r._field == "value" or r._field == "quality"))\n'
        + '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        + '  |> filter(fn: (r) => r.quality == "ok")\n'
        + "  |> map(fn: (r) => ({r with _value: r.value}))\n"
        + f"  |> keep(columns: {columns})\n"
        + f"  |> group(columns: {_flux_list(r.group_tags)})\n\n"
    )
    # One stream per statistic, each its own field. The unit is left out: it never changes
    # for one sensor and quantity, and the raw readings carry it.
    streams = ",\n".join(
        f'  readings |> {_flux_window(r, fn)} |> set(key: "_field", value: {flux_string(out)})'
        for fn, out in (("mean", "mean"), ("min", "min"), ("max", "max"), ("count", "n"))
    )
    return readings + "union(tables: [\n" + streams + "\n])\n"


def downsampling_tasks(bucket: str, org: str) -> list[FluxTask]:
    """Every rollup's task, for InfluxDB 2.x."""
    return [downsampling_task(r, bucket, org) for r in ROLLUPS]


__all__ = [
    "ROLLUPS",
    "Coverage",
    "FluxTask",
    "RetentionPolicy",
    "RetentionReport",
    "Rollup",
    "ShownPolicy",
    "TierSpan",
    "ceil_time",
    "continuous_query_influxql",
    "downsampling_tasks",
    "floor_time",
    "merge_count_buckets",
    "plan_spans",
    "retention_policy_statements",
    "rollup_select_influxql",
]
