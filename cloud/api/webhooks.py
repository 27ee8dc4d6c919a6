"""Webhooks: accepted events POSTed to city systems, signed, retried, never in ingest's way.

::

    LiveFeed ──sink──► WebhookDispatcher.offer()   match each webhook's filter, queue a delivery
                          │  pending: bounded (max_pending), DROP_OLDEST by first enqueue
                          ▼
                  webhook-sender-N threads ──POST──► the city system's URL
                          │  2xx: delivered; 408/425/429/5xx or no answer: retried with
                          │  jittered exponential backoff (Retry-After respected) up to
                          ▼  max_attempts; any other status: given up at once
                  WebhookStore.record_attempt()   counts and last status, for operators

**Signature.** Every attempt carries ``X-Roadside-Timestamp`` (Unix seconds)
and ``X-Roadside-Signature: sha256=<hex>``, the HMAC-SHA256 under the
webhook's secret of ``<timestamp>.<body>``. A receiver recomputes it with
:func:`verify_signature`, compares in constant time, and refuses timestamps
older than a few minutes, which stops replays. ``X-Roadside-Delivery`` is the
same on every attempt of one delivery, so a receiver can drop duplicates
(delivery is at-least-once).

**Destinations.** A webhook URL is absolute ``http``/``https`` with a host and a
port in 1..65535, no credentials and no fragment (:func:`check_url`). The hub
resolves its host and refuses loopback, link-local, private, shared,
multicast, unspecified, reserved and other non-global addresses unless an
operator allow-listed their network (``webhook_allow_networks`` in the hub
settings; :class:`WebhookDestinations`): at registration, before anything is
stored, and again for each delivery. A delivery resolves once and connects to
that address only (DNS rebinding cannot move it), sending the URL's host as
``Host`` and as TLS SNI, whose certificate is verified against it. Logs and
the audit log show the whole URL with secrets masked (:func:`masked_url`).

**Storage.** Webhooks live in their own small SQLite file beside the hub's
data (``<home>/webhooks.db``), not in the registry. The file holds each
webhook's secret, which the hub needs to sign: it is created mode 0600, and
secrets never appear in the API's answers (only once, on creation), in logs
or in the audit log. Pending deliveries are in memory: a hub restart drops
the retries it had queued.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from roadside.cloud.fleet.live import EventFilter, LiveEvent
from roadside.shared.backoff import Backoff
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.queues import Overflow

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Roadside-Signature"
TIMESTAMP_HEADER: Final = "X-Roadside-Timestamp"
DELIVERY_HEADER: Final = "X-Roadside-Delivery"
WEBHOOK_HEADER: Final = "X-Roadside-Webhook"
SIGNATURE_SCHEME: Final = "sha256="
DEFAULT_TOLERANCE_S: Final = 300
MIN_SECRET_LENGTH: Final = 16
MAX_SECRET_LENGTH: Final = 256
MAX_URL_LENGTH: Final = 2048
MAX_WEBHOOKS: Final = 100
# What the pending deliveries do when full: the delivery queued first is given up for the new one.
PENDING_OVERFLOW: Final = Overflow.DROP_OLDEST
_RETRYABLE: Final = frozenset({408, 425, 429})


# --- pure core -----------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 under ``secret`` of ``b"<timestamp>." + body``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_SCHEME + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver does: the timestamp is recent and the signature is the secret's over it."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[IPAddress]]
"""The addresses a host name resolves to, for a port; ``OSError`` when it does not resolve."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Query keys whose values are credentials: masked wherever a URL is shown (substring, any case).
_SECRET_KEY: Final = re.compile(r"token|key|secret|sig|pass|pwd|auth|credential|session|code", re.IGNORECASE)
MASK: Final = "***"


class WebhookDestinationError(ConfigError):
    """A webhook URL whose host is, or resolves to, an address the hub must not connect to."""


class UnresolvedHostError(TransportError):
    """A webhook URL's host name does not resolve (now: a delivery tries again later)."""


def check_url(url: str) -> str:
    """``url`` if it can receive webhooks: absolute http(s), a host, a port in 1..65535,
    no credentials, no fragment."""
    if len(url) > MAX_URL_LENGTH:
        raise ConfigError(f"a webhook URL is at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError("a webhook URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number in 0..65535, a malformed [IPv6] host
        raise ConfigError(f"a webhook URL needs a valid host and a port from 1 to 65535 ({exc})") from exc
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError("a webhook URL must be absolute http:// or https:// with a host")
    if port == 0:
        raise ConfigError("a webhook URL's port must be from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("a webhook URL must not carry credentials; the signature authenticates the hub")
    if parts.fragment:
        raise ConfigError("a webhook URL must not have a #fragment")
    return url


def address_refusal(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why the hub must not connect to ``address`` (``None``: it may).

    Only globally routable unicast addresses are fine, unless ``allowed`` holds
    the address. An IPv4-mapped IPv6 address is judged as the IPv4 address it is.
    """
    judged: IPAddress = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        judged = address.ipv4_mapped
    if any(judged in network or address in network for network in allowed):
        return None
    for kind, applies in (
        ("unspecified", judged.is_unspecified),
        ("loopback", judged.is_loopback),
        ("link-local", judged.is_link_local),
        ("multicast", judged.is_multicast),
        ("private", judged.is_private),
        ("reserved", judged.is_reserved),
        ("non-global", not judged.is_global),
    ):
        if applies:
            return f"{kind} address {judged}"
    return None


def masked_url(url: str) -> str:
    """The whole URL as logs and the audit log may show it: userinfo and secret query values masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{quote(key, safe='')}={MASK if _SECRET_KEY.search(key) else quote(value, safe='')}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(netloc=netloc, query=query, fragment="").geturl()


@dataclass(frozen=True, slots=True)
class PinnedUrl:
    """A webhook URL with the one address its deliveries connect to."""

    url: str
    host: str  # as in the URL, lowercase, without brackets: what Host and TLS SNI carry
    port: int
    address: IPAddress

    def request_url(self) -> httpx.URL:
        """The URL with its host replaced by the pinned address (the connection goes there)."""
        return httpx.URL(self.url).copy_with(host=str(self.address))

    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS[urlsplit(self.url).scheme]
        return host if self.port == default else f"{host}:{self.port}"

    def sni_hostname(self) -> str | None:
        """The name TLS sends and verifies the certificate against; ``None`` for an IP literal."""
        return None if _literal_address(self.host) is not None else self.host


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (the system resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class WebhookDestinations:
    """Where webhooks may point: global addresses, and the ``allowed`` networks besides.

    Built once from the hub settings (``webhook_allow_networks``); ``resolve`` is
    the name resolver (the system's unless a test gives another).
    """

    allowed: tuple[IPNetwork, ...] = ()
    resolve: Resolver = resolve_host

    def pin(self, url: str) -> PinnedUrl:
        """Check ``url``, resolve its host once and return the address to connect to.

        ``WebhookDestinationError`` when any address the host resolves to is refused
        (a name with one private address among public ones is refused whole);
        ``ConfigError`` for a malformed URL; :class:`UnresolvedHostError` when the name does not resolve.
        """
        check_url(url)
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        literal = _literal_address(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                addresses = self.resolve(host, port)
            except (OSError, UnicodeError) as exc:
                raise UnresolvedHostError(f"webhook host {host} does not resolve: {exc}") from exc
            if not addresses:
                raise UnresolvedHostError(f"webhook host {host} does not resolve")
        for address in addresses:
            refusal = address_refusal(address, self.allowed)
            if refusal is not None:
                named = "" if literal is not None else f"{host} resolves to {address}, "
                raise WebhookDestinationError(
                    f"a webhook URL must not point at a {refusal} ({named}not allowed); "
                    "allow its network in the hub setting webhook_allow_networks if it is meant"
                )
        return PinnedUrl(url, host, port, addresses[0])


def is_retryable(status: int | None) -> bool:
    """No answer, a timeout, too early, too many requests or a server error: try again later."""
    return status is None or status in _RETRYABLE or status >= 500


def retry_after_s(value: str | None, cap_s: float) -> float:
    """Seconds from a ``Retry-After`` header in seconds form (0 when absent or a date), capped."""
    if value is None:
        return 0.0
    try:
        return min(max(float(value), 0.0), cap_s)
    except ValueError:
        return 0.0


def delivery_body(webhook_id: str, delivery_id: str, events: Sequence[LiveEvent]) -> bytes:
    """The JSON body POSTed: which webhook, which delivery, and the events (the API's shape)."""
    document = {
        "webhook_id": webhook_id,
        "delivery_id": delivery_id,
        "events": [e.to_json() for e in events],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# --- storage -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    id: str
    url: str
    secret: str = field(repr=False)
    filter: EventFilter
    created_at: datetime
    created_by: str
    delivered: int = 0
    failed: int = 0
    last_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    device_id TEXT,
    site TEXT,
    types TEXT NOT NULL,              -- comma-separated event types; empty: any
    created_us INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,  -- attempts that did not get a 2xx
    last_attempt_us INTEGER,
    last_status INTEGER,                -- NULL with last_error: no HTTP answer
    last_error TEXT
);
"""
_COLUMNS: Final = (
    "id, url, secret, device_id, site, types, created_us, created_by, delivered, failed,"
    " last_attempt_us, last_status, last_error"
)


def _us(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def _from_us(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1_000_000, UTC)


def _record(row: tuple[Any, ...]) -> WebhookRecord:
    (id_, url, secret, device_id, site, types, created_us, created_by, delivered, failed,
     last_us, last_status, last_error) = row  # fmt: skip
    return WebhookRecord(
        id=id_,
        url=url,
        secret=secret,
        filter=EventFilter(device_id, site, frozenset(t for t in types.split(",") if t)),
        created_at=datetime.fromtimestamp(created_us / 1_000_000, UTC),
        created_by=created_by,
        delivered=delivered,
        failed=failed,
        last_attempt_at=_from_us(last_us),
        last_status=last_status,
        last_error=last_error,
    )


class WebhookStore:
    """Registered webhooks in one SQLite file (``":memory:"`` for tests). Thread-safe.

    :meth:`active` serves the dispatcher from memory, reloaded after a local
    change or every ``refresh_s`` (webhooks another process registered show up then).
    """

    def __init__(
        self, path: Path | str, *, refresh_s: float = 5.0, destinations: WebhookDestinations | None = None
    ) -> None:
        self.destinations = destinations if destinations is not None else WebhookDestinations()
        self._path = str(path)
        self._lock = threading.Lock()
        self._refresh_s = refresh_s
        self._cache: tuple[WebhookRecord, ...] = ()
        self._cache_at = float("-inf")
        try:
            if self._path != ":memory:":
                target = Path(self._path)
                target.parent.mkdir(parents=True, exist_ok=True)
                # Created owner-only before SQLite opens it: it holds the signing secrets.
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the webhook database at {self._path}: {exc}") from exc

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise TransportError(f"webhook database {self._path}: {exc}") from exc

    def create(
        self, url: str, event_filter: EventFilter, *, created_by: str, secret: str | None = None
    ) -> WebhookRecord:
        """Register a webhook; ``secret`` is generated when not given. At most :data:`MAX_WEBHOOKS`.

        Everything is checked before the row is written: the URL and where it
        resolves to (:meth:`WebhookDestinations.pin`), and the secret.
        """
        secret = secret if secret is not None else new_secret()
        if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
            raise ConfigError(f"a webhook secret is {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters")
        self.destinations.pin(url)
        record = WebhookRecord(
            id="wh_" + uuid.uuid4().hex[:20],
            url=url,
            secret=secret,
            filter=event_filter,
            created_at=datetime.now(UTC),
            created_by=created_by,
        )
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                (existing,) = db.execute("SELECT COUNT(*) FROM webhooks").fetchone()
                if existing >= MAX_WEBHOOKS:
                    raise WebhookLimitError(f"at most {MAX_WEBHOOKS} webhooks; delete one first")
                db.execute(
                    "INSERT INTO webhooks (id, url, secret, device_id, site, types, created_us, created_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, url, secret, event_filter.device_id, event_filter.site,
                     ",".join(sorted(event_filter.types)), _us(record.created_at), created_by),
                )  # fmt: skip
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._cache_at = float("-inf")
        return record

    def list(self) -> list[WebhookRecord]:
        with self._connection() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM webhooks ORDER BY created_us, id").fetchall()  # noqa: S608 - constant columns
        return [_record(r) for r in rows]

    def get(self, webhook_id: str) -> WebhookRecord | None:
        with self._connection() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()  # noqa: S608 - constant columns
        return None if row is None else _record(row)

    def delete(self, webhook_id: str) -> bool:
        with self._connection() as db:
            deleted = db.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount > 0
            self._cache_at = float("-inf")
        return deleted

    def record_attempt(self, webhook_id: str, *, ok: bool, status: int | None, error: str | None) -> None:
        """Count one delivery attempt and keep its outcome (a deleted webhook is ignored)."""
        with self._connection() as db:
            db.execute(
                "UPDATE webhooks SET delivered = delivered + ?, failed = failed + ?, last_attempt_us = ?,"
                " last_status = ?, last_error = ? WHERE id = ?",
                (int(ok), int(not ok), _us(datetime.now(UTC)), status, error, webhook_id),
            )

    def active(self) -> tuple[WebhookRecord, ...]:
        """Every webhook, from memory when fresh enough."""
        now = time.monotonic()
        if now - self._cache_at >= self._refresh_s:
            self._cache = tuple(self.list())
            self._cache_at = now
        return self._cache

    def close(self) -> None:
        with self._lock:
            self._db.close()


class WebhookLimitError(ConfigError):
    """The store already holds :data:`MAX_WEBHOOKS` webhooks."""


# --- delivery ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Delivery:
    seq: int  # enqueue order: the lowest is the oldest, dropped first when full
    webhook_id: str
    url: str
    secret: str = field(repr=False)
    delivery_id: str
    body: bytes = field(repr=False)
    backoff: Backoff
    attempts: int = 0
    target: PinnedUrl | None = None  # resolved at the first attempt that got that far; kept for retries


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: int | None  # None: no HTTP answer
    error: str | None
    retry_after: str | None
    retryable: bool = True  # False: the destination was refused; no later attempt would be let through


@dataclass(frozen=True, slots=True)
class DispatcherStats:
    queued: int
    delivered: int
    gave_up: int
    dropped: int
    pending: int


class WebhookDispatcher:
    """Delivers published events to matching webhooks from ``workers`` threads.

    :meth:`offer` is a :class:`roadside.cloud.fleet.live.LiveFeed` sink: it matches filters
    and queues, and never blocks on the network. Start with :meth:`start`,
    stop with :meth:`stop` (in-flight requests finish; queued retries are dropped).
    """

    def __init__(
        self,
        store: WebhookStore,
        *,
        max_attempts: int = 8,
        timeout_s: float = 5.0,
        max_pending: int = 1000,
        workers: int = 2,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1 or max_pending < 1 or workers < 1:
            raise ValueError("max_attempts, max_pending and workers must be at least 1")
        self._store = store
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self._timeout_s = timeout_s
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._transport = transport
        self._verify = verify
        self._clock = clock
        self._wall_clock = wall_clock
        self._cond = threading.Condition()
        self._pending: dict[int, _Delivery] = {}
        self._due: list[tuple[float, int]] = []  # heap of (due time, seq); stale seqs are skipped
        self._seq = 0
        self._stopping = False
        self._queued = self._delivered = self._gave_up = self._dropped = 0
        self._workers = [
            threading.Thread(target=self._work, name=f"webhook-sender-{i}", daemon=True)
            for i in range(workers)
        ]

    # Producer side (the ingest writer's thread, through the live feed) --------------------

    def offer(self, events: Sequence[LiveEvent]) -> None:
        """Queue one delivery per webhook whose filter matches some of ``events``."""
        try:
            hooks = self._store.active()
        except TransportError as exc:
            log.warning("webhooks unavailable, %s events not delivered: %s", len(events), exc)
            return
        for hook in hooks:
            matching = [e for e in events if hook.filter.matches(e)]
            if matching:
                delivery_id = str(uuid.uuid4())
                self._enqueue(
                    _Delivery(
                        seq=0,
                        webhook_id=hook.id,
                        url=hook.url,
                        secret=hook.secret,
                        delivery_id=delivery_id,
                        body=delivery_body(hook.id, delivery_id, matching),
                        backoff=Backoff(*self._backoff),
                    )
                )

    def _enqueue(self, delivery: _Delivery) -> None:
        with self._cond:
            self._seq += 1
            delivery.seq = self._seq
            self._queued += 1
            self._schedule(delivery, self._clock())

    def _schedule(self, delivery: _Delivery, due: float) -> None:
        """Put a delivery on the schedule (lock held), giving up the oldest when full."""
        if len(self._pending) >= self.max_pending:
            oldest = min(self._pending)
            dropped = self._pending.pop(oldest)
            self._dropped += 1
            log.warning(
                "webhook queue full (%s): dropped delivery %s to %s",
                self.max_pending,
                dropped.delivery_id,
                dropped.webhook_id,
            )
        self._pending[delivery.seq] = delivery
        heapq.heappush(self._due, (due, delivery.seq))
        self._cond.notify()

    # Worker side ---------------------------------------------------------------------------

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            abandoned = len(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout_s)
        if abandoned:
            log.info("webhook dispatcher stopped with %s deliveries still queued", abandoned)

    def stats(self) -> DispatcherStats:
        with self._cond:
            return DispatcherStats(
                self._queued, self._delivered, self._gave_up, self._dropped, len(self._pending)
            )

    def _work(self) -> None:
        # No kept-alive connections: one to a pinned address must not carry a request for another
        # host name (its certificate was checked for the first). No proxies from the environment:
        # a proxy would resolve the name again, past the pin.
        with httpx.Client(
            timeout=self._timeout_s,
            follow_redirects=False,
            transport=self._transport,
            verify=self._verify,
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
        ) as client:
            while (delivery := self._next_due()) is not None:
                try:
                    self._attempt(client, delivery)
                except Exception:  # never let a sender die on a bug
                    log.exception("webhook delivery %s failed unexpectedly", delivery.delivery_id)

    def _next_due(self) -> _Delivery | None:
        """The next delivery whose time has come, or ``None`` once stopping."""
        with self._cond:
            while not self._stopping:
                if not self._due:
                    self._cond.wait()
                    continue
                due, seq = self._due[0]
                if seq not in self._pending:  # dropped while waiting
                    heapq.heappop(self._due)
                    continue
                wait = due - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._due)
                return self._pending.pop(seq)
            return None

    def _attempt(self, client: httpx.Client, delivery: _Delivery) -> None:
        """One signed POST; then delivered, given up, or scheduled again."""
        delivery.attempts += 1
        outcome = self._post(client, delivery)
        ok = outcome.status is not None and 200 <= outcome.status < 300
        self._record(delivery, ok=ok, status=outcome.status, error=outcome.error)
        if ok:
            return
        if not (outcome.retryable and is_retryable(outcome.status)) or delivery.attempts >= self.max_attempts:
            with self._cond:
                self._gave_up += 1
            log.warning(
                "webhook %s: gave up delivery %s after %s attempts (last status %s, error %s)",
                delivery.webhook_id, delivery.delivery_id, delivery.attempts, outcome.status, outcome.error,
            )  # fmt: skip
            return
        delay = max(delivery.backoff.next_delay(), retry_after_s(outcome.retry_after, self._backoff[1]))
        log.info(
            "webhook %s: delivery %s attempt %s failed (status %s, error %s); retrying in %.1f s",
            delivery.webhook_id, delivery.delivery_id, delivery.attempts, outcome.status, outcome.error, delay,
        )  # fmt: skip
        with self._cond:
            if not self._stopping:
                self._schedule(delivery, self._clock() + delay)

    def _post(self, client: httpx.Client, delivery: _Delivery) -> _Outcome:
        try:
            target = delivery.target or self._store.destinations.pin(delivery.url)
        except WebhookDestinationError as exc:
            log.warning(
                "webhook %s: refused destination %s: %s", delivery.webhook_id, masked_url(delivery.url), exc
            )
            return _Outcome(None, "refused destination", None, retryable=False)
        except UnresolvedHostError as exc:
            log.info("webhook %s: %s", delivery.webhook_id, exc)
            return _Outcome(None, "unresolved host", None)
        delivery.target = target
        timestamp = int(self._wall_clock())  # signed afresh each attempt: receivers check its age
        headers = {
            "Host": target.host_header(),
            "Content-Type": "application/json",
            "User-Agent": "roadside-hub",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(delivery.secret, timestamp, delivery.body),
            DELIVERY_HEADER: delivery.delivery_id,
            WEBHOOK_HEADER: delivery.webhook_id,
        }
        sni = target.sni_hostname()
        try:
            response = client.post(
                target.request_url(),
                content=delivery.body,
                headers=headers,
                extensions={"sni_hostname": sni} if sni is not None else None,
            )
        except httpx.HTTPError as exc:  # no answer: refused, timed out, reset
            return _Outcome(None, type(exc).__name__, None)
        return _Outcome(response.status_code, None, response.headers.get("retry-after"))

    def _record(self, delivery: _Delivery, *, ok: bool, status: int | None, error: str | None) -> None:
        if ok:
            with self._cond:
                self._delivered += 1
        try:
            self._store.record_attempt(delivery.webhook_id, ok=ok, status=status, error=error)
        except TransportError as exc:
            log.warning("could not record a webhook attempt: %s", exc)
