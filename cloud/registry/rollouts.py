"""Staged rollouts and each target device's progress through one (the rules are in ``roadside.cloud.release``)."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from roadside.cloud.registry.records import (
    DEFAULT_ACTOR,
    ROLLOUT_STATUSES,
    RolloutDeviceRecord,
    RolloutRecord,
    rollout_device_record,
    rollout_record,
)
from roadside.cloud.registry.tables import ModelRow, RolloutDeviceRow, RolloutRow
from roadside.cloud.registry.unit_of_work import UnitOfWork, audit_in, json_object
from roadside.shared.errors import ConfigError


class Rollouts:
    """Rollouts (create, move, start a wave, look up) and their devices' progress; changes audited."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit

    def create(
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
        plan = [json_object(wave, "rollout wave") for wave in waves]
        if not plan:
            raise ConfigError("a rollout needs at least one wave")
        now = datetime.now(UTC)

        def change(session: Session) -> RolloutRecord:
            model = session.get(ModelRow, (model_name, model_version))
            if model is None or model.status != "published":
                raise ConfigError(f"model {model_name} {model_version} is not published")
            row = RolloutRow(
                model_name=model_name, model_version=model_version, target=target, waves=plan,
                status="pending", created_at=now, updated_at=now,
                spec=json_object(spec, "rollout spec") if spec is not None else None,
                current_wave=0, reason="",
            )  # fmt: skip
            session.add(row)
            session.flush()  # assigns the id
            for device_id, wave in assignments:
                session.add(
                    RolloutDeviceRow(
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
            audit_in(session, actor, "rollout.create", str(row.id), details, now)
            return rollout_record(row)

        return self._unit.write(change)

    def set_status(
        self, rollout_id: int, status: str, *, reason: str = "", actor: str = DEFAULT_ACTOR
    ) -> RolloutRecord:
        """Move a rollout to ``status`` (the rollout controller decides which moves are legal)."""
        if status not in ROLLOUT_STATUSES:
            raise ConfigError(f"rollout status {status!r} unknown; choose from {sorted(ROLLOUT_STATUSES)}")
        now = datetime.now(UTC)

        def change(session: Session) -> RolloutRecord:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise ConfigError(f"rollout {rollout_id} does not exist")
            details = {"from": row.status, "to": status, "reason": reason}
            row.status, row.updated_at = status, now
            if reason:
                row.reason = reason[:1024]
            session.flush()
            audit_in(session, actor, "rollout.status", str(rollout_id), details, now)
            return rollout_record(row)

        return self._unit.write(change)

    def get(self, rollout_id: int) -> RolloutRecord | None:
        with self._unit.read() as session:
            row = session.get(RolloutRow, rollout_id)
            return rollout_record(row) if row is not None else None

    def list(self, status: str | None = None) -> builtins.list[RolloutRecord]:
        query = select(RolloutRow).order_by(RolloutRow.id)
        if status is not None:
            query = query.where(RolloutRow.status == status)
        with self._unit.read() as session:
            return [rollout_record(row) for row in session.scalars(query)]

    def start_wave(self, rollout_id: int, wave: int, *, actor: str = DEFAULT_ACTOR) -> RolloutRecord:
        """Make ``wave`` the rollout's current wave (started now) and mark it running; audited."""
        now = datetime.now(UTC)

        def change(session: Session) -> RolloutRecord:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise ConfigError(f"rollout {rollout_id} does not exist")
            row.current_wave, row.wave_started_at, row.updated_at = wave, now, now
            if row.status == "pending":
                row.status = "running"
            session.flush()
            audit_in(session, actor, "rollout.wave", str(rollout_id), {"wave": wave}, now)
            return rollout_record(row)

        return self._unit.write(change)

    def devices(self, rollout_id: int) -> builtins.list[RolloutDeviceRecord]:
        query = (
            select(RolloutDeviceRow)
            .where(RolloutDeviceRow.rollout_id == rollout_id)
            .order_by(RolloutDeviceRow.wave, RolloutDeviceRow.device_id)
        )
        with self._unit.read() as session:
            return [rollout_device_record(row) for row in session.scalars(query)]

    def update_device(
        self,
        rollout_id: int,
        device_id: str,
        advance: Callable[[RolloutDeviceRecord], Mapping[str, Any] | None],
    ) -> RolloutDeviceRecord | None:
        """Change one device's progress: ``advance`` gets the current record and returns the fields
        to set (``state``, ``detail``, ``shadow``, ``baseline``, ``health``), or ``None`` for no change.
        ``None`` if the device is not part of the rollout."""
        return self.update_devices([(rollout_id, device_id, advance)])[0]

    def update_devices(
        self,
        changes: Sequence[tuple[int, str, Callable[[RolloutDeviceRecord], Mapping[str, Any] | None]]],
    ) -> builtins.list[RolloutDeviceRecord | None]:
        """Several :meth:`update_device` changes in one transaction (one fsync for a batch of reports)."""
        now = datetime.now(UTC)

        def change(session: Session) -> builtins.list[RolloutDeviceRecord | None]:
            _load_rows(session, changes)  # one query, not one per change: get() then finds them loaded
            results: builtins.list[RolloutDeviceRecord | None] = []
            for rollout_id, device_id, advance in changes:
                row = session.get(RolloutDeviceRow, (rollout_id, device_id))
                if row is None:
                    results.append(None)
                    continue
                fields = advance(rollout_device_record(row))
                for name, value in (fields or {}).items():
                    if name not in ("state", "detail", "shadow", "baseline", "health"):
                        raise ConfigError(f"rollout device field {name!r} cannot be set")
                    setattr(row, name, value[:1024] if name == "detail" else value)
                if fields:
                    row.updated_at = now
                # No flush per row: a later change of the same device reads this row object, and
                # the commit writes them all.
                results.append(rollout_device_record(row))
            return results

        return self._unit.write(change)


_LOAD_CHUNK = 500  # bound parameters per IN list, well under SQLite's limit


def _load_rows(session: Session, changes: Sequence[tuple[int, str, object]]) -> None:
    """Load the rows ``changes`` touch into the session, one query per rollout (and chunk)."""
    wanted: dict[int, builtins.list[str]] = {}
    for rollout_id, device_id, _ in changes:
        wanted.setdefault(rollout_id, []).append(device_id)
    for rollout_id, device_ids in wanted.items():
        unique = sorted(set(device_ids))
        for start in range(0, len(unique), _LOAD_CHUNK):
            chunk = unique[start : start + _LOAD_CHUNK]
            query = select(RolloutDeviceRow).where(
                RolloutDeviceRow.rollout_id == rollout_id, RolloutDeviceRow.device_id.in_(chunk)
            )
            session.scalars(query).all()
