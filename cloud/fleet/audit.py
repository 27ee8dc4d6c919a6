"""The append-only audit log: who did what to the registry, hash-chained.

Every entry commits to the one before it::

    hash = SHA-256(canonical JSON of ["roadside.audit.v1", seq, ts, actor, action,
                                      subject, details, prev_hash])

with ``prev_hash`` of the first entry (seq 1) 64 zeros. Editing any field of
an entry breaks its own hash; re-computing that hash breaks the link from the
next entry; deleting or re-ordering entries breaks the sequence. So an edit
anywhere but the very end is caught by :func:`verify_chain` alone.

What protects the log, and what does not:

* The **hash chain** is the guarantee. The database's refusal of UPDATE and
  DELETE (triggers, created by the migration) only stops accidents and
  careless scripts: whoever owns the database can drop a trigger.
* Someone who rewrites the *whole* chain from some entry onward, re-hashing
  every entry after it, or who cuts entries off the end, leaves a chain that
  verifies. The ``audit_head`` row (the last seq and hash, kept beside the
  log) catches a careless truncation, but it sits in the same database.
  To catch a full rewrite, anchor the head hash outside the database: print
  it in the daily operations report, send it to a write-once store or
  another organisation's log, and compare. (Not built here.)

Layout: the pure core (:func:`canonical_details`, :func:`entry_hash`,
:func:`next_entry`, :func:`verify_chain`) takes and returns dataclasses and
is tested without a database. :class:`AuditLog` is the thin layer that
stores entries in the registry database, serialising appenders with a lock
on the one ``audit_head`` row (``SELECT ... FOR UPDATE`` on PostgreSQL, a
``BEGIN IMMEDIATE`` write lock on SQLite), with the primary key on ``seq`` as
the backstop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError

from roadside.shared.errors import TransportError

log = logging.getLogger(__name__)

GENESIS_HASH: Final = "0" * 64
HASH_DOMAIN: Final = "roadside.audit.v1"  # bump when the encoding changes; old entries keep theirs
MAX_ACTOR: Final = 128
MAX_ACTION: Final = 64
MAX_SUBJECT: Final = 256
APPEND_ATTEMPTS: Final = 5
DEFAULT_PAGE: Final = 1000

Reason = Literal["edited", "missing", "reordered"]

# The execution option that asks the SQLite "begin" hook for BEGIN IMMEDIATE (see below).
SQLITE_BEGIN_OPTION: Final = "roadside_sqlite_begin"


# --- pure core -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record. ``ts`` is UTC with microseconds, as both databases keep it."""

    seq: int
    ts: datetime
    actor: str
    action: str
    subject: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of a verification: ``ok``, or the first bad seq and why."""

    ok: bool
    entries: int  # how many entries were read
    head_hash: str | None = None  # the last entry's hash (genesis for an empty log) when ok
    first_bad_seq: int | None = None
    reason: Reason | None = None
    message: str = ""


def canonical_details(details: Mapping[str, Any]) -> str:
    """The one JSON text of ``details``: sorted keys, no spaces, UTF-8, no NaN or infinity."""
    _check_keys(details)
    try:
        return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit details must be JSON with string keys: {exc}") from exc


def _check_keys(value: object) -> None:
    # json.dumps would turn a key 1 into "1": the stored details would differ from the given ones.
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str):
                raise ValueError(f"audit details keys must be strings, got {key!r}")
            _check_keys(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            _check_keys(inner)


def canonical_ts(ts: datetime) -> str:
    """``ts`` as UTC ISO 8601 with microseconds and ``Z``; naive datetimes are refused."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(
    seq: int,
    ts: datetime,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over the canonical encoding of an entry's fields and its predecessor's hash."""
    encoded = json.dumps(
        [HASH_DOMAIN, seq, canonical_ts(ts), actor, action, subject, details, prev_hash],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(encoded.encode()).hexdigest()


def recompute(entry: AuditEntry) -> str:
    """The hash ``entry`` should carry, from its other fields."""
    return entry_hash(
        entry.seq, entry.ts, entry.actor, entry.action, entry.subject, entry.details, entry.prev_hash
    )


def next_entry(
    head: AuditEntry | None,
    ts: datetime,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """The entry that follows ``head`` (``None``: the first entry), with its hash."""
    seq, prev_hash = (head.seq + 1, head.hash) if head is not None else (1, GENESIS_HASH)
    return make_entry(seq, prev_hash, ts, actor, action, subject, details)


def make_entry(
    seq: int,
    prev_hash: str,
    ts: datetime,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """An entry at ``seq`` after the entry whose hash is ``prev_hash``; fields are checked."""
    _check_text("actor", actor, MAX_ACTOR)
    _check_text("action", action, MAX_ACTION)
    _check_text("subject", subject, MAX_SUBJECT, allow_empty=True)
    # Round-trip through the canonical text: the stored entry is exactly what was hashed.
    body: dict[str, Any] = json.loads(canonical_details(details or {}))
    when = datetime.fromisoformat(canonical_ts(ts))
    digest = entry_hash(seq, when, actor, action, subject, body, prev_hash)
    return AuditEntry(seq, when, actor, action, subject, body, prev_hash, digest)


def _check_text(name: str, value: str, limit: int, *, allow_empty: bool = False) -> None:
    if (not value and not allow_empty) or len(value) > limit:
        raise ValueError(f"audit {name} must be 1 to {limit} characters, got {value!r}")


def verify_chain(
    entries: Iterable[AuditEntry], *, first_seq: int = 1, prev_hash: str = GENESIS_HASH
) -> ChainReport:
    """Check that ``entries`` (in the order given) form an unbroken chain from ``first_seq``.

    Reports the first problem only, as the lowest seq that is wrong:

    * ``missing``: a seq is absent (a deleted row);
    * ``reordered``: entries are out of seq order, or a row carries another
      row's content under its seq (its hash verifies under its original seq);
    * ``edited``: a field no longer matches the entry's hash, or an entry was
      edited and re-hashed so the next entry's ``prev_hash`` no longer matches it.

    To verify a tail, pass the seq and hash of the entry before it. The chain
    is held in memory (an audit log has thousands of entries, not billions).
    """
    chain = list(entries)
    last_position = {entry.seq: position for position, entry in enumerate(chain)}
    expected_prev, expected_seq = prev_hash, first_seq
    for position, entry in enumerate(chain):
        if entry.seq != expected_seq:
            moved = entry.seq < expected_seq or last_position.get(expected_seq, -1) > position
            return _bad(
                len(chain),
                expected_seq,
                "reordered" if moved else "missing",
                f"expected seq {expected_seq} at position {position}, found {entry.seq}",
            )
        if recompute(entry) != entry.hash:
            moved = _moved_here(entry, last_position)
            return _bad(
                len(chain),
                entry.seq,
                "reordered" if moved else "edited",
                f"entry {entry.seq} does not match its hash",
            )
        if entry.prev_hash != expected_prev:
            # The entry is intact but does not follow its predecessor, whose hash it
            # committed to when written: the predecessor was changed and re-hashed since.
            culprit = chain[position - 1].seq if position > 0 else entry.seq
            return _bad(
                len(chain),
                culprit,
                "edited",
                f"entry {entry.seq} does not link to entry {culprit}, which changed after {entry.seq} was written",
            )
        expected_prev, expected_seq = entry.hash, expected_seq + 1
    return ChainReport(ok=True, entries=len(chain), head_hash=expected_prev)


def _moved_here(entry: AuditEntry, seqs: Iterable[int]) -> bool:
    """Whether ``entry`` is another seq's intact entry, renumbered (rows swapped in place)."""
    # Only run once, at the first failure: a few thousand hashes at most.
    return any(seq != entry.seq and recompute(replace(entry, seq=seq)) == entry.hash for seq in seqs)


def _bad(entries: int, seq: int, reason: Reason, message: str) -> ChainReport:
    return ChainReport(ok=False, entries=entries, first_bad_seq=seq, reason=reason, message=message)


# --- storage -------------------------------------------------------------------------------

# The tables, as migration 0002 creates them. ``details`` is the canonical JSON
# text, not a JSON column: PostgreSQL's jsonb would re-encode it, and what is
# hashed must be what is stored.
METADATA: Final = MetaData()

audit_log: Final = Table(
    "audit_log",
    METADATA,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("actor", String(MAX_ACTOR), nullable=False),
    Column("action", String(MAX_ACTION), nullable=False),
    Column("subject", String(MAX_SUBJECT), nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("hash", name="uq_audit_log_hash"),
)

# One row (id 1): the last seq and hash. Appenders lock it, so they queue up
# instead of racing for the next seq; verify() compares it with the log.
audit_head: Final = Table(
    "audit_head",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    CheckConstraint("id = 1", name="ck_audit_head_single_row"),
)


class HasEngine(Protocol):
    """Anything that owns the registry's engine (``roadside.cloud.registry.Registry``)."""

    @property
    def engine(self) -> Engine: ...


def use_explicit_sqlite_transactions(engine: Engine) -> None:
    """Make SQLAlchemy's "begin" a real ``BEGIN`` on SQLite (``BEGIN IMMEDIATE`` when asked).

    Python's sqlite3 (before 3.12) starts a transaction lazily, just before the
    first INSERT/UPDATE/DELETE, and never before DDL. So a read-then-write
    transaction takes the write lock only half-way (and fails with "database
    is locked" if another writer went first), and migrations are not atomic.
    This hands transaction control to SQLAlchemy, as its SQLite docs
    recommend. Connections opened with the execution option
    ``roadside_sqlite_begin="IMMEDIATE"`` take the write lock at BEGIN.
    Idempotent; a no-op for other databases.
    """
    if engine.dialect.name != "sqlite" or event.contains(engine, "begin", _sqlite_begin):
        return
    event.listen(engine, "connect", _sqlite_autocommit_driver)
    event.listen(engine, "begin", _sqlite_begin)
    # Connections already pooled were made without the hook; start afresh.
    engine.dispose(close=False)


def _sqlite_autocommit_driver(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "")
    if mode not in {"", "DEFERRED", "IMMEDIATE", "EXCLUSIVE"}:
        raise ValueError(f"{SQLITE_BEGIN_OPTION} must be DEFERRED, IMMEDIATE or EXCLUSIVE, got {mode!r}")
    connection.exec_driver_sql(f"BEGIN {mode}".strip())


def writer(engine: Engine) -> Engine:
    """``engine``, but whose transactions take SQLite's write lock at BEGIN (no-op elsewhere)."""
    return engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})


def append_in(
    connection: Connection,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> AuditEntry:
    """Append an entry inside the caller's transaction, so it commits or rolls back with it.

    The transaction must hold SQLite's write lock already (begun through
    :func:`writer`); on PostgreSQL the head row is locked here and stays
    locked until the caller's commit, which queues other appenders behind it.
    """
    head_query = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
    if connection.dialect.name != "sqlite":
        head_query = head_query.with_for_update()
    head = connection.execute(head_query).first()
    if head is None:
        raise TransportError("the audit_head row is missing: run the registry migrations (create_schema)")
    entry = make_entry(head.seq + 1, head.hash, now or datetime.now(UTC), actor, action, subject, details)
    connection.execute(insert(audit_log).values(_row(entry)))
    connection.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=entry.seq, hash=entry.hash))
    return entry


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "ts": entry.ts,
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "details": canonical_details(entry.details),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def _entry(row: Any) -> AuditEntry:
    ts: datetime = row.ts
    # SQLite hands back naive datetimes; PostgreSQL hands back the session's time zone.
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return AuditEntry(
        row.seq, ts, row.actor, row.action, row.subject, json.loads(row.details), row.prev_hash, row.hash
    )


class AuditLog:
    """The audit log in the registry database: append, read, verify. No update, no delete."""

    def __init__(self, source: Engine | HasEngine) -> None:
        self._engine = source if isinstance(source, Engine) else source.engine
        use_explicit_sqlite_transactions(self._engine)
        self._writer = writer(self._engine)

    def append(
        self, actor: str, action: str, subject: str, details: Mapping[str, Any] | None = None
    ) -> AuditEntry:
        """Append one entry in its own transaction and return it.

        Safe across threads, processes and hubs sharing the database. Should
        two appenders still collide on a seq (the primary key is the backstop
        if the head lock is bypassed), the loser retries with the new head.
        """
        for attempt in range(1, APPEND_ATTEMPTS + 1):
            try:
                with self._writer.begin() as connection:
                    return append_in(connection, actor, action, subject, details)
            except SqlIntegrityError as exc:
                if attempt == APPEND_ATTEMPTS:
                    raise TransportError(f"audit append kept colliding after {attempt} attempts") from exc
                log.warning("audit append collided on seq (attempt %s); retrying", attempt)
            except OperationalError as exc:
                # SQLite says "database is locked" when busy_timeout ran out; anything else is fatal.
                if "locked" not in str(exc.orig) or attempt == APPEND_ATTEMPTS:
                    raise TransportError(f"audit log database unavailable: {exc.orig}") from exc
                log.warning("audit log database busy (attempt %s); retrying", attempt)
            time.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311 - jitter, not a secret
        raise AssertionError("unreachable")

    def entries(self, since_seq: int = 0, limit: int | None = DEFAULT_PAGE) -> list[AuditEntry]:
        """Entries with seq greater than ``since_seq``, oldest first, at most ``limit`` (None: all)."""
        query = select(audit_log).where(audit_log.c.seq > since_seq).order_by(audit_log.c.seq)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as connection:
            return [_entry(row) for row in connection.execute(query)]

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry as the head row records it; ``(0, genesis)`` when empty."""
        with self._engine.connect() as connection:
            row = connection.execute(select(audit_head.c.seq, audit_head.c.hash)).first()
        return (row.seq, row.hash) if row is not None else (0, GENESIS_HASH)

    def verify(self) -> ChainReport:
        """Verify the whole chain, and that it reaches the entry the head row records."""
        with self._engine.connect() as connection:
            # The head first: appends commit log and head together, so every entry up
            # to this head is in the log read after it (later appends may be there too).
            head = connection.execute(select(audit_head.c.seq, audit_head.c.hash)).first()
            chain = [_entry(row) for row in _pages(connection)]
        report = verify_chain(chain)
        if not report.ok or head is None or head.seq == 0:
            return report
        if head.seq > len(chain):
            return _bad(len(chain), len(chain) + 1, "missing",
                        f"the head row records seq {head.seq}, the log ends at {len(chain)}")  # fmt: skip
        if chain[head.seq - 1].hash != head.hash:
            return _bad(len(chain), head.seq, "edited",
                        f"entry {head.seq} does not match the hash the head row recorded")  # fmt: skip
        return report


def _pages(connection: Connection, size: int = DEFAULT_PAGE) -> Iterator[Any]:
    """All audit rows in seq order, read a page at a time (keyset, so each page is an index range)."""
    last = 0
    while True:
        rows: Sequence[Any] = connection.execute(
            select(audit_log).where(audit_log.c.seq > last).order_by(audit_log.c.seq).limit(size)
        ).all()
        yield from rows
        if len(rows) < size:
            return
        last = rows[-1].seq
