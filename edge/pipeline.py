"""The agent's pipeline: frames → batched inference → per-stream analytics → counts and events.

One named thread (``pipeline``) takes batches from the bounded frame queue
(``DROP_OLDEST`` by default: live video prefers fresh frames; the benchmark
builds it with ``BLOCK``), runs the detector, feeds each stream's analytics
and writes closed count intervals and detection events to a
:class:`RecordSink` (the durable outbox; an in-memory list in tests). State
the pipeline owns (per-stream analytics, the running detector) changes only
on its thread, between batches, through :class:`PipelineTask`. Stop: the
readers are stopped first (:class:`roadside.edge.streams.StreamSupervisor`), then this
thread drains the queue, closes the open intervals and flushes the events.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from roadside.edge.analytics.config import AnalyticsConfig, LineConfig, resolve_stream_config
from roadside.edge.analytics.signals import CameraSignals, SignalOutput
from roadside.edge.analytics.stream import StreamAnalytics
from roadside.edge.inference.batching import BatchPolicy, DynamicBatcher
from roadside.edge.inference.engine import OnnxDetector
from roadside.edge.ota.shadow import FrameDetections
from roadside.edge.outbox import Priority
from roadside.edge.samples.uploader import SampleUploader
from roadside.edge.settings import AgentSettings
from roadside.edge.sources import Frame, FrameSource
from roadside.shared.compact import encode_counts
from roadside.shared.queues import BoundedQueue
from roadside.shared.schemas import (
    MAX_DETECTOR_CHANGES,
    MAX_MOVEMENT_RECORDS,
    CountRecord,
    CountsMessage,
    DetectionEvent,
    DetectorMessage,
    EventsMessage,
    MovementsMessage,
    encode,
)
from roadside.vision.yolo import Detections

log = logging.getLogger(__name__)

TASK_WAIT_S = 30.0  # how long a caller waits for the pipeline thread to run its task


class RecordSink(Protocol):
    """Where the pipeline's messages go: the durable outbox (``roadside.edge.outbox.Outbox``)."""

    def put(self, kind: str, payload: bytes, priority: Priority) -> int: ...


class ShadowObserver(Protocol):
    """A shadow test of a candidate model (``roadside.edge.ota.manager.OtaManager``)."""

    def observe(
        self, images: list[npt.NDArray[np.uint8]], running: Sequence[FrameDetections], running_ms: float
    ) -> Sequence[FrameDetections] | None: ...


@dataclass
class PipelineTask:
    """A change to pipeline-owned state, run on the pipeline thread between batches once ``ready``."""

    run: Callable[[], None]
    ready: Callable[[], bool] = lambda: True
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class StreamState:
    """Per-stream analytics state, owned by the pipeline thread."""

    name: str
    analytics: StreamAnalytics
    signals: CameraSignals | None = None  # detector zones for signal control, where configured
    frames: int = 0
    fps_window: list[float] = field(default_factory=list)


class Pipeline:
    """Batched inference and per-stream analytics on one thread; see the module docstring."""

    def __init__(
        self,
        settings: AgentSettings,
        detector: OnnxDetector,
        frames: BoundedQueue[Frame],
        sink: RecordSink,
        sources: Callable[[], Sequence[FrameSource]],
        samples: SampleUploader | None = None,
        on_detector: Callable[[OnnxDetector], None] = lambda _d: None,
    ) -> None:
        """``sources``: the streams running now (their count sizes batches; a synthetic
        scene lends its geometry); ``on_detector``: told of a model switch, on this thread."""
        self.settings = settings  # replaced whole by apply_live_settings
        self.detector = detector
        self.frames = frames
        self.sink = sink
        self.samples = samples  # hard examples (off by default): None keeps their cost off entirely
        self.shadow: ShadowObserver | None = None  # set when OTA is configured
        self._sources = sources
        self._on_detector = on_detector
        self.streams: dict[str, StreamState] = {}
        self._tasks: list[PipelineTask] = []
        self._tasks_lock = threading.Lock()
        self._pending_events: list[DetectionEvent] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events_emitted = 0
        self.detector_changes_emitted = 0
        self.count_records_emitted = 0
        # Totals of what was handed to the sink, by (line, class, direction): for health and tests.
        self.counted: Counter[tuple[str, str, str]] = Counter()

    # Lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        thread.start()
        self._thread = thread

    def stop(self) -> None:
        """After the readers stopped: process what is queued, close intervals, run waiting tasks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._run_tasks(force=True)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # Tasks on the pipeline thread -------------------------------------------------

    def submit(self, task: PipelineTask) -> None:
        """Run ``task`` on the pipeline thread between batches (at once when it is not running)."""
        with self._tasks_lock:
            if self.alive:
                self._tasks.append(task)
                return
        task.run()  # no pipeline running: nothing else touches its state
        task.done.set()

    def run_and_wait(self, run: Callable[[], None]) -> bool:
        """Submit ``run``; True once the pipeline thread ran it (False after ``TASK_WAIT_S``)."""
        task = PipelineTask(run)
        self.submit(task)
        return task.done.wait(TASK_WAIT_S)

    def _run_tasks(self, force: bool = False) -> None:
        """Pipeline thread, between batches (``force``: after it ended)."""
        with self._tasks_lock:
            due = [t for t in self._tasks if force or t.ready()]
            self._tasks = [t for t in self._tasks if t not in due]
        for task in due:
            try:
                task.run()
            finally:
                task.done.set()

    # Changes (each runs on the pipeline thread) --------------------------------------

    def drop_stream(self, name: str) -> None:
        """Forget a stopped stream's state, sending its open interval (pipeline thread)."""
        state = self.streams.pop(name, None)
        if state is not None:
            self.emit_counts(state.analytics.flush())
            if state.signals is not None:
                self.emit_signals(state.signals.flush())

    def apply_live_settings(self, settings: AgentSettings, reset_analytics: bool) -> None:
        """Adopt settings that apply live; with ``reset_analytics``, rebuild per-stream analytics."""
        self.settings = settings
        if not reset_analytics:
            return

        def run() -> None:  # the open intervals are sent; states come back with the new lines
            for state in list(self.streams.values()):
                self.emit_counts(state.analytics.flush())
                if state.signals is not None:
                    self.emit_signals(state.signals.flush())
            self.streams.clear()

        self.run_and_wait(run)

    def switch_detector(self, detector: OnnxDetector) -> None:
        """Run ``detector`` from the next batch; returns once the pipeline did the switch."""

        def run() -> None:  # on the pipeline thread, between batches
            info = detector.info
            for state in self.streams.values():
                old = state.analytics
                self.emit_counts(old.flush())  # the open interval so far is the old model's
                state.analytics = StreamAnalytics(
                    old.config, old.stream, info.labels, info.version, old.interval_s, tracker=old.tracker
                )
            self.detector = detector
            self._on_detector(detector)

        if not self.run_and_wait(run):
            log.warning("model switch to %s still waits for the pipeline", detector.info.version)

    # The thread ----------------------------------------------------------------------

    def _run(self) -> None:
        model = self.settings.model
        policy = BatchPolicy.for_streams(
            len(self._sources()), model.max_batch, model.max_wait_ms, self.detector.info.active_provider
        )
        # On a GPU the batcher thread letterboxes the next batch while this one runs.
        prepare = (
            (lambda frames: self.detector.prefetch([f.image for f in frames])) if policy.prefetch else None
        )
        batcher: DynamicBatcher[Frame] = DynamicBatcher(self.frames, policy, prepare)
        with batcher:
            while True:
                batch = batcher.next_batch(timeout_s=0.1)
                if batch:
                    self._process(batch)
                elif self._stop.is_set():
                    break
                self._flush_events()
                self._tick_signals()
                self._run_tasks()
        self._close_intervals()
        self._flush_events()

    def _process(self, batch: list[Frame]) -> None:
        images = [f.image for f in batch]
        started = time.perf_counter()
        detections = self.detector.detect(images)
        shadow: Sequence[Detections] | None = None
        if self.shadow is not None:  # a shadow test runs the candidate on the same frames, every Nth batch
            ran = self.shadow.observe(images, detections, (time.perf_counter() - started) * 1000.0)
            shadow = cast("Sequence[Detections] | None", ran)  # the candidate is an OnnxDetector too
        for i, (frame, found) in enumerate(zip(batch, detections, strict=True)):
            state = self._state_for(frame)
            state.frames += 1
            state.fps_window.append(time.monotonic())
            del state.fps_window[:-50]
            if self.samples is not None:  # a decision here; redaction and encoding on its own thread
                self.samples.offer(
                    frame,
                    found,
                    self.detector.info.labels,
                    self.detector.info.version,
                    shadow[i] if shadow is not None else None,  # disagreement with a candidate in shadow
                )
            out = state.analytics.update(frame.ts, found)
            self.emit_counts(out.closed_counts)
            if state.signals is not None:  # zone changes leave in this frame, not with the next events flush
                labels = self.detector.info.labels
                arrived = time.monotonic()  # the lost-camera clock: a simulation's ts may lag the wall
                self.emit_signals(state.signals.frame(frame.ts, frame.image, out.tracks, labels, arrived))
            version = self.detector.info.version
            self._pending_events.extend(
                e.to_detection_event(frame.stream, version, uuid.uuid4()) for e in out.events
            )

    def _state_for(self, frame: Frame) -> StreamState:
        state = self.streams.get(frame.stream)
        if state is None:
            info = self.detector.info
            analytics = StreamAnalytics(
                self._analytics_for(frame), frame.stream, info.labels, info.version, self.settings.interval_s
            )
            detectors = self.settings.signals.cameras.get(frame.stream)
            signals = (
                CameraSignals(frame.stream, detectors, self.settings.signals.interval_s)
                if detectors
                else None
            )
            state = StreamState(frame.stream, analytics, signals)
            self.streams[frame.stream] = state
        return state

    def _analytics_for(self, frame: Frame) -> AnalyticsConfig:
        """``settings.analytics``, with ``settings.lines`` as shorthand and a synthetic scene's own geometry."""
        source = next((s for s in self._sources() if s.name == frame.stream), None)
        shorthand = [LineConfig(name=ln.name, start=ln.start, end=ln.end) for ln in self.settings.lines]
        h, w = frame.image.shape[:2]
        return resolve_stream_config(
            self.settings.analytics, shorthand, getattr(source, "scene", None), (w, h)
        )

    def _close_intervals(self) -> None:
        for state in self.streams.values():
            self.emit_counts(state.analytics.flush())
            if state.signals is not None:
                self.emit_signals(state.signals.flush())

    def _tick_signals(self) -> None:
        """Between batches: a camera that stopped sending frames fails its zones (fail safe)."""
        now = time.monotonic()
        for state in self.streams.values():
            if state.signals is not None:
                self.emit_signals(state.signals.tick(now))

    def emit_signals(self, out: SignalOutput) -> None:
        """Zone changes as one small ``detector`` message at once; closed intervals as ``movements``."""
        for i in range(0, len(out.changes), MAX_DETECTOR_CHANGES):
            chunk = out.changes[i : i + MAX_DETECTOR_CHANGES]
            self.sink.put("detector", encode(DetectorMessage(records=chunk)), Priority.DETECTOR)
            self.detector_changes_emitted += len(chunk)
        size = MAX_MOVEMENT_RECORDS
        for i in range(0, max(len(out.movements), len(out.zones)), size):
            message = MovementsMessage(movements=out.movements[i : i + size], zones=out.zones[i : i + size])
            self.sink.put("movements", encode(message), Priority.COUNTS)

    def emit_counts(self, records: list[CountRecord]) -> None:
        size = self.settings.outbox.records_per_message
        compact = self.settings.outbox.counts_encoding == "compact"
        for i in range(0, len(records), size):
            chunk = records[i : i + size]
            payload = encode_counts(chunk) if compact else encode(CountsMessage(records=chunk))
            self.sink.put("counts", payload, Priority.COUNTS)
            self.count_records_emitted += len(chunk)
        for r in records:
            self.counted[(r.line, r.cls, r.direction)] += r.count

    def _flush_events(self) -> None:
        """The events of the batch just processed, as one ``events`` message (split past
        ``records_per_message``): they leave with the frames they were found in, as zone
        changes do. A once-a-second flush used to hold each event up to a second, the
        largest wait between a frame and the hub's API (``bench.latency``,
        docs/performance.md); a batch finds few events, so messages stay few."""
        if not self._pending_events:
            return
        size = self.settings.outbox.records_per_message
        events, self._pending_events = self._pending_events, []
        for i in range(0, len(events), size):
            self.sink.put("events", encode(EventsMessage(records=events[i : i + size])), Priority.EVENTS)
        self.events_emitted += len(events)
