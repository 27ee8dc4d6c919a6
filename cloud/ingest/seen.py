"""When devices were last heard from, written to the registry at most once per interval each.

Pure bookkeeping (the clock is passed in): the ingest writer notes every accepted message,
asks which devices are due, writes those and says so. One registry transaction per batch
was a tenth of the writer's time for a presence hint that the API reads in minutes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


class SeenTimes:
    """Last-heard times waiting for the registry, and when each device was last written."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._pending: dict[str, datetime] = {}
        self._written_at: dict[str, float] = {}

    def note(self, device_id: str, ts_ms: int) -> None:
        """A message from ``device_id`` stamped ``ts_ms`` was accepted (the newest time wins)."""
        at = datetime.fromtimestamp(ts_ms / 1000, UTC)
        pending = self._pending.get(device_id)
        if pending is None or at > pending:
            self._pending[device_id] = at

    def due(self, now: float) -> list[tuple[str, datetime]]:
        """Pending times of devices not written within the interval, sorted by device
        (``now=math.inf``: all of them)."""
        written = self._written_at
        return sorted(
            (device_id, at)
            for device_id, at in self._pending.items()
            if now - written.get(device_id, -math.inf) >= self.interval_s
        )

    def written(self, entries: list[tuple[str, datetime]], now: float) -> None:
        """``entries`` (from :meth:`due`) reached the registry at ``now``."""
        for device_id, at in entries:
            self._written_at[device_id] = now
            if self._pending.get(device_id) == at:  # a newer time noted meanwhile stays pending
                del self._pending[device_id]

    def __bool__(self) -> bool:
        return bool(self._pending)
