"""The sensor pipeline: sources → quality checks → events → batched ``sensors`` messages.

Threads (all named): one reader per source (``sensor-<name>``) → a bounded
sample queue → the ``sensor-pipeline`` thread, which flags each sample,
derives events, and hands ``sensors`` messages (every ``batch_s`` or
``max_records`` readings) and ``events`` messages (at once) to ``emit``,
in the agent the durable outbox.

When the pipeline falls behind, a reader blocks on the full sample queue
for at most ``put_timeout_s`` and then drops that sample, counted in
``dropped``. The short block pushes back on a replayed or simulated source
so it loses nothing; the bound keeps a live one alive: blocking longer would
stall a serial reader until the UART overflows, or the MQTT network loop
until the broker drops it. A hole that drops leave in a series shows up
downstream as a ``dropout`` flag on the next reading, not as silence.

Shutdown: close the sources, join their readers, then the pipeline thread
drains the queue, sends what it holds and ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from roadside.edge.outbox import Priority
from roadside.edge.sensors import open_sensor_source
from roadside.edge.sensors.base import SensorSample, SensorSource, SourceEvent
from roadside.edge.sensors.config import SensorConfig
from roadside.edge.sensors.events import (
    ROBUST_Z_VERSION,
    AnomalyEvents,
    AnomalyScorer,
    RobustZScorer,
    ThresholdEvents,
    dropout_event,
    rules_version,
)
from roadside.edge.sensors.quality import QualityChecker
from roadside.shared.errors import ConfigError, RoadsideError
from roadside.shared.queues import BoundedQueue, Overflow
from roadside.shared.schemas import (
    MAX_RECORDS,
    DetectionEvent,
    EventsMessage,
    SensorReading,
    SensorsMessage,
    encode,
)

log = logging.getLogger(__name__)

Emit = Callable[[str, bytes, Priority], object]
ScorerFactory = Callable[[SensorConfig, str], AnomalyScorer]


def robust_z_scorer(config: SensorConfig, quantity: str) -> AnomalyScorer:
    """The built-in scorer, its floor at the quantity's resolution."""
    quality = config.quality
    return RobustZScorer(min_scale=quality.min_scale.get(quantity, quality.default_min_scale))


@dataclass
class _Stage:
    """What the pipeline thread keeps for one source."""

    source: SensorSource
    quality: QualityChecker
    thresholds: ThresholdEvents
    anomalies: AnomalyEvents


class SensorPipeline:
    """All sensor sources of one agent, ending in ``emit(kind, payload, priority)``."""

    def __init__(
        self,
        configs: Sequence[SensorConfig],
        emit: Emit,
        *,
        batch_s: float = 5.0,
        max_records: int = 200,
        queue_size: int = 4096,
        put_timeout_s: float = 1.0,
        sources: Sequence[SensorSource] | None = None,
        scorer_factory: ScorerFactory = robust_z_scorer,
        scorer_version: str = ROBUST_Z_VERSION,
    ) -> None:
        """``sources`` replaces the adapters the configs name (tests); it must match them in order."""
        opened = list(sources) if sources is not None else [open_sensor_source(c) for c in configs]
        if len(opened) != len(configs):
            raise ValueError("give one source per sensor config")
        self._stages: dict[str, _Stage] = {}
        for config, source in zip(configs, opened, strict=True):
            if config.name in self._stages:
                raise ConfigError(f"sensor names must be unique: rename one of the two {config.name!r}")
            self._stages[config.name] = _Stage(
                source,
                QualityChecker(config.quality, config.period_s),
                ThresholdEvents(config.thresholds, rules_version(config.thresholds)),
                AnomalyEvents(config.anomaly, partial(scorer_factory, config), scorer_version),
            )
        self._emit = emit
        self._batch_s = batch_s
        self._max_records = min(max(1, max_records), MAX_RECORDS)
        self.samples: BoundedQueue[tuple[str, SensorSample | SourceEvent]] = BoundedQueue(
            queue_size, Overflow.BLOCK
        )
        self._put_timeout_s = put_timeout_s
        self._pending: list[SensorReading] = []
        self._last_flush = time.monotonic()
        self._stop = threading.Event()
        self._readers: list[threading.Thread] = []
        self._worker: threading.Thread | None = None
        # What went through, for health reporting and tests.
        self.readings = 0
        self.flags: Counter[str] = Counter()
        self.events_emitted = 0
        self.messages_emitted = 0
        self.emit_failures = 0
        self.dropped = 0  # samples a full queue refused
        self.source_events: Counter[str] = Counter()  # dropouts the sources reported, by kind

    @property
    def sources(self) -> list[SensorSource]:
        return [stage.source for stage in self._stages.values()]

    def start(self) -> None:
        if not self._stages:
            return
        for name, stage in self._stages.items():
            reader = threading.Thread(
                target=self._read, args=(name, stage.source), name=f"sensor-{name}", daemon=True
            )
            reader.start()
            self._readers.append(reader)
        self._worker = threading.Thread(target=self._run, name="sensor-pipeline", daemon=True)
        self._worker.start()
        log.info("sensor pipeline started with %d source(s)", len(self._stages))

    def sources_done(self, timeout: float | None = None) -> bool:
        """True once every (finite) source has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in self._readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(r.is_alive() for r in self._readers)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the sources and send every reading already taken in."""
        for stage in self._stages.values():
            stage.source.close()
        for reader in self._readers:
            reader.join(timeout)
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout)
        log.info(
            "sensor pipeline stopped: %d readings, flags %s, %d events, %d dropped",
            self.readings,
            dict(self.flags),
            self.events_emitted,
            self.dropped,
        )

    def _read(self, name: str, source: SensorSource) -> None:
        try:
            for sample in source.samples():
                try:
                    self.samples.put((name, sample), timeout=self._put_timeout_s)
                except queue.Full:
                    self.dropped += 1
                    if self.dropped % 1000 == 1:
                        log.warning("sensor pipeline behind: %d samples dropped so far", self.dropped)
        except Exception:
            # A broken adapter ends its own reader, with the traceback in the log, not the agent.
            log.exception("sensor %s failed", name)

    def _run(self) -> None:
        while True:
            batch = self.samples.get_batch(256, max_wait_s=0.01, first_timeout_s=0.1)
            if batch:
                self._events(self.process(batch))
            elif self._stop.is_set():
                break
            if time.monotonic() - self._last_flush >= self._batch_s:
                self._flush()
        self._flush()

    def process(self, batch: Sequence[tuple[str, SensorSample | SourceEvent]]) -> list[DetectionEvent]:
        """Flag and keep the readings of ``batch``; the events they (and the sources) raise."""
        events: list[DetectionEvent] = []
        for name, sample in batch:
            if isinstance(sample, SourceEvent):
                self.source_events[sample.kind] += 1
                events.append(dropout_event(sample))
                continue
            stage = self._stages[name]
            reading = stage.quality.check(sample)
            self.readings += 1
            self.flags[reading.quality] += 1
            events += stage.thresholds.update(reading)
            events += stage.anomalies.update(reading)
            self._pending.append(reading)
            if len(self._pending) >= self._max_records:
                self._flush()
        return events

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        records, self._pending = self._pending, []
        if self._send("sensors", encode(SensorsMessage(records=records)), Priority.SENSORS):
            self.messages_emitted += 1

    def _events(self, events: list[DetectionEvent]) -> None:
        # Events are rare and are what city systems act on: they leave at once, not with the batch.
        for i in range(0, len(events), self._max_records):
            chunk = events[i : i + self._max_records]
            if self._send("events", encode(EventsMessage(records=chunk)), Priority.EVENTS):
                self.events_emitted += len(chunk)

    def _send(self, kind: str, payload: bytes, priority: Priority) -> bool:
        try:
            self._emit(kind, payload, priority)
        except (RoadsideError, OSError) as exc:
            # The outbox refused (disk full, budget): counted and logged; the pipeline keeps running.
            self.emit_failures += 1
            log.error("could not hand a %s message to the outbox: %s", kind, exc)
            return False
        return True
