"""Signals and their channel maps (``docs/signals.md``): one row per signal, the map as JSON.

The whole map is validated (:mod:`roadside.cloud.signals.channel_map`) and
replaced in one transaction with its audit entry, so a reader sees either the
old map or the new one. ``version`` counts the changes; a writer that read an
older version may pass it to refuse a lost update.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from roadside.cloud.registry.records import DEFAULT_ACTOR
from roadside.cloud.registry.tables import SignalRow
from roadside.cloud.registry.unit_of_work import UnitOfWork, audit_in
from roadside.cloud.signals.channel_map import ChannelMap, check_signal_id, parse_channel_map
from roadside.shared.errors import ConfigError, TransportError


@dataclass(frozen=True, slots=True)
class SignalRecord:
    signal_id: str
    name: str
    channel_map: ChannelMap
    version: int
    updated_at: datetime


def _record(row: SignalRow) -> SignalRecord:
    updated = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=UTC)
    return SignalRecord(row.signal_id, row.name, parse_channel_map(row.channels), row.version, updated)


class Signals:
    """Signals and their channel maps, audited."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit

    def set_map(
        self,
        signal_id: str,
        channel_map: ChannelMap,
        *,
        name: str | None = None,
        expect_version: int | None = None,
        actor: str = DEFAULT_ACTOR,
    ) -> SignalRecord:
        """Create the signal or replace its map; ``ConfigError`` on a stale ``expect_version``."""
        check_signal_id(signal_id)
        now = datetime.now(UTC)
        body = channel_map.model_dump(mode="json")

        def change(session: Session) -> SignalRecord:
            row = session.get(SignalRow, signal_id)
            current = 0 if row is None else row.version
            if expect_version is not None and expect_version != current:
                raise ConfigError(
                    f"signal {signal_id!r} channel map is at version {current}, not {expect_version}: "
                    "someone changed it meanwhile; read it again"
                )
            if row is None:
                row = SignalRow(
                    signal_id=signal_id, name=name or signal_id, version=0, channels=body, updated_at=now
                )
                session.add(row)
            row.channels = body
            row.version = current + 1
            row.updated_at = now
            if name is not None:
                row.name = name
            session.flush()
            details = {"version": row.version, "channels": len(channel_map.channels)}
            audit_in(session, actor, "signal.map", signal_id, details, now)
            return _record(row)

        try:
            return self._unit.write(change)
        except SqlIntegrityError as exc:
            raise ConfigError(f"signal {signal_id!r} was created meanwhile; try again") from exc

    def get(self, signal_id: str) -> SignalRecord | None:
        try:
            with self._unit.read() as session:
                row = session.get(SignalRow, signal_id)
                return None if row is None else _record(row)
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc

    def list(self) -> builtins.list[SignalRecord]:
        try:
            with self._unit.read() as session:
                return [_record(r) for r in session.scalars(select(SignalRow).order_by(SignalRow.signal_id))]
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc

    def delete(self, signal_id: str, *, actor: str = DEFAULT_ACTOR) -> None:
        now = datetime.now(UTC)

        def change(session: Session) -> None:
            row = session.get(SignalRow, signal_id)
            if row is None:
                raise ConfigError(f"unknown signal {signal_id!r}")
            session.delete(row)
            session.flush()
            audit_in(session, actor, "signal.delete", signal_id, {"version": row.version}, now)

        self._unit.write(change)
