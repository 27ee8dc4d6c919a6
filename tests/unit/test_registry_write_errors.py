"""A registry database that cannot take a write (found by bench.chaos disk-full, issue 14).

The hub's ingest writer records when devices were last seen in a serialized
registry write while it is idle; a full disk there raised sqlalchemy's
``OperationalError``, which the writer thread did not expect, and the thread
died: the hub stopped storing anything until restarted. The unit of work now
translates it to ``TransportError``, which the writer logs and retries.
SQLite's ``max_page_count`` makes the database full without a small filesystem.
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.pool import ConnectionPoolEntry

from roadside.cloud.registry import Registry
from roadside.cloud.registry.unit_of_work import UnitOfWork
from roadside.shared.errors import TransportError


def full_after(unit: UnitOfWork, extra_pages: int) -> None:
    """Every new writer connection may grow the database by ``extra_pages`` pages at most."""

    @event.listens_for(unit.writer, "connect")
    def cap(connection: sqlite3.Connection, _entry: ConnectionPoolEntry) -> None:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages + extra_pages}")

    unit.writer.dispose()


def test_a_full_registry_database_is_a_transport_error(tmp_path: Path) -> None:
    unit = UnitOfWork(f"sqlite:///{tmp_path / 'registry.db'}")
    with unit.serialized_write() as session:
        session.execute(text("CREATE TABLE filler (x BLOB)"))
    full_after(unit, 2)

    def fill() -> None:
        with unit.serialized_write() as session:
            for _ in range(20):
                session.execute(text("INSERT INTO filler VALUES (randomblob(4000))"))

    with pytest.raises(TransportError, match="cannot take the write"):
        fill()
    with unit.serialized_write() as session:  # the lock was released: a small write goes through
        session.execute(text("DELETE FROM filler"))
    unit.close()


def test_an_unreachable_registry_database_is_a_transport_error_on_reads() -> None:
    """Found by bench.chaos postgres-kill: ``devices.list()`` raised psycopg's OperationalError
    through SQLAlchemy while PostgreSQL was down, and the hub's registry watcher (revocations
    made elsewhere, command resends) died of it. Reads now raise ``TransportError``, which the
    watcher logs and retries."""
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = Registry(f"postgresql+psycopg://nobody@127.0.0.1:{port}/registry?connect_timeout=2")
    try:
        with pytest.raises(TransportError, match="registry database unreachable"):
            registry.devices.list()
    finally:
        registry.close()
