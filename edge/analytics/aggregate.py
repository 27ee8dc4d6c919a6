"""Per-interval aggregation: line crossings into count records, speeds and zone visits into summaries."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from roadside.edge.analytics.lines import LineCrossing
from roadside.shared.schemas import CountRecord

SpeedDirection = Literal["a_to_b", "b_to_a"]


def interval_start(ts: float, interval_s: int) -> float:
    """Start of the wall-aligned interval holding epoch seconds ``ts``."""
    return ts - ts % interval_s


class CountAggregator:
    """Sums crossings per (line, class, direction, lane) over fixed, wall-aligned intervals.

    Intervals are aligned to multiples of ``interval_s`` since the epoch, so
    every device's buckets line up on the hub. ``add`` returns the records of
    any interval that closed before ``ts``.
    """

    def __init__(self, interval_s: int, labels: list[str], model_version: str) -> None:
        self.interval_s = interval_s
        self.labels = labels
        self.model_version = model_version
        self._start: float | None = None
        # (line, class label, direction, lane)
        self._counts: Counter[tuple[str, str, str, int | None]] = Counter()

    def _interval_of(self, ts: float) -> float:
        return interval_start(ts, self.interval_s)

    def add(self, ts: float, crossings: list[LineCrossing]) -> list[CountRecord]:
        """Count ``crossings`` observed at epoch seconds ``ts``."""
        closed = self.flush_before(ts)
        if self._start is None:
            self._start = self._interval_of(ts)
        for c in crossings:
            label = self.labels[c.cls] if 0 <= c.cls < len(self.labels) else f"class{c.cls}"
            self._counts[(c.line, label, c.direction, c.lane)] += 1
        return closed

    def flush_before(self, ts: float) -> list[CountRecord]:
        """Close the current interval if ``ts`` is past its end."""
        if self._start is None or ts < self._start + self.interval_s:
            return []
        return self.flush()

    def flush(self) -> list[CountRecord]:
        """Close the current interval now (also on shutdown)."""
        if self._start is None:
            return []
        start = datetime.fromtimestamp(self._start, UTC)
        records = [
            CountRecord(
                interval_start=start,
                interval_s=self.interval_s,
                line=line,
                cls=cls,
                direction=direction,  # type: ignore[arg-type]
                count=n,
                lane=lane,
                model_version=self.model_version,
            )
            # No lane sorts first; None and int do not compare.
            for (line, cls, direction, lane), n in sorted(self._counts.items(), key=_count_order)
        ]
        self._start = None
        self._counts.clear()
        return records


def _count_order(item: tuple[tuple[str, str, str, int | None], int]) -> tuple[str, str, str, int]:
    line, cls, direction, lane = item[0]
    return (line, cls, direction, -1 if lane is None else lane)


@dataclass(frozen=True, slots=True)
class SpeedMeasurement:
    """One object timed through a speed trap."""

    ts: float  # when it crossed the second line
    trap: str
    track_id: int
    cls: str
    lane: int | None
    direction: SpeedDirection
    speed_kmh: float


@dataclass(frozen=True, slots=True)
class SpeedRecord:
    """Speeds through one trap of one class, lane and direction during one interval."""

    interval_start: datetime
    interval_s: int
    trap: str
    cls: str
    lane: int | None
    direction: SpeedDirection
    count: int
    mean_kmh: float
    min_kmh: float
    max_kmh: float
    p85_kmh: float  # the speed limit engineers' figure: 85 % drove at or below it


class SpeedAggregator:
    """Collects speed measurements until the interval closes."""

    def __init__(self) -> None:
        self._speeds: defaultdict[tuple[str, str, int | None, SpeedDirection], list[float]] = defaultdict(
            list
        )

    def add(self, m: SpeedMeasurement) -> None:
        self._speeds[(m.trap, m.cls, m.lane, m.direction)].append(m.speed_kmh)

    def close(self, start: float, interval_s: int) -> list[SpeedRecord]:
        when = datetime.fromtimestamp(start, UTC)
        records = []
        for (trap, cls, lane, direction), values in sorted(self._speeds.items(), key=_speed_order):
            v = np.asarray(values, dtype=np.float64)
            records.append(
                SpeedRecord(
                    interval_start=when,
                    interval_s=interval_s,
                    trap=trap,
                    cls=cls,
                    lane=lane,
                    direction=direction,
                    count=len(values),
                    mean_kmh=float(v.mean()),
                    min_kmh=float(v.min()),
                    max_kmh=float(v.max()),
                    p85_kmh=float(np.percentile(v, 85)),
                )
            )
        self._speeds.clear()
        return records


def _speed_order(
    item: tuple[tuple[str, str, int | None, SpeedDirection], list[float]],
) -> tuple[str, str, int, str]:
    trap, cls, lane, direction = item[0]
    return (trap, cls, -1 if lane is None else lane, direction)


@dataclass(frozen=True, slots=True)
class ZoneVisit:
    """One object's stay in a zone, from first to last sighting inside it."""

    zone: str
    track_id: int
    cls: str
    entered_ts: float
    left_ts: float

    @property
    def dwell_s(self) -> float:
        return self.left_ts - self.entered_ts


@dataclass(frozen=True, slots=True)
class ZoneRecord:
    """Traffic through one zone of one class during one interval."""

    interval_start: datetime
    interval_s: int
    zone: str
    cls: str
    entries: int
    exits: int
    peak_occupancy: int  # most objects of the class in the zone at once
    mean_dwell_s: float | None  # of the visits that ended in the interval
    max_dwell_s: float | None


@dataclass
class _ZoneTally:
    entries: int = 0
    peak: int = 0
    dwells: list[float] = field(default_factory=list)


class ZoneAggregator:
    """Collects zone entries, exits and occupancy peaks until the interval closes."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str], _ZoneTally] = {}

    def _tally(self, zone: str, cls: str) -> _ZoneTally:
        return self._tallies.setdefault((zone, cls), _ZoneTally())

    def entered(self, zone: str, cls: str) -> None:
        self._tally(zone, cls).entries += 1

    def left(self, visit: ZoneVisit) -> None:
        self._tally(visit.zone, visit.cls).dwells.append(visit.dwell_s)

    def occupancy(self, zone: str, cls: str, n: int) -> None:
        tally = self._tally(zone, cls)
        tally.peak = max(tally.peak, n)

    def close(self, start: float, interval_s: int, occupied: Counter[tuple[str, str]]) -> list[ZoneRecord]:
        """Summaries of the interval; ``occupied`` (zone, class) -> objects inside now, which carry over."""
        when = datetime.fromtimestamp(start, UTC)
        records = []
        for (zone, cls), t in sorted(self._tallies.items()):
            dwells = t.dwells
            records.append(
                ZoneRecord(
                    interval_start=when,
                    interval_s=interval_s,
                    zone=zone,
                    cls=cls,
                    entries=t.entries,
                    exits=len(dwells),
                    peak_occupancy=t.peak,
                    mean_dwell_s=sum(dwells) / len(dwells) if dwells else None,
                    max_dwell_s=max(dwells) if dwells else None,
                )
            )
        self._tallies.clear()
        # Whoever is still inside starts the next interval's peak.
        for (zone, cls), n in occupied.items():
            self.occupancy(zone, cls, n)
        return records
