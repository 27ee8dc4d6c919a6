"""Sensor events (edge.sensors.events): threshold hysteresis and cool-down, anomaly scores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from roadside.edge.sensors.config import AnomalyConfig, ThresholdRule
from roadside.edge.sensors.events import AnomalyEvents, RobustZScorer, ThresholdEvents, rules_version
from roadside.shared.schemas import DetectionEvent, EventsMessage, SensorReading

T0 = datetime(2024, 6, 3, 8, tzinfo=UTC)
PM25_ALERT = ThresholdRule(quantity="pm25", level=50.0, clear=40.0, cooldown_s=0.0)


def _reading(i: int, value: float, quality: str = "ok", quantity: str = "pm25") -> SensorReading:
    return SensorReading(
        ts=T0 + timedelta(seconds=10 * i),
        sensor="aq0",
        quantity=quantity,
        value=value,
        unit="ug/m3",
        quality=quality,  # type: ignore[arg-type]
    )


def _run(events: ThresholdEvents | AnomalyEvents, values: list[float]) -> list[DetectionEvent]:
    return [e for i, v in enumerate(values) for e in events.update(_reading(i, v))]


def test_a_value_hovering_at_the_level_raises_once() -> None:
    noisy = [30.0, 49.0, 51.0, 49.5, 50.5, 48.0, 52.0, 45.0, 50.1, 41.0, 49.9, 50.2]
    fired = _run(ThresholdEvents([PM25_ALERT], "rules-x"), noisy)
    assert len(fired) == 1
    event = fired[0]
    assert (event.type, event.stream, event.cls, event.model_version) == (
        "sensor_threshold",
        "aq0",
        "pm25",
        "rules-x",
    )
    assert event.ts == T0 + timedelta(seconds=20)


def test_it_rearms_only_after_passing_clear() -> None:
    fired = _run(ThresholdEvents([PM25_ALERT], "r"), [55.0, 39.0, 55.0, 39.0, 55.0])
    assert len(fired) == 3


def test_cooldown_bounds_how_often_a_rule_fires() -> None:
    rule = PM25_ALERT.model_copy(update={"cooldown_s": 60.0})
    # Readings 10 s apart: raised at 0 s, cleared, raised at 20 s (in cool-down: silent), ...
    values = [55.0, 39.0, 55.0, 39.0, 55.0, 39.0, 55.0, 39.0, 55.0]
    fired = _run(ThresholdEvents([rule], "r"), values)
    assert [e.ts - T0 for e in fired] == [timedelta(0), timedelta(seconds=60)]


def test_for_readings_ignores_a_single_excursion() -> None:
    rule = PM25_ALERT.model_copy(update={"for_readings": 3})
    assert _run(ThresholdEvents([rule], "r"), [55.0, 30.0, 55.0, 56.0, 30.0]) == []
    assert len(_run(ThresholdEvents([rule], "r"), [55.0, 56.0, 57.0])) == 1


def test_below_rules_and_rules_for_other_quantities() -> None:
    low_noise = ThresholdRule(quantity="noise", direction="below", level=35.0, clear=40.0, cooldown_s=0)
    events = ThresholdEvents([PM25_ALERT, low_noise], "r")
    assert events.update(_reading(0, 30.0, quantity="noise"))[0].cls == "noise"
    assert events.update(_reading(1, 99.0, quantity="noise")) == []  # not a pm25 reading


def test_flagged_readings_neither_raise_nor_clear() -> None:
    events = ThresholdEvents([PM25_ALERT], "r")
    assert events.update(_reading(0, 900.0, "spike")) == []
    assert len(events.update(_reading(1, 60.0))) == 1
    events.update(_reading(2, 10.0, "stuck"))  # a stuck low value must not clear the alert
    assert events.update(_reading(3, 60.0)) == []


def test_hysteresis_must_be_a_gap_in_the_right_direction() -> None:
    with pytest.raises(ValidationError):
        ThresholdRule(quantity="pm25", level=50.0, clear=55.0)
    with pytest.raises(ValidationError):
        ThresholdRule(quantity="noise", direction="below", level=35.0, clear=30.0)


def test_events_are_valid_wire_records_with_stable_ids() -> None:
    a = _run(ThresholdEvents([PM25_ALERT], "r"), [60.0])
    b = _run(ThresholdEvents([PM25_ALERT], "r"), [60.0])
    assert a == b
    EventsMessage(records=a)
    assert rules_version([PM25_ALERT]) == rules_version([PM25_ALERT.model_copy()])
    assert rules_version([PM25_ALERT]) != rules_version([PM25_ALERT.model_copy(update={"level": 60.0})])


def test_robust_z_scorer() -> None:
    rng = np.random.default_rng(0)
    flat = 10.0 + rng.normal(0, 1, 60)
    shifted = np.concatenate([flat[:-3], flat[-3:] + 30.0])
    one_outlier = np.concatenate([flat[:-1], [flat[-1] + 30.0]])
    scorer = RobustZScorer(recent=3, min_scale=0.5)
    assert scorer.score(flat) < 4
    assert scorer.score(shifted) > 15
    assert scorer.score(one_outlier) < 4  # a lone outlier is the spike check's business
    assert scorer.score(np.zeros(60)) == 0.0


def test_anomaly_events_on_a_level_shift_once_until_it_clears() -> None:
    rng = np.random.default_rng(1)
    config = AnomalyConfig(window=40, threshold=10.0, clear=4.0, cooldown_s=0)
    events = AnomalyEvents(config, lambda _q: RobustZScorer(min_scale=0.5), "robust-z-1")
    normal = list(10.0 + rng.normal(0, 1, 100))
    episode = list(40.0 + rng.normal(0, 1, 100))
    fired = _run(events, normal + episode + normal)
    assert len(fired) == 2  # into the episode, and out of it
    assert fired[0].type == "sensor_anomaly"
    assert fired[0].ts == T0 + timedelta(seconds=10 * 101)  # two of the last three readings shifted
    assert fired[0].model_version == "robust-z-1"


def test_anomaly_events_need_a_full_window_and_can_be_disabled() -> None:
    shift = [10.0] * 10 + [50.0] * 5
    config = AnomalyConfig(window=40)
    assert _run(AnomalyEvents(config, lambda _q: RobustZScorer(), "v"), shift) == []
    off = AnomalyConfig(window=8, enabled=False)
    assert _run(AnomalyEvents(off, lambda _q: RobustZScorer(), "v"), shift) == []
