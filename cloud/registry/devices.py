"""Enrolled devices and their envelope keys."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from roadside.cloud.broker.mosquitto import is_reserved_name
from roadside.cloud.registry.records import DEFAULT_ACTOR, DeviceRecord, device_record, key_row, utc
from roadside.cloud.registry.tables import DeviceKeyRow, DeviceRow
from roadside.cloud.registry.unit_of_work import UnitOfWork, audit_in, rowcount
from roadside.shared.errors import ConfigError
from roadside.shared.keys import PublicKeys, unb64
from roadside.shared.topics import check_name


class Devices:
    """Devices (enroll, revoke, last seen) and their keys (add, look up); every change audited."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit

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
            if session.get(DeviceRow, device_id) is not None:
                raise ConfigError(f"device {device_id!r} is already enrolled; revoke it or pick another id")
            session.add(DeviceRow(device_id=device_id, site=site, status="active", enrolled_at=now))
            session.flush()
            session.add(key_row(device_id, keys, now))
            session.flush()
            audit_in(session, actor, "device.enroll", device_id, {"site": site, "kid": keys.kid}, now)
            if before_commit is not None:
                before_commit()

        try:
            self._unit.write(change)
        except SqlIntegrityError as exc:
            # Another hub enrolled the same id between our check and our insert.
            raise ConfigError(
                f"device {device_id!r} is already enrolled; revoke it or pick another id"
            ) from exc

    def add_key(self, device_id: str, keys: PublicKeys, *, actor: str = DEFAULT_ACTOR) -> None:
        """Add a key beside the current ones (rotation without downtime)."""

        def change(session: Session) -> None:
            if session.get(DeviceRow, device_id) is None:
                raise ConfigError(f"device {device_id!r} is not enrolled")
            now = datetime.now(UTC)
            session.add(key_row(device_id, keys, now))
            session.flush()
            audit_in(session, actor, "device.add_key", device_id, {"kid": keys.kid}, now)

        self._unit.write(change)

    def revoke(self, device_id: str, *, actor: str = DEFAULT_ACTOR) -> None:
        """Mark the device and all its keys revoked (a no-op, still audited, for an unknown id)."""

        def change(session: Session) -> None:
            devices = session.execute(
                update(DeviceRow).where(DeviceRow.device_id == device_id).values(status="revoked")
            )
            keys = session.execute(
                update(DeviceKeyRow).where(DeviceKeyRow.device_id == device_id).values(active=False)
            )
            details = {"found": rowcount(devices) > 0, "keys_deactivated": rowcount(keys)}
            audit_in(session, actor, "device.revoke", device_id, details)

        self._unit.write(change)

    def get(self, device_id: str) -> DeviceRecord | None:
        with self._unit.read() as session:
            row = session.get(DeviceRow, device_id)
            return device_record(row) if row is not None else None

    def list(self, site: str | None = None) -> builtins.list[DeviceRecord]:
        query = select(DeviceRow).order_by(DeviceRow.device_id)
        if site is not None:
            query = query.where(DeviceRow.site == site)
        with self._unit.read() as session:
            return [device_record(row) for row in session.scalars(query)]

    def key(self, device_id: str, kid: str) -> tuple[str, PublicKeys] | None:
        """``(site, keys)`` for an active key of an active device, else ``None``."""
        query = (
            select(DeviceRow.site, DeviceKeyRow.x25519, DeviceKeyRow.ed25519)
            .join(DeviceKeyRow, DeviceKeyRow.device_id == DeviceRow.device_id)
            .where(DeviceRow.device_id == device_id, DeviceKeyRow.kid == kid)
            .where(DeviceRow.status == "active", DeviceKeyRow.active.is_(True))
        )
        with self._unit.read() as session:
            row = session.execute(query).first()
        if row is None:
            return None
        return row.site, PublicKeys(unb64(row.x25519), unb64(row.ed25519))

    def active_keys(self, device_id: str) -> builtins.list[PublicKeys]:
        query = select(DeviceKeyRow).where(DeviceKeyRow.device_id == device_id, DeviceKeyRow.active.is_(True))
        with self._unit.read() as session:
            return [PublicKeys(unb64(k.x25519), unb64(k.ed25519)) for k in session.scalars(query)]

    def mark_seen(self, seen: Iterable[tuple[str, datetime]]) -> None:
        """Record the latest time each device was heard from: one statement, executed for all.

        Not audited: it is telemetry bookkeeping, many times a minute, not a decision anyone made.
        A Core statement run once per row (executemany): an ORM ``update`` per device cost about
        half a millisecond of the ingest writer's CPU each, two thirds of it for a city's fleet.
        """
        rows = [{"b_device": device_id, "b_at": at} for device_id, at in seen]
        if not rows:
            return
        table = cast(Table, DeviceRow.__table__)
        at_param = bindparam("b_at", type_=table.c.last_seen_at.type)
        statement = (
            update(table)
            .where(table.c.device_id == bindparam("b_device"))
            .where(or_(table.c.last_seen_at.is_(None), table.c.last_seen_at < at_param))
            .values(last_seen_at=at_param)
        )
        with self._unit.serialized_write() as session:
            session.execute(statement, rows)

    def presence(self) -> builtins.list[tuple[str, str, datetime | None]]:
        """``(device_id, status, last_seen_at)`` of every device: what the hub's registry watch
        reads every few seconds, without building a record per device."""
        query = select(DeviceRow.device_id, DeviceRow.status, DeviceRow.last_seen_at).order_by(
            DeviceRow.device_id
        )
        with self._unit.read() as session:
            return [(row.device_id, row.status, utc(row.last_seen_at)) for row in session.execute(query)]
