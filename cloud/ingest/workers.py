"""Ingest worker processes: unseal, validate and write in processes of their own.

The hub's network thread only receives and acknowledges; with ``ingest_workers > 0`` the
expensive part of each message (AEAD open, pydantic validation, the store write: about
three quarters of the hub's time per message, docs/performance.md) runs in that many
worker processes, each with its own GIL, store connection and registry connection.

Devices are split between workers by a hash of the device id, so each worker owns the
replay windows of its devices (rebuilt from the store when it starts, as the hub does).
The protocol over each worker's pipe, for one batch:

1. ``("batch", [(topic, payload), ...], now_ms)``: the worker checks each message
   (:class:`IngestCore`) and writes the accepted ones durably (one store transaction),
   then answers ``("done", outcomes)``, or ``("paused", reason)`` when the store or the
   registry is down (nothing of the batch is acknowledged then; the hub retries it).
2. The hub runs its listeners, then sends ``("commit", [(device_id, seq), ...])``: only now
   does the worker refuse repeats of those messages, exactly as the in-process writer does.
3. The hub acknowledges the batch to the broker.

A worker that dies (SIGKILL, a crash) is started again and the batch retried: its writes
are idempotent on ``(device, seq)``, and nothing was acknowledged. A hub that dies takes its
workers with it (they exit when their pipe closes); the broker redelivers what was not
acknowledged. Outcomes travel as plain tuples: pickling the records back would cost the
hub's one busy thread more than it saved.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import multiprocessing.connection
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
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
from roadside.shared.envelope import REPLAY_WINDOW_SIZE, Header, HubOpener, ReplayWindow
from roadside.shared.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

_START_TIMEOUT_S: Final = 120.0  # a worker imports the hub's modules and rebuilds its windows
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
    """A worker process ended while it held a batch; it was started again, the batch is retried."""


class IngestWorkers:
    """The hub side: ``count`` worker processes, started and stopped with the ingest service."""

    def __init__(self, settings: HubSettings, count: int) -> None:
        self.settings = settings
        self.count = count
        self._context = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded hub
        self._processes: list[BaseProcess | None] = [None] * count
        self._pipes: list[multiprocessing.connection.Connection | None] = [None] * count

    def start(self) -> None:
        for index in range(self.count):
            self._start(index)

    def _start(self, index: int) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings, index, self.count, theirs),
            name=f"ingest-worker-{index}",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._processes[index], self._pipes[index] = process, ours
        if not ours.poll(_START_TIMEOUT_S):
            raise TransportError(f"ingest worker {index} did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            reply = ours.recv()
        except (EOFError, OSError) as exc:
            raise TransportError(f"ingest worker {index} failed to start (see its log)") from exc
        if reply[0] != "ready":
            raise ConfigError(f"ingest worker {index} could not start: {reply[1]}")
        log.info("ingest worker %d started (pid %s)", index, process.pid)

    def stop(self) -> None:
        for index, pipe in enumerate(self._pipes):
            if pipe is not None:
                with contextlib.suppress(OSError):  # already gone
                    pipe.send(None)
            process = self._processes[index]
            if process is not None:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
            if pipe is not None:
                pipe.close()
        self._processes = [None] * self.count
        self._pipes = [None] * self.count

    @property
    def pids(self) -> list[int | None]:
        return [p.pid if p is not None else None for p in self._processes]

    def process(self, messages: Sequence[tuple[str, bytes]], now_ms: int) -> list[Accepted | Rejection]:
        """Check and durably write a batch across the workers; an outcome per message, in order.

        ``TransportError`` when a store or the registry is down, or a worker died (it is
        started again): nothing of the batch may be acknowledged then.
        """
        shards: list[list[int]] = [[] for _ in range(self.count)]
        for i, (topic, _payload) in enumerate(messages):
            shards[shard_of(device_of(topic), self.count)].append(i)
        busy = [w for w in range(self.count) if shards[w]]
        for w in busy:
            self._send(w, ("batch", [messages[i] for i in shards[w]], now_ms))
        outcomes: list[Accepted | Rejection | None] = [None] * len(messages)
        failure: TransportError | None = None
        for w in busy:  # collect every reply before raising, so no worker is left mid-batch
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
            # A replacement worker rebuilt its windows from the store, which holds these already.
            with contextlib.suppress(WorkerDiedError):
                self._send(w, ("commit", seqs))

    def forget(self, device_id: str) -> None:
        """A device was revoked or its keys rotated: its worker drops the cached keys."""
        self._send(shard_of(device_id, self.count), ("forget", device_id))

    def _send(self, index: int, message: object) -> None:
        pipe = self._pipes[index]
        try:
            if pipe is None:
                raise OSError("not running")
            pipe.send(message)
        except OSError as exc:
            self._restart(index)
            raise WorkerDiedError(f"ingest worker {index} was gone ({exc}); started again") from exc

    def _receive(self, index: int) -> tuple[Any, ...]:
        pipe = self._pipes[index]
        try:
            if pipe is None or not pipe.poll(_REPLY_TIMEOUT_S):
                raise OSError("no reply")
            reply: tuple[Any, ...] = pipe.recv()
        except (EOFError, OSError) as exc:
            self._restart(index)
            raise WorkerDiedError(f"ingest worker {index} died holding a batch; started again") from exc
        return reply

    def _restart(self, index: int) -> None:
        log.error("ingest worker %d ended unexpectedly; starting it again", index)
        process, pipe = self._processes[index], self._pipes[index]
        if pipe is not None:
            pipe.close()
        if process is not None:
            process.kill()
            process.join(timeout=10)
        self._start(index)


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


def _worker_main(
    settings: HubSettings, index: int, count: int, pipe: multiprocessing.connection.Connection
) -> None:
    from roadside.shared.logs import setup_logging

    setup_logging("INFO")
    try:
        worker = _Worker(settings, index, count)
    except Exception as exc:  # configuration: say why, the hub refuses to start
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    pipe.send(("ready",))
    try:
        worker.serve(pipe)
    finally:
        worker.close()


class _Worker:
    def __init__(self, settings: HubSettings, index: int, count: int) -> None:
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
        for device in self.registry.devices.list():
            if shard_of(device.device_id, count) == index:
                stored = self.store.recent_sequences(device.device_id, REPLAY_WINDOW_SIZE)
                self.opener.restore(device.device_id, stored)
        self.core = IngestCore(self.opener, self.directory.site_of)

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
            elif message[0] == "commit":
                for device_id, seq in message[1]:
                    self.opener.windows.setdefault(device_id, ReplayWindow()).commit(seq)
            elif message[0] == "forget":
                self.opener.forget(message[1])
                self.directory.forget(message[1])

    def _batch(self, messages: list[tuple[str, bytes]], now_ms: int) -> tuple[Any, ...]:
        try:
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
