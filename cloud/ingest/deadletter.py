"""Dead letters: every rejected message, kept whole for inspection and re-driving.

A message is kept byte for byte up to the envelope's wire limit (a larger one
could never be accepted; its first ``MAX_WIRE_BYTES`` and its true length are
kept). Text that came from the network (topic, device id, detail) is stored
with control characters and lone surrogates escaped, so no input can fail the
insert. The store is bounded by ``max_rows``: when full, the oldest letters
go first, and each eviction is counted (``evicted``) and logged, never silent.
One device (or the unattributable letters together) may hold at most
``max_rows_per_device``: past that its own oldest go, so a single broken or
hostile device flooding refusals cannot evict the rest of the fleet's.

A letter can be *re-driven*: run through ingest again (``roadside
deadletters redrive``, see :mod:`roadside.cloud.ingest.redrive`); its outcome is
recorded on the row, and it stays for the record.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from roadside.shared.envelope import MAX_WIRE_BYTES
from roadside.shared.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

_COLUMNS = "id, received_ms, topic, device_id, reason, detail, size, payload, redriven_ms, redrive_outcome"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER, topic TEXT, device_id TEXT,
    reason TEXT, detail TEXT, size INTEGER, payload BLOB);
CREATE TABLE IF NOT EXISTS dead_letter_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason, id);
CREATE INDEX IF NOT EXISTS dead_letters_device ON dead_letters (device_id, id);
"""
_TRACKED_DEVICES = 10_000  # devices whose letter count is kept in memory (recounted past that)
_EVICTION_LOG_S = 60.0  # evictions are logged at most this often (each is counted)
_ADDED_COLUMNS = (("redriven_ms", "INTEGER"), ("redrive_outcome", "TEXT"))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    received_ms: int
    topic: str
    device_id: str | None
    reason: str
    detail: str
    size: int  # bytes as received; ``payload`` holds all of them up to MAX_WIRE_BYTES
    payload: bytes
    redriven_ms: int | None = None
    redrive_outcome: str | None = None  # "stored", "duplicate" or "rejected: <reason>"


def safe_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` with control characters and lone surrogates escaped."""
    if text.isprintable() and text.isascii():
        return text[:limit]
    return ascii(text)[1:-1][:limit]


class DeadLetterStore:
    def __init__(
        self, path: Path | str, max_rows: int = 100_000, max_rows_per_device: int | None = None
    ) -> None:
        """``max_rows_per_device``: one device's share (a tenth of ``max_rows`` by default)."""
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(dead_letters)")}
            for name, kind in _ADDED_COLUMNS:  # stores written by releases before re-driving
                if name not in have:
                    self._db.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {kind}")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open dead-letter store {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._max_rows = max_rows
        self._rows: int | None = None  # letters held, counted once then kept (None: not counted yet)
        self._per_device_rows: dict[str | None, int] = {}  # the same per device, for those seen lately
        self._logged_at = -_EVICTION_LOG_S
        self._unlogged = 0
        self._per_device = max(1, max_rows // 10) if max_rows_per_device is None else max_rows_per_device

    def add(self, topic: str, device_id: str | None, reason: str, detail: str, payload: bytes) -> int:
        """Keep one rejected message; return its id. Raises ``TransportError`` if it cannot be kept."""
        row = (
            int(time.time() * 1000),
            safe_text(topic, 512),
            None if device_id is None else safe_text(device_id, 128),
            safe_text(reason, 64),
            safe_text(detail, 2048),
            len(payload),
            payload[:MAX_WIRE_BYTES],
        )
        try:
            with self._lock:
                cursor = self._db.execute(
                    "INSERT INTO dead_letters (received_ms, topic, device_id, reason, detail, size, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                letter_id = int(cursor.lastrowid or 0)
                if self._rows is not None:
                    self._rows += 1
                if row[2] in self._per_device_rows:
                    self._per_device_rows[row[2]] += 1
                self._evict_beyond_share(row[2])
                self._evict_beyond_cap()
        except sqlite3.Error as exc:
            # A full disk: not the message's fault. Ingest pauses rather than lose it.
            raise TransportError(f"cannot keep a dead letter: {exc}") from exc
        return letter_id

    def _evict_beyond_cap(self) -> None:
        # Counted in memory (exact at open; evictions and inserts keep it): a COUNT or an OFFSET
        # over the whole table at every insert would cost milliseconds at the cap.
        if self._rows is None:
            self._rows = int(self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
        excess = self._rows - self._max_rows
        if excess <= 0:
            return
        gone = self._db.execute(
            "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters ORDER BY id LIMIT ?)"
            " RETURNING device_id",
            (excess,),
        ).fetchall()
        self._rows -= len(gone)
        for (device_id,) in gone:  # keep the per-device counts exact rather than recount them
            if device_id in self._per_device_rows:
                self._per_device_rows[device_id] -= 1
        if gone:
            self._evicted(len(gone), f"the store is at its cap of {self._max_rows}")

    def _evict_beyond_share(self, device_id: str | None) -> None:
        held = self._per_device_rows.get(device_id)
        if held is None:
            if len(self._per_device_rows) >= _TRACKED_DEVICES:
                self._per_device_rows.clear()
            held = int(
                self._db.execute(
                    "SELECT COUNT(*) FROM dead_letters WHERE device_id IS ?", (device_id,)
                ).fetchone()[0]
            )
        excess = held - self._per_device
        if excess > 0:
            cursor = self._db.execute(
                "DELETE FROM dead_letters WHERE id IN"
                " (SELECT id FROM dead_letters WHERE device_id IS ? ORDER BY id LIMIT ?)",
                (device_id, excess),
            )
            held -= cursor.rowcount
            if self._rows is not None:
                self._rows -= cursor.rowcount
            whose = safe_text(device_id, 128) if device_id is not None else "unattributed messages"
            self._evicted(cursor.rowcount, f"{whose} is at its share of {self._per_device}")
        self._per_device_rows[device_id] = held

    def _evicted(self, n: int, why: str) -> None:
        """Count ``n`` letters dropped; log it at most once a minute (a flood evicts at every insert)."""
        self._db.execute(
            "INSERT INTO dead_letter_meta (name, value) VALUES ('evicted', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (n,),
        )
        self._unlogged += n
        now = time.monotonic()
        if now - self._logged_at >= _EVICTION_LOG_S:
            log.warning(
                "dead letters evicted: %d since the last report; latest because %s", self._unlogged, why
            )
            self._logged_at, self._unlogged = now, 0

    @property
    def evicted(self) -> int:
        """Letters dropped so far to keep the store within its cap."""
        with self._lock:
            row = self._db.execute("SELECT value FROM dead_letter_meta WHERE name = 'evicted'").fetchone()
        return int(row[0]) if row else 0

    def count(self, reason: str | None = None) -> int:
        with self._lock:
            if reason is None:
                return int(self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
            query = "SELECT COUNT(*) FROM dead_letters WHERE reason = ?"
            return int(self._db.execute(query, (reason,)).fetchone()[0])

    def recent(
        self, limit: int = 100, reason: str | None = None, device_id: str | None = None
    ) -> list[DeadLetter]:
        """The newest letters first, optionally of one reason or device."""
        clauses, params = _filters(reason, device_id)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM dead_letters{clauses} ORDER BY id DESC LIMIT ?",  # noqa: S608 - fixed fragments
                (*params, limit),
            ).fetchall()
        return [_letter(r) for r in rows]

    def get(self, letter_id: int) -> DeadLetter | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?",  # noqa: S608 - fixed fragments
                (letter_id,),
            ).fetchone()
        return None if row is None else _letter(row)

    def pending(self, reason: str | None = None, device_id: str | None = None) -> list[int]:
        """Ids of letters not yet re-driven to a stored outcome, oldest first."""
        clauses, params = _filters(reason, device_id)
        joiner = " AND " if clauses else " WHERE "
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM dead_letters{clauses}{joiner}"  # noqa: S608 - fixed fragments
                "(redrive_outcome IS NULL OR redrive_outcome LIKE 'rejected%') ORDER BY id",
                params,
            ).fetchall()
        return [int(r[0]) for r in rows]

    def mark_redriven(self, letter_id: int, outcome: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE dead_letters SET redriven_ms = ?, redrive_outcome = ? WHERE id = ?",
                (int(time.time() * 1000), safe_text(outcome, 256), letter_id),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _filters(reason: str | None, device_id: str | None) -> tuple[str, tuple[str, ...]]:
    clauses: list[str] = []
    params: list[str] = []
    if reason is not None:
        clauses.append("reason = ?")
        params.append(reason)
    if device_id is not None:
        clauses.append("device_id = ?")
        params.append(device_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _letter(r: tuple[object, ...]) -> DeadLetter:
    return DeadLetter(
        int(r[0]),  # type: ignore[call-overload]
        int(r[1]),  # type: ignore[call-overload]
        str(r[2]),
        None if r[3] is None else str(r[3]),
        str(r[4]),
        str(r[5]),
        int(r[6]),  # type: ignore[call-overload]
        bytes(r[7]),  # type: ignore[call-overload]
        None if r[8] is None else int(r[8]),  # type: ignore[call-overload]
        None if r[9] is None else str(r[9]),
    )
