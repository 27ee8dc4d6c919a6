"""The hub's registry: devices, their envelope keys, API clients, models and rollouts.

SQLAlchemy 2 over SQLite by default (a file next to the hub's data), or
PostgreSQL in production (``postgresql+psycopg://...``). Only this module
(and :mod:`cloud.audit`, for the audit tables) talks to the registry database.

The schema is owned by the Alembic migrations in ``cloud/migrations``:
:meth:`Registry.create_schema` upgrades to the newest revision, adopting a
database that an older Roadside made with ``create_all``. Every change made
through the registry (enroll, add_key, revoke, create_api_client,
publish_model, create_rollout, set_rollout_status) appends an entry to the
hash-chained audit log in the same transaction, so a change and its audit
entry commit together or not at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cloud import audit
from cloud.audit import AuditLog, canonical_details, use_explicit_sqlite_transactions
from cloud.broker import is_reserved_name
from shared.errors import ConfigError, TransportError
from shared.keys import PublicKeys, b64, unb64
from shared.topics import check_name

log = logging.getLogger(__name__)

_LOCKED_RETRIES: Final = 10
SCOPES: Final = frozenset({"read:telemetry", "write:devices", "write:rollouts", "admin"})
TOKEN_PREFIX: Final = "rs_"  # noqa: S105 - a public marker, not a secret
MODEL_STATUSES: Final = frozenset({"draft", "published", "retired"})
ROLLOUT_STATUSES: Final = frozenset(
    {"pending", "running", "paused", "rolling_back", "completed", "rolled_back", "aborted"}
)
DEFAULT_ACTOR: Final = "system"

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
# The revision whose tables are exactly what ``create_all`` made before migrations existed.
BASELINE_REVISION: Final = "0001"
_LEGACY_TABLES: Final = frozenset({"devices", "device_keys", "api_clients"})
# Any constant will do: hubs starting together take turns to migrate instead of racing.
_MIGRATION_LOCK_KEY: Final = 0x526F616473696465  # "Roadside"
_VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}")
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")

_T = TypeVar("_T")


class _Base(DeclarativeBase):
    pass


class _Device(_Base):
    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class _DeviceKey(_Base):
    __tablename__ = "device_keys"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    x25519: Mapped[str] = mapped_column(String(64))
    ed25519: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _ApiClient(_Base):
    __tablename__ = "api_clients"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    department: Mapped[str] = mapped_column(String(64), default="")
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(256))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Model(_Base):
    __tablename__ = "models"
    __table_args__ = (
        # A model retrained from an earlier version of itself names that version.
        ForeignKeyConstraint(["name", "parent"], ["models.name", "models.version"], name="fk_models_parent"),
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # "metadata" is reserved on declarative classes, so the attribute has another name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    parent: Mapped[str | None] = mapped_column(String(32), nullable=True)


class _Rollout(_Base):
    __tablename__ = "rollouts"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_name", "model_version"], ["models.name", "models.version"], name="fk_rollouts_model"
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(256))
    waves: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Added by migration 0003: the rollout's settings, its progress, and why it ended.
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    current_wave: Mapped[int] = mapped_column(Integer, server_default="0")
    wave_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str] = mapped_column(String(1024), server_default="")


class _RolloutDevice(_Base):
    __tablename__ = "rollout_devices"
    rollout_id: Mapped[int] = mapped_column(Integer, ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(1024))
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    baseline: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    health: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# What the migrations build, for Alembic's autogenerate and the drift test.
TARGET_METADATA: Final[tuple[MetaData, ...]] = (_Base.metadata, audit.METADATA)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    site: str
    status: str
    enrolled_at: datetime
    last_seen_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiClient:
    name: str
    department: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


@dataclass(frozen=True, slots=True)
class ModelRecord:
    name: str
    version: str
    sha256: str
    size: int
    status: str
    created_at: datetime
    metadata: Mapping[str, Any]
    parent: str | None


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    id: int
    model_name: str
    model_version: str
    target: str
    waves: tuple[Mapping[str, Any], ...]
    status: str
    created_at: datetime
    updated_at: datetime
    spec: Mapping[str, Any] | None = None
    current_wave: int = 0
    wave_started_at: datetime | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RolloutDeviceRecord:
    rollout_id: int
    device_id: str
    wave: int
    state: str
    detail: str
    shadow: Mapping[str, Any] | None
    baseline: Mapping[str, Any] | None
    health: Mapping[str, Any] | None
    updated_at: datetime


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns; PostgreSQL
    # hands back aware ones in the session's time zone. Both become UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_now_or(value: datetime | None) -> datetime:
    found = _utc(value)
    assert found is not None
    return found


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for the registry migrations; no ``alembic.ini`` needed.

    ``connection`` (preferred) runs migrations on it, inside its transaction;
    ``url`` is for offline ``--sql`` generation.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class Registry:
    """Devices, keys, API clients, models and rollouts, behind plain methods and frozen records."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(url)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        use_explicit_sqlite_transactions(self._engine)
        # Writes take SQLite's write lock at BEGIN: a read-then-write transaction
        # (check, insert, append to the audit log) never has to upgrade its lock.
        self._writer = audit.writer(self._engine)
        self._lock = threading.Lock()
        self.audit = AuditLog(self._engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    # Schema ------------------------------------------------------------------

    def create_schema(self) -> None:
        """Bring the schema to the newest revision; safe to call on every start."""
        self.migrate("head")

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision``, adopting a pre-migration database first."""

        def upgrade(connection: Connection) -> None:
            _adopt_unversioned(connection)
            _require_known_revision(connection)
            command.upgrade(alembic_config(connection), revision)

        self._run_migration(upgrade)

    def downgrade(self, revision: str) -> None:
        """Take the schema back to ``revision`` (``"base"``: nothing). Drops data; never automatic."""
        self._run_migration(lambda connection: command.downgrade(alembic_config(connection), revision))

    def current_revision(self) -> str | None:
        """The schema revision the database is at; ``None`` when it has never been migrated."""
        try:
            with self._engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc

    def _run_migration(self, migrate: Callable[[Connection], None]) -> None:
        # Two hubs starting together on one SQLite file: the loser of BEGIN IMMEDIATE can
        # outwait the busy timeout on a loaded machine. The migration rolled back whole, so
        # trying again is safe; it then finds the schema current and does nothing.
        for attempt in range(_LOCKED_RETRIES):
            try:
                self._migrate_once(migrate)
                return
            except TransportError as exc:
                if "locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                    raise
                log.info("registry locked by another migrating process; retrying")
                time.sleep(0.2 * (attempt + 1))

    def _migrate_once(self, migrate: Callable[[Connection], None]) -> None:
        try:
            with self._writer.connect() as connection:
                sqlite = connection.dialect.name == "sqlite"
                if sqlite:
                    # SQLite rebuilds tables for ALTERs (Alembic batch mode); with foreign
                    # keys enforced, dropping the old copy of a parent table would cascade or
                    # fail. The pragma is ignored inside a transaction, so it goes first, and
                    # the keys are checked before the commit instead.
                    _driver_execute(connection, "PRAGMA foreign_keys=OFF")
                try:
                    with connection.begin():
                        if connection.dialect.name == "postgresql":
                            connection.execute(
                                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                            )
                        migrate(connection)
                        if sqlite:
                            _check_foreign_keys(connection)
                finally:
                    if sqlite:
                        _driver_execute(connection, "PRAGMA foreign_keys=ON")
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable or migration failed: {exc.orig}") from exc
        except DBAPIError as exc:
            raise ConfigError(f"registry migration failed and was rolled back: {exc.orig}") from exc
        except CommandError as exc:
            raise ConfigError(f"registry migration failed: {exc}") from exc

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        """Raise ``TransportError`` if the registry database cannot be reached."""
        try:
            with self._engine.connect() as connection:
                connection.execute(select(1))
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc

    def _write(self, change: Callable[[Session], _T]) -> _T:
        """Run ``change`` in one write transaction (which also holds the audit entry)."""
        with Session(self._writer) as session, session.begin():
            return change(session)

    # Devices -----------------------------------------------------------------

    def enroll(
        self,
        device_id: str,
        site: str,
        keys: PublicKeys,
        *,
        actor: str = DEFAULT_ACTOR,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Register a new device with its first envelope key.

        ``before_commit`` runs once the rows are written and before they commit: if it
        raises, nothing is registered (enrollment writes its files there, all or nothing).
        Names the hubs use (``hub``, ``hub-*``) are refused.
        """
        check_name(device_id, "device id")
        if is_reserved_name(device_id):
            raise ConfigError(f"device id {device_id!r} is reserved for hub processes; pick another id")
        check_name(site, "site")
        now = datetime.now(UTC)

        def change(session: Session) -> None:
            if session.get(_Device, device_id) is not None:
                raise ConfigError(f"device {device_id!r} is already enrolled; revoke it or pick another id")
            session.add(_Device(device_id=device_id, site=site, status="active", enrolled_at=now))
            session.flush()
            session.add(_key_row(device_id, keys, now))
            session.flush()
            _audit(session, actor, "device.enroll", device_id, {"site": site, "kid": keys.kid}, now)
            if before_commit is not None:
                before_commit()

        try:
            self._write(change)
        except SqlIntegrityError as exc:
            # Another hub enrolled the same id between our check and our insert.
            raise ConfigError(
                f"device {device_id!r} is already enrolled; revoke it or pick another id"
            ) from exc

    def add_key(self, device_id: str, keys: PublicKeys, *, actor: str = DEFAULT_ACTOR) -> None:
        """Add a key beside the current ones (rotation without downtime)."""

        def change(session: Session) -> None:
            if session.get(_Device, device_id) is None:
                raise ConfigError(f"device {device_id!r} is not enrolled")
            now = datetime.now(UTC)
            session.add(_key_row(device_id, keys, now))
            session.flush()
            _audit(session, actor, "device.add_key", device_id, {"kid": keys.kid}, now)

        self._write(change)

    def revoke(self, device_id: str, *, actor: str = DEFAULT_ACTOR) -> None:
        """Mark the device and all its keys revoked (a no-op, still audited, for an unknown id)."""

        def change(session: Session) -> None:
            devices = session.execute(
                update(_Device).where(_Device.device_id == device_id).values(status="revoked")
            )
            keys = session.execute(
                update(_DeviceKey).where(_DeviceKey.device_id == device_id).values(active=False)
            )
            details = {"found": _rowcount(devices) > 0, "keys_deactivated": _rowcount(keys)}
            _audit(session, actor, "device.revoke", device_id, details)

        self._write(change)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with Session(self._engine) as session:
            row = session.get(_Device, device_id)
            return _device_record(row) if row is not None else None

    def list_devices(self, site: str | None = None) -> list[DeviceRecord]:
        query = select(_Device).order_by(_Device.device_id)
        if site is not None:
            query = query.where(_Device.site == site)
        with Session(self._engine) as session:
            return [_device_record(row) for row in session.scalars(query)]

    def device_key(self, device_id: str, kid: str) -> tuple[str, PublicKeys] | None:
        """``(site, keys)`` for an active key of an active device, else ``None``."""
        query = (
            select(_Device.site, _DeviceKey.x25519, _DeviceKey.ed25519)
            .join(_DeviceKey, _DeviceKey.device_id == _Device.device_id)
            .where(_Device.device_id == device_id, _DeviceKey.kid == kid)
            .where(_Device.status == "active", _DeviceKey.active.is_(True))
        )
        with Session(self._engine) as session:
            row = session.execute(query).first()
        if row is None:
            return None
        return row.site, PublicKeys(unb64(row.x25519), unb64(row.ed25519))

    def active_keys(self, device_id: str) -> list[PublicKeys]:
        query = select(_DeviceKey).where(_DeviceKey.device_id == device_id, _DeviceKey.active.is_(True))
        with Session(self._engine) as session:
            return [PublicKeys(unb64(k.x25519), unb64(k.ed25519)) for k in session.scalars(query)]

    def mark_seen(self, seen: Iterable[tuple[str, datetime]]) -> None:
        """Record the latest time each device was heard from.

        Not audited: it is telemetry bookkeeping, many times a minute, not a decision anyone made.
        """
        with self._lock, Session(self._writer) as session, session.begin():
            for device_id, at in seen:
                session.execute(
                    update(_Device)
                    .where(_Device.device_id == device_id)
                    .where((_Device.last_seen_at.is_(None)) | (_Device.last_seen_at < at))
                    .values(last_seen_at=at)
                )

    # API clients -------------------------------------------------------------

    def create_api_client(
        self, name: str, scopes: Iterable[str], department: str = "", *, actor: str = DEFAULT_ACTOR
    ) -> str:
        """Create a client and return its token; only a hash of the token is kept (and never audited)."""
        check_name(name, "API client name")
        wanted = frozenset(scopes)
        unknown = wanted - SCOPES
        if unknown or not wanted:
            raise ConfigError(f"unknown or empty scopes {sorted(unknown)}; choose from {sorted(SCOPES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)

        def change(session: Session) -> None:
            if session.get(_ApiClient, name) is not None:
                raise ConfigError(f"API client {name!r} already exists")
            session.add(
                _ApiClient(
                    name=name,
                    department=department,
                    token_sha256=_token_hash(token),
                    scopes=",".join(sorted(wanted)),
                    revoked=False,
                    created_at=now,
                )
            )
            session.flush()
            details = {"department": department, "scopes": sorted(wanted)}
            _audit(session, actor, "apiclient.create", name, details, now)

        try:
            self._write(change)
        except SqlIntegrityError as exc:
            # Another hub created the same name between our check and our insert.
            raise ConfigError(f"API client {name!r} already exists") from exc
        return token

    def authenticate(self, token: str) -> ApiClient | None:
        """The client a bearer token belongs to, or ``None``."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = _token_hash(token)
        try:
            with Session(self._engine) as session:
                row = session.scalars(select(_ApiClient).where(_ApiClient.token_sha256 == digest)).first()
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc
        # The lookup is by hash; compare again in constant time for good measure.
        if row is None or row.revoked or not hmac.compare_digest(row.token_sha256, digest):
            return None
        return ApiClient(row.name, row.department, frozenset(row.scopes.split(",")))

    # Models ------------------------------------------------------------------

    def publish_model(
        self,
        name: str,
        version: str,
        sha256: str,
        size: int,
        metadata: Mapping[str, Any] | None = None,
        parent: str | None = None,
        *,
        status: str = "published",
        actor: str = DEFAULT_ACTOR,
    ) -> ModelRecord:
        """Record a model artefact (its hash and size, as signed into the model repository)."""
        check_name(name, "model name")
        for value in (version, *([parent] if parent is not None else [])):
            if not _VERSION_RE.fullmatch(value):
                raise ConfigError(f"model version {value!r} is not allowed: 1-32 of A-Z a-z 0-9 . _ + -")
        if not _SHA256_RE.fullmatch(sha256):
            raise ConfigError("model sha256 must be 64 lower-case hex digits")
        if size < 0 or status not in MODEL_STATUSES:
            raise ConfigError(f"model size must be >= 0 and status one of {sorted(MODEL_STATUSES)}")
        body = _json_object(metadata or {}, "model metadata")
        now = datetime.now(UTC)

        def change(session: Session) -> ModelRecord:
            if session.get(_Model, (name, version)) is not None:
                raise ConfigError(f"model {name} {version} already exists; publish a new version")
            if parent is not None and session.get(_Model, (name, parent)) is None:
                raise ConfigError(f"parent model {name} {parent} does not exist")
            row = _Model(
                name=name, version=version, sha256=sha256, size=size, status=status,
                created_at=now, meta=body, parent=parent,
            )  # fmt: skip
            session.add(row)
            session.flush()
            details = {"version": version, "sha256": sha256, "size": size, "status": status, "parent": parent}
            _audit(session, actor, "model.publish", name, details, now)
            return _model_record(row)

        return self._write(change)

    def set_model_status(
        self, name: str, version: str, status: str, *, reason: str = "", actor: str = DEFAULT_ACTOR
    ) -> ModelRecord:
        """Move a model to ``status`` (``retired``: rolled back, no longer the baseline or a rollout target)."""
        if status not in MODEL_STATUSES:
            raise ConfigError(f"model status {status!r} unknown; choose from {sorted(MODEL_STATUSES)}")
        now = datetime.now(UTC)

        def change(session: Session) -> ModelRecord:
            row = session.get(_Model, (name, version))
            if row is None:
                raise ConfigError(f"model {name} {version} does not exist")
            details = {"version": version, "from": row.status, "to": status, "reason": reason}
            row.status = status
            session.flush()
            _audit(session, actor, "model.status", name, details, now)
            return _model_record(row)

        return self._write(change)

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        with Session(self._engine) as session:
            row = session.get(_Model, (name, version))
            return _model_record(row) if row is not None else None

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """Models, oldest first (by name, then time of publication)."""
        query = select(_Model).order_by(_Model.name, _Model.created_at, _Model.version)
        if name is not None:
            query = query.where(_Model.name == name)
        with Session(self._engine) as session:
            return [_model_record(row) for row in session.scalars(query)]

    # Rollouts ----------------------------------------------------------------

    def create_rollout(
        self,
        model_name: str,
        model_version: str,
        target: str,
        waves: Sequence[Mapping[str, Any]],
        *,
        spec: Mapping[str, Any] | None = None,
        assignments: Sequence[tuple[str, int]] = (),
        actor: str = DEFAULT_ACTOR,
    ) -> RolloutRecord:
        """Record a pending rollout of a published model to ``target`` in ``waves``.

        ``assignments`` are ``(device_id, wave)`` pairs: the devices the rollout
        will reach, each starting ``pending``.
        """
        if not target or len(target) > 256:
            raise ConfigError("rollout target must be 1-256 characters (e.g. 'all', 'site:<site>')")
        plan = [_json_object(wave, "rollout wave") for wave in waves]
        if not plan:
            raise ConfigError("a rollout needs at least one wave")
        now = datetime.now(UTC)

        def change(session: Session) -> RolloutRecord:
            model = session.get(_Model, (model_name, model_version))
            if model is None or model.status != "published":
                raise ConfigError(f"model {model_name} {model_version} is not published")
            row = _Rollout(
                model_name=model_name, model_version=model_version, target=target, waves=plan,
                status="pending", created_at=now, updated_at=now,
                spec=_json_object(spec, "rollout spec") if spec is not None else None,
                current_wave=0, reason="",
            )  # fmt: skip
            session.add(row)
            session.flush()  # assigns the id
            for device_id, wave in assignments:
                session.add(
                    _RolloutDevice(
                        rollout_id=row.id,
                        device_id=device_id,
                        wave=wave,
                        state="pending",
                        detail="",
                        updated_at=now,
                    )
                )
            details = {
                "model": model_name, "version": model_version, "target": target, "waves": len(plan),
                "devices": len(assignments), "spec": row.spec,
            }  # fmt: skip
            _audit(session, actor, "rollout.create", str(row.id), details, now)
            return _rollout_record(row)

        return self._write(change)

    def set_rollout_status(
        self, rollout_id: int, status: str, *, reason: str = "", actor: str = DEFAULT_ACTOR
    ) -> RolloutRecord:
        """Move a rollout to ``status`` (the rollout controller decides which moves are legal)."""
        if status not in ROLLOUT_STATUSES:
            raise ConfigError(f"rollout status {status!r} unknown; choose from {sorted(ROLLOUT_STATUSES)}")
        now = datetime.now(UTC)

        def change(session: Session) -> RolloutRecord:
            row = session.get(_Rollout, rollout_id)
            if row is None:
                raise ConfigError(f"rollout {rollout_id} does not exist")
            details = {"from": row.status, "to": status, "reason": reason}
            row.status, row.updated_at = status, now
            if reason:
                row.reason = reason[:1024]
            session.flush()
            _audit(session, actor, "rollout.status", str(rollout_id), details, now)
            return _rollout_record(row)

        return self._write(change)

    def get_rollout(self, rollout_id: int) -> RolloutRecord | None:
        with Session(self._engine) as session:
            row = session.get(_Rollout, rollout_id)
            return _rollout_record(row) if row is not None else None

    def list_rollouts(self, status: str | None = None) -> list[RolloutRecord]:
        query = select(_Rollout).order_by(_Rollout.id)
        if status is not None:
            query = query.where(_Rollout.status == status)
        with Session(self._engine) as session:
            return [_rollout_record(row) for row in session.scalars(query)]

    def start_wave(self, rollout_id: int, wave: int, *, actor: str = DEFAULT_ACTOR) -> RolloutRecord:
        """Make ``wave`` the rollout's current wave (started now) and mark it running; audited."""
        now = datetime.now(UTC)

        def change(session: Session) -> RolloutRecord:
            row = session.get(_Rollout, rollout_id)
            if row is None:
                raise ConfigError(f"rollout {rollout_id} does not exist")
            row.current_wave, row.wave_started_at, row.updated_at = wave, now, now
            if row.status == "pending":
                row.status = "running"
            session.flush()
            _audit(session, actor, "rollout.wave", str(rollout_id), {"wave": wave}, now)
            return _rollout_record(row)

        return self._write(change)

    def rollout_devices(self, rollout_id: int) -> list[RolloutDeviceRecord]:
        query = (
            select(_RolloutDevice)
            .where(_RolloutDevice.rollout_id == rollout_id)
            .order_by(_RolloutDevice.wave, _RolloutDevice.device_id)
        )
        with Session(self._engine) as session:
            return [_rollout_device_record(row) for row in session.scalars(query)]

    def update_rollout_device(
        self,
        rollout_id: int,
        device_id: str,
        advance: Callable[[RolloutDeviceRecord], Mapping[str, Any] | None],
    ) -> RolloutDeviceRecord | None:
        """Change one device's progress: ``advance`` gets the current record and returns the fields
        to set (``state``, ``detail``, ``shadow``, ``baseline``, ``health``), or ``None`` for no change.
        ``None`` if the device is not part of the rollout."""
        return self.update_rollout_devices([(rollout_id, device_id, advance)])[0]

    def update_rollout_devices(
        self,
        changes: Sequence[tuple[int, str, Callable[[RolloutDeviceRecord], Mapping[str, Any] | None]]],
    ) -> list[RolloutDeviceRecord | None]:
        """Several :meth:`update_rollout_device` changes in one transaction (one fsync for a batch of reports)."""
        now = datetime.now(UTC)

        def change(session: Session) -> list[RolloutDeviceRecord | None]:
            results: list[RolloutDeviceRecord | None] = []
            for rollout_id, device_id, advance in changes:
                row = session.get(_RolloutDevice, (rollout_id, device_id))
                if row is None:
                    results.append(None)
                    continue
                fields = advance(_rollout_device_record(row))
                for name, value in (fields or {}).items():
                    if name not in ("state", "detail", "shadow", "baseline", "health"):
                        raise ConfigError(f"rollout device field {name!r} cannot be set")
                    setattr(row, name, value[:1024] if name == "detail" else value)
                if fields:
                    row.updated_at = now
                session.flush()
                results.append(_rollout_device_record(row))
            return results

        return self._write(change)

    def record_audit(self, actor: str, action: str, subject: str, details: Mapping[str, Any]) -> None:
        """Append an audit entry for a decision that changes no registry row (a gate verdict)."""
        self._write(lambda session: _audit(session, actor, action, subject, details, datetime.now(UTC)))


def _audit(
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


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``value`` as plain JSON (a copy), or ``ConfigError`` if it is not JSON."""
    try:
        body: dict[str, Any] = json.loads(canonical_details(value))
    except ValueError as exc:
        raise ConfigError(f"{what} must be a JSON object: {exc}") from exc
    return body


def _key_row(device_id: str, keys: PublicKeys, now: datetime) -> _DeviceKey:
    return _DeviceKey(
        device_id=device_id,
        kid=keys.kid,
        x25519=b64(keys.x25519),
        ed25519=b64(keys.ed25519),
        active=True,
        created_at=now,
    )


def _device_record(row: _Device) -> DeviceRecord:
    return DeviceRecord(
        row.device_id, row.site, row.status, _utc_now_or(row.enrolled_at), _utc(row.last_seen_at)
    )


def _model_record(row: _Model) -> ModelRecord:
    return ModelRecord(
        row.name, row.version, row.sha256, row.size, row.status, _utc_now_or(row.created_at),
        dict(row.meta), row.parent,
    )  # fmt: skip


def _rollout_record(row: _Rollout) -> RolloutRecord:
    return RolloutRecord(
        row.id, row.model_name, row.model_version, row.target, tuple(dict(w) for w in row.waves),
        row.status, _utc_now_or(row.created_at), _utc_now_or(row.updated_at),
        dict(row.spec) if row.spec is not None else None, row.current_wave or 0,
        _utc(row.wave_started_at), row.reason or "",
    )  # fmt: skip


def _rollout_device_record(row: _RolloutDevice) -> RolloutDeviceRecord:
    return RolloutDeviceRecord(
        row.rollout_id, row.device_id, row.wave, row.state, row.detail,
        dict(row.shadow) if row.shadow is not None else None,
        dict(row.baseline) if row.baseline is not None else None,
        dict(row.health) if row.health is not None else None,
        _utc_now_or(row.updated_at),
    )  # fmt: skip


def _adopt_unversioned(connection: Connection) -> None:
    """Stamp a database made by ``create_all`` (before migrations) as the baseline revision."""
    inspector = inspect(connection)
    if inspector.has_table("alembic_version"):
        return
    present = {name for name in _LEGACY_TABLES if inspector.has_table(name)}
    if not present:
        return
    if present != _LEGACY_TABLES:
        raise ConfigError(
            f"the registry database has tables {sorted(present)} but not {sorted(_LEGACY_TABLES - present)} "
            "and no alembic_version: it was not made by Roadside; point registry_url at another database"
        )
    log.info("registry tables predate migrations; stamping them as revision %s", BASELINE_REVISION)
    command.stamp(alembic_config(connection), BASELINE_REVISION)


def _require_known_revision(connection: Connection) -> None:
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    if current not in {rev.revision for rev in script.walk_revisions()}:
        raise ConfigError(
            f"the registry schema is at revision {current!r}, which this Roadside does not know "
            f"(newest here: {script.get_current_head()!r}); a newer Roadside migrated it: upgrade Roadside"
        )


def _driver_execute(connection: Connection, sql: str) -> None:
    # Straight to sqlite3 (in autocommit mode): SQLAlchemy would BEGIN first.
    connection.connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise ConfigError(f"migration would leave broken foreign keys: {broken[:5]}; rolled back")


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
