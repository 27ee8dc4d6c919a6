"""The hub process: registry, store, ingest and the API, wired from one ``HubSettings``."""

from __future__ import annotations

import gc
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Protocol, Self

import uvicorn
from prometheus_client import CollectorRegistry, Counter

from roadside.cloud.air.processor import AirProcessor, store_and_publish
from roadside.cloud.air.queries import AirQueries
from roadside.cloud.air.store import AirStore
from roadside.cloud.api.app import create_app
from roadside.cloud.api.ratelimit import RateLimit
from roadside.cloud.api.webhooks import WebhookDestinations, WebhookDispatcher, WebhookStore
from roadside.cloud.broker.pki import CertFiles
from roadside.cloud.console import install_console
from roadside.cloud.console.links import load_or_create_key
from roadside.cloud.console.registry_sessions import RegistrySessions
from roadside.cloud.console.sessions import SessionPolicy
from roadside.cloud.dataset.store import DatasetStore
from roadside.cloud.fleet.command_sender import CommandSender
from roadside.cloud.fleet.live import LiveFeed
from roadside.cloud.home import HubHome, hub_identity, issue_enrollment, refresh_crl, revoke_device
from roadside.cloud.ingest.core import Accepted, IngestCore
from roadside.cloud.ingest.deadletter import DeadLetterStore
from roadside.cloud.ingest.directory import DeviceDirectory
from roadside.cloud.ingest.metrics import IngestMetrics
from roadside.cloud.ingest.service import BrokerClientConfig, IngestService
from roadside.cloud.ingest.workers import IngestWorkers
from roadside.cloud.registry import Registry
from roadside.cloud.release.controller import RolloutController
from roadside.cloud.release.repository import ModelRepository
from roadside.cloud.release.server import RepositoryServer, TimestampRefresher
from roadside.cloud.settings import HubSettings
from roadside.cloud.signals.calls import CallDispatcher, CallFeed, CallMetrics, maps_of
from roadside.cloud.storage.adapters import open_store
from roadside.cloud.storage.base import TimeSeriesStore
from roadside.cloud.storage.retention_job import RetentionJob, RetentionTarget
from roadside.cloud.training.loop import RetrainLoop
from roadside.shared.bundle import BrokerAddress
from roadside.shared.envelope import REPLAY_WINDOW_SIZE, HubOpener
from roadside.shared.errors import ConfigError, RoadsideError, TransportError
from roadside.shared.schemas import HardExample
from roadside.shared.version import roadside_version

log = logging.getLogger(__name__)


class _Service(Protocol):
    """A part the hub starts (on threads of its own) and stops on the way down."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Hub:
    """The hub process, assembled from ``HubSettings``; also a context manager (``with Hub(s) as hub``).

    Every resource the constructor opens and every part ``start`` starts puts its undoing on
    one ``ExitStack``: ``stop`` is start's mirror (the last part started stops first, then the
    files close in reverse order of opening), and a failure part-way through the constructor
    or ``start`` unwinds what came before it and re-raises.
    """

    def __init__(
        self, settings: HubSettings, *, registry: Registry | None = None, store: TimeSeriesStore | None = None
    ) -> None:
        """``registry`` and ``store`` are the two edges a caller may pass in (a test's, or one shared
        by several hub processes); the hub then uses them as given and leaves closing them to the
        caller. Left out, the hub opens them from ``settings`` and closes them on ``stop``."""
        self._stack = ExitStack()
        try:
            self._assemble(settings, registry, store)
        except BaseException:
            self._stack.close()
            raise

    def _assemble(
        self, settings: HubSettings, registry: Registry | None, store: TimeSeriesStore | None
    ) -> None:
        close = self._stack.callback
        self.settings = settings
        self.home = HubHome(settings.home)
        self.home.require()
        if registry is None:
            registry = Registry(settings.registry_url or self.home.registry_url)
            close(registry.close)
        self.registry = registry
        self.registry.create_schema()
        if store is None:
            store = open_store(settings.store, self.home)
            close(store.close)
        self.store = store
        self.metrics_registry = CollectorRegistry()
        self.metrics = IngestMetrics(self.metrics_registry)
        self.dead_letters = DeadLetterStore(self.home.dead_letters_db)
        close(self.dead_letters.close)
        # Hard examples from devices land in the detector dataset's inbox (``roadside dataset commit``).
        self.datasets = DatasetStore(self.home.datasets_dir())
        close(self.datasets.close)
        self.dataset_samples = Counter(
            "roadside_dataset_samples_total",
            "Hard examples received, by result (added, duplicate, rejected_<reason>, error)",
            ["result"],
            registry=self.metrics_registry,
        )
        self.directory = DeviceDirectory(self.registry.devices)
        self.opener = HubOpener(
            [self.home.hub_keys()],
            self.directory.key,
            max_age_s=settings.max_message_age_s,
            max_bytes=settings.max_message_bytes,
        )
        # The broker takes the client id from the certificate: each hub process has its own.
        identity = hub_identity(self.home, self.registry, settings.client_id)
        broker = BrokerClientConfig(
            host=settings.broker_host,
            port=settings.broker_port,
            ca_file=self.home.ca_file,
            cert_file=identity.cert,
            key_file=identity.key,
            client_id=settings.client_id,
            group=self.home.hub_group() if settings.group is None else (settings.group or None),
            mqtt_client=settings.ingest_mqtt_client,
            keepalive_s=settings.ingest_keepalive_s,
        )
        self.ingest = IngestService(
            broker,
            IngestCore(self.opener, self.directory.site_of),
            self.store,
            self.dead_letters,
            self.metrics,
            self.registry.devices.mark_seen,
            batch_size=settings.batch_size,
            max_wait_s=settings.batch_wait_s,
            queue_size=settings.ingest_queue_size,
            on_stored=self._on_stored,
            workers=(
                IngestWorkers(settings, settings.ingest_workers, settings.ingest_spare_workers)
                if settings.ingest_workers
                else None
            ),
        )
        self.commands = CommandSender(self.home.hub_keys(), self.registry.devices, self.ingest)
        # Detector calls for signal controllers: MQTT on this hub's connection, and SSE (docs/signals.md).
        self.signal_calls = CallDispatcher(
            partial(maps_of, self.registry), self.ingest, CallFeed(), CallMetrics(self.metrics_registry)
        )
        self.rollouts = RolloutController(
            self.registry,
            self.commands,
            self.store.latest_health,
            tick_s=settings.rollout_tick_s,
            ingest_behind_s=self.ingest.behind_s,
        )
        self.repository: ModelRepository | None = None
        self.repo_server: RepositoryServer | None = None
        self.repo_url = ""
        self.retrainer: RetrainLoop | None = None
        self.live = LiveFeed()
        destinations = WebhookDestinations(allowed=tuple(settings.webhook_allow_networks))
        self.webhooks = WebhookStore(self.home.root / "webhooks.db", destinations=destinations)
        close(self.webhooks.close)
        self.dispatcher = WebhookDispatcher(self.webhooks)
        self.live.add_sink(self.dispatcher.offer)
        air_queries = self._open_air(settings)
        self.app = create_app(
            store=self.store,
            registry=self.registry,
            metrics_registry=self.metrics_registry,
            version=roadside_version(),
            online_after_s=settings.online_after_s,
            live=self.live,
            webhooks=self.webhooks,
            enroll=self.enroll,
            revoke=self.revoke,
            device_status=self.ingest.status.get,
            rate_limit=RateLimit(per_s=settings.api_rate_per_s, burst=settings.api_rate_burst),
            signal_calls=self.signal_calls,
            air=air_queries,
        )
        self.console = install_console(
            self.app,
            link_key=load_or_create_key(self.home.root),
            policy=SessionPolicy(lifetime_s=settings.console_session_s, idle_s=settings.console_idle_s),
            samples=self.datasets,
            session_backend=RegistrySessions(self.registry.console_sessions),
        )
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch_registry, name="registry-watch", daemon=True)
        # Only the process that serves the API runs retention: ingest workers share its store.
        retention = settings.retention
        self.retention: RetentionJob | None = None
        if retention.enabled and settings.api_port >= 0 and isinstance(self.store, RetentionTarget):
            self.retention = RetentionJob(self.store, retention.policy(), retention.interval_s)
        self._server: uvicorn.Server | None = None
        self.api_url = ""

    def _open_air(self, settings: HubSettings) -> AirQueries | None:
        """Air quality (docs/air-quality.md) when configured: its store, its job (run by the API process)."""
        self.air: AirProcessor | None = None
        if settings.air is None or not settings.air.enabled:
            return None
        air_store = AirStore(self.home.root / "air.db")
        self._stack.callback(air_store.close)
        self.air = AirProcessor(settings.air, self.store, air_store, store_and_publish(self.store, self.live))
        return AirQueries(settings.air, air_store, self.store)

    def _restore_replay_windows(self) -> None:
        """Rebuild each device's replay window from what the store already holds."""
        for device in self.registry.devices.list():
            stored = self.store.recent_sequences(device.device_id, REPLAY_WINDOW_SIZE)
            self.opener.restore(device.device_id, stored)

    def revoke(self, device_id: str, *, actor: str = "system") -> None:
        """Refuse the device at once, here and at the broker (CRL, ACL, its open session ended)."""
        if self.registry.devices.get(device_id) is None:
            raise ConfigError(f"device {device_id!r} is not enrolled")
        broker = (self.settings.broker_host, self.settings.broker_port)
        revoke_device(self.home, self.registry, device_id, actor=actor, broker=broker)
        self._forget(device_id)

    def enroll(self, device_id: str, site: str, *, actor: str = "system") -> dict[str, object]:
        """Enroll a device and return its bundle (shown once: it holds the device's private keys)."""
        address = BrokerAddress(
            host=self.settings.device_broker_host or self.settings.broker_host,
            port=self.settings.device_broker_port or self.settings.broker_port,
        )
        repo_url = self.settings.repo_public_url or self.repo_url or None
        # Not written anywhere: the API shows it once.
        bundle = issue_enrollment(self.home, self.registry, device_id, site, address, actor, repo_url)
        return bundle.model_dump()

    def _on_stored(self, accepted: list[Accepted]) -> None:
        """After a durable write: rollouts, the live feed, key tracking, command acks, samples.

        Each listener runs for each message on its own, so one that fails costs no other
        message or listener; the failure is counted and logged. ``TransportError`` (the
        registry is unreachable) is raised instead: ingest pauses and the batch comes again.
        """
        detector = [r.batch for r in accepted if r.batch.detector]
        if detector:  # first: a controller waits on these calls
            self._listen("signals", partial(self.signal_calls.dispatch, detector))
        reports = [(r.header.device_id, r.ota) for r in accepted if r.ota is not None]
        if reports:  # one registry transaction for the batch; one per report if that fails
            one_by_one = [partial(self.rollouts.on_reports, [report]) for report in reports]
            self._listen("ota", partial(self.rollouts.on_reports, reports), each=one_by_one)
        for result in accepted:
            header, batch = result.header, result.batch
            if batch.events:
                origin = batch.origin
                self._listen("live", partial(self.live.publish, origin.device_id, origin.site, batch.events))
            if batch.sensors and self.air is not None:
                self._listen("air", partial(self.air.note_stored, batch.sensors))
            self._listen("keys", partial(self.commands.note_key, header.device_id, header.kid))
            if result.ack is not None:
                self._listen(
                    "ack", partial(self.commands.on_ack, header.device_id, result.ack, kid=header.kid)
                )
            if result.samples:
                self._store_samples(header.device_id, result.samples)

    def _listen(
        self, listener: str, work: Callable[[], object], each: Sequence[Callable[[], object]] | None = None
    ) -> None:
        """Run one listener's work; if a batched form fails, run its parts one by one."""
        try:
            work()
            return
        except TransportError:
            raise
        except Exception:
            if each is None or len(each) <= 1:
                log.exception("the %s listener failed on a stored message; ingest goes on", listener)
                self.metrics.listener_errors.labels(listener).inc()
                return
        for part in each:
            self._listen(listener, part)

    def _store_samples(self, device_id: str, samples: tuple[HardExample, ...]) -> None:
        """Into the dataset inbox; a failure is counted and logged here, ingest goes on."""
        try:
            report = self.datasets.add_report(device_id, samples)
        except Exception:  # a full disk must not stop telemetry; the log and the counter say so
            log.exception("could not store %d hard example(s) from %s", len(samples), device_id)
            self.dataset_samples.labels("error").inc(len(samples))
            return
        self.dataset_samples.labels("added").inc(report.added)
        self.dataset_samples.labels("duplicate").inc(report.duplicates)
        for reason, n in report.rejected.items():
            self.dataset_samples.labels(f"rejected_{reason}").inc(n)

    def _forget(self, device_id: str) -> None:
        self.opener.forget(device_id)
        self.ingest.forget(device_id)
        self.directory.forget(device_id)

    def _watch_registry(self) -> None:
        """Revocations made elsewhere (the CLI, another hub) take effect here within seconds."""
        while not self._stopping.wait(self.settings.registry_refresh_s):
            try:
                # Devices connect with clean sessions: a command published while one was
                # offline is lost to it, so unanswered commands go out again.
                self.commands.resend_unacked(older_than_s=30.0)
                devices = self.registry.devices.presence()
            except RoadsideError as exc:
                log.warning("registry unreachable: %s", exc)
                continue
            for device_id, status, last_seen_at in devices:
                if status != "active" and self.directory.knows(device_id):
                    log.info("device %s is %s: refusing it from now on", device_id, status)
                    self._forget(device_id)
                if last_seen_at is not None:
                    self.metrics.last_seen.labels(device_id).set(last_seen_at.timestamp())

    def start(self) -> None:
        """Start every part in order; if one fails, stop those already started, close all, re-raise."""
        try:
            self._start_parts()
        except BaseException:
            self._stack.close()
            raise

    def _start_parts(self) -> None:
        # Ingest allocates many short-lived objects per message; the default
        # collector thresholds made full collections a third of the ingest time.
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        self._restore_replay_windows()
        self.metrics.dead_letters.set(self.dead_letters.count())
        self._run(self.dispatcher)
        self._run(self.ingest)
        self._watcher.start()
        self._stack.callback(self._stop_watcher)
        if self.retention is not None:
            self._run(self.retention)
        if self.settings.api_port < 0:
            log.info("ingest-only hub process (no API)")
            return
        refresh_crl(self.home)  # a lapsed CRL would make the broker refuse every client
        # Rollouts, the model repository and retraining belong to the process that serves the API.
        self._run(self.rollouts)
        if self.air is not None:
            self._run(self.air)
        self._serve_repository()
        if self.settings.retrain.enabled:
            self.retrainer = RetrainLoop(
                self.home, self.registry, self.datasets, self.rollouts, self.settings.retrain
            )
            self._run(self.retrainer)
        self._serve_api()

    def _run(self, part: _Service) -> None:
        part.start()
        self._stack.callback(part.stop)

    def _stop_watcher(self) -> None:
        self._stopping.set()
        self._watcher.join(timeout=10)

    def _serve_repository(self) -> None:
        if not self.home.has_repository() or self.settings.repo_port < 0:
            return
        self.repository = ModelRepository(
            self.home.repository_dir, self.home.online_keys_dir, audit=self.registry.audit
        )
        self._run(TimestampRefresher(self.repository, self.settings.timestamp_refresh_s))
        cert, key = self.home.cert("broker")
        self.repo_server = RepositoryServer(
            self.home.repository_dir,
            self.settings.repo_host,
            self.settings.repo_port,
            tls=CertFiles(cert=cert, key=key),
        )
        self._run(self.repo_server)
        self.repo_url = self.repo_server.url

    def _serve_api(self) -> None:
        sock = self._stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        host, port = self.settings.api_host, self.settings.api_port
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve the API on {host}:{port} ({exc.strerror}): "
                "set api_port to a free port (0: any) or api_host to an address of this machine"
            ) from exc
        host, port = sock.getsockname()[:2]
        self.api_url = f"http://{host}:{port}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on")
        self._server = server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)
        thread.start()
        self._stack.callback(_stop_api, server, thread)
        log.info("hub API on %s", self.api_url)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """True once the broker session is up and the API answers."""
        if not self.ingest.wait_connected(timeout):
            return False
        if self.settings.api_port < 0:
            return True
        server = self._server
        deadline = threading.Event()
        for _ in range(int(timeout * 20)):
            if server is not None and server.started:
                return True
            deadline.wait(0.05)
        return False

    def stop(self) -> None:
        """Undo ``start`` and then the constructor, newest first; a second call does nothing."""
        self._stack.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _stop_api(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=10)
