"""Dead letters: every rejected message, kept for inspection with its reason."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError

_MAX_KEPT_BYTES = 64 * 1024  # an oversize payload is kept truncated; its length is recorded


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    received_ms: int
    topic: str
    device_id: str | None
    reason: str
    detail: str
    size: int
    payload: bytes


class DeadLetterStore:
    def __init__(self, path: Path | str, max_rows: int = 100_000) -> None:
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " received_ms INTEGER, topic TEXT, device_id TEXT, reason TEXT, detail TEXT,"
                " size INTEGER, payload BLOB)"
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open dead-letter store {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._max_rows = max_rows

    def add(self, topic: str, device_id: str | None, reason: str, detail: str, payload: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO dead_letters (received_ms, topic, device_id, reason, detail, size, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    int(time.time() * 1000),
                    topic[:512],
                    device_id,
                    reason,
                    detail[:1024],
                    len(payload),
                    payload[:_MAX_KEPT_BYTES],
                ),
            )
            # Bounded: the oldest letters go first once the cap is reached.
            self._db.execute(
                "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                (self._max_rows,),
            )

    def count(self, reason: str | None = None) -> int:
        with self._lock:
            if reason is None:
                return int(self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
            return int(
                self._db.execute("SELECT COUNT(*) FROM dead_letters WHERE reason = ?", (reason,)).fetchone()[
                    0
                ]
            )

    def recent(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, received_ms, topic, device_id, reason, detail, size, payload FROM dead_letters"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
