"""The index of a location now and for a past day, from its hourly means, by the data rules.

Each parameter's hourly series at a location is the mean of its sensors'
counting hourly means (OpenAQ keeps the sensors apart; an index is one per
location). From those, per standard:

=========  ===========================================  ==========================================
standard   now                                          a local day
=========  ===========================================  ==========================================
us-epa     PM2.5, PM10: NowCast (12 h); O3: NowCast     PM: daily mean (18 of 24 h); NO2, SO2:
           (8 h); NO2, SO2: the last hour; CO: 8-hour   the day's highest hourly mean; O3, CO:
           mean (6 of 8 h)                              the day's highest 8-hour mean
eu-eaqi    PM: 24-hour mean (18 of 24 h); NO2, O3,      PM: daily mean; NO2, O3, SO2: the day's
           SO2: the last hour                           highest hourly mean
eu-caqi    PM, NO2, O3, SO2: the last hour; CO: 8-hour  PM: daily mean (24-hour grid); NO2, O3,
           mean                                         SO2: highest hour; CO: highest 8 hours
=========  ===========================================  ==========================================

"The last hour" is the hour before ``now`` (the current hour is not over).
A parameter whose rule is not met gives no sub-index, and a location none of
whose parameters gives one has no index (:class:`NoIndex` says why). The
European indices also need their station rule's pollutants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from roadside.cloud.air.aggregate import COMPLETENESS, Aggregate, local_hour, rolling_mean
from roadside.shared.air import nowcast
from roadside.shared.air.epa import Averaging, Pollutant
from roadside.shared.air.europe import Station
from roadside.shared.air.standards import IndexReport, Standard, compute, supported
from roadside.shared.errors import AirIndexError

POLLUTANTS: Final[frozenset[str]] = frozenset({"pm25", "pm10", "o3", "no2", "so2", "co"})


@dataclass(frozen=True, slots=True)
class NoIndex:
    reason: str


def hourly_series(
    hours: Sequence[Aggregate], now: datetime, zone: ZoneInfo, span: int = 24
) -> dict[str, list[float | None]]:
    """Per parameter, the location's hourly means of the ``span`` hours before ``now``, most recent first.

    ``None`` marks an hour with no counting mean. Sensors of one parameter are averaged.
    """
    last_start = local_hour(now.timestamp(), zone).timestamp() - 3600  # the last whole local hour
    by: dict[str, dict[int, list[float]]] = {}
    for h in hours:
        if h.parameter not in POLLUTANTS or not h.counts or h.mean is None:
            continue
        age = round((last_start - h.start.timestamp()) / 3600)
        if 0 <= age < span:
            by.setdefault(h.parameter, {}).setdefault(age, []).append(h.mean)
    return {
        p: [sum(ages[a]) / len(ages[a]) if a in ages else None for a in range(span)] for p, ages in by.items()
    }


def _current_values(
    standard: Standard, series: Mapping[str, list[float | None]]
) -> dict[Pollutant, tuple[float, Averaging | None]]:
    values: dict[Pollutant, tuple[float, Averaging | None]] = {}
    for p, hours in series.items():
        pollutant: Pollutant = p  # type: ignore[assignment]  # filtered to POLLUTANTS
        value: float | None = None
        if standard == "us-epa" and p in ("pm25", "pm10", "o3"):
            try:
                value = float(nowcast.nowcast(p, hours).value)  # type: ignore[arg-type]  # pm25, pm10, o3
            except AirIndexError:
                value = None
        elif p == "co":
            value = rolling_mean(hours, 8)
        elif standard == "eu-eaqi" and p in ("pm25", "pm10"):
            value = rolling_mean(hours, 24)
        else:
            value = hours[0] if hours else None
        if value is not None:
            values[pollutant] = (max(0.0, value), None)
    return values


def current_index(
    standard: Standard,
    hours: Sequence[Aggregate],
    now: datetime,
    zone: ZoneInfo,
    station: Station = "traffic",
) -> IndexReport | NoIndex:
    """The index now at a location whose hourly aggregates are ``hours``."""
    values = _current_values(standard, hourly_series(hours, now, zone))
    return _report(standard, {p: v for p, (v, _) in values.items()}, None, station)


def _report(
    standard: Standard, values: Mapping[Pollutant, float], averaging: Averaging | None, station: Station
) -> IndexReport | NoIndex:
    # A pollutant the standard has no index for (CO in the EAQI), or whose value this period
    # defines none for (1-hour SO2 above 304 ppb), leaves the others' index standing.
    usable: dict[Pollutant, float] = {}
    for p, v in values.items():
        if p not in supported(standard):
            continue
        try:
            compute(standard, {p: v}, averaging, station)
        except AirIndexError:
            continue
        usable[p] = v
    values = usable
    if not values:
        return NoIndex("no parameter has the data its rule needs")
    try:
        report = compute(standard, values, averaging, station)
    except AirIndexError as exc:
        return NoIndex(str(exc))
    if report.missing:
        return NoIndex(f"a {station} station's {standard} index needs {', '.join(report.missing)}")
    return report


def daily_index(
    standard: Standard, hours: Sequence[Aggregate], days: Sequence[Aggregate], station: Station = "traffic"
) -> IndexReport | NoIndex:
    """The index of one local day from its hourly and daily aggregates (one location, one day)."""
    values: dict[Pollutant, float] = {}
    per_hour: dict[str, dict[float, list[float]]] = {}
    for h in hours:
        if h.parameter in POLLUTANTS and h.counts and h.mean is not None:
            per_hour.setdefault(h.parameter, {}).setdefault(h.start.timestamp(), []).append(h.mean)
    for d in days:
        if d.parameter in ("pm25", "pm10") and d.counts and d.mean is not None:
            values[d.parameter] = max(0.0, d.mean)  # type: ignore[index]  # pm25, pm10
    for p, by_start in per_hour.items():
        if p in ("pm25", "pm10"):
            continue
        starts = sorted(by_start)
        means = {s: sum(v) / len(v) for s, v in by_start.items()}
        if len(starts) < COMPLETENESS * 24:
            continue  # fewer than 18 counting hours: no daily maximum either
        if p in ("o3", "co") and standard != "eu-eaqi":
            windows = [
                rolling_mean([means.get(s - 3600 * k) for k in range(8)], 8) for s in starts
            ]  # fmt: skip
            highest = max((w for w in windows if w is not None), default=None)
        else:
            highest = max(means.values())
        if highest is not None:
            values[p] = max(0.0, highest)  # type: ignore[index]  # filtered to POLLUTANTS
    averaging: Averaging | None = "24h" if standard == "eu-caqi" else None
    return _report(standard, values, averaging, station)


CATEGORY_ORDER: Final[dict[Standard, tuple[str, ...]]] = {
    "us-epa": (
        "Good",
        "Moderate",
        "Unhealthy for Sensitive Groups",
        "Unhealthy",
        "Very Unhealthy",
        "Hazardous",
    ),
    "eu-eaqi": ("Good", "Fair", "Moderate", "Poor", "Very poor", "Extremely poor"),
    "eu-caqi": ("Very low", "Low", "Medium", "High", "Very high"),
}


def worsened(standard: Standard, before: str | None, after: str) -> bool:
    """Whether the category went up the scale (a first index is not a worsening)."""
    order = CATEGORY_ORDER[standard]
    return before is not None and order.index(after) > order.index(before)
