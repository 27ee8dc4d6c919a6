"""The ``TimeSeriesStore`` interface and the rows that cross it.

Adapters: :mod:`cloud.storage.sqlite` (embedded default) and
:mod:`cloud.storage.influx` (InfluxDB, v1 HTTP API or the 2.x client).
Every write is idempotent on (device id, envelope sequence number, record
index): a message delivered twice is stored once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from shared.schemas import CountRecord, DetectionEvent, Health, SensorReading


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from, taken from the authenticated envelope and the registry."""

    device_id: str
    site: str
    seq: int


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """The records of one accepted envelope, ready to store."""

    origin: Origin
    counts: Sequence[CountRecord] = ()
    events: Sequence[DetectionEvent] = ()
    sensors: Sequence[SensorReading] = ()
    health: Health | None = None


@dataclass(frozen=True, slots=True)
class CountBucket:
    """Counts summed over one time bucket for one (device, line, class, direction)."""

    bucket_start: datetime
    device_id: str
    site: str
    line: str
    cls: str
    direction: str
    count: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    device_id: str
    site: str
    event: DetectionEvent


@dataclass(frozen=True, slots=True)
class StoredReading:
    device_id: str
    site: str
    reading: SensorReading


@dataclass(frozen=True, slots=True)
class CountQuery:
    """Counts whose ``interval_start`` falls in ``[start, end)``, summed per UTC bucket of ``bucket_s``.

    Buckets are aligned to the Unix epoch: ``floor(epoch / bucket_s) * bucket_s``.
    """

    start: datetime
    end: datetime
    bucket_s: int = 3600
    device_id: str | None = None
    site: str | None = None
    line: str | None = None
    cls: str | None = None
    direction: str | None = None


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Events whose ``ts`` falls in ``[start, end)``."""

    start: datetime
    end: datetime
    device_id: str | None = None
    site: str | None = None
    type: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class SensorQuery:
    """Sensor readings whose ``ts`` falls in ``[start, end)``."""

    start: datetime
    end: datetime
    device_id: str | None = None
    site: str | None = None
    sensor: str | None = None
    quantity: str | None = None
    limit: int = 1000


EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def to_epoch_us(when: datetime) -> int:
    """Exact microseconds since the Unix epoch of an aware datetime; naive ones are refused."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"datetime {when.isoformat()} has no time zone; pass an aware (UTC) datetime")
    return (when - EPOCH) // _MICROSECOND


def from_epoch_us(epoch_us: int) -> datetime:
    """The aware UTC datetime of microseconds since the Unix epoch."""
    return EPOCH + timedelta(microseconds=epoch_us)


class TimeSeriesStore(Protocol):
    """Where telemetry lives. Implementations translate their errors to ``TransportError``."""

    def write(self, batches: Sequence[IngestBatch]) -> None:
        """Store the batches durably; return only once they would survive a crash."""

    def count_buckets(self, query: CountQuery) -> list[CountBucket]:
        """Counts summed per bucket, ordered by bucket start then device, line, class, direction."""

    def events(self, query: EventQuery) -> list[StoredEvent]:
        """Events in the window, oldest first, at most ``query.limit``."""

    def sensor_series(self, query: SensorQuery) -> list[StoredReading]:
        """Sensor readings in the window, oldest first, at most ``query.limit``."""

    def latest_health(self, device_id: str) -> Health | None: ...

    def recent_sequences(self, device_id: str, window: int) -> list[int]:
        """Sequence numbers stored for the device within ``window`` of its highest, to rebuild replay state."""

    def ping(self) -> None:
        """Raise ``TransportError`` if the store cannot be reached."""

    def close(self) -> None: ...
