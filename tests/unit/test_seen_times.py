"""Last-seen times reach the registry in one write at most once per interval, and none is lost."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from roadside.cloud.ingest.seen import SeenTimes

T_MS = 1_764_900_000_000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def test_a_device_is_written_at_once_then_at_most_once_per_interval() -> None:
    seen = SeenTimes(interval_s=1.0)
    seen.note("cam-1", T_MS)
    assert seen.due(now=100.0) == [("cam-1", at(T_MS))]
    seen.written(seen.due(now=100.0), now=100.0)
    assert not seen
    seen.note("cam-1", T_MS + 500)
    assert seen.due(now=100.5) == []  # within the interval: held back, still pending
    assert seen
    assert seen.due(now=101.0) == [("cam-1", at(T_MS + 500))]


def test_the_newest_time_wins_and_devices_are_independent() -> None:
    seen = SeenTimes(interval_s=1.0)
    seen.note("cam-2", T_MS + 900)
    seen.note("cam-2", T_MS + 100)  # an older message arriving late does not move it back
    seen.note("cam-1", T_MS)
    assert seen.due(now=0.0) == [("cam-1", at(T_MS)), ("cam-2", at(T_MS + 900))]


def test_a_failed_write_keeps_the_times_pending() -> None:
    seen = SeenTimes(interval_s=1.0)
    seen.note("cam-1", T_MS)
    due = seen.due(now=5.0)
    # The registry was unreachable: written() is not called, so the same entries come again.
    assert seen.due(now=5.2) == due


def test_a_time_noted_while_writing_stays_pending() -> None:
    seen = SeenTimes(interval_s=1.0)
    seen.note("cam-1", T_MS)
    due = seen.due(now=5.0)
    seen.note("cam-1", T_MS + 200)
    seen.written(due, now=5.0)
    assert seen.due(now=6.0) == [("cam-1", at(T_MS + 200))]


def test_stopping_writes_everything_pending() -> None:
    seen = SeenTimes(interval_s=60.0)
    seen.note("cam-1", T_MS)
    seen.written(seen.due(now=10.0), now=10.0)
    seen.note("cam-1", T_MS + 1000)
    assert seen.due(now=11.0) == []
    assert seen.due(now=math.inf) == [("cam-1", at(T_MS + 1000))]


def test_a_fleet_is_written_in_one_write_per_interval_however_many_devices_send() -> None:
    # A city's devices each send every 20-60 s: a per-device interval wrote for nearly every message.
    seen = SeenTimes(interval_s=1.0)
    seen.note("cam-0000", T_MS)
    seen.written(seen.due(now=10.0), now=10.0)
    for n in range(1, 500):
        seen.note(f"cam-{n:04d}", T_MS + n)  # never written before, yet held back with the rest
        assert seen.due(now=10.0 + n / 1000) == []
    due = seen.due(now=11.0)
    assert len(due) == 499
    assert due[0] == ("cam-0001", at(T_MS + 1))
    seen.written(due, now=11.0)
    assert not seen
