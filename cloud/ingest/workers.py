"""Ingest worker processes: unseal, validate and write in processes of their own.

The hub's network thread only receives and acknowledges; with ``ingest_workers > 0`` the
expensive part of each message (AEAD open, pydantic validation, the store write: about
three quarters of the hub's time per message, docs/performance.md) runs in that many
worker processes, each with its own GIL, store connection and registry connection.

Devices are split into shares by a hash of the device id, one share per worker, so each
worker owns the replay windows of its devices. A worker starts with no share: it imports
the hub and opens its stores, says ``("ready",)``, and waits. ``("take", index, count)``
gives it share ``index``; it rebuilds that share's windows from the store at its first batch
(as the hub does when it starts). The hub keeps ``spares`` such processes ready beyond its
workers (ADR 0032). The protocol over each worker's pipe, for one batch:

1. ``("batch", [(topic, payload), ...], now_ms)``: the worker checks each message
   (:class:`IngestCore`) and writes the accepted ones durably (one store transaction),
   then answers ``("done", outcomes)``, or ``("paused", reason)`` when the store or the
   registry is down (nothing of the batch is acknowledged then; the hub retries it).
2. The hub runs its listeners, then sends ``("commit", [(device_id, seq), ...])``: only now
   does the worker refuse repeats of those messages, exactly as the in-process writer does.
3. The hub acknowledges the batch to the broker.

A worker that dies (SIGKILL, a crash) is reaped, a warm spare takes its share over, and the
batch is retried: its writes are idempotent on ``(device, seq)``, and nothing was acknowledged.
The ``ingest-spares`` thread starts the next spare meanwhile, off the writer's path. A hub that dies takes its
workers with it (they exit when their pipe closes); the broker redelivers what was not
acknowledged. Outcomes travel as plain tuples: pickling the records back would cost the
hub's one busy thread more than it saved.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import multiprocessing
import multiprocessing.connection
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

from roadside.cloud.home import HubHome
from roadside.cloud.ingest.core import Accepted, IngestCore, RecordTally, Rejection
from roadside.cloud.ingest.directory import DeviceDirectory
from roadside.cloud.ingest.writing import write_durably
from roadside.cloud.registry import Registry
from roadside.cloud.settings import HubSettings, SqliteStoreConfig, StoreConfig
from roadside.cloud.storage.adapters import open_store
from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.shared.backoff import Backoff
from roadside.shared.envelope import REPLAY_WINDOW_SIZE, Header, HubOpener, ReplayWindow
from roadside.shared.errors import ConfigError, RoadsideError, TransportError

log = logging.getLogger(__name__)

_START_TIMEOUT_S: Final = 120.0  # a worker imports the hub's modules and opens its stores
_START_POLL_S: Final = 0.5  # how often a wait for a starting worker checks that the hub is not stopping
_REPLY_TIMEOUT_S: Final = 600.0  # one batch: a store that hangs beyond this is treated as down

# What a worker answers for one message (index in the batch first):
#   ("a", index, header fields, site, counts, sensors, has health, full Accepted or None)
#   ("r", index, reason, detail, topic, device id)
Outcome = tuple[Any, ...]


def shard_of(device_id: str, workers: int) -> int:
    """Which worker owns a device: stable across processes and restarts (not ``hash``)."""
    return zlib.crc32(device_id.encode()) % workers


def device_of(topic: str) -> str:
    """The device id of an uplink topic (``roadside/v1/<site>/<device>/<kind>``), or ``""``."""
    parts = topic.split("/")
    return parts[3] if len(parts) == 5 else ""


class WorkerDiedError(TransportError):
    """A worker process ended while it held a batch; another took its devices over, the batch is retried."""


@dataclass(slots=True)
class _Handle:
    """One worker process and the hub's end of its pipe."""

    process: BaseProcess
    pipe: multiprocessing.connection.Connection

    def end(self) -> None:
        """Kill the process (a dead one costs nothing) and close the pipe: it owns nothing after."""
        self.process.kill()
        self.process.join(timeout=10)
        self.pipe.close()


class IngestWorkers:
    """The hub side: ``count`` worker processes and ``spares`` warm spares, started and stopped
    with the ingest service (ADR 0032).

    A spare has imported the hub and opened the store and the registry, but owns no devices.
    When a worker dies the writer hands its share to a spare (one ``take`` message, no wait) and
    retries the batch; a thread of its own (``ingest-spares``) starts the next spare meanwhile.
    """

    def __init__(self, settings: HubSettings, count: int, spares: int = 1) -> None:
        self.settings = settings
        self.count = count
        self.spares = spares
        self.takeovers = 0  # dead workers' shares handed to a warm spare
        self.cold_starts = 0  # dead workers replaced by a process started then (no spare ready)
        self._context = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded hub
        self._active: list[_Handle | None] = [None] * count
        self._ready: collections.deque[_Handle] = collections.deque()  # at most ``spares``
        # Guards the two lists and every send: ``forget`` comes from other threads than the writer's.
        self._lock = threading.Lock()
        self._spare_added = threading.Condition(self._lock)
        self._spare_taken = threading.Event()
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None

    def start(self) -> None:
        """Start every worker and spare at once, give each worker its share; raise if one fails."""
        self._stopping.clear()
        handles = [self._launch() for _ in range(self.count + self.spares)]
        try:
            for handle in handles:
                self._await_ready(handle)
            for index, handle in enumerate(handles[: self.count]):
                handle.pipe.send(("take", index, self.count))
        except (RoadsideError, OSError) as exc:
            for handle in handles:
                handle.end()
            if isinstance(exc, OSError):
                raise TransportError("an ingest worker died as it started (see its log)") from exc
            raise
        self._active = list[_Handle | None](handles[: self.count])
        self._ready.extend(handles[self.count :])
        log.info("ingest workers started (pids %s; spares %s)", self.pids, self.spare_pids)
        if self.spares:
            self._keeper = threading.Thread(target=self._keep_spares, name="ingest-spares", daemon=True)
            self._keeper.start()

    def stop(self) -> None:
        self._stopping.set()
        self._spare_taken.set()
        with self._spare_added:
            self._spare_added.notify_all()
        if self._keeper is not None:
            self._keeper.join(timeout=30)  # it checks ``_stopping`` every ``_START_POLL_S``
            self._keeper = None
        with self._lock:
            handles = [h for h in self._active if h is not None] + list(self._ready)
            self._active = [None] * self.count
            self._ready.clear()
        for handle in handles:
            with contextlib.suppress(OSError):  # already gone
                handle.pipe.send(None)
        for handle in handles:
            handle.process.join(timeout=30)
            handle.end()

    @property
    def pids(self) -> list[int | None]:
        """The worker owning each share, by share."""
        return [h.process.pid if h is not None else None for h in self._active]

    @property
    def spare_pids(self) -> list[int | None]:
        """The warm spares, ready to take a share over."""
        with self._lock:
            return [h.process.pid for h in self._ready]

    def process(self, messages: Sequence[tuple[str, bytes]], now_ms: int) -> list[Accepted | Rejection]:
        """Check and durably write a batch across the workers; an outcome per message, in order.

        ``TransportError`` when a store or the registry is down, or a worker died (a spare took
        its devices over): nothing of the batch may be acknowledged then.
        """
        shards: list[list[int]] = [[] for _ in range(self.count)]
        for i, (topic, _payload) in enumerate(messages):
            shards[shard_of(device_of(topic), self.count)].append(i)
        failure: TransportError | None = None
        sent: list[int] = []
        for w in (w for w in range(self.count) if shards[w]):
            try:
                self._send(w, ("batch", [messages[i] for i in shards[w]], now_ms))
            except TransportError as exc:  # it died, or it died and no spare was ready
                failure = failure or exc
                continue
            sent.append(w)
        outcomes: list[Accepted | Rejection | None] = [None] * len(messages)
        for w in sent:  # collect every reply before raising, so no worker is left mid-batch
            try:
                reply = self._receive(w)
            except TransportError as exc:
                failure = failure or exc
                continue
            if reply[0] == "paused":
                failure = failure or TransportError(reply[1])
                continue
            for outcome in reply[1]:
                outcomes[shards[w][outcome[1]]] = _rebuild(outcome)
        if failure is not None:
            raise failure
        return [o for o in outcomes if o is not None]

    def commit(self, headers: Sequence[Header]) -> None:
        """Everything these messages need is durable: their workers refuse repeats from now on."""
        per_worker: list[list[tuple[str, int]]] = [[] for _ in range(self.count)]
        for header in headers:
            per_worker[shard_of(header.device_id, self.count)].append((header.device_id, header.seq))
        for w, seqs in enumerate(per_worker):
            if not seqs:
                continue
            # The spare that took over rebuilds its windows from the store, which holds these already.
            with contextlib.suppress(WorkerDiedError):
                self._send(w, ("commit", seqs))

    def forget(self, device_id: str) -> None:
        """A device was revoked or its keys rotated: its worker drops the cached keys.

        Not on the writer's thread, so a dead worker is left for the writer to replace; its
        successor has cached no keys.
        """
        self._post(shard_of(device_id, self.count), ("forget", device_id))

    # The writer's thread only: it alone reads replies and replaces workers.

    def _send(self, index: int, message: object) -> None:
        failure = self._post(index, message)
        if failure is not None:
            self._replace(index)
            raise WorkerDiedError(f"ingest worker {index} was gone ({failure}); its devices taken over")

    def _receive(self, index: int) -> tuple[Any, ...]:
        handle = self._active[index]
        try:
            if handle is None or not handle.pipe.poll(_REPLY_TIMEOUT_S):
                raise OSError("no reply")
            reply: tuple[Any, ...] = handle.pipe.recv()
        except (EOFError, OSError) as exc:
            self._replace(index)
            raise WorkerDiedError(
                f"ingest worker {index} died holding a batch; its devices taken over"
            ) from exc
        return reply

    def _post(self, index: int, message: object) -> OSError | None:
        with self._lock:
            handle = self._active[index]
            try:
                if handle is None:
                    raise OSError("not running")
                handle.pipe.send(message)
            except OSError as exc:
                return exc
        return None

    def _replace(self, index: int) -> None:
        """The worker of share ``index`` is dead (or hung): end it, then hand the share on.

        The old process is killed and reaped before its successor is told, so a device has one
        owner at a time. ``TransportError`` when no successor could be had: the share stays
        empty and the next batch tries again.
        """
        with self._lock:
            dead, self._active[index] = self._active[index], None
        if dead is not None:
            log.error("ingest worker %d (pid %s) ended unexpectedly", index, dead.process.pid)
            dead.end()
        successor = self._successor(index)
        with self._lock:
            self._active[index] = successor

    def _successor(self, index: int) -> _Handle:
        if not self.spares:
            return self._cold_start(index)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while (handle := self._take_spare(deadline)) is not None:
            try:
                handle.pipe.send(("take", index, self.count))
            except OSError:  # the spare died idle: the next one
                handle.end()
                continue
            self.takeovers += 1
            log.warning("spare ingest worker pid %s took share %d over", handle.process.pid, index)
            return handle
        raise TransportError(f"no spare ingest worker was ready within {_START_TIMEOUT_S:.0f} s")

    def _cold_start(self, index: int) -> _Handle:
        """No spare configured: start a process now, while the writer waits (one start-up)."""
        log.warning("no spare ingest worker configured; starting one for share %d", index)
        handle = self._launch()
        try:
            self._await_ready(handle)
            handle.pipe.send(("take", index, self.count))
        except OSError as exc:
            handle.end()
            raise TransportError(f"a new ingest worker {index} died as it started") from exc
        except RoadsideError:
            handle.end()
            raise
        self.cold_starts += 1
        return handle

    def _take_spare(self, deadline: float) -> _Handle | None:
        """A ready spare (waiting for the keeper when none is), or ``None`` at the deadline."""
        with self._spare_added:
            while not self._ready:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    return None
                self._spare_added.wait(left)
            handle = self._ready.popleft()
        self._spare_taken.set()
        return handle

    # Starting processes ---------------------------------------------------------------

    def _keep_spares(self) -> None:
        """The ``ingest-spares`` thread: keep ``spares`` started, off the writer's path."""
        backoff = Backoff(base_s=1.0, cap_s=30.0)
        while not self._stopping.is_set():
            with self._lock:
                dead = [h for h in self._ready if not h.process.is_alive()]
                for handle in dead:
                    self._ready.remove(handle)
                wanted = self.spares - len(self._ready)
            for handle in dead:
                log.warning("spare ingest worker pid %s ended; starting another", handle.process.pid)
                handle.end()
            if wanted <= 0:
                self._spare_taken.wait(_START_POLL_S * 2)  # woken when one is taken; else sweep again
                self._spare_taken.clear()
                continue
            handle = self._launch()
            try:
                self._await_ready(handle)
            except RoadsideError as exc:
                handle.end()
                if not self._stopping.is_set():
                    log.error("could not start a spare ingest worker (trying again): %s", exc)
                    self._stopping.wait(backoff.next_delay())
                continue
            backoff.reset()
            with self._spare_added:
                stopping = self._stopping.is_set()  # then stop() has ended the others already
                if not stopping:
                    self._ready.append(handle)
                    self._spare_added.notify_all()
            if stopping:
                handle.end()
            else:
                log.info("spare ingest worker ready (pid %s)", handle.process.pid)

    def _launch(self) -> _Handle:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(self.settings, theirs), name="ingest-worker", daemon=True
        )
        process.start()
        theirs.close()
        return _Handle(process, ours)

    def _await_ready(self, handle: _Handle) -> None:
        """Wait until a launched worker has imported the hub and opened its stores."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not handle.pipe.poll(_START_POLL_S):
            if self._stopping.is_set():
                raise TransportError("the hub is stopping")
            if time.monotonic() > deadline:
                raise TransportError(f"an ingest worker did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            reply = handle.pipe.recv()
        except (EOFError, OSError) as exc:
            raise TransportError("an ingest worker failed to start (see its log)") from exc
        if reply[0] != "ready":
            raise ConfigError(f"an ingest worker could not start: {reply[1]}")


def _rebuild(outcome: Outcome) -> Accepted | Rejection:
    if outcome[0] == "r":
        _, _, reason, detail, topic, device_id = outcome
        return Rejection(reason, detail, topic, device_id)
    _, _, fields, site, counts, sensors, health, full = outcome
    if full is not None:
        return full  # type: ignore[no-any-return]
    header = Header(*fields)
    batch = IngestBatch(Origin(header.device_id, site, header.seq))
    return Accepted(batch, header, tally=RecordTally(counts, sensors, health))


def _outcome(index: int, result: Accepted | Rejection) -> Outcome:
    if isinstance(result, Rejection):
        return ("r", index, result.reason, result.detail, result.topic, result.device_id)
    batch, h = result.batch, result.header
    # Events, acks, OTA reports and samples feed the hub's listeners: those travel whole.
    full = result if batch.events or result.ack or result.ota or result.samples else None
    fields = (h.device_id, h.kind, h.seq, h.ts_ms, h.kid, h.rkid, h.v)
    return (
        "a",
        index,
        fields,
        batch.origin.site,
        len(batch.counts),
        len(batch.sensors),
        batch.health is not None,
        full,
    )


# The worker process ---------------------------------------------------------------------


def _worker_main(settings: HubSettings, pipe: multiprocessing.connection.Connection) -> None:
    from roadside.shared.logs import setup_logging

    setup_logging("INFO")
    _name_process("ingest-spare")
    try:
        worker = _Worker(settings)
    except Exception as exc:  # configuration: say why, the hub refuses to start
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    pipe.send(("ready",))
    try:
        worker.serve(pipe)
    finally:
        worker.close()


def _name_process(name: str) -> None:
    """What ``ps`` and ``top`` show for this process (Linux; elsewhere it stays ``python``)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])


class _Worker:
    """Started as a spare: everything imported and opened, no devices. ``take`` gives it a share."""

    def __init__(self, settings: HubSettings) -> None:
        self.home = HubHome(settings.home)
        self.registry = Registry(settings.registry_url or self.home.registry_url)
        self.store = open_store(settings.store, self.home)
        self._sqlite_turn = _sqlite_turn(settings.store, self.home)
        self.directory = DeviceDirectory(self.registry.devices)
        self.opener = HubOpener(
            [self.home.hub_keys()],
            self.directory.key,
            max_age_s=settings.max_message_age_s,
            max_bytes=settings.max_message_bytes,
        )
        self.core = IngestCore(self.opener, self.directory.site_of)
        self.share: tuple[int, int] | None = None  # (index, count) once taken over
        self._windows_rebuilt = False

    def serve(self, pipe: multiprocessing.connection.Connection) -> None:
        while True:
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                return  # the hub is gone: so are we
            if message is None:
                return
            if message[0] == "batch":
                reply = self._batch(message[1], message[2])
                try:
                    pipe.send(reply)
                except OSError:
                    return  # the hub died mid-batch: it acknowledged none of it, the broker redelivers
            elif message[0] == "take":
                self.share, self._windows_rebuilt = (message[1], message[2]), False
                _name_process(f"ingest-{message[1]}")
                log.info("ingest worker took share %d of %d over", message[1], message[2])
            elif message[0] == "commit":
                for device_id, seq in message[1]:
                    self.opener.windows.setdefault(device_id, ReplayWindow()).commit(seq)
            elif message[0] == "forget":
                self.opener.forget(message[1])
                self.directory.forget(message[1])

    def _rebuild_windows(self) -> None:
        """The replay windows of the share's devices, from the store (what a dead owner committed
        is stored; commits that came before this only repeat what the store holds)."""
        if self.share is None:
            raise TransportError("a batch came before a share of the devices")  # the hub's bug
        index, count = self.share
        for device in self.registry.devices.list():
            if shard_of(device.device_id, count) == index:
                stored = self.store.recent_sequences(device.device_id, REPLAY_WINDOW_SIZE)
                self.opener.restore(device.device_id, stored)
        self._windows_rebuilt = True

    def _batch(self, messages: list[tuple[str, bytes]], now_ms: int) -> tuple[Any, ...]:
        try:
            if not self._windows_rebuilt:  # here, not at ``take``: a store down pauses this batch
                self._rebuild_windows()
            results = [self._accept(topic, payload, now_ms) for topic, payload in messages]
            with self._sqlite_turn():
                refused = write_durably(self.store, [r for r in results if isinstance(r, Accepted)])
        except (TransportError, ConfigError) as exc:
            return ("paused", str(exc))
        return ("done", [_outcome(i, refused.get(id(r), r)) for i, r in enumerate(results)])

    def _accept(self, topic: str, payload: bytes, now_ms: int) -> Accepted | Rejection:
        try:
            return self.core.accept(topic, payload, now_ms)
        except TransportError:
            raise
        except Exception as exc:
            log.exception("ingest worker could not check a message; dead-lettering it")
            return Rejection("internal_error", f"{type(exc).__name__}: {exc}", topic)

    def close(self) -> None:
        self.store.close()
        self.registry.close()


def _sqlite_turn(config: StoreConfig, home: HubHome) -> Callable[[], AbstractContextManager[object]]:
    """Workers writing one SQLite file take turns on a lock file first.

    SQLite alone is correct with several writers, but one that finds the file locked
    sleeps in steps of up to 100 ms before it tries again; ``flock`` wakes the next writer
    as soon as the last one is done, and the kernel releases it if a worker is killed.
    Other stores take concurrent writes: no turn.
    """
    if not isinstance(config, SqliteStoreConfig):
        return contextlib.nullcontext
    database = Path(config.path or home.telemetry_db)
    lock_file = database.with_name(database.name + ".writer-lock")

    @contextlib.contextmanager
    def turn() -> Iterator[object]:
        with lock_file.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return turn
