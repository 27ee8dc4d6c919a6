"""Hourly and daily means with coverage, in the location's local time, pure.

Coverage is OpenAQ's: ``expected`` readings (from the sensor's reporting
period) against ``observed`` valid ones, and the percentage. The data rules
are the US EPA's completeness conventions (40 CFR Part 50, Appendix N, and
the AQI Technical Assistance Document), applied the same way to every index:

* an **hourly mean** counts when at least 75 % of its expected readings are
  valid (45 of 60 one-minute values);
* a **daily mean** counts when at least 75 % of the day's hours have a
  counting hourly mean (18 of 24; a daylight-saving day has 23 or 25 hours);
* a **rolling 8-hour mean** (ozone, CO) needs 6 of its 8 hours.

Days are local calendar days of the location's time zone, and so are hours
(a half-hour zone's hours start at :30 UTC).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

from roadside.cloud.air.stages import Measurement

COMPLETENESS: Final = 0.75
Period = Literal["1h", "1d"]


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A mean over one local hour or day of one sensor's parameter, with its coverage."""

    sensor: str
    parameter: str
    unit: str
    period: Period
    start: datetime  # aware, in the location's zone
    end: datetime
    mean: float | None  # None: nothing valid to average
    minimum: float | None
    maximum: float | None
    observed: int  # valid readings (hours, for a day)
    expected: int

    @property
    def percent(self) -> float:
        return 0.0 if self.expected == 0 else min(100.0, 100.0 * self.observed / self.expected)

    @property
    def counts(self) -> bool:
        """Complete enough for the data rules: a mean an index may use."""
        return self.mean is not None and self.observed >= math.ceil(COMPLETENESS * self.expected)


def local_hour(ts: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, zone).replace(minute=0, second=0, microsecond=0)


def _next_hour(start: datetime, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(start.timestamp() + 3600, zone)


def hourly(measurements: Iterable[Measurement], zone: ZoneInfo, period_s: float) -> list[Aggregate]:
    """Hourly means of valid values, per (sensor, parameter) and local hour, oldest first."""
    expected = max(1, round(3600 / period_s))
    groups: dict[tuple[str, str, float], list[Measurement]] = defaultdict(list)
    for m in measurements:
        start = local_hour(m.ts, zone)
        groups[(m.sensor, m.parameter, start.timestamp())].append(m)
    out = []
    for (sensor, parameter, start_ts), items in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        start = datetime.fromtimestamp(start_ts, zone)
        values = [m.value for m in items if m.valid]
        out.append(
            Aggregate(
                sensor,
                parameter,
                items[0].unit,
                "1h",
                start,
                _next_hour(start, zone),
                sum(values) / len(values) if values else None,
                min(values) if values else None,
                max(values) if values else None,
                len(values),
                expected,
            )
        )
    return out


def local_day(when: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The local midnight that starts ``when``'s day and the next one (23, 24 or 25 hours later)."""
    local = when.astimezone(zone)
    start = datetime(local.year, local.month, local.day, tzinfo=zone)
    following = start.date() + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=zone)
    return start, end


def daily(hours: Sequence[Aggregate], zone: ZoneInfo) -> list[Aggregate]:
    """Daily means of the counting hourly means, per (sensor, parameter) and local day."""
    groups: dict[tuple[str, str, datetime], list[Aggregate]] = defaultdict(list)
    for h in hours:
        groups[(h.sensor, h.parameter, local_day(h.start, zone)[0])].append(h)
    out = []
    for (sensor, parameter, start), items in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        _, end = local_day(start, zone)
        expected = round((end.timestamp() - start.timestamp()) / 3600)
        means = [h.mean for h in items if h.counts and h.mean is not None]
        out.append(
            Aggregate(
                sensor,
                parameter,
                items[0].unit,
                "1d",
                start,
                end,
                sum(means) / len(means) if means else None,
                min(means) if means else None,
                max(means) if means else None,
                len(means),
                expected,
            )
        )
    return out


def rolling_mean(hourly_means: Sequence[float | None], hours: int = 8) -> float | None:
    """The mean of the first ``hours`` values (most recent first) if at least 75 % are there."""
    window = [v for v in hourly_means[:hours] if v is not None]
    return sum(window) / len(window) if len(window) >= math.ceil(COMPLETENESS * hours) else None
