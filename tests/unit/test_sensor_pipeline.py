"""The sensor pipeline (edge.sensors.pipeline) with synthetic sources and an in-memory emit."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from roadside.edge.outbox import Priority
from roadside.edge.sensors.base import SensorSample
from roadside.edge.sensors.config import FaultConfig, SyntheticSensorConfig, ThresholdRule
from roadside.edge.sensors.pipeline import SensorPipeline
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import EventsMessage, SensorsMessage, decode_uplink

START = datetime(2024, 6, 3, 6, tzinfo=UTC)
FAULTS = FaultConfig(spike_prob=0.01, stuck_prob=0.005, dropout_prob=0.005, out_of_range_prob=0.005)


class Sink:
    """Collects what the pipeline hands to the outbox."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, Priority]] = []

    def __call__(self, kind: str, payload: bytes, priority: Priority) -> None:
        self.messages.append((kind, payload, priority))

    def sensors(self) -> list[SensorsMessage]:
        return [m for m in self._decoded("sensors") if isinstance(m, SensorsMessage)]

    def events(self) -> list[EventsMessage]:
        return [m for m in self._decoded("events") if isinstance(m, EventsMessage)]

    def _decoded(self, kind: str) -> list[object]:
        return [decode_uplink(k, payload) for k, payload, _ in self.messages if k == kind]


def _config(name: str, ticks: int, **extra: object) -> SyntheticSensorConfig:
    return SyntheticSensorConfig.model_validate(
        {"name": name, "realtime": False, "start": START, "max_ticks": ticks, "faults": FAULTS} | extra
    )


def test_every_reading_leaves_flagged_in_bounded_messages_with_its_events() -> None:
    sink = Sink()
    rule = ThresholdRule(quantity="occupancy", level=25.0, clear=15.0, for_readings=3, cooldown_s=600)
    configs = [_config("aq0", 2000, seed=1, thresholds=[rule]), _config("aq1", 2000, seed=2)]
    pipeline = SensorPipeline(configs, sink, max_records=150, batch_s=60)
    pipeline.start()
    assert pipeline.sources_done(timeout=10)
    pipeline.stop()

    batches = sink.sensors()
    readings = [r for m in batches for r in m.records]
    assert all(len(m.records) <= 150 for m in batches)
    assert len(readings) == pipeline.readings > 2 * 4 * 1800  # four quantities, minus dropouts
    assert pipeline.dropped == 0  # a simulated source is pushed back on, not cut
    assert {r.sensor for r in readings} == {"aq0", "aq1"}
    flags = Counter(r.quality for r in readings)
    assert flags == pipeline.flags
    assert all(flags[q] > 0 for q in ("ok", "spike", "stuck", "dropout", "out_of_range"))
    assert {p for k, _, p in sink.messages if k == "sensors"} == {Priority.SENSORS}

    events = [e for m in sink.events() for e in m.records]
    assert events, "the morning rush passes the occupancy threshold"
    assert {(e.type, e.stream, e.cls) for e in events} == {("sensor_threshold", "aq0", "occupancy")}
    assert pipeline.events_emitted == len(events)


def test_readings_are_sent_every_batch_s_without_waiting_for_a_full_message() -> None:
    sink = Sink()
    pipeline = SensorPipeline([_config("aq0", 3, quantities=["noise"])], sink, max_records=1000, batch_s=0.05)
    pipeline.start()
    try:
        assert pipeline.sources_done(timeout=5)
        deadline = threading.Event()
        for _ in range(50):
            if sink.messages:
                break
            deadline.wait(0.05)
        assert [len(m.records) for m in sink.sensors()] == [3]
    finally:
        pipeline.stop()


class ScriptedSource:
    """Waits for ``stalled`` before its 11th sample and for ``released`` before its 301st."""

    name = "aq0"

    def __init__(self, stalled: threading.Event, released: threading.Event) -> None:
        self.stalled, self.released = stalled, released
        self.paused = threading.Event()

    def samples(self) -> Iterator[SensorSample]:
        t0 = START.timestamp()
        for i in range(400):
            if i == 10:
                assert self.stalled.wait(5)
            if i == 300:
                self.paused.set()
                assert self.released.wait(5)
            yield SensorSample(t0 + 10.0 * i, "aq0", "no2", 20.0 + (i % 7) * 0.5, "ug/m3")

    def close(self) -> None:
        pass


def test_a_pipeline_that_falls_behind_drops_samples_and_the_gap_is_flagged() -> None:
    stalled, released = threading.Event(), threading.Event()
    sink = Sink()

    def stalled_emit(kind: str, payload: bytes, priority: Priority) -> None:
        stalled.set()
        assert released.wait(10)  # the outbox stalls on the first message
        sink(kind, payload, priority)

    source = ScriptedSource(stalled, released)
    config = _config("aq0", 400, quantities=["no2"], faults=FaultConfig())
    pipeline = SensorPipeline(
        [config], stalled_emit, sources=[source], max_records=10, queue_size=16, put_timeout_s=0.001
    )
    pipeline.start()
    assert source.paused.wait(10)
    released.set()
    assert pipeline.sources_done(timeout=10)
    pipeline.stop()
    # 10 taken before the stall, 16 queued during it, 274 refused, 100 after it.
    assert (pipeline.readings, pipeline.dropped) == (126, 274)
    assert pipeline.flags["dropout"] == 1  # the hole is visible downstream, not silent
    readings = [r for m in sink.sensors() for r in m.records]
    assert len(readings) == pipeline.readings


def test_an_outbox_failure_is_counted_and_the_pipeline_goes_on() -> None:
    calls = Counter[str]()

    def failing_emit(kind: str, payload: bytes, priority: Priority) -> None:
        calls[kind] += 1
        if calls[kind] == 1:
            raise OSError("disk full")

    pipeline = SensorPipeline([_config("aq0", 100, quantities=["pm25"])], failing_emit, max_records=20)
    pipeline.start()
    assert pipeline.sources_done(timeout=5)
    pipeline.stop()
    assert pipeline.emit_failures == 1
    assert calls["sensors"] == 5
    assert pipeline.messages_emitted == 4


def test_names_must_be_unique_and_an_empty_pipeline_is_a_no_op() -> None:
    with pytest.raises(ConfigError, match="unique"):
        SensorPipeline([_config("aq0", 1), _config("aq0", 1)], Sink())
    empty = SensorPipeline([], Sink())
    empty.start()
    empty.stop()
