"""The agent: wires sources, the detector, analytics, the outbox and the uplink.

Threads (all named): one reader per stream → a bounded frame queue
(``DROP_OLDEST``: live video prefers fresh frames) → the pipeline thread
(batched inference, tracking, line crossings, aggregation) → the durable
outbox → the uplink thread. Shutdown: stop the readers, let the pipeline
close the open interval, drain the outbox for a moment, stop the uplink.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from edge.analytics.config import AnalyticsConfig, LineConfig, resolve_stream_config
from edge.analytics.stream import StreamAnalytics
from edge.control.handler import CommandHandler
from edge.control.journal import AckJournal, default_journal_path
from edge.control.keys import KeyState, KeyStore, default_keys_path
from edge.control.redaction import redact
from edge.control.streams import check_new_stream
from edge.control.verifier import CommandVerifier, InvalidCommandError
from edge.health import FrameLedger, HealthCollector, HealthReport, StreamReader, SystemProbe
from edge.inference.batching import BatchPolicy, DynamicBatcher
from edge.inference.engine import DEFAULT_MODEL, OnnxDetector, OnnxSession, file_version
from edge.inference.yolo import Detections
from edge.metrics import HealthMetrics, MetricsServer
from edge.ota.manager import OtaHost, OtaManager, boot, make_updater, repo_anchor
from edge.ota.updater import ModelUpdater, ShippedModel
from edge.outbox import Outbox, Priority
from edge.samples.uploader import SampleUploader
from edge.sensors.pipeline import SensorPipeline
from edge.settings import AgentSettings, SourceConfig, load_agent_settings
from edge.sources import Frame, FrameSource, open_source
from edge.transport.delivery import uplink_status_path
from edge.transport.mqtt import MqttUplink, tls_scratch_dir
from shared.bundle import EnrollmentBundle
from shared.errors import ConfigError, IntegrityError, SchemaError, TransportError
from shared.queues import BoundedQueue, Overflow
from shared.schemas import (
    AckMessage,
    Command,
    CountRecord,
    CountsMessage,
    DetectionEvent,
    EventsMessage,
    Health,
    HealthMessage,
    OtaMessage,
    OtaReport,
    encode,
)

log = logging.getLogger(__name__)

_STOP = object()
_FIRST_FRAME_WAIT_S = 5.0  # add_stream waits this long for a new stream's first frame
_RETIRE_WAIT_S = 30.0  # remove_stream waits this long for the stream's queued frames to pass


@dataclass
class _Control:
    """A change to pipeline-owned state, run on the pipeline thread between batches once ``ready``."""

    run: Callable[[], None]
    ready: Callable[[], bool] = lambda: True
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class StreamState:
    """Per-stream analytics state, owned by the pipeline thread."""

    name: str
    analytics: StreamAnalytics
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
        config_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.config_path = config_path  # what reload_config re-reads
        self.keystore = KeyStore(default_keys_path(settings), bundle.device_id, bundle.keypair())
        key_state = self.keystore.load()  # a key rotated in an earlier run replaces the bundle's
        if key_state.current.kid != bundle.keypair().kid:
            bundle = bundle.model_copy(update={"device_keys": key_state.current.to_json()})
        self.bundle = bundle
        self.detector, updater = self._boot_model(detector)
        self.outbox = Outbox(settings.outbox.path, settings.outbox.max_bytes)
        # Hard examples (off by default): None keeps their cost off the pipeline entirely.
        self.samples: SampleUploader | None = None
        if settings.samples.enabled:
            self.samples = SampleUploader(settings.samples, self.outbox)
        self.sensors = SensorPipeline(
            settings.sensors, self.outbox.put, max_records=settings.outbox.records_per_message
        )
        self.uplink = MqttUplink(
            bundle,
            self.outbox,
            self._on_command,
            settings.outbox.max_inflight,
            scratch_dir=tls_scratch_dir(settings.outbox.path),
            status_file=uplink_status_path(settings.outbox.path),
        )
        self._verifier = CommandVerifier(bundle.device_id, bundle.hub_public(), key_state.all())
        # Streams change at run time (add_stream/remove_stream): lists and dicts are replaced, never
        # mutated, so the pipeline and health readers always see a consistent one.
        for source_config in settings.sources:
            check_new_stream(source_config, {})  # a name the health report cannot carry fails now
        self._source_configs: dict[str, SourceConfig] = {s.name: s for s in settings.sources}
        self.sources: list[FrameSource] = [open_source(s) for s in settings.sources]
        self.frames: BoundedQueue[Frame] = BoundedQueue(
            settings.frame_queue * max(1, len(self.sources)), Overflow.DROP_OLDEST
        )
        self.ledger = FrameLedger(self.frames)
        self._streams_lock = threading.Lock()
        self._readers: dict[str, threading.Thread] = {}
        self._first_frame: dict[str, threading.Event] = {}
        self._stream_errors: dict[str, str] = {}
        self._retiring: set[str] = set()
        self._controls: list[_Control] = []
        self._controls_lock = threading.Lock()
        self._running = False
        # Commands wait here for the command thread; REFUSE_NEWEST when full: the hub
        # resends what it has no ack for, and handling is idempotent by command id.
        self._command_queue: queue.Queue[object] = queue.Queue(maxsize=64)
        self.commands = CommandHandler(
            self,
            self.keystore,
            key_state,
            self._reload_settings if config_path is not None else None,
            AckJournal(default_journal_path(settings)),
        )
        self.ota: OtaManager[OnnxDetector] | None = None
        if updater is not None:
            host = OtaHost(lambda: self.detector, self._load_detector, self._switch_detector, self._emit_ota)
            self.ota = OtaManager(updater, host, settings.ota, settings.model.path or DEFAULT_MODEL)
            self.commands.register("ota", self.ota.handle)
        self.health_collector = HealthCollector(
            self.detector,
            self.outbox,
            self.frames,
            self.ledger,
            SystemProbe(),
            lambda: self.uplink.connected,
            uplink_status=self.uplink.status,
        )
        self.metrics: MetricsServer | None = None
        if settings.metrics_port:
            self.metrics = MetricsServer(
                HealthMetrics(self.health_report, lambda: dict(self.commands.results)), settings.metrics_port
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
        if self.metrics is not None:
            self.metrics.start()  # first: a port in use is a configuration error, before any work
        self.uplink.start()
        self.sensors.start()
        if self.samples is not None:
            self.samples.start()
        self._command_thread = threading.Thread(target=self._run_commands, name="commands", daemon=True)
        self._command_thread.start()
        with self._streams_lock:
            self._running = True
            for source in self.sources:
                self._start_reader(source)
        pipeline = threading.Thread(target=self._pipeline, name="pipeline", daemon=True)
        pipeline.start()
        self._pipeline_thread = pipeline
        log.info("agent %s started with %d stream(s)", self.bundle.device_id, len(self.sources))

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop cleanly: no frame in flight is lost, the open interval is sent."""
        self._command_queue.put(_STOP)  # blocks only while full; the command thread is draining it
        self._command_thread.join(timeout=60)
        if self.ota is not None:
            self.ota.stop()  # an install not yet switched is abandoned; its staged file stays
        with self._streams_lock:
            self._running = False
        for source in self.sources:
            source.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._stop.set()
        self._pipeline_thread.join(timeout=30)
        self.sensors.stop()  # before the uplink, so its last batch is in the outbox to drain
        if self.samples is not None:
            self.samples.stop()
        self._run_controls(force=True)
        if self.metrics is not None:
            self.metrics.stop()
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
            while not stop.wait(self.settings.heartbeat_s):  # re-read: reload_config may change it
                try:
                    self.heartbeat()
                except Exception:  # a bad report must not stop the agent; the log says why
                    log.exception("heartbeat failed")
        finally:
            self.stop()

    # Streams at run time --------------------------------------------------------

    def stream_configs(self) -> dict[str, SourceConfig]:
        """The running streams' settings, by name."""
        return dict(self._source_configs)

    def add_stream(self, config: SourceConfig) -> None:
        """Start a stream now; ``ConfigError`` or ``TransportError`` if it cannot run."""
        with self._streams_lock:
            if config.name in self._source_configs or config.name in self._retiring:
                raise ConfigError(f"stream {config.name} is already running or still stopping")
            check_new_stream(config, self._source_configs)
            source = open_source(config)
            self._source_configs = {**self._source_configs, config.name: config}
            self.sources = [*self.sources, source]
            started = self._running
            if started:
                self._start_reader(source)
        if started and not self._first_frame[config.name].wait(_FIRST_FRAME_WAIT_S):
            log.warning("stream %s started but no frame came within %.0f s", config.name, _FIRST_FRAME_WAIT_S)
        error = self._stream_errors.get(config.name)
        if error is not None:
            self._retire(config.name, source, wait=True)
            raise TransportError(f"stream {config.name} did not start: {redact(error)}")
        log.info("stream %s added", config.name)

    def remove_stream(self, name: str) -> None:
        """Stop a stream: its reader ends, its queued frames are processed, its open interval is sent."""
        with self._streams_lock:
            if name not in self._source_configs:
                raise ConfigError(f"no stream named {name!r}")
            source = next(s for s in self.sources if s.name == name)
        source.close()
        reader = self._readers.get(name)
        if reader is not None:
            reader.join(timeout=5)
        self._retire(name, source, wait=True)
        log.info("stream %s removed", name)

    def _start_reader(self, source: FrameSource) -> None:
        """Under ``_streams_lock``."""
        self._first_frame[source.name] = threading.Event()
        self._stream_errors.pop(source.name, None)
        thread = threading.Thread(
            target=self._read, args=(source,), name=f"source-{source.name}", daemon=True
        )
        self._readers[source.name] = thread
        self._threads = [*self._threads, thread]
        thread.start()

    def _retire(self, name: str, source: FrameSource, wait: bool) -> None:
        """Forget a stopped stream once every frame it queued has left the frame queue."""
        with self._streams_lock:
            self._source_configs = {k: v for k, v in self._source_configs.items() if k != name}
            self._retiring.add(name)
            reader = self._readers.pop(name, None)
            self._threads = [t for t in self._threads if t is not reader]
        mark = self.ledger.mark()

        def run() -> None:  # on the pipeline thread: it owns ``self.streams``
            state = self.streams.pop(name, None)
            if state is not None:
                self._emit_counts(state.analytics.flush())
            with self._streams_lock:
                self.sources = [s for s in self.sources if s is not source]
                self._retiring.discard(name)
            self.ledger.forget(name)

        passed_before = False

        def ready() -> bool:
            # Once the frames have left the queue, wait one more round: the batcher may hold
            # one collected batch (with some of them) that the pipeline has not processed yet.
            nonlocal passed_before
            if passed_before:
                return True
            passed_before = self.ledger.passed(mark)
            return False

        control = _Control(run, ready)
        self._submit(control)
        if wait and not control.done.wait(_RETIRE_WAIT_S):
            log.warning("stream %s stopped; its queued frames are still being processed", name)

    def apply_live_settings(self, settings: AgentSettings, reset_analytics: bool) -> None:
        """Adopt settings that apply live; with ``reset_analytics``, rebuild per-stream analytics."""
        self.settings = settings
        if not reset_analytics:
            return

        def run() -> None:  # the open intervals are sent; states come back with the new lines
            for state in list(self.streams.values()):
                self._emit_counts(state.analytics.flush())
            self.streams.clear()

        control = _Control(run)
        self._submit(control)
        control.done.wait(_RETIRE_WAIT_S)

    def use_keys(self, keys: KeyState) -> None:
        """Seal with ``keys.current`` and accept commands sealed to any key in ``keys``."""
        self._verifier.set_keys(keys.all())
        self.uplink.use_keys(keys.current)

    def _reload_settings(self) -> AgentSettings:
        return load_agent_settings(self.config_path, bundle=self.settings.bundle)

    def _submit(self, control: _Control) -> None:
        pipeline = getattr(self, "_pipeline_thread", None)
        with self._controls_lock:
            if pipeline is not None and pipeline.is_alive():
                self._controls.append(control)
                return
        control.run()  # no pipeline running: nothing else touches its state
        control.done.set()

    def _run_controls(self, force: bool = False) -> None:
        """Pipeline thread, between batches (``force``: after it ended)."""
        with self._controls_lock:
            due = [c for c in self._controls if force or c.ready()]
            self._controls = [c for c in self._controls if c not in due]
        for control in due:
            try:
                control.run()
            finally:
                control.done.set()

    # Stages -----------------------------------------------------------------

    def _read(self, source: FrameSource) -> None:
        first = self._first_frame.get(source.name)
        try:
            for frame in source.frames():
                self.ledger.put(frame)
                if first is not None:
                    first.set()
        except TransportError as exc:
            self._stream_errors[source.name] = str(exc)
            log.error("stream %s failed: %s", source.name, redact(str(exc)))
        finally:
            if first is not None:
                first.set()

    def _pipeline(self) -> None:
        model = self.settings.model
        policy = BatchPolicy.for_streams(
            len(self.sources), model.max_batch, model.max_wait_ms, self.detector.info.active_provider
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
                self._flush_events(force=False)
                self._run_controls()
        self._close_intervals()
        self._flush_events(force=True)

    def _process(self, batch: list[Frame]) -> None:
        images = [f.image for f in batch]
        started = time.perf_counter()
        detections = self.detector.detect(images)
        shadow: Sequence[Detections] | None = None
        if self.ota is not None:  # a shadow test runs the candidate on the same frames, every Nth batch
            ran = self.ota.observe(images, detections, (time.perf_counter() - started) * 1000.0)
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
            self._emit_counts(out.closed_counts)
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
            state = StreamState(frame.stream, analytics)
            self.streams[frame.stream] = state
        return state

    def _analytics_for(self, frame: Frame) -> AnalyticsConfig:
        """``settings.analytics``, with ``settings.lines`` as shorthand and a synthetic scene's own geometry."""
        source = next((s for s in self.sources if s.name == frame.stream), None)
        shorthand = [LineConfig(name=ln.name, start=ln.start, end=ln.end) for ln in self.settings.lines]
        h, w = frame.image.shape[:2]
        return resolve_stream_config(
            self.settings.analytics, shorthand, getattr(source, "scene", None), (w, h)
        )

    def _close_intervals(self) -> None:
        for state in self.streams.values():
            self._emit_counts(state.analytics.flush())

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

    # Model updates ----------------------------------------------------------

    def _boot_model(self, detector: OnnxDetector | None) -> tuple[OnnxDetector, ModelUpdater | None]:
        """The detector to run and, with a model repository (settings or bundle), the OTA updater.

        With a repository the model file is the updater's boot choice: the
        active model if it verifies, else the previous, else the shipped one.
        """
        settings = self.settings
        anchor = repo_anchor(settings, self.bundle)
        if anchor is None:
            return detector or OnnxDetector.from_config(settings.model, len(settings.sources)), None
        if detector is None:
            shipped_path = settings.model.path or DEFAULT_MODEL
            return boot(settings, anchor, shipped_path, self._load_detector, _shipped_version)
        shipped = ShippedModel(detector.info.path, settings.ota.model_name, detector.info.version)
        return detector, make_updater(settings, anchor, shipped)

    def _load_detector(self, path: Path, version: str | None) -> OnnxDetector:
        """A detector for ``path`` with the running one's settings (providers, thresholds, batch)."""
        config = self.settings.model.model_copy(update={"path": path, "version": version})
        return OnnxDetector.from_config(config, len(self.settings.sources))

    def _switch_detector(self, detector: OnnxDetector) -> None:
        """Run ``detector`` from the next batch; returns once the pipeline did the switch."""

        def run() -> None:  # on the pipeline thread, between batches
            info = detector.info
            for state in self.streams.values():
                old = state.analytics
                self._emit_counts(old.flush())  # the open interval so far is the old model's
                state.analytics = StreamAnalytics(
                    old.config, old.stream, info.labels, info.version, old.interval_s, tracker=old.tracker
                )
            self.detector = detector
            self.health_collector.detector = detector

        control = _Control(run)
        self._submit(control)
        if not control.done.wait(_RETIRE_WAIT_S):
            log.warning("model switch to %s still waits for the pipeline", detector.info.version)

    def _emit_ota(self, report: OtaReport) -> None:
        self.outbox.put("ota", encode(OtaMessage(report=report)), Priority.OTA)

    # Health and commands ----------------------------------------------------

    def health_report(self) -> HealthReport:
        """Everything the agent reports about itself (the heartbeat and /metrics)."""
        return self.health_collector.report(
            self._stream_readers(), self.streams, {"commands": self._command_queue.qsize()}
        )

    def _stream_readers(self) -> list[StreamReader]:
        sources = {s.name: s for s in self.sources}
        readers = []
        for name in self._source_configs:
            thread = self._readers.get(name)
            source = sources.get(name)
            readers.append(
                StreamReader(
                    name,
                    reading=thread is not None and thread.is_alive(),
                    reconnects=source.reconnects if source is not None else 0,
                )
            )
        return readers

    def health(self) -> Health:
        return self.health_report().to_health()

    def heartbeat(self) -> None:
        self.outbox.put("health", encode(HealthMessage(health=self.health())), Priority.HEALTH)

    def _on_command(self, wire: bytes) -> None:
        """Runs on the MQTT network thread: verify, then queue for the command thread."""
        item: Command | InvalidCommandError
        try:
            item = self._verifier.open(wire, int(self.clock() * 1000))
        except InvalidCommandError as exc:
            log.warning("refused an invalid command %s: %s", exc.command_id, exc)
            item = exc
        except (IntegrityError, SchemaError) as exc:
            log.warning("refused a command: %s (%s)", exc, exc.reason)
            return
        try:
            self._command_queue.put_nowait(item)
        except queue.Full:
            log.warning("command queue full: dropped a command; the hub resends it")

    def _run_commands(self) -> None:
        """The command thread: one command at a time, each answered through the outbox."""
        while (item := self._command_queue.get()) is not _STOP:
            ack: AckMessage | None
            if isinstance(item, Command):
                ack = self.commands.handle(item)
            elif isinstance(item, InvalidCommandError):
                ack = self.commands.invalid(item)
            else:
                continue
            if ack is not None:
                self.outbox.put("ack", encode(ack), Priority.ACK)


def _shipped_version(path: Path) -> str:
    """The shipped model's ``model_version`` metadata (else its hash), read without a full load."""
    return OnnxSession(path, ["CPUExecutionProvider"]).metadata.get("model_version") or file_version(path)
