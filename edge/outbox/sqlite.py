"""The outbox: a SQLite (WAL) queue that survives ``kill -9`` and power loss.

A message is written (and fsynced by SQLite) before the pipeline moves on,
and deleted only after the broker acknowledged it (QoS 1 PUBACK). Its row id
is the envelope sequence number: ``AUTOINCREMENT`` never reuses a number, so
sequence numbers stay monotonic across restarts and the hub's replay window
holds.

Sequence epochs: a new outbox (first install, or one wiped after a disk
fault) starts numbering at the clock, ``created_ms << 16``, not at 1. Its
numbers are then above anything an earlier outbox of the device sent (unless
that one sent 65,536 messages per millisecond of its life), so the hub
accepts them without forgetting what it has seen: an old message replayed
is still refused. The clock must be roughly right when the outbox is made;
the hub refuses messages from a clock far off anyway.

Disk budget: when a new message would push the queue past ``max_bytes``, the
policy ``DROP_LOWEST_PRIORITY_OLDEST`` deletes the oldest messages of the
lowest priority first (hard-example samples, then health, then sensors, then counts, events, OTA reports, detector-zone changes last); each
drop is counted. The rule is :func:`roadside.edge.outbox.policy.choose_drops`; this module
only reads it the candidates and deletes what it chose. Back-pressure: ``put``
reports how many were dropped, and ``is_congested`` tells the pipeline to shed
work before it gets that far.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from roadside.edge.outbox.policy import DropPolicy, QueuedMessage, bytes_to_free, choose_drops
from roadside.shared.errors import ConfigError

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    SAMPLES = -1  # hard-example images: the first to go, and only put while the outbox has room
    HEALTH = 0
    SENSORS = 1
    COUNTS = 2
    ACK = 3
    EVENTS = 4
    OTA = 5  # model-update reports: few, small, and a rollout waits on each one
    DETECTOR = 6  # detector-zone changes for signal control: tiny, and a controller acts on each one


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int
    kind: str
    payload: bytes
    created_ms: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_drop ON outbox (priority, seq);
"""

# The candidates for dropping, read through ``outbox_drop`` in the policy's ``drop_order``, so a
# full outbox reads the head of that order and not the whole queue.
_DROP_CANDIDATES = "SELECT seq, priority, LENGTH(payload), kind FROM outbox ORDER BY priority, seq LIMIT ?"
# How many candidates to read first; usually one or two messages make room. Grown fourfold
# while the rule wants every candidate read and more remain.
_FIRST_DROP_PAGE = 16


EPOCH_SHIFT = 16


def _start_sequence_epoch(db: sqlite3.Connection, now_ms: int) -> None:
    """Number a new outbox's messages from the clock (see the module docstring)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    if row is None:  # a new outbox: nothing was ever numbered in it
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (now_ms << EPOCH_SHIFT,))


class Outbox:
    """Thread-safe durable queue of sealed-to-be messages."""

    policy = DropPolicy.DROP_LOWEST_PRIORITY_OLDEST

    def __init__(self, path: Path, max_bytes: int = 512 * 1024 * 1024) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a put that returned survives power loss, not only a process crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            _start_sequence_epoch(self._db, int(time.time() * 1000))
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open outbox at {path}: {exc}; check the directory is writable"
            ) from exc
        self._lock = threading.Lock()
        self._max_bytes = max_bytes
        self._bytes = int(
            self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()[0]
        )
        self.dropped = 0
        self.refused_disk_full = 0  # new messages the filesystem had no room for (also in dropped)
        self.not_empty = threading.Condition(self._lock)
        self._puts = 0  # messages stored so far: lets a waiter tell whether one came since it looked

    def put(self, kind: str, payload: bytes, priority: Priority) -> int:
        """Store one message durably; return how many older messages the budget forced out."""
        if len(payload) > self._max_bytes:
            raise ConfigError(
                f"a {len(payload)}-byte message cannot fit an outbox budget of {self._max_bytes}"
            )
        with self._lock:
            try:
                dropped = self._make_room(len(payload))
                self._db.execute(
                    "INSERT INTO outbox (kind, priority, payload, created_ms) VALUES (?, ?, ?, ?)",
                    (kind, int(priority), payload, int(time.time() * 1000)),
                )
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                if self._db.in_transaction:  # a drop whose COMMIT found no room either
                    self._db.execute("ROLLBACK")
                # The filesystem is the budget now: the new message cannot be kept, and the
                # pipeline must go on (it used to die here, issue 14). Nothing queued is lost.
                self.dropped += 1
                self.refused_disk_full += 1
                log.warning(
                    "outbox disk full: %s message not queued (%d refused so far)",
                    kind,
                    self.refused_disk_full,
                )
                return 0
            self._bytes += len(payload)
            self._puts += 1
            self.not_empty.notify_all()
        return dropped

    def _make_room(self, incoming: int) -> int:
        if bytes_to_free(self._bytes, incoming, self._max_bytes) == 0:
            return 0  # the common case: no query at all
        page = _FIRST_DROP_PAGE
        while True:
            rows = self._db.execute(_DROP_CANDIDATES, (page,)).fetchall()
            candidates = [QueuedMessage(seq, priority, size) for seq, priority, size, _ in rows]
            drops = choose_drops(candidates, self._bytes, incoming, self._max_bytes)
            if len(drops) < len(candidates) or len(rows) < page:
                break  # the rule stopped inside what was read, or there is nothing more to read
            page *= 4
        if not drops:
            return 0
        kinds = {row[0]: row[3] for row in rows}
        self._delete([m.seq for m in drops])
        for message in drops:
            self._bytes -= message.size
            log.warning(
                "outbox full: dropped %s message %s (policy %s)",
                kinds[message.seq],
                message.seq,
                self.policy.value,
            )
        self.dropped += len(drops)
        return len(drops)

    def _delete(self, seqs: list[int]) -> None:
        # One transaction for all the drops: one fsync, and they are durable together.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def pending(
        self, limit: int, exclude: Iterable[int] = (), max_bytes: int | None = None
    ) -> list[OutboxItem]:
        """The oldest messages not in ``exclude`` (already in flight), in sequence order.

        ``max_bytes``: stop before the message whose payload would pass it (in order: the
        first is always returned, so one large message cannot stall the queue). Only the
        payloads returned are read into memory.
        """
        skip = set(exclude)
        with self._lock:
            heads = self._db.execute(
                "SELECT seq, LENGTH(payload) FROM outbox ORDER BY seq LIMIT ?", (limit + len(skip),)
            ).fetchall()
            chosen: list[int] = []
            total = 0
            for seq, size in heads:
                if seq in skip:
                    continue
                if len(chosen) >= limit or (chosen and max_bytes is not None and total + size > max_bytes):
                    break
                chosen.append(seq)
                total += size
            if not chosen:
                return []
            rows = self._db.execute(
                "SELECT seq, kind, payload, created_ms FROM outbox WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (chosen[0], chosen[-1]),
            ).fetchall()
        wanted = set(chosen)
        return [OutboxItem(r[0], r[1], bytes(r[2]), r[3]) for r in rows if r[0] in wanted]

    def ack(self, seq: int) -> None:
        """The broker has the message: forget it (on a full disk, keep it: sent again, stored once)."""
        with self._lock:
            try:
                row = self._db.execute(
                    "DELETE FROM outbox WHERE seq = ? RETURNING LENGTH(payload)", (seq,)
                ).fetchone()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                log.warning("outbox disk full: message %s acknowledged but kept; it will be sent again", seq)
                return
            if row is not None:
                self._bytes -= row[0]

    def backlog(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def is_congested(self, fraction: float = 0.9) -> bool:
        return self._bytes >= self._max_bytes * fraction

    @property
    def puts(self) -> int:
        """How many messages were stored so far (read it before :meth:`pending`, pass it to :meth:`wait`)."""
        with self._lock:
            return self._puts

    def wait(self, timeout: float, seen: int | None = None) -> None:
        """Block until something is put or ``timeout`` passes. With ``seen`` (:attr:`puts` as read
        before the caller last looked at the queue), return at once when a put came since: one that
        landed between that look and this wait would otherwise wait out the whole timeout."""
        with self._lock:
            if seen is not None and self._puts != seen:
                return
            self.not_empty.wait(timeout)

    def close(self) -> None:
        with self._lock:
            self._db.close()
