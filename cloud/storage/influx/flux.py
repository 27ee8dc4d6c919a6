"""The Flux the 2.x adapter reads with (pure). Values travel as ``params``, never in the text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from roadside.cloud.storage.base import CountQuery, EventQuery, HealthQuery, SensorQuery
from roadside.cloud.storage.influx.line_protocol import COUNTS, EVENTS, HEALTH, INGEST, SENSORS
from roadside.cloud.storage.influx.rows import count_groups
from roadside.shared.errors import TransportError
from roadside.shared.limits import to_epoch_us


@dataclass(frozen=True, slots=True)
class FluxQuery:
    """A Flux script and the values it reads as ``params.*``: values never enter the text."""

    text: str
    params: dict[str, object]


# Tag names go in brackets (``r["type"]``) so that none can clash with a Flux keyword; each value
# travels as params.tag_<name>.
def _flux_filters(params: dict[str, object], **equal: str | None) -> str:
    terms = []
    for tag, value in equal.items():
        if value is not None:
            params[f"tag_{tag}"] = value
            terms.append(f' and r["{tag}"] == params.tag_{tag}')
    return "".join(terms)


def _flux_head(bucket: str, start: datetime | None, end: datetime | None) -> tuple[str, dict[str, object]]:
    params: dict[str, object] = {"bucket": bucket}
    if start is None or end is None:
        # Latest-of queries: the whole bucket. Flux needs a start; the epoch is the earliest.
        span = "range(start: 1970-01-01T00:00:00Z)"
    else:
        # Checked here because to_epoch_us refuses naive datetimes; the client sends them as RFC3339.
        to_epoch_us(start), to_epoch_us(end)
        params.update(start=start, stop=end)
        span = "range(start: params.start, stop: params.stop)"
    return f"from(bucket: params.bucket)\n  |> {span}\n", params


def count_buckets_flux(query: CountQuery, bucket: str, measurement: str = COUNTS) -> FluxQuery:
    """Counts summed per epoch-aligned bucket, one table per device, site, line, class, direction.

    ``measurement`` is ``counts`` or a rollup of it (``counts_1m`` in the rollup bucket)."""
    if query.bucket_s <= 0:
        raise ValueError(f"bucket_s must be positive, not {query.bucket_s}")
    head, params = _flux_head(bucket, query.start, query.end)
    filters = _flux_filters(
        params,
        device=query.device_id,
        site=query.site,
        line=query.line,
        cls=query.cls,
        direction=query.direction,
    )
    groups = ", ".join(f'"{g}"' for g in count_groups(query))
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "count"{filters})\n'
        + f"  |> group(columns: [{groups}])\n"
        + f'  |> aggregateWindow(every: {int(query.bucket_s)}s, fn: sum, createEmpty: false, timeSrc: "_start")'
    )
    return FluxQuery(text, params)


def _raw_flux(measurement: str, head: str, filters: str, limit: int) -> str:
    return (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{measurement}"{filters})\n'
        + '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        + "  |> group()\n"
        + '  |> sort(columns: ["_time"])\n'
        + f"  |> limit(n: {int(limit)})"
    )


def events_flux(query: EventQuery, bucket: str) -> FluxQuery:
    """Events with their fields as columns, oldest first, at most ``query.limit``."""
    head, params = _flux_head(bucket, query.start, query.end)
    filters = _flux_filters(params, device=query.device_id, site=query.site, type=query.type)
    return FluxQuery(_raw_flux(EVENTS, head, filters, query.limit), params)


def sensor_series_flux(query: SensorQuery, bucket: str) -> FluxQuery:
    """Sensor readings with their fields as columns, oldest first, at most ``query.limit``."""
    head, params = _flux_head(bucket, query.start, query.end)
    filters = _flux_filters(
        params, device=query.device_id, site=query.site, sensor=query.sensor, quantity=query.quantity
    )
    return FluxQuery(_raw_flux(SENSORS, head, filters, query.limit), params)


def latest_health_flux(device_id: str, bucket: str) -> FluxQuery:
    head, params = _flux_head(bucket, None, None)
    filters = _flux_filters(params, device=device_id)
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{HEALTH}" and r._field == "report"{filters})\n'
        + "  |> group()\n"
        + '  |> sort(columns: ["_time"], desc: true)\n'
        + "  |> limit(n: 1)"
    )
    return FluxQuery(text, params)


def health_history_flux(query: HealthQuery, bucket: str) -> FluxQuery:
    """The device's reports in the window, newest first, at most ``limit``; with a step, the last
    report of each step (``aggregateWindow`` aligns its windows to the epoch)."""
    head, params = _flux_head(bucket, query.start, query.end)
    filters = _flux_filters(params, device=query.device_id)
    thin = (
        f"  |> aggregateWindow(every: {int(query.step_s)}s, fn: last, createEmpty: false)\n"
        if query.step_s > 0
        else ""
    )
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{HEALTH}" and r._field == "report"{filters})\n'
        + "  |> group()\n"
        + thin
        + '  |> sort(columns: ["_time"], desc: true)\n'
        + f"  |> limit(n: {int(query.limit)})"
    )
    return FluxQuery(text, params)


def highest_seq_flux(device_id: str, bucket: str) -> FluxQuery:
    head, params = _flux_head(bucket, None, None)
    filters = _flux_filters(params, device=device_id)
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{INGEST}" and r._field == "seq"{filters})\n'
        + "  |> group()\n"
        + "  |> max()"
    )
    return FluxQuery(text, params)


def seqs_above_flux(device_id: str, floor: int, bucket: str) -> FluxQuery:
    head, params = _flux_head(bucket, None, None)
    filters = _flux_filters(params, device=device_id)
    params["floor"] = int(floor)
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{INGEST}" and r._field == "seq"{filters}'
        + " and r._value > params.floor)\n"
        + "  |> group()\n"
        + '  |> keep(columns: ["_value"])'
    )
    return FluxQuery(text, params)


def flux_time_ns(value: Any) -> int:
    # The client parses Flux times into datetimes, cut to the microsecond: the nudge is gone already.
    if not isinstance(value, datetime):
        raise TransportError(f"InfluxDB returned a time that is not a time: {value!r}")
    return to_epoch_us(value) * 1000
