"""Interval summaries: counts by lane, speed statistics, zone traffic."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from roadside.edge.analytics.aggregate import (
    CountAggregator,
    SpeedAggregator,
    SpeedMeasurement,
    ZoneAggregator,
    ZoneVisit,
    interval_start,
)
from roadside.edge.analytics.lines import LineCrossing

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()


def test_interval_start_is_wall_aligned() -> None:
    assert interval_start(T0 + 59.9, 60) == T0
    assert interval_start(T0 + 60.0, 60) == T0 + 60
    assert interval_start(T0 + 7, 5) == T0 + 5


def test_counts_are_split_by_lane_with_no_lane_first() -> None:
    agg = CountAggregator(60, ["car"], "v1")
    crossings = [
        LineCrossing("l", 1, 0, "in", 0.9, lane=2),
        LineCrossing("l", 2, 0, "in", 0.9, lane=0),
        LineCrossing("l", 3, 0, "in", 0.9),
        LineCrossing("l", 4, 0, "in", 0.9, lane=2),
    ]
    agg.add(T0, crossings)
    assert [(r.lane, r.count) for r in agg.flush()] == [(None, 1), (0, 1), (2, 2)]


def speed(kmh: float, lane: int | None = 1, cls: str = "car") -> SpeedMeasurement:
    return SpeedMeasurement(T0, "trap", 1, cls, lane, "a_to_b", kmh)


def test_speed_summary_per_class_and_lane() -> None:
    agg = SpeedAggregator()
    for kmh in range(30, 50):  # 30..49 km/h
        agg.add(speed(float(kmh)))
    agg.add(speed(12.0, lane=None, cls="cyclist"))
    car, cyclist = agg.close(T0, 60)
    assert (car.cls, car.lane, car.count, car.min_kmh, car.max_kmh) == ("car", 1, 20, 30.0, 49.0)
    assert car.mean_kmh == pytest.approx(39.5)
    assert car.p85_kmh == pytest.approx(46.15)
    assert (cyclist.cls, cyclist.lane, cyclist.count) == ("cyclist", None, 1)
    assert car.interval_start == datetime.fromtimestamp(T0, UTC)
    assert agg.close(T0 + 60, 60) == []


def test_zone_summary_and_whoever_stays_carries_into_the_next_interval() -> None:
    agg = ZoneAggregator()
    agg.entered("road", "car")
    agg.entered("road", "car")
    agg.occupancy("road", "car", 2)
    agg.left(ZoneVisit("road", 1, "car", T0, T0 + 4.0))
    (record,) = agg.close(T0, 60, Counter({("road", "car"): 1}))
    assert (record.entries, record.exits, record.peak_occupancy) == (2, 1, 2)
    assert record.mean_dwell_s == record.max_dwell_s == 4.0
    (carried,) = agg.close(T0 + 60, 60, Counter())
    assert (carried.entries, carried.exits, carried.peak_occupancy, carried.mean_dwell_s) == (0, 0, 1, None)
