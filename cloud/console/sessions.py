"""Console sessions: the pure rules (expiry, idle timeout, CSRF tokens), over an injected clock.

A session is a random id the browser holds in an HttpOnly cookie; the hub
keeps, per id, only the API client's *name* (its scopes are read from the
registry on every request, so revoking a token ends its sessions at once),
when the session started and when it was last used, and its CSRF token.

The store is bounded (:data:`MAX_SESSIONS`): when full, the least recently
used session is dropped (its operator signs in again). Ids are kept only as
SHA-256 digests, so a memory dump does not hand out live cookies.
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
from typing import Final

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


class SessionStore:
    """Sessions in this hub process's memory, thread-safe, bounded, least recently used dropped first."""

    def __init__(
        self,
        policy: SessionPolicy | None = None,
        *,
        clock: Clock = time.time,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.policy = policy or SessionPolicy()
        self._clock = clock
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, client_name: str) -> tuple[str, Session]:
        """Start a session for ``client_name``; returns the id for the cookie (not kept) and the session."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(client_name, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._sessions[_digest(session_id)] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session_id, session

    def touch(self, session_id: str | None) -> Session | None:
        """The live session behind ``session_id``, its idle clock restarted; ``None`` (and forgotten) if expired."""
        if not session_id:
            return None
        key = _digest(session_id)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if session.expired(self.policy, now):
                del self._sessions[key]
                return None
            session = replace(session, last_used_at=now)
            self._sessions[key] = session
            self._sessions.move_to_end(key)
        return session

    def close(self, session_id: str | None) -> None:
        """Sign out: forget the session (a no-op for an unknown id)."""
        if session_id:
            with self._lock:
                self._sessions.pop(_digest(session_id), None)

    def close_client(self, client_name: str) -> int:
        """End every session of one API client (its token was revoked); returns how many."""
        with self._lock:
            doomed = [k for k, s in self._sessions.items() if s.client_name == client_name]
            for key in doomed:
                del self._sessions[key]
        return len(doomed)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
