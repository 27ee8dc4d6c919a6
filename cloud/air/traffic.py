"""Traffic and air together, pure: counts by class per hour beside the pollutants, their correlation,
and an emission estimate from the counted vehicles.

The correlation is Pearson's r between the hourly total count and each
pollutant's hourly mean, over the hours that have both (at least three, and
neither series constant; else none). It says how much of the hour-to-hour
variation moves together, not that traffic caused it: wind, the boundary
layer's daily cycle and background pollution move with the time of day too.

The emission estimate is ``Σ count(class) × factor(pollutant, class) ×
length`` in grams, with ``factor`` in g per vehicle-km for the fleet of the
city and ``length`` the road segment the counts stand for. The default
factors (:mod:`roadside.cloud.air.factors`) come from SUMO's HBEFA 4 model
over a simulated fleet (``docs/air-quality.md``); without factors there is
no estimate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class TrafficHour:
    start: datetime
    counts: dict[str, int]  # vehicles by class
    pollutants: dict[str, float | None]  # hourly means (valid hours only)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def pearson(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Pearson's r, or ``None`` with fewer than three pairs or a constant series."""
    if len(pairs) < 3:
        return None
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def hours_together(
    counts: Iterable[tuple[datetime, str, int]],
    means: Mapping[str, Mapping[datetime, float]],
    starts: Sequence[datetime],
) -> list[TrafficHour]:
    """One row per hour start: counts by class (0 where none) and each pollutant's mean or ``None``."""
    by_hour: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for start, cls, n in counts:
        by_hour[start][cls] += n
    return [
        TrafficHour(start, dict(by_hour.get(start, {})), {p: m.get(start) for p, m in means.items()})
        for start in starts
    ]


def correlations(hours: Sequence[TrafficHour]) -> dict[str, float | None]:
    pollutants = sorted({p for h in hours for p in h.pollutants})
    out: dict[str, float | None] = {}
    for p in pollutants:
        pairs = [(float(h.total), v) for h in hours if (v := h.pollutants.get(p)) is not None]
        out[p] = pearson(pairs)
    return out


def emissions(
    hours: Sequence[TrafficHour], factors: Mapping[str, Mapping[str, float]], length_km: float
) -> dict[str, float]:
    """Grams of each pollutant the counted vehicles emitted on the segment (classes without a factor: 0)."""
    totals: dict[str, int] = defaultdict(int)
    for h in hours:
        for cls, n in h.counts.items():
            totals[cls] += n
    return {
        pollutant: sum(n * per_class.get(cls, 0.0) for cls, n in totals.items()) * length_km
        for pollutant, per_class in factors.items()
    }
