"""The agent: a thin assembly of a pipeline, a stream supervisor, a command intake and an uplink.

Threads (all named): one reader per stream (:mod:`roadside.edge.streams`) → a bounded
frame queue (``DROP_OLDEST``: live video prefers fresh frames) → the pipeline
thread (:mod:`roadside.edge.pipeline`: batched inference, tracking, line crossings,
aggregation) → the durable outbox → the uplink thread
(:mod:`roadside.edge.transport.mqtt`); commands come in on the uplink, are verified
there and run one at a time on the command thread (:mod:`roadside.edge.control.intake`).

Each part is passed in behind a small Protocol (:class:`AgentParts`);
:func:`roadside.edge.assembly.build_agent` wires the real ones from settings, and a
test can swap the uplink for an in-memory one. ``start`` runs on an
``ExitStack``, so a start that fails half-way (the metrics port is taken)
unwinds what it started, and ``stop`` is start's mirror: stop taking commands,
stop the readers, let the pipeline close the open interval, drain the outbox
for a moment, stop the uplink.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from roadside.edge.control.handler import CommandHandler
from roadside.edge.control.keys import KeyState
from roadside.edge.health import FrameLedger, HealthCollector, HealthReport, StreamProgress, StreamReader
from roadside.edge.inference.engine import OnnxDetector
from roadside.edge.outbox import Outbox, Priority
from roadside.edge.pipeline import Pipeline, StreamState
from roadside.edge.settings import AgentSettings, SourceConfig
from roadside.edge.sources import Frame, FrameSource
from roadside.edge.transport.delivery import UplinkStatus
from roadside.shared.bundle import EnrollmentBundle
from roadside.shared.keys import KeyPair
from roadside.shared.queues import BoundedQueue
from roadside.shared.schemas import Health, HealthMessage, encode

if TYPE_CHECKING:
    from roadside.edge.ota.manager import OtaManager
    from roadside.edge.samples.uploader import SampleUploader

log = logging.getLogger(__name__)

__all__ = ["Agent", "AgentParts", "StreamState", "Uplink"]


class Uplink(Protocol):
    """Carries the outbox to the hub and commands back (``roadside.edge.transport.mqtt.MqttUplink``)."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, drain_s: float = 0.0) -> None: ...

    def status(self) -> UplinkStatus: ...

    def use_keys(self, own: KeyPair) -> None: ...


class Streams(Protocol):
    """The streams' reader threads (``roadside.edge.streams.StreamSupervisor``)."""

    @property
    def sources(self) -> list[FrameSource]: ...

    @property
    def errors(self) -> dict[str, str]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def done(self, timeout: float | None = None) -> bool: ...

    def configs(self) -> dict[str, SourceConfig]: ...

    def add(self, config: SourceConfig) -> None: ...

    def remove(self, name: str) -> None: ...

    def readers(self) -> list[StreamReader]: ...


class Commands(Protocol):
    """Commands from the wire to the command thread (``roadside.edge.control.intake.CommandIntake``)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def pending(self) -> int: ...

    def use_keys(self, keys: KeyState) -> None: ...


class Service(Protocol):
    """A part with its own thread: sensors, hard-example uploads, /metrics."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class AgentParts:
    """Everything an agent runs, built and wired by :func:`roadside.edge.assembly.build_agent`."""

    settings: AgentSettings
    bundle: EnrollmentBundle
    outbox: Outbox
    pipeline: Pipeline
    streams: Streams
    commands: Commands
    handler: CommandHandler | None  # what commands do; None until the agent exists (it is their surface)
    uplink: Uplink
    health: HealthCollector
    sensors: Service
    samples: SampleUploader | None = None
    metrics: Service | None = None
    ota: OtaManager[OnnxDetector] | None = None
    clock: Callable[[], float] = time.time
    config_path: Path | None = None  # what reload_config re-reads


class Agent:
    """One roadside agent process: starts, stops and reports on its parts."""

    def __init__(self, parts: AgentParts) -> None:
        self.parts = parts
        self.bundle = parts.bundle
        self.clock = parts.clock
        self.config_path = parts.config_path
        self.outbox = parts.outbox
        self.pipeline = parts.pipeline
        self.supervisor = parts.streams
        self.intake = parts.commands
        self.commands = parts.handler
        self.uplink = parts.uplink
        self.health_collector = parts.health
        self.sensors = parts.sensors
        self.samples = parts.samples
        self.metrics = parts.metrics
        self.ota = parts.ota
        self.outbox_backlog_at_stop = -1
        self._stack = contextlib.ExitStack()
        self._drain_s = 0.0

    @classmethod
    def from_settings(
        cls,
        settings: AgentSettings,
        bundle: EnrollmentBundle,
        detector: OnnxDetector | None = None,
        clock: Callable[[], float] = time.time,
        config_path: Path | None = None,
    ) -> Agent:
        """The agent with its real parts, wired from ``settings`` (:func:`roadside.edge.assembly.build_agent`)."""
        from roadside.edge.assembly import build_agent

        return build_agent(settings, bundle, detector=detector, clock=clock, config_path=config_path)

    # Lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start every part; if one fails, stop those already started (in reverse) and raise."""
        with contextlib.ExitStack() as stack:
            stack.callback(self._close_outbox)
            if self.metrics is not None:
                self.metrics.start()  # first: a port in use is a configuration error, before any work
                stack.callback(self.metrics.stop)
            self.uplink.start()
            stack.callback(lambda: self.uplink.stop(drain_s=self._drain_s))
            self.sensors.start()
            stack.callback(self.sensors.stop)  # before the uplink, so its last batch is in the outbox
            if self.samples is not None:
                self.samples.start()
                stack.callback(self.samples.stop)
            self.pipeline.start()
            stack.callback(self.pipeline.stop)  # after the readers: no frame in flight is lost
            self.supervisor.start()
            stack.callback(self.supervisor.stop)
            if self.ota is not None:
                stack.callback(self.ota.stop)  # an install not yet switched is journaled; its file stays
                self.ota.resume()  # the install a crash or a stop interrupted, if any
            self.intake.start()
            stack.callback(self.intake.stop)
            self._stack = stack.pop_all()
        log.info("agent %s started with %d stream(s)", self.bundle.device_id, len(self.sources))

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop cleanly, in the reverse order of start: no frame in flight is lost, the open
        interval is sent, the outbox drains for up to ``drain_s``. Does nothing if not started."""
        self._drain_s = drain_s
        self._stack.close()

    def _close_outbox(self) -> None:
        self.outbox_backlog_at_stop = self.outbox.backlog()
        self.outbox.close()
        log.info("agent %s stopped", self.bundle.device_id)

    def sources_done(self, timeout: float | None = None) -> bool:
        """True once every (finite) source has ended."""
        return self.supervisor.done(timeout)

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

    # What commands may do (``roadside.edge.control.handler.AgentSurface``) ----------------------

    @property
    def settings(self) -> AgentSettings:
        return self.pipeline.settings

    def stream_configs(self) -> dict[str, SourceConfig]:
        """The running streams' settings, by name."""
        return self.supervisor.configs()

    def add_stream(self, config: SourceConfig) -> None:
        """Start a stream now; ``ConfigError`` or ``TransportError`` if it cannot run."""
        self.supervisor.add(config)

    def remove_stream(self, name: str) -> None:
        """Stop a stream: its reader ends, its queued frames are processed, its open interval is sent."""
        self.supervisor.remove(name)

    def apply_live_settings(self, settings: AgentSettings, reset_analytics: bool) -> None:
        """Adopt settings that apply live; with ``reset_analytics``, rebuild per-stream analytics."""
        self.pipeline.apply_live_settings(settings, reset_analytics)

    def use_keys(self, keys: KeyState) -> None:
        """Seal with ``keys.current`` and accept commands sealed to any key in ``keys``."""
        self.intake.use_keys(keys)
        self.uplink.use_keys(keys.current)

    # The pipeline's state, for health, benchmarks and tests ----------------------------

    @property
    def detector(self) -> OnnxDetector:
        return self.pipeline.detector

    @property
    def streams(self) -> dict[str, StreamState]:
        return self.pipeline.streams

    @property
    def sources(self) -> list[FrameSource]:
        return self.supervisor.sources

    @property
    def frames(self) -> BoundedQueue[Frame]:
        return self.pipeline.frames

    @property
    def ledger(self) -> FrameLedger:
        return self.health_collector.ledger

    @property
    def counted(self) -> Counter[tuple[str, str, str]]:
        return self.pipeline.counted

    @property
    def events_emitted(self) -> int:
        return self.pipeline.events_emitted

    @property
    def count_records_emitted(self) -> int:
        return self.pipeline.count_records_emitted

    # Health ----------------------------------------------------------------

    def health_report(self) -> HealthReport:
        """Everything the agent reports about itself (the heartbeat and /metrics)."""
        progress: Mapping[str, StreamProgress] = self.pipeline.streams
        return self.health_collector.report(
            self.supervisor.readers(), progress, {"commands": self.intake.pending()}
        )

    def health(self) -> Health:
        return self.health_report().to_health()

    def heartbeat(self) -> None:
        # The latest OTA report rides along while it is recent: one the hub refused is not lost.
        repeated = self.ota.repeated_report() if self.ota is not None else None
        message = HealthMessage(health=self.health(), ota=repeated)
        self.outbox.put("health", encode(message), Priority.HEALTH)
