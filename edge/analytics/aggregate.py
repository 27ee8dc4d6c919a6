"""Per-interval aggregation of line crossings into count records."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from edge.analytics.lines import LineCrossing
from shared.schemas import CountRecord


class CountAggregator:
    """Sums crossings per (line, class, direction) over fixed, wall-aligned intervals.

    Intervals are aligned to multiples of ``interval_s`` since the epoch, so
    every device's buckets line up on the hub. ``add`` returns the records of
    any interval that closed before ``ts``.
    """

    def __init__(self, interval_s: int, labels: list[str], model_version: str) -> None:
        self.interval_s = interval_s
        self.labels = labels
        self.model_version = model_version
        self._start: float | None = None
        self._counts: Counter[tuple[str, str, str]] = Counter()  # (line, class label, direction)

    def _interval_of(self, ts: float) -> float:
        return ts - ts % self.interval_s

    def add(self, ts: float, crossings: list[LineCrossing]) -> list[CountRecord]:
        """Count ``crossings`` observed at epoch seconds ``ts``."""
        closed = self.flush_before(ts)
        if self._start is None:
            self._start = self._interval_of(ts)
        for c in crossings:
            label = self.labels[c.cls] if 0 <= c.cls < len(self.labels) else f"class{c.cls}"
            self._counts[(c.line, label, c.direction)] += 1
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
                model_version=self.model_version,
            )
            for (line, cls, direction), n in sorted(self._counts.items())
        ]
        self._start = None
        self._counts.clear()
        return records
