"""Data-quality checks (edge.sensors.quality), scored against the generator's injected faults."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from roadside.edge.sensors.base import SensorSample
from roadside.edge.sensors.config import FaultConfig, QualityConfig
from roadside.edge.sensors.quality import QualityChecker
from roadside.edge.sensors.synthetic import SensorSimulator

MONDAY = datetime(2024, 6, 3, tzinfo=UTC).timestamp()
FAULTS = FaultConfig(spike_prob=0.003, stuck_prob=0.002, dropout_prob=0.002, out_of_range_prob=0.001)
PERIOD = 10.0

# Lower bounds on precision and recall over three simulated days of four
# quantities (~100k readings). Stuck recall is bounded by design: the first
# stuck_count - 1 readings of a run cannot be told from honest repeats yet,
# and are not held back to be flagged later.
BOUNDS = {
    "spike": (0.95, 0.92),
    "stuck": (0.98, 0.82),
    "dropout": (0.99, 0.99),
    "out_of_range": (1.0, 1.0),
}


@pytest.fixture(scope="module")
def scored() -> Counter[tuple[str, str]]:
    """(injected fault, flag given) over three days, one seed each."""
    pairs: Counter[tuple[str, str]] = Counter()
    for seed in range(3):
        simulator = SensorSimulator("aq0", ["pm25", "no2", "occupancy", "noise"], seed, FAULTS)
        checker = QualityChecker(QualityConfig(), PERIOD)
        for made in simulator.run(MONDAY + seed * 86400, PERIOD, 8640):
            pairs[(made.fault, checker.assess(made.sample))] += 1
    return pairs


@pytest.mark.parametrize("kind", list(BOUNDS))
def test_precision_and_recall_against_injected_faults(scored: Counter[tuple[str, str]], kind: str) -> None:
    tp = scored[(kind, kind)]
    flagged = sum(n for (_, given), n in scored.items() if given == kind)
    injected = sum(n for (fault, _), n in scored.items() if fault == kind)
    precision, recall = tp / flagged, tp / injected
    print(f"{kind}: precision {precision:.3f} recall {recall:.3f} ({injected} injected)")
    min_precision, min_recall = BOUNDS[kind]
    assert precision >= min_precision
    assert recall >= min_recall


def test_clean_data_is_almost_never_flagged(scored: Counter[tuple[str, str]]) -> None:
    clean = sum(n for (fault, _), n in scored.items() if fault == "ok")
    assert scored[("ok", "ok")] / clean > 0.999


def _sample(ts: float, value: float, quantity: str = "pm25") -> SensorSample:
    return SensorSample(ts, "aq0", quantity, value, "ug/m3")


def _flags(values: list[float], quantity: str = "pm25", config: QualityConfig | None = None) -> list[str]:
    checker = QualityChecker(config or QualityConfig(), PERIOD)
    return [checker.assess(_sample(i * PERIOD, v, quantity)) for i, v in enumerate(values)]


def test_out_of_range_by_quantity_and_non_finite() -> None:
    assert _flags([-1.0, 5.0, 1000.5, float("nan")]) == ["out_of_range", "ok", "out_of_range", "out_of_range"]
    assert _flags([101.0], "occupancy") == ["out_of_range"]
    assert _flags([5.0], "unknown_quantity") == ["ok"]  # no range configured: nothing to check against


def test_stuck_from_the_nth_identical_value_and_exempt_values_repeat_freely() -> None:
    assert _flags([5.0, 7.0, 7.0, 7.0, 7.0, 7.0, 6.0]) == ["ok", "ok", "ok", "ok", "stuck", "stuck", "ok"]
    assert set(_flags([0.0] * 20, "occupancy")) == {"ok"}  # an empty road at night
    assert _flags([3.0] * 5, "occupancy")[-1] == "stuck"


def test_dropout_flags_the_first_reading_after_a_long_gap() -> None:
    checker = QualityChecker(QualityConfig(dropout_factor=2.5), PERIOD)
    times = [0, 10, 20, 30, 45, 100, 110]  # 15 s is jitter, 55 s is a gap
    flags = [checker.assess(_sample(t, 10.0 + i % 2)) for i, t in enumerate(times)]
    assert flags == ["ok", "ok", "ok", "ok", "ok", "dropout", "ok"]


def test_a_lone_spike_is_flagged_and_the_value_kept() -> None:
    checker = QualityChecker(QualityConfig(), PERIOD)
    base = [10.0 + (i % 5) * 0.3 for i in range(40)]
    for i, v in enumerate(base):
        checker.check(_sample(i * PERIOD, v))
    reading = checker.check(_sample(40 * PERIOD, 60.0))
    assert (reading.quality, reading.value) == ("spike", 60.0)
    assert checker.check(_sample(41 * PERIOD, 10.3)).quality == "ok"
    assert checker.flagged["spike"] == 1


def test_a_level_shift_becomes_the_new_normal_after_spike_max_run() -> None:
    config = QualityConfig(spike_max_run=3)
    values = [10.0 + (i % 5) * 0.3 for i in range(40)] + [40.0 + (i % 5) * 0.3 for i in range(40)]
    flags = _flags(values, config=config)
    assert flags[40:43] == ["spike"] * 3
    assert set(flags[43:]) == {"ok"}


def test_flat_series_do_not_turn_every_change_into_a_spike() -> None:
    # Quantised readings at 0 then a car: MAD is 0, the resolution floor keeps z finite and small.
    flags = _flags([0.0] * 30 + [1.5, 0.0, 2.0], "occupancy")
    assert "spike" not in flags
