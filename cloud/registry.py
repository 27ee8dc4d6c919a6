"""The hub's registry: devices, their envelope keys, and API clients.

SQLAlchemy 2 over SQLite by default (a file next to the hub's data), or
PostgreSQL in production (``postgresql+psycopg://...``). Only this module
talks to the registry database.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    String,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shared.errors import ConfigError, TransportError
from shared.keys import PublicKeys, b64, unb64
from shared.topics import check_name

SCOPES: Final = frozenset({"read:telemetry", "write:devices", "write:rollouts", "admin"})
TOKEN_PREFIX: Final = "rs_"  # noqa: S105 - a public marker, not a secret


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


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Registry:
    """Devices, keys and API clients, behind plain methods and frozen records."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            event.listen(self._engine, "connect", _sqlite_pragmas)
        self._lock = threading.Lock()

    def create_schema(self) -> None:
        try:
            _Base.metadata.create_all(self._engine)
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        """Raise ``TransportError`` if the registry database cannot be reached."""
        try:
            with self._engine.connect() as connection:
                connection.execute(select(1))
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc

    # Devices -----------------------------------------------------------------

    def enroll(self, device_id: str, site: str, keys: PublicKeys) -> None:
        """Register a new device with its first envelope key."""
        check_name(device_id, "device id")
        check_name(site, "site")
        now = datetime.now(UTC)
        with Session(self._engine) as session, session.begin():
            if session.get(_Device, device_id) is not None:
                raise ConfigError(f"device {device_id!r} is already enrolled; revoke it or pick another id")
            session.add(_Device(device_id=device_id, site=site, status="active", enrolled_at=now))
            session.flush()
            session.add(_key_row(device_id, keys, now))

    def add_key(self, device_id: str, keys: PublicKeys) -> None:
        """Add a key beside the current ones (rotation without downtime)."""
        with Session(self._engine) as session, session.begin():
            if session.get(_Device, device_id) is None:
                raise ConfigError(f"device {device_id!r} is not enrolled")
            session.add(_key_row(device_id, keys, datetime.now(UTC)))

    def revoke(self, device_id: str) -> None:
        with Session(self._engine) as session, session.begin():
            session.execute(update(_Device).where(_Device.device_id == device_id).values(status="revoked"))
            session.execute(update(_DeviceKey).where(_DeviceKey.device_id == device_id).values(active=False))

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
        """Record the latest time each device was heard from."""
        with self._lock, Session(self._engine) as session, session.begin():
            for device_id, at in seen:
                session.execute(
                    update(_Device)
                    .where(_Device.device_id == device_id)
                    .where((_Device.last_seen_at.is_(None)) | (_Device.last_seen_at < at))
                    .values(last_seen_at=at)
                )

    # API clients -------------------------------------------------------------

    def create_api_client(self, name: str, scopes: Iterable[str], department: str = "") -> str:
        """Create a client and return its token; only a hash of the token is kept."""
        check_name(name, "API client name")
        wanted = frozenset(scopes)
        unknown = wanted - SCOPES
        if unknown or not wanted:
            raise ConfigError(f"unknown or empty scopes {sorted(unknown)}; choose from {sorted(SCOPES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = _ApiClient(
            name=name,
            department=department,
            token_sha256=_token_hash(token),
            scopes=",".join(sorted(wanted)),
            revoked=False,
            created_at=datetime.now(UTC),
        )
        try:
            with Session(self._engine) as session, session.begin():
                session.add(row)
        except SqlIntegrityError as exc:
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
    enrolled = _utc(row.enrolled_at)
    assert enrolled is not None
    return DeviceRecord(row.device_id, row.site, row.status, enrolled, _utc(row.last_seen_at))


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
