"""Console sessions kept in the registry, so they survive a hub restart and are shared by every
hub process on one registry (``hub run --workers``, several hubs behind a balancer).

Rows hold the SHA-256 digest of the session id (never the cookie itself), the API
client's name, the session's CSRF token and its start and last-use times (epoch
seconds). The rules (expiry, idle timeout) live in :mod:`roadside.cloud.console.sessions`;
this is storage only. Sign-in and sign-out are audited by the console, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from roadside.cloud.registry.tables import ConsoleSessionRow
from roadside.cloud.registry.unit_of_work import UnitOfWork, rowcount


@dataclass(frozen=True, slots=True)
class StoredSession:
    client_name: str
    csrf_token: str
    started_at: float
    last_used_at: float


class ConsoleSessions:
    """Session rows keyed by digest."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit

    def put(self, digest: str, session: StoredSession) -> None:
        def change(db: Session) -> None:
            db.merge(
                ConsoleSessionRow(
                    digest=digest,
                    client_name=session.client_name,
                    csrf_token=session.csrf_token,
                    started_at=session.started_at,
                    last_used_at=session.last_used_at,
                )
            )

        self._unit.write(change)

    def get(self, digest: str) -> StoredSession | None:
        with self._unit.read() as db:
            row = db.get(ConsoleSessionRow, digest)
            if row is None:
                return None
            return StoredSession(row.client_name, row.csrf_token, row.started_at, row.last_used_at)

    def touch(self, digest: str, last_used_at: float) -> None:
        self._unit.write(
            lambda db: db.execute(
                update(ConsoleSessionRow)
                .where(ConsoleSessionRow.digest == digest)
                .values(last_used_at=last_used_at)
            )
        )

    def delete(self, digest: str) -> bool:
        return bool(
            self._unit.write(
                lambda db: rowcount(
                    db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.digest == digest))
                )
            )
        )

    def delete_client(self, client_name: str) -> int:
        return self._unit.write(
            lambda db: rowcount(
                db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.client_name == client_name))
            )
        )

    def delete_unused_since(self, cutoff: float) -> int:
        """Drop sessions last used before ``cutoff`` (expired by the idle rule); returns how many."""
        return self._unit.write(
            lambda db: rowcount(
                db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.last_used_at < cutoff))
            )
        )

    def delete_oldest(self, keep: int) -> int:
        """Keep the ``keep`` most recently used sessions, drop the rest; returns how many went."""

        def change(db: Session) -> int:
            total = int(db.scalar(select(func.count()).select_from(ConsoleSessionRow)) or 0)
            if total <= keep:
                return 0
            doomed = (
                select(ConsoleSessionRow.digest).order_by(ConsoleSessionRow.last_used_at).limit(total - keep)
            )
            return rowcount(db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.digest.in_(doomed))))

        return self._unit.write(change)

    def count(self) -> int:
        with self._unit.read() as db:
            return int(db.scalar(select(func.count()).select_from(ConsoleSessionRow)) or 0)
