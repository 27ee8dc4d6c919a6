"""The InfluxQL the v1 adapter reads with (pure). Every value enters the text through
:func:`quote_literal`, :func:`quote_ident` or ``int()``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from roadside.cloud.storage.base import CountQuery, EventQuery, HealthQuery, SensorQuery
from roadside.cloud.storage.influx.line_protocol import COUNTS, EVENTS, HEALTH, INGEST, SENSORS
from roadside.cloud.storage.influx.rows import count_groups
from roadside.shared.limits import to_epoch_us


def quote_ident(name: str) -> str:
    """An InfluxQL identifier (database, measurement, tag or field name) in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_literal(text: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _where(start: datetime, end: datetime, **equal: str | None) -> str:
    # Integer times in InfluxQL are nanoseconds since the epoch.
    terms = [f"time >= {to_epoch_us(start) * 1000}", f"time < {to_epoch_us(end) * 1000}"]
    terms += [f"{quote_ident(k)} = {quote_literal(v)}" for k, v in equal.items() if v is not None]
    return " AND ".join(terms)


def _select(what: str, source: str, where: str, tail: str = "") -> str:
    # InfluxQL, not SQL: every value in ``where`` went through quote_literal, quote_ident or int().
    return f"SELECT {what} FROM {source} WHERE {where}{tail}"  # noqa: S608


def count_buckets_influxql(query: CountQuery, source: Callable[[str], str]) -> str:
    """Counts summed per bucket; fill(none) because InfluxDB 1.x otherwise returns a null row
    for every empty bucket of every series from ``start`` to ``end``."""
    if query.bucket_s <= 0:
        raise ValueError(f"bucket_s must be positive, not {query.bucket_s}")
    where = _where(
        query.start,
        query.end,
        device=query.device_id,
        site=query.site,
        line=query.line,
        cls=query.cls,
        direction=query.direction,
    )
    groups = ", ".join(quote_ident(g) for g in count_groups(query))
    tail = f" GROUP BY time({int(query.bucket_s)}s), {groups} fill(none)"
    return _select('sum("count") AS "count"', source(COUNTS), where, tail)


def events_influxql(query: EventQuery, source: Callable[[str], str]) -> str:
    """Raw events, oldest first. The caller must not pass ``limit <= 0``: InfluxQL reads LIMIT 0 as none."""
    where = _where(query.start, query.end, device=query.device_id, site=query.site, type=query.type)
    return _select("*", source(EVENTS), where, f" ORDER BY time ASC LIMIT {int(query.limit)}")


def sensor_series_influxql(query: SensorQuery, source: Callable[[str], str]) -> str:
    """Raw readings, oldest first; ``limit`` must be positive as for events."""
    where = _where(
        query.start,
        query.end,
        device=query.device_id,
        site=query.site,
        sensor=query.sensor,
        quantity=query.quantity,
    )
    return _select("*", source(SENSORS), where, f" ORDER BY time ASC LIMIT {int(query.limit)}")


def latest_health_influxql(device_id: str, source: Callable[[str], str]) -> str:
    return _select('last("report")', source(HEALTH), f'"device" = {quote_literal(device_id)}')


def health_history_influxql(query: HealthQuery, source: Callable[[str], str]) -> str:
    """The device's reports in the window, newest first, at most ``limit``; with a step, the last
    report of each epoch-aligned step (``fill(none)``: quiet steps give no row)."""
    where = _where(query.start, query.end, device=query.device_id)
    if query.step_s > 0:
        tail = f" GROUP BY time({int(query.step_s)}s) fill(none) ORDER BY time DESC LIMIT {int(query.limit)}"
        return _select('last("report") AS "report"', source(HEALTH), where, tail)
    return _select('"report"', source(HEALTH), where, f" ORDER BY time DESC LIMIT {int(query.limit)}")


def highest_seq_influxql(device_id: str, source: Callable[[str], str]) -> str:
    return _select('max("seq")', source(INGEST), f'"device" = {quote_literal(device_id)}')


def seqs_above_influxql(device_id: str, floor: int, source: Callable[[str], str]) -> str:
    return _select('"seq"', source(INGEST), f'"device" = {quote_literal(device_id)} AND "seq" > {int(floor)}')
