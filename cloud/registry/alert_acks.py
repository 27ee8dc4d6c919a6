"""Acknowledged alerts: which alert occurrence an operator has seen, by whom, when, with a note.

An alert's id names one occurrence (``device_offline:cam-7:<since>``), so acknowledging
it hides that occurrence only: the next outage of the same device is a new alert. Each
acknowledgement is audited (``alert.ack``) in the same transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from roadside.cloud.registry.records import DEFAULT_ACTOR
from roadside.cloud.registry.tables import AlertAckRow
from roadside.cloud.registry.unit_of_work import UnitOfWork, audit_in, rowcount
from roadside.shared.errors import ConfigError

MAX_ALERT_ID: Final = 200
MAX_NOTE: Final = 512


@dataclass(frozen=True, slots=True)
class AlertAck:
    alert_id: str
    acknowledged_by: str
    acknowledged_at: datetime
    note: str


def _record(row: AlertAckRow) -> AlertAck:
    at = row.acknowledged_at if row.acknowledged_at.tzinfo else row.acknowledged_at.replace(tzinfo=UTC)
    return AlertAck(row.alert_id, row.acknowledged_by, at, row.note)


class AlertAcks:
    """Acknowledgements of alert occurrences, audited."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit

    def acknowledge(self, alert_id: str, *, actor: str = DEFAULT_ACTOR, note: str = "") -> AlertAck:
        """Record that ``actor`` has seen ``alert_id``; acknowledging twice keeps the first."""
        if not alert_id or len(alert_id) > MAX_ALERT_ID:
            raise ConfigError(f"an alert id has 1 to {MAX_ALERT_ID} characters")
        if len(note) > MAX_NOTE:
            raise ConfigError(f"an acknowledgement's note has at most {MAX_NOTE} characters")
        now = datetime.now(UTC)

        def change(session: Session) -> AlertAck:
            row = session.get(AlertAckRow, alert_id)
            if row is not None:
                return _record(row)
            row = AlertAckRow(alert_id=alert_id, acknowledged_by=actor, acknowledged_at=now, note=note)
            session.add(row)
            session.flush()
            audit_in(session, actor, "alert.ack", alert_id, {"note": note}, now)
            return _record(row)

        return self._unit.write(change)

    def of(self, alert_ids: Collection[str]) -> dict[str, AlertAck]:
        """The acknowledgements among ``alert_ids``."""
        if not alert_ids:
            return {}
        found: dict[str, AlertAck] = {}
        ids = sorted(set(alert_ids))
        with self._unit.read() as session:
            for start in range(0, len(ids), 500):  # bounded IN lists
                rows = session.scalars(
                    select(AlertAckRow).where(AlertAckRow.alert_id.in_(ids[start : start + 500]))
                )
                found.update((r.alert_id, _record(r)) for r in rows)
        return found

    def list(self) -> builtins.list[AlertAck]:
        with self._unit.read() as session:
            rows = session.scalars(select(AlertAckRow).order_by(AlertAckRow.acknowledged_at))
            return [_record(r) for r in rows]

    def forget_before(self, cutoff: datetime) -> int:
        """Drop acknowledgements older than ``cutoff`` (their alerts are long over); returns how many."""
        return self._unit.write(
            lambda session: rowcount(
                session.execute(delete(AlertAckRow).where(AlertAckRow.acknowledged_at < cutoff))
            )
        )


ACK_KEPT: Final = timedelta(days=90)
