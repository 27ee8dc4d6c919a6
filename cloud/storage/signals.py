"""What the stores keep for signal control, and the optional protocol a store answers it through.

Detector changes, turning movements and zone statistics arrive as telemetry
(``IngestBatch.detector``, ``.movements``, ``.zone_stats``) and are stored per
device like counts, idempotent on (device, sequence number, index). A
controller's own phase events are posted per signal (``ControllerEvent``)
and stored idempotent on (signal, time, code, parameter).

A store that keeps them implements :class:`SupportsSignals` (SQLite and
InfluxDB 1.x do); the API answers 501 for any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol, runtime_checkable

from roadside.shared.schemas import DetectorChange, TurningMovement, ZoneStat

MAX_SIGNAL_ROWS: Final = 50_000  # the most rows one store query returns


@dataclass(frozen=True, slots=True)
class StoredDetectorChange:
    device_id: str
    site: str
    change: DetectorChange


@dataclass(frozen=True, slots=True)
class StoredMovement:
    device_id: str
    site: str
    movement: TurningMovement


@dataclass(frozen=True, slots=True)
class StoredZoneStat:
    device_id: str
    site: str
    stat: ZoneStat


@dataclass(frozen=True, slots=True, order=True)
class ControllerEvent:
    """A controller's own event (phase, pedestrian, ...) in the Indiana enumeration."""

    ts: datetime
    code: int
    param: int


@dataclass(frozen=True, slots=True)
class DetectorQuery:
    """Detector changes of ``devices`` with ``ts`` in ``[start, end)``, oldest first."""

    start: datetime
    end: datetime
    devices: tuple[str, ...]
    limit: int = 10_000


@dataclass(frozen=True, slots=True)
class IntervalQuery:
    """Movement or zone records of ``devices`` whose interval starts in ``[start, end)``."""

    start: datetime
    end: datetime
    devices: tuple[str, ...]
    limit: int = MAX_SIGNAL_ROWS


@runtime_checkable
class SupportsSignals(Protocol):
    def detector_changes(self, query: DetectorQuery) -> list[StoredDetectorChange]:
        """Ordered by ``ts`` then device, sequence and index; at most ``query.limit``."""

    def turning_movements(self, query: IntervalQuery) -> list[StoredMovement]:
        """Ordered by interval start, device, stream, entry, exit, class; at most ``query.limit``."""

    def zone_statistics(self, query: IntervalQuery) -> list[StoredZoneStat]:
        """Ordered by interval start, device, stream, zone; at most ``query.limit``."""

    def write_controller_events(self, signal_id: str, events: Sequence[ControllerEvent]) -> None:
        """Store durably; an event stored before (same signal, time, code, parameter) is skipped."""

    def controller_events(
        self, signal_id: str, start: datetime, end: datetime, limit: int
    ) -> list[ControllerEvent]:
        """Events with ``ts`` in ``[start, end)`` ordered by ``(ts, code, param)``, at most ``limit``."""
