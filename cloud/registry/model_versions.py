"""Published model versions (their hashes and sizes as signed into the model repository)."""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from roadside.cloud.registry.records import DEFAULT_ACTOR, MODEL_STATUSES, ModelRecord, model_record
from roadside.cloud.registry.tables import ModelRow
from roadside.cloud.registry.unit_of_work import UnitOfWork, audit_in, json_object
from roadside.shared.errors import ConfigError
from roadside.shared.topics import check_name

_VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}")
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")


class ModelVersions:
    """Model versions by name: publish, move between draft, published and retired, look up."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit

    def publish(
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
        body = json_object(metadata or {}, "model metadata")
        now = datetime.now(UTC)

        def change(session: Session) -> ModelRecord:
            if session.get(ModelRow, (name, version)) is not None:
                raise ConfigError(f"model {name} {version} already exists; publish a new version")
            if parent is not None and session.get(ModelRow, (name, parent)) is None:
                raise ConfigError(f"parent model {name} {parent} does not exist")
            row = ModelRow(
                name=name, version=version, sha256=sha256, size=size, status=status,
                created_at=now, meta=body, parent=parent,
            )  # fmt: skip
            session.add(row)
            session.flush()
            details = {"version": version, "sha256": sha256, "size": size, "status": status, "parent": parent}
            audit_in(session, actor, "model.publish", name, details, now)
            return model_record(row)

        return self._unit.write(change)

    def set_status(
        self, name: str, version: str, status: str, *, reason: str = "", actor: str = DEFAULT_ACTOR
    ) -> ModelRecord:
        """Move a model to ``status`` (``retired``: rolled back, no longer the baseline or a rollout target)."""
        if status not in MODEL_STATUSES:
            raise ConfigError(f"model status {status!r} unknown; choose from {sorted(MODEL_STATUSES)}")
        now = datetime.now(UTC)

        def change(session: Session) -> ModelRecord:
            row = session.get(ModelRow, (name, version))
            if row is None:
                raise ConfigError(f"model {name} {version} does not exist")
            details = {"version": version, "from": row.status, "to": status, "reason": reason}
            row.status = status
            session.flush()
            audit_in(session, actor, "model.status", name, details, now)
            return model_record(row)

        return self._unit.write(change)

    def get(self, name: str, version: str) -> ModelRecord | None:
        with self._unit.read() as session:
            row = session.get(ModelRow, (name, version))
            return model_record(row) if row is not None else None

    def list(self, name: str | None = None) -> builtins.list[ModelRecord]:
        """Models, oldest first (by name, then time of publication)."""
        query = select(ModelRow).order_by(ModelRow.name, ModelRow.created_at, ModelRow.version)
        if name is not None:
            query = query.where(ModelRow.name == name)
        with self._unit.read() as session:
            return [model_record(row) for row in session.scalars(query)]
