"""Model rollout to a simulated fleet: the hub's staged rollout against a naive download script.

    python -m bench.rollout --agents 200 [--workers 8] [--canary 5] [--waves 25,100]

What it measures (issue #5): how long the hub takes to bring every device onto
a new ~5 MB detector through a staged rollout, and what that costs over the
cheapest thing that moves the same bytes.

Set-up, all on loopback: a hub home with a TUF model repository
(``HubHome.repository_dir``, one offline root key, the hub's online keys), a
generated ~5 MB ONNX detector (:func:`bench_model`: the project's
``RoadsideDetector`` made wider, exported by ``roadside.models.export``; random
weights; cached under ``~/.cache/roadside/bench``) released with
``release_model``, a real Mosquitto with mutual TLS and the generated ACL,
and an in-process :class:`roadside.cloud.hub.Hub`, which serves the repository over
HTTPS itself (``hub.repo_url``) and runs the rollout controller.

Agents. ``--agents`` lightweight simulated devices, each enrolled (its own
client certificate and envelope keys) with its own state directory and its
own :class:`roadside.edge.ota.updater.ModelUpdater` (real TUF verification; trusted
root = the repository's root). Before any timing each installs 1.0.0 (the
committed ``models/detector.onnx``, released too) as an earlier update
would have, so the fleet runs 1.0.0 and a rollback has somewhere to go (the
model shipped with an agent is a boot fallback, not a rollback target).
Each implements the device side of an ``ota``
command as a real agent does: open the sealed command
(:class:`roadside.edge.control.verifier.CommandVerifier`), ack it (sealed ``ack`` uplink),
report ``staging``, ``check_and_stage`` then ``activate``, report ``active``
(or ``refused``/``failed`` with the reason); ``rollback`` reports
``rolled_back``. They run no inference, so they report no shadow statistics
and no health. One thread drives all their MQTT connections (paho's external
loop API, :class:`MqttMultiplexer`); a bounded pool of ``--workers`` named
threads does the verification, TUF and download work (the fleet shares two
cores here, so the pool, not the hub, sets how many devices download at once).

Phases, on the same fleet, same server, same pool:

- naive (the baseline): every agent GETs the model file over the same HTTPS
  server and compares its sha256 with the expected one; no commands, no TUF,
  no waves, no fsync. The floor for moving the bytes.
- rollout: ``hub.rollouts.create(RolloutSpec(canary=5, waves=(25, 100),
  soak_s=0, gates=GateThresholds(require_shadow=False)))``; timed from the
  call until the hub has stored every device's ``active`` report (tapped at
  ``IngestService.on_stored``), then until the controller says ``completed``.
- rollback (skip with ``--no-rollback``): ``hub.rollouts.change(id,
  "rollback")``; timed until every device's ``rolled_back`` report is stored,
  then each device is checked to boot 1.0.0 again.

Reported: ``seconds_to_all`` (rollout start to the last ``active`` stored),
``failed`` (devices not active on the new version at the end, by the hub's
reports), ``active_on_new`` (devices whose updater boots the new model,
checked on the device side afterwards), per-wave seconds, p50/p95 from a
device receiving its command to the hub storing its ``active`` report, bytes
fetched through TUF (metadata and model), and the naive baseline. The last
line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import selectors
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import numpy as np
import urllib3
from pydantic import ValidationError

from bench.fleet import enroll_fleet
from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import HubHome, acl_devices, init_home
from roadside.cloud.hub import Hub
from roadside.cloud.ingest.core import Accepted
from roadside.cloud.registry import Registry
from roadside.cloud.release import keys
from roadside.cloud.release.repository import ModelRepository, PublishedModel, release_model
from roadside.cloud.release.rollouts import FINAL_STATES, GateThresholds, RolloutSpec, parse_waves
from roadside.cloud.settings import HubSettings
from roadside.edge.control.journal import AckJournal
from roadside.edge.control.verifier import CommandVerifier, InvalidCommandError
from roadside.edge.ota.updater import CappedFetcher, ModelUpdater, OtaResult, OtaStatus, ShippedModel
from roadside.mqttlink import ConnAck, Message, MqttSession, SessionConfig, SubAck, context_from_pem
from roadside.shared import topics
from roadside.shared.backoff import Backoff
from roadside.shared.bundle import EnrollmentBundle
from roadside.shared.envelope import DeviceSealer
from roadside.shared.errors import IntegrityError, SchemaError, TransportError
from roadside.shared.schemas import (
    AckMessage,
    Command,
    OtaCommandArgs,
    OtaMessage,
    OtaReport,
    OtaState,
    encode,
)

log = logging.getLogger("bench.rollout")

MODEL_NAME: Final = "detector"
SHIPPED_VERSION: Final = "0.1.0"  # came with the agent: the boot fallback, not a rollback target
RUNNING_VERSION: Final = "1.0.0"  # installed by an earlier update (the committed detector)
NEW_VERSION: Final = "2.0.0"
AGENT_VERSION: Final = "0.1.0"
LABELS: Final = ("car", "truck", "pedestrian", "cyclist")  # sim.synthetic.CLASSES
INPUT_SHAPE: Final = (1, 3, 320, 320)
# RoadsideDetector widths for about 1.24 M parameters: a ~5 MB float32 model.
MODEL_WIDTHS: Final = (24, 48, 112, 168)
MAX_MODEL_BYTES: Final = 64 * 1024 * 1024
_ROOT: Final = Path(__file__).resolve().parents[1]
SHIPPED_MODEL: Final = _ROOT / "models" / "detector.onnx"
_CHUNK: Final = 64 * 1024
_T = TypeVar("_T")


# The model ----------------------------------------------------------------------------


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "roadside" / "bench"


Variant = Literal["base", "fine-tune", "new-model"]
# A fine-tune on new site data retrains the fuse layer and both heads over a frozen backbone: these
# hold 21 % of the weights. Each of their weights moves by 1 % of its tensor's spread.
FINE_TUNED_MODULES: Final = ("fuse", "box_head", "cls_head")
FINE_TUNE_STEP: Final = 0.01


def bench_model(version: str = NEW_VERSION, cache_dir: Path | None = None, variant: Variant = "base") -> Path:
    """A ~5 MB detector export (random weights, the real layout and metadata), built once and cached.

    ``base`` is the model the fleet runs; ``fine-tune`` is ``base`` with the fuse
    layer and the heads retrained over the frozen backbone (its weights nudged:
    :data:`FINE_TUNED_MODULES`); ``new-model`` has every weight new (another
    seed): what a retrain from scratch or a new architecture sends. The cache
    key covers the model and export code, the widths, the variant and ``version``.
    """
    sources = b"".join((_ROOT / "models" / f).read_bytes() for f in ("detector.py", "export.py"))
    digest = hashlib.sha256(sources + f"{MODEL_WIDTHS}/{variant}/{version}".encode()).hexdigest()[:12]
    path = (cache_dir or _cache_dir()) / f"rollout-{MODEL_NAME}-{variant}-{version}-{digest}.onnx"
    if path.is_file():
        return path
    import torch  # only to build the file the first time

    from roadside.models.detector import RoadsideDetector
    from roadside.models.export import ExportParityError, check_parity, export_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    seed_of = hashlib.sha256(f"{MODEL_WIDTHS}/{'new-model' if variant == 'new-model' else 'base'}".encode())
    torch.manual_seed(int(seed_of.hexdigest()[:12], 16) % 2**31)
    model = RoadsideDetector(len(LABELS), MODEL_WIDTHS).eval()
    if variant == "fine-tune":
        _fine_tune(model, torch.Generator().manual_seed(int(digest, 16) % 2**31))
    inputs = np.random.default_rng(0).random((2, *INPUT_SHAPE[1:]), dtype=np.float32)
    partial_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # renamed once checked
    try:
        export_onnx(model, partial_path, names=LABELS, model_version=version, parity_inputs=inputs)
    except ExportParityError:
        # Boxes are in pixels up to 320: float32 rounding alone nears the export's 1e-4.
        check_parity(model, partial_path, inputs, atol=1e-3)
    os.replace(partial_path, path)
    log.info("built the bench model %s (%d bytes)", path, path.stat().st_size)
    return path


def _fine_tune(model: Any, generator: Any) -> None:
    """Nudge the weights of the retrained modules, as a head-only fine-tune leaves them."""
    import torch

    with torch.no_grad():
        for name in FINE_TUNED_MODULES:
            for tensor in [*getattr(model, name).parameters(), *getattr(model, name).buffers()]:
                if not tensor.is_floating_point():
                    continue  # BatchNorm's step counter
                spread = float(tensor.std()) if tensor.numel() > 1 else 0.0
                step = torch.randn(tensor.shape, generator=generator) * FINE_TUNE_STEP * (spread or 0.01)
                if tensor.dim() == 1 and bool((tensor > 0).all()):
                    tensor.mul_(1 + step.abs())  # a running variance stays positive
                else:
                    tensor.add_(step)


def init_repository(home: HubHome, offline: Path) -> ModelRepository:
    """The hub's TUF repository, with one offline root key (kept in ``offline``)."""
    roots = keys.generate_root_keys(offline, 1)
    return ModelRepository.create(
        home.repository_dir,
        home.online_keys_dir,
        root_keys=keys.public_keys(roots),
        threshold=1,
        root_signers=roots,
    )


def served_path(published: PublishedModel) -> str:
    """Where the repository serves a target: ``targets/<folder>/<sha256>.<file>`` (consistent snapshots)."""
    folder, _, name = published.target_path.rpartition("/")
    return f"targets/{folder}/{published.sha256}.{name}"


# One thread for every agent's MQTT connection -----------------------------------------


@dataclass(eq=False)
class _Link:
    name: str
    client: MqttSession
    sock: Any  # what the session's ``socket()`` returned at connect time
    events: int


class MqttMultiplexer:
    """Drives many MQTT sessions from one named thread, through their external-loop API.

    Only this thread reads and writes the sockets. Other threads publish
    (paho queues the packet; a session built with ``on_socket_write=wake`` never
    writes from the caller's thread) and wake the loop through a socket pair.
    A client whose connection drops is dropped with it (these agents do not
    reconnect; the bench counts them as failed).
    """

    def __init__(self, name: str = "agents-mqtt") -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._links: list[_Link] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.dropped = 0
        self._stopping = False

    def attach(self, name: str, client: MqttSession) -> None:
        """Connect ``client`` (TCP and TLS handshake on the caller) and drive it from now on; before start().

        ``client`` was built with ``on_socket_write=self.wake``."""
        if self._thread.is_alive():
            raise RuntimeError("attach every client before start()")
        client.connect()
        client.loop_write()  # the CONNECT leaves now, so the broker is not kept waiting for the loop
        link = _Link(name, client, client.socket(), selectors.EVENT_READ)
        self._selector.register(link.sock, link.events, link)
        self._links.append(link)

    def start(self) -> None:
        self._thread.start()

    def publish(self, client: MqttSession, topic: str, payload: bytes) -> None:
        client.publish(topic, payload, qos=1)
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the loop is already due to wake
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        """Disconnect every client cleanly, then end the thread."""
        self._stopping = True
        links = list(self._links)
        for link in links:
            link.client.disconnect()
        self.wake()
        deadline = time.monotonic() + 5
        while self._thread.is_alive() and time.monotonic() < deadline:
            if not any(link.client.want_write() for link in links):
                break
            time.sleep(0.02)
        self._stop.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        next_misc = time.monotonic() + 1.0
        while not self._stop.is_set():
            self._watch_writes()
            for key, mask in self._selector.select(timeout=0.1):
                link = key.data
                if link is None:
                    self._drain_wake()
                    continue
                if mask & selectors.EVENT_READ:
                    self._check(link, link.client.loop_read())
                if mask & selectors.EVENT_WRITE and link in self._links:
                    self._check(link, link.client.loop_write())
            self._read_buffered()
            if time.monotonic() >= next_misc:  # keepalive pings
                next_misc = time.monotonic() + 1.0
                for link in list(self._links):
                    self._check(link, link.client.loop_misc())

    def _watch_writes(self) -> None:
        for link in list(self._links):
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.client.want_write() else 0)
            if wanted != link.events:
                link.events = wanted
                try:
                    self._selector.modify(link.sock, wanted, link)
                except (KeyError, ValueError, OSError):  # paho closed the socket
                    self._check(link, ok=False)

    def _read_buffered(self) -> None:
        """TLS may hold decrypted bytes the kernel no longer reports as readable."""
        for link in list(self._links):
            while isinstance(link.sock, ssl.SSLSocket) and link in self._links and link.sock.pending():
                self._check(link, link.client.loop_read())

    def _check(self, link: _Link, ok: bool) -> None:
        if ok or link not in self._links:
            return
        if not self._stopping:
            log.warning("connection of %s lost", link.name)
        self._links.remove(link)
        self.dropped += 1
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(link.sock)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass


# Work ---------------------------------------------------------------------------------


class WorkerPool:
    """``count`` named threads over a bounded queue, stopped with one sentinel each.

    A full queue refuses new work (``submit`` returns False): for commands
    that is what a busy agent does, and the hub resends what goes unanswered.
    """

    def __init__(self, name: str, count: int, capacity: int) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=capacity)
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> bool:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                job()
            except Exception:  # one agent's bug must not take a worker from the others
                log.exception("agent work failed")

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)


class CountingFetcher(CappedFetcher):
    """The agent's capped HTTPS fetcher, counting the bytes it receives."""

    def __init__(self, max_bytes: int, *, ca_file: Path | None = None) -> None:
        super().__init__(max_bytes, ca_file=ca_file)
        self.received = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._counted(super()._fetch(url))  # not a generator itself: HTTP errors raise here

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.received += len(chunk)
            yield chunk


# The simulated agent ------------------------------------------------------------------


@dataclass
class AgentTimes:
    """Monotonic times of the device's first install (the hub stores the ``active`` report later)."""

    commanded: float | None = None  # the command reached the device (network thread)
    started: float | None = None  # a worker took it up
    staged: float | None = None  # check_and_stage returned
    active: float | None = None  # activated; the report is being published

    def phases(self, stored: float) -> dict[str, float] | None:
        """Seconds queued, staging (TUF and download), activating, and reaching the hub."""
        commanded, started, staged, active = self.commanded, self.started, self.staged, self.active
        if commanded is None or started is None or staged is None or active is None:
            return None
        return {
            "queued": started - commanded,
            "stage": staged - started,
            "activate": active - staged,
            "to_hub": stored - active,
        }


class SimulatedOtaAgent:
    """One lightweight device implementing the ``ota`` command as a real agent does (no inference)."""

    def __init__(
        self,
        bundle: EnrollmentBundle,
        state_dir: Path,
        repo_url: str,
        trusted_root: bytes,
        ca_file: Path,
        links: MqttMultiplexer,
        work: WorkerPool,
    ) -> None:
        self.device_id = bundle.device_id
        self.state_dir = state_dir
        self.ca_file = ca_file
        self._site = bundle.site
        self._links = links
        self._work = work
        self._verifier = CommandVerifier(bundle.device_id, bundle.hub_public(), [bundle.keypair()])
        self._sealer = DeviceSealer(bundle.device_id, bundle.keypair(), bundle.hub_public())
        self._journal = AckJournal()  # in memory: a redelivered command gets its first ack again
        self.fetcher = CountingFetcher(MAX_MODEL_BYTES, ca_file=ca_file)
        self.updater = ModelUpdater(
            state_dir,
            repo_url,
            trusted_root,
            AGENT_VERSION,
            MAX_MODEL_BYTES,
            shipped=ShippedModel(SHIPPED_MODEL, MODEL_NAME, SHIPPED_VERSION),
            labels=LABELS,
            input_shape=INPUT_SHAPE,
            fetcher=self.fetcher,
        )
        self.running_version = SHIPPED_VERSION  # kept here: asking boot() re-hashes the model each time
        self.times = AgentTimes()
        self.transfer = ""  # how the first install's bytes came: zstd-patch, zstd or full
        self.subscribed = threading.Event()
        self._seq = 0
        self._lock = threading.Lock()  # one command at a time: ngclient assumes one user of its cache
        self._bundle = bundle
        self.client: MqttSession | None = None  # made by :meth:`session` when the fleet connects

    def session(self, host: str, port: int, on_socket_write: Callable[[], None]) -> MqttSession:
        """This agent's MQTT session, made once, for a :class:`MqttMultiplexer` to drive."""
        tls = context_from_pem(
            self._bundle.ca_cert_pem,
            self._bundle.client_cert_pem,
            self._bundle.client_key_pem,
            self.state_dir / "tls",
        )
        config = SessionConfig(host, port, self.device_id, tls=tls, max_queued=0)
        self.client = MqttSession(
            config,
            on_connect=self._on_connect,
            on_subscribe=self._on_subscribe,
            on_message=self._on_message,
            on_socket_write=on_socket_write,
        )
        return self.client

    # Network thread: nothing slow here.

    def _on_connect(self, session: MqttSession, ack: ConnAck) -> None:
        if not ack.ok:
            log.error("%s: broker refused the connection: %s", self.device_id, ack.reason)
            return
        session.subscribe(topics.command(self.device_id), qos=1)

    def _on_subscribe(self, ack: SubAck) -> None:
        if not ack.ok:
            log.error("%s may not subscribe to its commands: %s", self.device_id, ack.reasons)
            return  # ``subscribed`` stays unset: the fleet's connect() fails with the device's name
        self.subscribed.set()

    def _on_message(self, message: Message) -> None:
        received = time.monotonic()
        if not self._work.submit(partial(self._on_command, message.payload, received)):
            log.warning("%s: work queue full; dropped a command (the hub resends it)", self.device_id)

    # Worker threads.

    def _on_command(self, wire: bytes, received: float) -> None:
        with self._lock:
            try:
                command = self._verifier.open(wire, int(time.time() * 1000))
            except InvalidCommandError as exc:
                if exc.command_id is not None:
                    self._answer(AckMessage(command_id=exc.command_id, ok=False, detail=f"invalid: {exc}"))
                return
            except (IntegrityError, SchemaError) as exc:
                log.warning("%s refused a command: %s", self.device_id, exc)
                return
            self._handle(command, received)

    def _handle(self, command: Command, received: float) -> None:
        earlier = self._journal.get(command.command_id)
        if earlier is not None:
            self._send("ack", earlier)  # redelivered: answer again, act once
            return
        if command.type != "ota":
            detail = f"{command.type} is not implemented by the simulated agent"
            self._answer(AckMessage(command_id=command.command_id, ok=False, detail=detail))
            return
        try:
            args = OtaCommandArgs.model_validate(command.args)
        except ValidationError as exc:
            detail = f"bad arguments for ota: {exc.errors()[0]['msg']}"
            self._answer(AckMessage(command_id=command.command_id, ok=False, detail=detail))
            return
        self._answer(AckMessage(command_id=command.command_id, ok=True, detail="accepted"))
        if args.action == "install":
            if self.times.commanded is None:
                self.times.commanded = received
            self._install(args)
        else:
            self._rollback(args)

    def _install(self, args: OtaCommandArgs) -> None:
        if args.name is None or args.version is None:
            self._report(args, "failed", "install needs a model name and version")
            return
        first = self.times.active is None
        if first:
            self.times.started = time.monotonic()
        self._report(args, "staging")
        try:
            staged = self._stage(args.name, args.version)
        except TransportError as exc:
            self._report(args, "failed", str(exc))
            return
        if first:
            self.times.staged = time.monotonic()
        if first:
            self.transfer = staged.transfer or str(staged.status)
        if staged.status is OtaStatus.STAGED or staged.status is OtaStatus.UP_TO_DATE:
            staged = self.updater.activate(args.version, name=args.name)
        if staged.status in (OtaStatus.INSTALLED, OtaStatus.UP_TO_DATE):
            self.running_version = args.version
            if first:
                self.times.active = time.monotonic()
            self._report(args, "active")
        elif staged.status is OtaStatus.REFUSED:
            self._report(args, "refused", f"{staged.reason}: {staged.detail}")
        else:
            self._report(args, "failed", staged.detail or str(staged.status))

    def _stage(self, name: str, version: str) -> OtaResult:
        """``check_and_stage``, retried with jittered backoff while the repository is unreachable."""
        backoff = Backoff(base_s=0.5, cap_s=4.0)
        for _ in range(3):
            try:
                return self.updater.check_and_stage(name, version=version)
            except TransportError as exc:
                log.warning("%s: %s; retrying", self.device_id, exc)
                time.sleep(backoff.next_delay())
        return self.updater.check_and_stage(name, version=version)

    def _rollback(self, args: OtaCommandArgs) -> None:
        result = self.updater.rollback()
        if result.status is OtaStatus.INSTALLED and result.version is not None:
            self.running_version = result.version
            self._report(args, "rolled_back")
        else:
            self._report(args, "failed", result.detail or str(result.status))

    def _report(self, args: OtaCommandArgs, state: OtaState, detail: str = "") -> None:
        report = OtaReport(
            rollout_id=args.rollout_id,
            name=args.name or MODEL_NAME,
            version=args.version or self.running_version,
            state=state,
            running_version=self.running_version,
            detail=detail[:1024],
        )
        self._send("ota", OtaMessage(report=report))

    def _answer(self, ack: AckMessage) -> None:
        self._journal.record(ack)
        self._send("ack", ack)

    def _send(self, kind: Literal["ack", "ota"], message: AckMessage | OtaMessage) -> None:
        self._seq += 1
        wire = self._sealer.seal(kind, self._seq, encode(message), int(time.time() * 1000))
        assert self.client is not None, "the fleet connects before any command comes"
        self._links.publish(self.client, topics.uplink(self._site, self.device_id, kind), wire)

    def preinstall(self, version: str) -> bool:
        """Install ``version`` directly (an earlier update, before the bench), so a rollback has a target."""
        with self._lock:
            staged = self._stage(MODEL_NAME, version)
            if staged.status is not OtaStatus.STAGED:
                log.error(
                    "%s could not stage %s: %s %s", self.device_id, version, staged.status, staged.detail
                )
                return False
            if self.updater.activate(version, name=MODEL_NAME).status is not OtaStatus.INSTALLED:
                return False
            self.running_version = version
            self.fetcher.received = 0  # the rollout's bytes are counted from here
            return True

    def boots_version(self) -> str:
        """The version the device would boot now (re-hashes the model, as a reboot does)."""
        choice = self.updater.boot()
        return choice.version if choice.source == "active" else f"{choice.version} ({choice.source})"


class SimulatedFleet:
    """The agents, their one MQTT thread and their worker pool."""

    def __init__(
        self,
        bundles: Sequence[EnrollmentBundle],
        base: Path,
        repo_url: str,
        trusted_root: bytes,
        ca_file: Path,
        workers: int,
    ) -> None:
        self.links = MqttMultiplexer()
        self.work = WorkerPool("agent-ota", workers, capacity=4 * len(bundles) + 16)
        self.agents = [
            SimulatedOtaAgent(b, base / b.device_id, repo_url, trusted_root, ca_file, self.links, self.work)
            for b in bundles
        ]

    def connect(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        for agent in self.agents:
            self.links.attach(agent.device_id, agent.session(host, port, self.links.wake))
        self.links.start()
        deadline = time.monotonic() + timeout_s
        for agent in self.agents:
            if not agent.subscribed.wait(max(0.0, deadline - time.monotonic())):
                raise TransportError(f"{agent.device_id} did not subscribe to its commands in time")

    def each(self, job: Callable[[SimulatedOtaAgent], _T]) -> list[_T]:
        """``job`` on every agent through the worker pool; the results in agent order."""
        results: dict[int, _T] = {}
        done = threading.Semaphore(0)

        def run(index: int, agent: SimulatedOtaAgent) -> None:
            try:
                results[index] = job(agent)
            finally:
                done.release()

        for index, agent in enumerate(self.agents):
            while not self.work.submit(partial(run, index, agent)):
                time.sleep(0.01)  # the queue is bounded: wait for room
        for _ in self.agents:
            done.acquire()
        missing = [a.device_id for i, a in enumerate(self.agents) if i not in results]
        if missing:
            raise RuntimeError(f"the job failed on {len(missing)} agent(s), first {missing[0]}; see the log")
        return [results[i] for i in range(len(self.agents))]

    def stop(self) -> None:
        self.links.stop()
        self.work.stop()


# The hub's view -----------------------------------------------------------------------


@dataclass
class ReportLog:
    """The OTA reports the hub has durably stored, with when (taps ``IngestService.on_stored``)."""

    version: str
    active_at: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # refused or failed, with the detail
    rolled_back_at: dict[str, float] = field(default_factory=dict)
    # What the hub does after each durable write (acks, the rollout controller's report handling),
    # on the ingest writer thread: the next batch waits for it.
    handling_s: float = 0.0
    batches: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def tap(self, downstream: Callable[[list[Accepted]], None] | None) -> Callable[[list[Accepted]], None]:
        def on_stored(accepted: list[Accepted]) -> None:
            stored = time.monotonic()
            self._note(accepted, stored)
            if downstream is not None:
                downstream(accepted)
            self.handling_s += time.monotonic() - stored  # one writer thread: no race
            self.batches += 1

        return on_stored

    def _note(self, accepted: list[Accepted], now: float) -> None:
        with self._changed:
            for result in accepted:
                report, device = result.ota, result.header.device_id
                if report is None or report.version != self.version:
                    continue
                if report.state == "active" and report.running_version == self.version:
                    self.active_at.setdefault(device, now)
                elif report.state == "rolled_back":
                    self.rolled_back_at.setdefault(device, now)
                elif report.state in ("refused", "failed"):
                    self.refused.setdefault(device, f"{report.state}: {report.detail}")
            self._changed.notify_all()

    def wait_settled(self, devices: Sequence[str], timeout_s: float) -> bool:
        """True once every device is active or has refused/failed."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(d in self.active_at or d in self.refused for d in devices), timeout_s
            )

    def wait_rolled_back(self, devices: Sequence[str], timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: all(d in self.rolled_back_at for d in devices), timeout_s)


# Phases -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile, ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def naive_baseline(fleet: SimulatedFleet, url: str, sha256: str, ca_file: Path) -> dict[str, Any]:
    """Every agent GETs the file and compares its sha256: no commands, no TUF, no waves, no fsync."""

    def download(agent: SimulatedOtaAgent) -> tuple[bool, int]:
        pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(ca_file))
        digest, size = hashlib.sha256(), 0
        destination = agent.state_dir / "naive.onnx"
        try:
            response = pool.request("GET", url, preload_content=False)
            with destination.open("wb") as out:
                for chunk in response.stream(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            response.release_conn()
            return response.status == 200 and digest.hexdigest() == sha256, size
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("naive download on %s failed: %s", agent.device_id, exc)
            return False, size
        finally:
            pool.clear()

    started = time.monotonic()
    outcomes = fleet.each(download)
    elapsed = time.monotonic() - started
    for agent in fleet.agents:
        (agent.state_dir / "naive.onnx").unlink(missing_ok=True)
    return {
        "seconds_to_all": round(elapsed, 2),
        "failed": sum(not ok for ok, _ in outcomes),
        "bytes_downloaded": sum(size for _, size in outcomes),
    }


def wave_times(
    waves: dict[int, list[str]], fleet: SimulatedFleet, reports: ReportLog, started: float
) -> list[dict[str, Any]]:
    """Per wave: from its first device receiving the command to its last ``active`` stored by the hub."""
    by_id = {agent.device_id: agent for agent in fleet.agents}
    out = []
    for wave, devices in sorted(waves.items()):
        commanded = [t for d in devices if (t := by_id[d].times.commanded) is not None]
        active = [reports.active_at[d] for d in devices if d in reports.active_at]
        first, last = (min(commanded), max(active)) if commanded and active else (None, None)
        out.append(
            {
                "wave": wave,
                "devices": len(devices),
                "active": len(active),
                "seconds": round(last - first, 2) if first is not None and last is not None else None,
                "done_at_s": round(last - started, 2) if last is not None else None,
                # From the wave's first command reaching a device to its last: the hub's sending.
                "commands_spread_s": round(max(commanded) - min(commanded), 2) if commanded else None,
            }
        )
    return out


def staged_rollout(
    hub: Hub, fleet: SimulatedFleet, reports: ReportLog, args: argparse.Namespace
) -> dict[str, Any]:
    """Create the rollout and time it until every device is active, then until the hub says completed."""
    spec = RolloutSpec(
        model_name=MODEL_NAME,
        model_version=NEW_VERSION,
        target="all",
        canary=args.canary,
        waves=parse_waves(args.waves),
        soak_s=0.0,
        min_frames=0,
        gates=GateThresholds(require_shadow=False, install_timeout_s=args.timeout),
    )
    devices = [agent.device_id for agent in fleet.agents]
    started = time.monotonic()
    record = hub.rollouts.create(spec, actor="bench")
    settled = reports.wait_settled(devices, args.timeout)
    last_active = max(reports.active_at.values(), default=None)
    status = hub.rollouts.status(record.id)
    deadline = time.monotonic() + 30
    while status.state not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.05)
        status = hub.rollouts.status(record.id)
    completed = time.monotonic() - started if status.state == "completed" else None
    waves: dict[int, list[str]] = {}
    for device in status.devices:
        waves.setdefault(device.wave, []).append(device.device_id)
    to_active = [
        reports.active_at[a.device_id] - a.times.commanded
        for a in fleet.agents
        if a.times.commanded is not None and a.device_id in reports.active_at
    ]
    p50, p95 = percentile(to_active, 50), percentile(to_active, 95)
    phases = [
        found
        for a in fleet.agents
        if a.device_id in reports.active_at and (found := a.times.phases(reports.active_at[a.device_id]))
    ]
    phase_p50 = {
        name: round(value, 3)
        for name in ("queued", "stage", "activate", "to_hub")
        if (value := percentile([p[name] for p in phases], 50)) is not None
    }
    downloaded = sum(agent.fetcher.received for agent in fleet.agents)
    return {
        "rollout_id": record.id,
        "seconds_to_all": round(last_active - started, 2) if settled and last_active else None,
        "seconds_to_completed": round(completed, 2) if completed is not None else None,
        "rollout_state": status.state,
        "failed": len(devices) - len(reports.active_at),
        "refused": len(reports.refused),
        "waves": wave_times(waves, fleet, reports, started),
        "command_to_active_p50_s": round(p50, 3) if p50 is not None else None,
        "command_to_active_p95_s": round(p95, 3) if p95 is not None else None,
        "phase_p50_s": phase_p50,
        "hub_after_write_s": round(reports.handling_s, 2),
        "hub_batches": reports.batches,
        "bytes_downloaded": downloaded,
        "bytes_per_agent": round(downloaded / len(fleet.agents)),
        "transfers": dict(Counter(agent.transfer for agent in fleet.agents if agent.transfer)),
        "form_failures": sum(sum(agent.updater.form_failures.values()) for agent in fleet.agents),
    }


# The run ------------------------------------------------------------------------------


def rollback(
    hub: Hub, fleet: SimulatedFleet, reports: ReportLog, rollout_id: int, timeout_s: float
) -> dict[str, Any]:
    """The operator rolls the finished rollout back; timed until every device reported ``rolled_back``."""
    devices = [agent.device_id for agent in fleet.agents]
    started = time.monotonic()
    hub.rollouts.change(rollout_id, "rollback", actor="bench", reason="bench: timing a rollback")
    settled = reports.wait_rolled_back(devices, timeout_s)
    last = max(reports.rolled_back_at.values(), default=None)
    back = fleet.each(lambda agent: agent.boots_version() == RUNNING_VERSION)
    return {
        "seconds_to_all": round(last - started, 2) if settled and last is not None else None,
        "rolled_back": len(reports.rolled_back_at),
        "boots_previous": sum(back),
    }


def _start_hub(stack: contextlib.ExitStack, home: HubHome, port: int, reports: ReportLog) -> Hub:
    settings = HubSettings(home=home.root, broker_port=port, api_port=0, repo_port=0, batch_wait_s=0.05)
    hub = Hub(settings)
    hub.ingest.on_stored = reports.tap(hub.ingest.on_stored)
    hub.start()
    stack.callback(hub.stop)
    if not hub.wait_ready(15) or not hub.repo_url:
        raise TransportError("the hub did not start (or does not serve its model repository)")
    return hub


def _publish(
    repository: ModelRepository, registry: Registry, source: Path, version: str, build: Path
) -> PublishedModel:
    """Sign ``source`` in as ``detector`` ``version`` and record it in the registry."""
    path = build / version / f"{MODEL_NAME}.onnx"
    path.parent.mkdir(parents=True)
    shutil.copyfile(source, path)
    release_model(
        repository, registry, path, name=MODEL_NAME, min_agent_version=AGENT_VERSION, version=version
    )
    (published,) = [m for m in repository.models(MODEL_NAME) if m.version == version]
    return published


def _start_fleet(
    stack: contextlib.ExitStack, workdir: Path, args: argparse.Namespace
) -> tuple[Hub, SimulatedFleet, ReportLog, PublishedModel]:
    """Hub home, repository (1.0.0 and the new model), broker, hub, and the fleet running 1.0.0."""
    home = init_home(workdir / "hub", ["localhost"], ["127.0.0.1"])
    registry = Registry(home.registry_url)
    stack.callback(registry.close)
    repository = init_repository(home, workdir / "offline")
    running = bench_model(RUNNING_VERSION, args.cache, "base")
    _publish(repository, registry, running, RUNNING_VERSION, workdir / "build")
    update = bench_model(NEW_VERSION, args.cache, args.update)
    published = _publish(repository, registry, update, NEW_VERSION, workdir / "build")
    broker = MosquittoBroker(
        home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
    )
    broker.start()
    stack.callback(broker.stop)
    bundles = enroll_fleet(home, registry, args.agents, broker.port)
    broker.reload_acl(acl_devices(registry))
    reports = ReportLog(NEW_VERSION)
    hub = _start_hub(stack, home, broker.port, reports)
    fleet = SimulatedFleet(
        bundles, workdir / "agents", hub.repo_url, repository.trusted_root(), home.ca_file, args.workers
    )
    stack.callback(fleet.stop)
    fleet.connect("127.0.0.1", broker.port)
    if not all(fleet.each(lambda agent: agent.preinstall(RUNNING_VERSION))):
        raise RuntimeError(f"not every agent could install {RUNNING_VERSION} before the bench; see the log")
    return hub, fleet, reports, published


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, run the naive baseline, the staged rollout and (unless told not to) a rollback."""
    setup_started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        hub, fleet, reports, published = _start_fleet(stack, workdir, args)
        setup_s = time.monotonic() - setup_started
        log.info(
            "%d agents connected and running %s; set-up took %.1f s", args.agents, RUNNING_VERSION, setup_s
        )
        url = f"{hub.repo_url}/{served_path(published)}"
        cpu = time.process_time()  # the whole process: hub, repository server and agents share it
        naive = naive_baseline(fleet, url, published.sha256, fleet.agents[0].ca_file)
        naive["cpu_s"] = round(time.process_time() - cpu, 2)
        log.info("naive baseline: %s", naive)
        cpu = time.process_time()
        rollout = staged_rollout(hub, fleet, reports, args)
        rollout["cpu_s"] = round(time.process_time() - cpu, 2)
        log.info("rollout: %s", rollout)
        active_on_new = sum(fleet.each(lambda agent: agent.boots_version() == NEW_VERSION))
        rollout_id = rollout.pop("rollout_id")
        back = None if args.no_rollback else rollback(hub, fleet, reports, rollout_id, args.timeout)
        seconds, floor = rollout["seconds_to_all"], naive["seconds_to_all"]
        return {
            "agents": args.agents,
            "seconds_to_all": seconds,
            "failed": rollout.pop("failed"),
            "active_on_new": active_on_new,
            **rollout,
            "model_bytes": published.length,
            "update": args.update,
            "bytes_vs_model": round(rollout["bytes_per_agent"] / published.length, 3),
            "workers": args.workers,
            "dropped_connections": fleet.links.dropped,
            "setup_s": round(setup_s, 1),
            "baseline_naive": naive,
            "vs_naive": round(seconds / floor, 2) if seconds and floor else None,
            "rollback": back,
        }
    raise AssertionError("unreachable")  # the ExitStack does not swallow exceptions


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rollout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8, help="threads doing the agents' TUF and downloads")
    parser.add_argument("--canary", type=int, default=5, help="devices in the canary wave")
    parser.add_argument("--waves", default="25,100", help="cumulative percentages after the canary")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every device")
    parser.add_argument("--cache", type=Path, default=None, help="where the generated model is kept")
    parser.add_argument("--no-rollback", action="store_true", help="skip timing a rollback afterwards")
    parser.add_argument(
        "--update",
        choices=("fine-tune", "new-model"),
        default="fine-tune",
        help="the new version: the running model fine-tuned (heads retrained), or all weights new",
    )
    args = parser.parse_args(argv)
    if args.agents < 1 or args.workers < 1:
        parser.error("--agents and --workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the bench; print its JSON object (the last line of output) and return it."""
    result = run(parse_args(argv))
    print(json.dumps(result))
    return result


def _configure_logging() -> None:
    """Progress on stderr; the hub's and the agents' own INFO lines would bury it."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("alembic", "cloud", "edge", "tuf", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    _configure_logging()
    main()
