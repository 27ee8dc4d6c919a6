"""Console sessions: the pure rules (expiry, idle timeout, CSRF tokens), over an injected clock.

A session is a random id the browser holds in an HttpOnly cookie; the hub
keeps, per id, only the API client's *name* (its scopes are read from the
registry on every request, so revoking a token ends its sessions at once),
when the session started and when it was last used, and its CSRF token.

The store is bounded (:data:`MAX_SESSIONS`): when full, the least recently
used session is dropped (its operator signs in again). Ids are kept only as
SHA-256 digests, so a memory dump or a copy of the registry does not hand out
live cookies. Where they are kept is a :class:`SessionBackend`: memory, or the
registry (the hub's choice: sessions survive a restart and are shared by hubs).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Protocol

MAX_SESSIONS: Final = 10_000
DEFAULT_LIFETIME_S: Final = 12 * 3600.0  # a control-room shift
DEFAULT_IDLE_S: Final = 30 * 60.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How long a session lives at most, and how long it may sit unused."""

    lifetime_s: float = DEFAULT_LIFETIME_S
    idle_s: float = DEFAULT_IDLE_S

    def __post_init__(self) -> None:
        if not 0 < self.idle_s <= self.lifetime_s:
            raise ValueError("a session's idle timeout must be positive and at most its lifetime")


@dataclass(frozen=True, slots=True)
class Session:
    client_name: str
    csrf_token: str
    started_at: float
    last_used_at: float

    def expired(self, policy: SessionPolicy, now: float) -> bool:
        return now - self.started_at >= policy.lifetime_s or now - self.last_used_at >= policy.idle_s

    def csrf_matches(self, offered: str | None) -> bool:
        """Whether ``offered`` is this session's CSRF token (compared in constant time)."""
        return offered is not None and hmac.compare_digest(offered.encode(), self.csrf_token.encode())


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionBackend(Protocol):
    """Where sessions are kept, by the SHA-256 digest of their id: this process's memory
    (:class:`MemorySessions`) or the registry (:class:`roadside.cloud.console.registry_sessions.RegistrySessions`,
    shared by every hub process on it and surviving a restart)."""

    def put(self, digest: str, session: Session) -> None: ...

    def get(self, digest: str) -> Session | None: ...

    def touch(self, digest: str, last_used_at: float) -> None: ...

    def delete(self, digest: str) -> None: ...

    def delete_client(self, client_name: str) -> int: ...

    def trim(self, keep: int, unused_before: float) -> None:
        """Drop sessions last used before ``unused_before``, then the least recently used past ``keep``."""

    def __len__(self) -> int: ...


class MemorySessions:
    """Sessions in this process's memory, least recently used first (a hub restart ends them)."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, digest: str, session: Session) -> None:
        with self._lock:
            self._sessions[digest] = session
            self._sessions.move_to_end(digest)

    def get(self, digest: str) -> Session | None:
        with self._lock:
            return self._sessions.get(digest)

    def touch(self, digest: str, last_used_at: float) -> None:
        with self._lock:
            session = self._sessions.get(digest)
            if session is not None:
                self._sessions[digest] = replace(session, last_used_at=last_used_at)
                self._sessions.move_to_end(digest)

    def delete(self, digest: str) -> None:
        with self._lock:
            self._sessions.pop(digest, None)

    def delete_client(self, client_name: str) -> int:
        with self._lock:
            doomed = [k for k, s in self._sessions.items() if s.client_name == client_name]
            for key in doomed:
                del self._sessions[key]
        return len(doomed)

    def trim(self, keep: int, unused_before: float) -> None:
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.last_used_at < unused_before]:
                del self._sessions[key]
            while len(self._sessions) > keep:
                self._sessions.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


class SessionStore:
    """The session rules over a backend: bounded (least recently used dropped first), expiring.

    ``touch_every_s``: a session's last use is written back only when it moved by at least this
    much (the idle timeout is then exact to that), so a registry backend is not written on every
    page; 0 (the default, for memory) writes every use.
    """

    def __init__(
        self,
        policy: SessionPolicy | None = None,
        *,
        clock: Clock = time.time,
        max_sessions: int = MAX_SESSIONS,
        backend: SessionBackend | None = None,
        touch_every_s: float = 0.0,
    ) -> None:
        self.policy = policy or SessionPolicy()
        self._clock = clock
        self._max = max_sessions
        self._backend: SessionBackend = backend if backend is not None else MemorySessions()
        self._touch_every_s = touch_every_s

    def open(self, client_name: str) -> tuple[str, Session]:
        """Start a session for ``client_name``; returns the id for the cookie (not kept) and the session."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(client_name, secrets.token_urlsafe(32), now, now)
        self._backend.put(_digest(session_id), session)
        self._backend.trim(self._max, now - self.policy.idle_s)
        return session_id, session

    def touch(self, session_id: str | None) -> Session | None:
        """The live session behind ``session_id``, its idle clock restarted; ``None`` (and forgotten) if expired."""
        if not session_id:
            return None
        key = _digest(session_id)
        now = self._clock()
        session = self._backend.get(key)
        if session is None:
            return None
        if session.expired(self.policy, now):
            self._backend.delete(key)
            return None
        if now - session.last_used_at >= self._touch_every_s:
            self._backend.touch(key, now)
        return replace(session, last_used_at=now)

    def close(self, session_id: str | None) -> None:
        """Sign out: forget the session (a no-op for an unknown id)."""
        if session_id:
            self._backend.delete(_digest(session_id))

    def close_client(self, client_name: str) -> int:
        """End every session of one API client (its token was revoked); returns how many."""
        return self._backend.delete_client(client_name)

    def __len__(self) -> int:
        return len(self._backend)
