"""The synthetic sensor generator (edge.sensors.synthetic): seasonality, determinism, ground truth."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from roadside.edge.sensors.config import FaultConfig, SyntheticSensorConfig
from roadside.edge.sensors.synthetic import PROFILES, SensorSimulator, SimulatedSample, SyntheticSensorSource

MONDAY = datetime(2024, 6, 3, tzinfo=UTC).timestamp()
QUANTITIES = ["pm25", "no2", "occupancy", "noise"]
FAULTS = FaultConfig(spike_prob=0.003, stuck_prob=0.002, dropout_prob=0.002, out_of_range_prob=0.001)


def _day(seed: int = 0, faults: FaultConfig | None = None, start: float = MONDAY) -> list[SimulatedSample]:
    return SensorSimulator("aq0", QUANTITIES, seed, faults).run(start, 60.0, 1440)


def _hour_mean(samples: list[SimulatedSample], quantity: str, hours: range) -> float:
    return statistics.fmean(
        s.sample.value
        for s in samples
        if s.sample.quantity == quantity and int((s.sample.ts % 86400) // 3600) in hours
    )


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_rush_hours_are_above_the_night(quantity: str) -> None:
    day = _day()
    night = _hour_mean(day, quantity, range(1, 5))
    morning = _hour_mean(day, quantity, range(7, 10))
    evening = _hour_mean(day, quantity, range(16, 19))
    spread = PROFILES[quantity].rush / 3
    assert morning > night + spread
    assert evening > night + spread


def test_weekends_are_quieter_when_weekly_is_on() -> None:
    saturday = MONDAY + 5 * 86400
    weekday = _hour_mean(_day(start=MONDAY), "no2", range(7, 10))
    weekend = _hour_mean(_day(start=saturday), "no2", range(7, 10))
    assert weekend < weekday * 0.8


def test_same_seed_same_series_other_seed_other_series() -> None:
    a, b, c = _day(5, FAULTS), _day(5, FAULTS), _day(6, FAULTS)
    assert a == b
    assert [s.sample.value for s in a] != [s.sample.value for s in c]


def test_a_quantity_series_does_not_depend_on_the_others() -> None:
    alone = SensorSimulator("aq0", ["no2"], 3).run(MONDAY, 60.0, 200)
    together = [
        s for s in SensorSimulator("aq0", QUANTITIES, 3).run(MONDAY, 60.0, 200) if s.sample.quantity == "no2"
    ]
    assert alone == together


def test_values_are_quantised_and_within_what_the_hardware_reports() -> None:
    for s in _day(1):
        p = PROFILES[s.sample.quantity]
        assert p.low <= s.sample.value <= p.high
        assert abs(s.sample.value / p.resolution - round(s.sample.value / p.resolution)) < 1e-6
        assert s.fault == "ok"


def test_the_ground_truth_describes_the_injected_faults() -> None:
    day = SensorSimulator("aq0", ["pm25"], 2, FAULTS).run(MONDAY, 10.0, 8640)
    faults = Counter(s.fault for s in day)
    assert faults["spike"] > 5
    assert faults["stuck"] > 50
    assert faults["dropout"] > 5
    assert faults["out_of_range"] > 1
    assert len(day) < 8640  # dropouts remove samples
    previous = None
    for s in day:
        if s.fault == "stuck":
            assert previous is not None
            assert s.sample.value == previous.sample.value
        if s.fault == "out_of_range":
            assert s.sample.value == FAULTS.sentinel
        if s.fault == "dropout":
            assert previous is not None
            assert s.sample.ts - previous.sample.ts >= 4 * 10.0
        previous = s


def test_fault_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        FaultConfig(stuck_len=(5, 2))
    with pytest.raises(ValidationError):
        FaultConfig(spike_prob=1.5)


def test_source_on_a_simulated_clock_runs_unpaced_from_its_start() -> None:
    start = datetime(2024, 6, 3, 7, tzinfo=UTC)
    config = SyntheticSensorConfig(
        name="aq0", period_s=10, realtime=False, start=start, max_ticks=50, faults=FAULTS, seed=4
    )
    source = SyntheticSensorSource(config)
    samples = list(source.samples())
    assert samples[0].ts == start.timestamp()
    assert max(s.ts for s in samples) == start.timestamp() + 49 * 10
    assert {s.sensor for s in samples} == {"aq0"}
    assert {s.quantity for s in samples} == set(QUANTITIES)


def test_realtime_source_stamps_wall_clock_time_and_closes_promptly() -> None:
    ticks = iter(range(1000, 2000))
    config = SyntheticSensorConfig(
        name="aq0", quantities=["noise"], period_s=0.01, realtime=True, max_ticks=5
    )
    source = SyntheticSensorSource(config, clock=lambda: float(next(ticks)))
    assert [s.ts for s in source.samples()] == [1001.0, 1002.0, 1003.0, 1004.0, 1005.0]
    endless = SyntheticSensorSource(config.model_copy(update={"max_ticks": None, "period_s": 60.0}))
    it = endless.samples()
    next(it)
    endless.close()
    assert list(it) == []  # the pacing wait ends at close(), not after a minute
