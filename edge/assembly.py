"""Wiring the agent's real parts from its settings: the one place that builds them.

:func:`build_agent` makes the outbox, boots the model (through the OTA
updater when a model repository is configured), and builds the pipeline, the
stream supervisor, the command intake and handler, the MQTT uplink, health,
/metrics, sensors and hard-example uploads, then hands them to
:class:`roadside.edge.agent.Agent`. Tests and benchmarks pass ``uplink`` (an in-memory
one: no broker) or ``frame_overflow`` (``BLOCK``: streams wait for the
pipeline) instead of reaching into a built agent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from roadside.edge.agent import Agent, AgentParts, Uplink
from roadside.edge.control.handler import CommandHandler
from roadside.edge.control.intake import CommandIntake
from roadside.edge.control.journal import AckJournal, default_journal_path
from roadside.edge.control.keys import KeyStore, default_keys_path
from roadside.edge.control.verifier import CommandVerifier
from roadside.edge.health import FrameLedger, HealthCollector, HealthReport, SystemProbe
from roadside.edge.inference.engine import DEFAULT_MODEL, OnnxDetector, OnnxSession, file_version
from roadside.edge.metrics import HealthMetrics, MetricsServer
from roadside.edge.ota.manager import (
    OtaHost,
    OtaManager,
    boot,
    install_journal,
    latest_report,
    make_updater,
    repo_anchor,
)
from roadside.edge.ota.updater import ModelUpdater, ShippedModel
from roadside.edge.outbox import Outbox, Priority
from roadside.edge.pipeline import Pipeline
from roadside.edge.samples.uploader import SampleUploader
from roadside.edge.sensors.pipeline import SensorPipeline
from roadside.edge.settings import AgentSettings, SourceConfig, load_agent_settings
from roadside.edge.sources import Frame, FrameSource, open_source
from roadside.edge.streams import StreamSupervisor
from roadside.edge.transport.delivery import uplink_status_path
from roadside.edge.transport.mqtt import MqttUplink, tls_scratch_dir
from roadside.shared.bundle import EnrollmentBundle
from roadside.shared.queues import BoundedQueue, Overflow
from roadside.shared.schemas import OtaMessage, OtaReport, encode

CommandSink = Callable[[bytes], None]


def frame_bytes(frame: Frame) -> int:
    """What a queued frame holds: its pixels (the rest is a few hundred bytes)."""
    return int(frame.image.nbytes)


UplinkFactory = Callable[[EnrollmentBundle, Outbox, CommandSink], Uplink]


def build_agent(
    settings: AgentSettings,
    bundle: EnrollmentBundle,
    *,
    detector: OnnxDetector | None = None,
    clock: Callable[[], float] = time.time,
    config_path: Path | None = None,
    uplink: UplinkFactory | None = None,
    frame_overflow: Overflow = Overflow.DROP_OLDEST,
    sources: Callable[[SourceConfig], FrameSource] = open_source,
) -> Agent:
    """An agent wired from ``settings``. ``uplink`` makes the link from (bundle, outbox, command
    handler), the MQTT uplink by default; ``frame_overflow`` is the frame queue's drop policy;
    ``sources`` opens a stream's source (the registered adapters by default)."""
    keystore = KeyStore(default_keys_path(settings), bundle.device_id, bundle.keypair())
    key_state = keystore.load()  # a key rotated in an earlier run replaces the bundle's
    if key_state.current.kid != bundle.keypair().kid:
        bundle = bundle.model_copy(update={"device_keys": key_state.current.to_json()})
    loader = _DetectorLoader(settings)
    detector, updater = _boot_model(settings, bundle, detector, loader)
    outbox = Outbox(settings.outbox.path, settings.outbox.max_bytes)
    # Hard examples (off by default): None keeps their cost off the pipeline entirely.
    samples = SampleUploader(settings.samples, outbox) if settings.samples.enabled else None
    sensors = SensorPipeline(settings.sensors, outbox.put, max_records=settings.outbox.records_per_message)
    frames: BoundedQueue[Frame] = BoundedQueue(
        settings.frame_queue * max(1, len(settings.sources)),
        frame_overflow,
        max_bytes=settings.frame_queue_bytes,
        size=frame_bytes,
    )
    ledger = FrameLedger(frames)
    pipeline = Pipeline(
        settings,
        detector,
        frames,
        outbox,
        lambda: supervisor.sources,
        samples,
        on_detector=lambda running: setattr(health, "detector", running),
    )
    loader.current = lambda: pipeline.settings  # an OTA candidate is loaded like the running model
    supervisor = StreamSupervisor(settings.sources, ledger, pipeline, sources)
    verifier = CommandVerifier(bundle.device_id, bundle.hub_public(), key_state.all())
    intake = CommandIntake(verifier, outbox, clock)
    link = (uplink or _mqtt_uplink(settings))(bundle, outbox, intake.on_wire)
    health = HealthCollector(
        detector, outbox, frames, ledger, SystemProbe(), lambda: link.connected, uplink_status=link.status
    )
    ota: OtaManager[OnnxDetector] | None = None
    if updater is not None:

        def emit_ota(report: OtaReport) -> None:
            outbox.put("ota", encode(OtaMessage(report=report)), Priority.OTA)

        host = OtaHost(lambda: pipeline.detector, loader.load, pipeline.switch_detector, emit_ota)
        ota = OtaManager(
            updater,
            host,
            settings.ota,
            settings.model.path or DEFAULT_MODEL,
            install_journal(settings),
            latest_report(settings),
        )
        pipeline.shadow = ota

    def report() -> HealthReport:  # scraped only once the agent below exists
        return agent.health_report()

    metrics: MetricsServer | None = None
    if settings.metrics_port:
        metrics = MetricsServer(HealthMetrics(report, lambda: dict(handler.results)), settings.metrics_port)
    parts = AgentParts(
        settings=settings,
        bundle=bundle,
        outbox=outbox,
        pipeline=pipeline,
        streams=supervisor,
        commands=intake,
        handler=None,
        uplink=link,
        health=health,
        sensors=sensors,
        samples=samples,
        metrics=metrics,
        ota=ota,
        clock=clock,
        config_path=config_path,
    )
    agent = Agent(parts)
    reload = (lambda: load_agent_settings(config_path, bundle=agent.settings.bundle)) if config_path else None
    handler = CommandHandler(agent, keystore, key_state, reload, AckJournal(default_journal_path(settings)))
    if ota is not None:
        handler.register("ota", ota.handle)
    intake.runner = handler
    agent.commands = parts.handler = handler
    return agent


def _mqtt_uplink(settings: AgentSettings) -> UplinkFactory:
    def make(bundle: EnrollmentBundle, outbox: Outbox, on_command: CommandSink) -> Uplink:
        return MqttUplink(
            bundle,
            outbox,
            on_command,
            settings.outbox.max_inflight,
            max_inflight_bytes=settings.outbox.max_inflight_bytes,
            scratch_dir=tls_scratch_dir(settings.outbox.path),
            status_file=uplink_status_path(settings.outbox.path),
        )

    return make


class _DetectorLoader:
    """Loads a model file as a detector configured like the running one (providers, thresholds, batch)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.current: Callable[[], AgentSettings] = lambda: settings

    def load(self, path: Path, version: str | None) -> OnnxDetector:
        settings = self.current()
        config = settings.model.model_copy(update={"path": path, "version": version})
        return OnnxDetector.from_config(config, len(settings.sources))


def _boot_model(
    settings: AgentSettings, bundle: EnrollmentBundle, detector: OnnxDetector | None, loader: _DetectorLoader
) -> tuple[OnnxDetector, ModelUpdater | None]:
    """The detector to run and, with a model repository (settings or bundle), the OTA updater.

    With a repository the model file is the updater's boot choice: the
    active model if it verifies, else the previous, else the shipped one.
    """
    anchor = repo_anchor(settings, bundle)
    if anchor is None:
        return detector or OnnxDetector.from_config(settings.model, len(settings.sources)), None
    if detector is None:
        shipped_path = settings.model.path or DEFAULT_MODEL
        return boot(settings, anchor, shipped_path, loader.load, _shipped_version)
    shipped = ShippedModel(detector.info.path, settings.ota.model_name, detector.info.version)
    return detector, make_updater(settings, anchor, shipped)


def _shipped_version(path: Path) -> str:
    """The shipped model's ``model_version`` metadata (else its hash), read without a full load."""
    return OnnxSession(path, ["CPUExecutionProvider"]).metadata.get("model_version") or file_version(path)
