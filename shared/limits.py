"""What every store can hold, so nothing valid on the wire fails a write.

SQLite and PostgreSQL keep signed 64-bit integers; InfluxDB keeps times as
signed 64-bit nanoseconds since 1970 (up to 2262-04-11). The protocol's
integers and times are bounded to these, and its free text to printable (tab and newline allowed)
characters, before anything reaches a store or the registry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

MAX_WIRE_INT: Final = 2**63 - 1
EARLIEST_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME: Final = datetime(2262, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def to_epoch_us(when: datetime) -> int:
    """Exact microseconds since the Unix epoch of an aware datetime; naive ones are refused."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"datetime {when.isoformat()} has no time zone; pass an aware (UTC) datetime")
    return (when - EARLIEST_TIME) // _MICROSECOND


EARLIEST_US: Final = 0
LATEST_US: Final = to_epoch_us(LATEST_TIME)


def check_storable_time(value: datetime) -> datetime:
    """``value`` if InfluxDB, SQLite and PostgreSQL can all hold it, else ``ValueError``."""
    if not EARLIEST_TIME <= value < LATEST_TIME:
        raise ValueError(f"time must lie between {EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d}")
    return value


_ALLOWED_CONTROLS: Final = frozenset("\t\n")


def check_printable(value: str) -> str:
    """``value`` if it has no control characters but tab and newline (NUL breaks PostgreSQL)."""
    if any((ord(c) < 32 or ord(c) == 127) and c not in _ALLOWED_CONTROLS for c in value):
        raise ValueError("text must not contain control characters other than tab and newline")
    return value
