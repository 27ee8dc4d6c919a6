"""One registry database shared by every repository: the unit of work.

Reads open a plain session; every change runs in one write transaction on the
writer engine (``BEGIN IMMEDIATE`` on SQLite, so a read-then-write transaction never
has to upgrade its lock), together with its audit entry: a change and its audit
entry commit together or not at all.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from roadside.cloud.fleet import audit
from roadside.cloud.fleet.audit import canonical_details, use_explicit_sqlite_transactions
from roadside.shared.errors import ConfigError, TransportError

_T = TypeVar("_T")


class UnitOfWork:
    """The registry's engines and transactions; the repositories are built over one of these."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(url)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        use_explicit_sqlite_transactions(self._engine)
        self.writer: Engine = audit.writer(self._engine)
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading. A database that cannot be reached raises ``TransportError``
        (the hub's registry watcher died of the raw error when PostgreSQL went away: issue 14)."""
        try:
            with Session(self._engine) as session:
                yield session
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc

    def write(self, change: Callable[[Session], _T]) -> _T:
        """Run ``change`` in one write transaction (which also holds the audit entry)."""
        with Session(self.writer) as session, session.begin():
            return change(session)

    @contextmanager
    def serialized_write(self) -> Iterator[Session]:
        """A write transaction that this process's other serialized writes wait for.

        A database that cannot take the write (disk full, unreachable) raises ``TransportError``:
        the hub's ingest writer retries those, and died of the raw error (issue 14, bench.chaos).
        """
        try:
            with self._lock, Session(self.writer) as session, session.begin():
                yield session
        except OperationalError as exc:
            raise TransportError(f"registry database cannot take the write: {exc.orig}") from exc

    def record_audit(self, actor: str, action: str, subject: str, details: Mapping[str, Any]) -> None:
        """Append an audit entry for a decision that changes no registry row (a gate verdict)."""
        self.write(lambda session: audit_in(session, actor, action, subject, details, datetime.now(UTC)))

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        """Raise ``TransportError`` if the registry database cannot be reached."""
        try:
            with self._engine.connect() as connection:
                connection.execute(select(1))
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc


def audit_in(
    session: Session,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    now: datetime | None = None,
) -> None:
    try:
        audit.append_in(session.connection(), actor, action, subject, details, now=now)
    except ValueError as exc:
        raise ConfigError(f"cannot audit {action}: {exc}") from exc


def rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``value`` as plain JSON (a copy), or ``ConfigError`` if it is not JSON."""
    try:
        body: dict[str, Any] = json.loads(canonical_details(value))
    except ValueError as exc:
        raise ConfigError(f"{what} must be a JSON object: {exc}") from exc
    return body


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
