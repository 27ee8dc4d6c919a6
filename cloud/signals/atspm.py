"""The ATSPM high-resolution event log of one signal (pure).

Rows ``SignalID, Timestamp, EventCode, EventParam`` in the Indiana/Purdue
enumeration (:class:`roadside.shared.signals.EventCode`): Roadside's own
detector changes, translated through the signal's channel map (a zone no
channel names is left out), and the phase events the controller posted.
Timestamps are written at 0.1 s, as controllers log them (truncated, so a
row never moves later than what happened); rows are ordered by the exact
time, then code and parameter, which is also the paging key.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from roadside.cloud.signals.channel_map import ChannelMap, ZoneKey
from roadside.cloud.storage.base import from_epoch_us
from roadside.cloud.storage.signals import ControllerEvent, StoredDetectorChange
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import DetectorZoneKind
from roadside.shared.signals import detector_event_code

__all__ = [
    "CSV_HEADER",
    "AtspmRow",
    "controller_rows",
    "csv_text",
    "detector_rows",
    "merge",
    "timestamp_text",
]

CSV_HEADER: Final = ("SignalID", "Timestamp", "EventCode", "EventParam")
_DECISECOND_US: Final = 100_000


@dataclass(frozen=True, slots=True, order=True)
class AtspmRow:
    """One event; ordered (and paged) by exact time, code, parameter."""

    ts_us: int
    code: int
    param: int

    @property
    def ts(self) -> datetime:
        return from_epoch_us(self.ts_us - self.ts_us % _DECISECOND_US)


def detector_rows(changes: Iterable[StoredDetectorChange], channel_map: ChannelMap) -> list[AtspmRow]:
    """The rows of detector changes whose zone the map names, in time order."""
    by_zone = channel_map.by_zone()
    rows = []
    for stored in changes:
        c = stored.change
        channel = by_zone.get(ZoneKey(stored.device_id, c.stream, c.zone))
        if channel is None:
            continue
        kind: DetectorZoneKind = "pedestrian" if channel.kind == "pedestrian" else c.zone_kind
        code = detector_event_code(kind, c.state, c.reason)
        rows.append(AtspmRow(to_epoch_us(c.ts), code, channel.channel))
    return sorted(rows)


def controller_rows(events: Iterable[ControllerEvent]) -> list[AtspmRow]:
    return sorted(AtspmRow(to_epoch_us(e.ts), e.code, e.param) for e in events)


def merge(*sources: Iterable[AtspmRow], after: AtspmRow | None, limit: int) -> list[AtspmRow]:
    """Up to ``limit`` distinct rows after ``after`` from sorted sources, in order."""
    rows = sorted({r for source in sources for r in source if after is None or r > after})
    return rows[:limit]


def timestamp_text(row: AtspmRow) -> str:
    """``2026-12-05 07:30:00.1``: the controller log's form, which ATSPM tools parse."""
    ts = row.ts
    return f"{ts:%Y-%m-%d %H:%M:%S}.{ts.microsecond // _DECISECOND_US}"


def csv_lines(signal_id: str, rows: Iterable[AtspmRow], header: bool = True) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow((signal_id, timestamp_text(row), row.code, row.param))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def csv_text(signal_id: str, rows: Iterable[AtspmRow]) -> str:
    return "".join(csv_lines(signal_id, rows))
