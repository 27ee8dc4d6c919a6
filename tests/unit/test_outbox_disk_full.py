"""A full disk under the outbox (found by bench.chaos disk-full, issue 14).

The agent's pipeline thread died on ``sqlite3.OperationalError: database or
disk is full`` from ``Outbox.put`` and never counted again once the disk was
freed. Now the new message is refused and counted, what is queued stays, and
puts work again as soon as there is room. SQLite's ``max_page_count`` makes a
database full without a small filesystem.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from roadside.edge.outbox import Outbox, Priority


def cap(outbox: Outbox, extra_pages: int) -> None:
    db = outbox._db  # the test reaches the connection to cap its size
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    db.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def test_a_put_on_a_full_disk_is_refused_and_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    cap(outbox, 2)
    kept = 0
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            before = outbox.backlog()
            outbox.put("counts", b"x" * 3000, Priority.COUNTS)
            kept += outbox.backlog() - before
    assert 0 < kept < 20
    assert outbox.refused_disk_full == 20 - kept
    assert outbox.dropped == outbox.refused_disk_full
    assert outbox.backlog() == kept  # what was queued stays queued
    assert "outbox disk full: counts message not queued" in caplog.text
    outbox.close()


def test_puts_work_again_once_there_is_room(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    cap(outbox, 2)
    for _ in range(10):
        outbox.put("counts", b"x" * 3000, Priority.COUNTS)
    assert outbox.refused_disk_full > 0
    for item in outbox.pending(100):  # the broker acknowledges: the pages are free again
        outbox.ack(item.seq)
    refused = outbox.refused_disk_full
    outbox.put("health", b"{}", Priority.HEALTH)
    assert outbox.refused_disk_full == refused
    assert [i.kind for i in outbox.pending(10)] == ["health"]
    outbox.close()


def test_other_database_errors_still_raise(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox._db.execute("DROP TABLE outbox")  # a broken database, not a full one
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        outbox.put("counts", b"{}", Priority.COUNTS)
