"""One-time sign-in links (``roadside hub ui-link NAME``): signed, expiring, spent on first use.

A link token is ``<payload>.<signature>``, both base64url: the payload is
``{"c": client name, "exp": unix seconds, "n": nonce}`` as JSON, the signature
HMAC-SHA256 under a key kept in the hub's home (``console-link.key``, 0600),
which the CLI and the hub share through the home directory, not a process.
:func:`issue` and :func:`verify` are pure; :class:`SpentLinks` remembers used
nonces until they expire, so a link signs in once per hub process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from roadside.shared.errors import ConfigError

KEY_FILE: Final = "console-link.key"
KEY_BYTES: Final = 32
DEFAULT_LINK_TTL_S: Final = 15 * 60.0
MAX_LINK_TTL_S: Final = 24 * 3600.0
MAX_TOKEN_CHARS: Final = 512
MAX_SPENT: Final = 100_000


class LinkError(ValueError):
    """The link is malformed, forged, expired or already used; the message says which."""


@dataclass(frozen=True, slots=True)
class LinkGrant:
    client_name: str
    expires_at: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, client_name: str, now: float, ttl_s: float = DEFAULT_LINK_TTL_S) -> str:
    """A link token for ``client_name``, valid for ``ttl_s`` seconds from ``now``."""
    if not 0 < ttl_s <= MAX_LINK_TTL_S:
        raise ConfigError(f"a sign-in link lives 1 s to {MAX_LINK_TTL_S:.0f} s, not {ttl_s}")
    payload = json.dumps({"c": client_name, "exp": int(now + ttl_s), "n": secrets.token_urlsafe(12)})
    body = _b64(payload.encode())
    return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def verify(key: bytes, token: str, now: float) -> LinkGrant:
    """The grant in a link token; raises :class:`LinkError` if it is not one this hub signed and current."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise LinkError("not a sign-in link")
    body, signature = token.split(".")
    try:
        expected = hmac.new(key, body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(signature)):
            raise LinkError("the sign-in link's signature does not match this hub")
        fields = json.loads(_unb64(body))
        grant = LinkGrant(str(fields["c"]), float(fields["exp"]), str(fields["n"]))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, LinkError):
            raise
        raise LinkError("not a sign-in link") from exc
    if now >= grant.expires_at:
        raise LinkError("the sign-in link has expired; ask for a new one (roadside hub ui-link NAME)")
    return grant


class SpentLinks:
    """Nonces of links already used, kept until the link would have expired (bounded)."""

    def __init__(self, max_spent: int = MAX_SPENT) -> None:
        self._spent: dict[str, float] = {}
        self._max = max_spent
        self._lock = threading.Lock()

    def spend(self, grant: LinkGrant, now: float) -> None:
        """Mark the link used; raises :class:`LinkError` if it already was."""
        with self._lock:
            self._spent = {n: exp for n, exp in self._spent.items() if exp > now}
            if grant.nonce in self._spent:
                raise LinkError("the sign-in link was already used; ask for a new one")
            if len(self._spent) >= self._max:
                raise LinkError("too many sign-in links in flight; try again in a few minutes")
            self._spent[grant.nonce] = grant.expires_at


def load_or_create_key(home: Path) -> bytes:
    """The hub's link key from its home, made (0600) on first use."""
    path = home / KEY_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        # Written whole under a private name, then linked into place: a reader never sees half a key,
        # and of two processes making it at once, the second link fails and both read the first's.
        staged = home / f".{KEY_FILE}.{secrets.token_hex(6)}"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(KEY_BYTES))
        try:
            os.link(staged, path)
        except FileExistsError:
            pass
        finally:
            staged.unlink()
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path} is not a console link key ({len(key)} bytes); delete it to make a new one")
    return key
