"""Console sessions in the registry (``console_sessions``, migration 0005): a hub restart keeps
them, and every hub on one registry honours them (no sticky sessions behind a balancer)."""

from __future__ import annotations

from roadside.cloud.console.sessions import Session
from roadside.cloud.registry import ConsoleSessions, StoredSession


class RegistrySessions:
    """A :class:`roadside.cloud.console.sessions.SessionBackend` over the registry's rows."""

    def __init__(self, rows: ConsoleSessions) -> None:
        self._rows = rows

    def put(self, digest: str, session: Session) -> None:
        self._rows.put(
            digest,
            StoredSession(session.client_name, session.csrf_token, session.started_at, session.last_used_at),
        )

    def get(self, digest: str) -> Session | None:
        row = self._rows.get(digest)
        return (
            None
            if row is None
            else Session(row.client_name, row.csrf_token, row.started_at, row.last_used_at)
        )

    def touch(self, digest: str, last_used_at: float) -> None:
        self._rows.touch(digest, last_used_at)

    def delete(self, digest: str) -> None:
        self._rows.delete(digest)

    def delete_client(self, client_name: str) -> int:
        return self._rows.delete_client(client_name)

    def trim(self, keep: int, unused_before: float) -> None:
        self._rows.delete_unused_since(unused_before)
        self._rows.delete_oldest(keep)

    def __len__(self) -> int:
        return self._rows.count()
