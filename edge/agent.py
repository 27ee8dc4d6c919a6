"""The agent: wires sources, the detector, analytics, the outbox and the uplink.

Threads (all named): one reader per stream → a bounded frame queue
(``DROP_OLDEST``: live video prefers fresh frames) → the pipeline thread
(batched inference, tracking, line crossings, aggregation) → the durable
outbox → the uplink thread. Shutdown: stop the readers, let the pipeline
close the open interval, drain the outbox for a moment, stop the uplink.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edge.analytics.aggregate import CountAggregator
from edge.analytics.lines import CountingLine
from edge.analytics.tracker import IouTracker
from edge.inference.engine import OnnxDetector
from edge.outbox import Outbox, Priority
from edge.settings import AgentSettings, CountLine
from edge.sources import Frame, FrameSource, open_source
from edge.transport.mqtt import MqttUplink
from shared.bundle import EnrollmentBundle
from shared.envelope import DeviceCommandOpener
from shared.errors import IntegrityError, SchemaError, TransportError
from shared.queues import BoundedQueue, Overflow
from shared.schemas import (
    AckMessage,
    CountRecord,
    CountsMessage,
    DetectionEvent,
    EventsMessage,
    Health,
    HealthMessage,
    StreamHealth,
    decode_command,
    encode,
)

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class StreamState:
    """Per-stream analytics state, owned by the pipeline thread."""

    name: str
    tracker: IouTracker
    lines: list[CountingLine]
    aggregator: CountAggregator
    frames: int = 0
    fps_window: list[float] = field(default_factory=list)


class Agent:
    """One roadside agent process."""

    def __init__(
        self,
        settings: AgentSettings,
        bundle: EnrollmentBundle,
        detector: OnnxDetector | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.bundle = bundle
        self.clock = clock
        self.detector = detector or OnnxDetector(
            settings.model.path,
            settings.model.providers,
            settings.model.conf_threshold,
            settings.model.iou_threshold,
            settings.model.labels,
            settings.model.version,
            settings.model.intra_op_threads,
        )
        self.outbox = Outbox(settings.outbox.path, settings.outbox.max_bytes)
        self.uplink = MqttUplink(bundle, self.outbox, self._on_command, settings.outbox.max_inflight)
        self._commands = DeviceCommandOpener(bundle.device_id, bundle.keypair(), bundle.hub_public())
        self.sources: list[FrameSource] = [open_source(s) for s in settings.sources]
        self.frames: BoundedQueue[Frame] = BoundedQueue(
            settings.frame_queue * len(self.sources), Overflow.DROP_OLDEST
        )
        self.streams: dict[str, StreamState] = {}
        self._pending_events: list[DetectionEvent] = []
        self._last_event_flush = time.monotonic()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._threads: list[threading.Thread] = []
        self.events_emitted = 0
        self.outbox_backlog_at_stop = -1
        self.count_records_emitted = 0
        # Totals of what was handed to the outbox, by (line, class, direction): for health and tests.
        self.counted: Counter[tuple[str, str, str]] = Counter()

    # Lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self.uplink.start()
        for source in self.sources:
            thread = threading.Thread(
                target=self._read, args=(source,), name=f"source-{source.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        pipeline = threading.Thread(target=self._pipeline, name="pipeline", daemon=True)
        pipeline.start()
        self._pipeline_thread = pipeline
        log.info("agent %s started with %d stream(s)", self.bundle.device_id, len(self.sources))

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop cleanly: no frame in flight is lost, the open interval is sent."""
        for source in self.sources:
            source.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._stop.set()
        self._pipeline_thread.join(timeout=30)
        self.uplink.stop(drain_s=drain_s)
        self.outbox_backlog_at_stop = self.outbox.backlog()
        self.outbox.close()
        log.info("agent %s stopped", self.bundle.device_id)

    def sources_done(self, timeout: float | None = None) -> bool:
        """True once every (finite) source has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def run_forever(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.wait(self.settings.heartbeat_s):
                self.heartbeat()
        finally:
            self.stop()

    # Stages -----------------------------------------------------------------

    def _read(self, source: FrameSource) -> None:
        try:
            for frame in source.frames():
                self.frames.put(frame)
        except TransportError:
            log.exception("stream %s failed", source.name)

    def _pipeline(self) -> None:
        max_batch = max(1, len(self.sources))
        while True:
            batch = self.frames.get_batch(max_batch, max_wait_s=0.005, first_timeout_s=0.1)
            if batch:
                self._process(batch)
            elif self._stop.is_set():
                break
            self._flush_events(force=False)
        self._close_intervals()
        self._flush_events(force=True)

    def _process(self, batch: list[Frame]) -> None:
        detections = self.detector.detect([f.image for f in batch])
        for frame, found in zip(batch, detections, strict=True):
            state = self._state_for(frame)
            state.frames += 1
            state.fps_window.append(time.monotonic())
            del state.fps_window[:-50]
            tracks = state.tracker.update(found.boxes, found.scores, found.class_ids)
            crossings = []
            for track in tracks:
                if len(track.history) < 2:
                    continue
                for line in state.lines:
                    hit = line.check(
                        track.track_id, track.cls, track.score, track.history[-2], track.history[-1]
                    )
                    if hit is not None:
                        crossings.append(hit)
            closed = state.aggregator.add(frame.ts, crossings)
            self._emit_counts(closed)
            for c in crossings:
                self._pending_events.append(
                    DetectionEvent(
                        event_id=uuid.uuid4(),
                        ts=datetime.fromtimestamp(frame.ts, UTC),
                        type="line_crossing",
                        stream=frame.stream,
                        cls=state.aggregator.labels[c.cls] if c.cls < len(state.aggregator.labels) else None,
                        track_id=c.track_id,
                        line=c.line,
                        direction=c.direction,
                        confidence=min(max(c.score, 0.0), 1.0),
                        model_version=self.detector.info.version,
                    )
                )

    def _state_for(self, frame: Frame) -> StreamState:
        state = self.streams.get(frame.stream)
        if state is None:
            lines = [
                CountingLine(f"{frame.stream}-{ln.name}", ln.start, ln.end) for ln in self._lines_for(frame)
            ]
            state = StreamState(
                frame.stream,
                IouTracker(),
                lines,
                CountAggregator(
                    self.settings.interval_s, self.detector.info.labels, self.detector.info.version
                ),
            )
            self.streams[frame.stream] = state
        return state

    def _lines_for(self, frame: Frame) -> list[CountLine]:
        if self.settings.lines:
            return self.settings.lines
        source = next(s for s in self.sources if s.name == frame.stream)
        scene = getattr(source, "scene", None)
        if scene is not None:
            start, end = scene.count_line()
            return [CountLine(name="line0", start=start, end=end)]
        h, w = frame.image.shape[:2]
        return [CountLine(name="line0", start=(w / 2, 0.0), end=(w / 2, float(h)))]

    def _close_intervals(self) -> None:
        for state in self.streams.values():
            self._emit_counts(state.aggregator.flush())

    def _emit_counts(self, records: list[CountRecord]) -> None:
        size = self.settings.outbox.records_per_message
        for i in range(0, len(records), size):
            self.outbox.put("counts", encode(CountsMessage(records=records[i : i + size])), Priority.COUNTS)
            self.count_records_emitted += len(records[i : i + size])
        for r in records:
            self.counted[(r.line, r.cls, r.direction)] += r.count

    def _flush_events(self, force: bool) -> None:
        due = time.monotonic() - self._last_event_flush >= 1.0
        if not self._pending_events or not (force or due):
            return
        size = self.settings.outbox.records_per_message
        events, self._pending_events = self._pending_events, []
        for i in range(0, len(events), size):
            self.outbox.put("events", encode(EventsMessage(records=events[i : i + size])), Priority.EVENTS)
        self.events_emitted += len(events)
        self._last_event_flush = time.monotonic()

    # Health and commands ----------------------------------------------------

    def health(self) -> Health:
        p50, p95 = self.detector.latency.percentiles()
        streams = {}
        for state in self.streams.values():
            window = state.fps_window
            fps = (
                (len(window) - 1) / (window[-1] - window[0])
                if len(window) > 1 and window[-1] > window[0]
                else 0.0
            )
            streams[state.name] = StreamHealth(fps=round(fps, 2), dropped_frames=self.frames.dropped)
        return Health(
            ts=datetime.now(UTC),
            uptime_s=time.monotonic() - self._started,
            model_version=self.detector.info.version,
            provider=self.detector.info.active_provider,
            streams=streams,
            inference_p50_ms=p50,
            inference_p95_ms=p95,
            outbox_backlog=self.outbox.backlog(),
        )

    def heartbeat(self) -> None:
        self.outbox.put("health", encode(HealthMessage(health=self.health())), Priority.HEALTH)

    def _on_command(self, wire: bytes) -> None:
        """Runs on the MQTT network thread: verify, then answer with an ack through the outbox."""
        try:
            opened = self._commands.open(wire, int(self.clock() * 1000))
            command = decode_command(opened.plaintext)
        except (IntegrityError, SchemaError) as exc:
            log.warning("refused a command: %s (%s)", exc, getattr(exc, "reason", "invalid"))
            return
        ok, detail = (
            (True, "pong") if command.type == "ping" else (False, f"{command.type} is not supported yet")
        )
        log.info("command %s (%s): %s", command.command_id, command.type, detail)
        ack = AckMessage(command_id=command.command_id, ok=ok, detail=detail)
        self.outbox.put("ack", encode(ack), Priority.ACK)
