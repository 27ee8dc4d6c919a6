"""The hub's registry: devices and their envelope keys, API clients, model versions, rollouts, audit.

SQLAlchemy 2 over SQLite by default (a file next to the hub's data), or
PostgreSQL in production (``postgresql+psycopg://...``). Only this package
(and :mod:`roadside.cloud.fleet.audit`, for the audit tables) talks to the registry database.

One repository per kind of record, all over one :class:`UnitOfWork` (one engine,
one write transaction per change with its audit entry):

==================  =====================================================
``devices``         :class:`Devices`: enroll, keys, revoke, last seen
``api_clients``     :class:`ApiClients`: tokens and scopes
``models``          :class:`ModelVersions`: published model versions
``rollouts``        :class:`Rollouts`: rollouts and their devices' progress
``audit``           :class:`roadside.cloud.fleet.audit.AuditLog`: the hash-chained log
``schema``          :class:`Schema`: the Alembic migrations in ``cloud/migrations``
==================  =====================================================

:class:`Registry` holds them (``registry.devices.get(...)``). Consumers that need
only part of it depend on a narrow Protocol (``roadside.cloud.fleet.command_sender.DeviceKeys``,
``roadside.cloud.release.controller.RolloutRegistry``, ``roadside.cloud.release.repository.AuditSink``).
Every change made through a repository (enroll, add a key, revoke, create an API
client, publish a model, create or move a rollout) appends an entry to the
hash-chained audit log in the same transaction, so a change and its audit entry
commit together or not at all. See ``docs/adr/0011-registry-repositories.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

from roadside.cloud.fleet import audit
from roadside.cloud.fleet.audit import AuditLog
from roadside.cloud.registry.api_clients import ApiClients
from roadside.cloud.registry.devices import Devices
from roadside.cloud.registry.model_versions import ModelVersions
from roadside.cloud.registry.records import (
    DEFAULT_ACTOR,
    MODEL_STATUSES,
    ROLLOUT_STATUSES,
    SCOPES,
    TOKEN_PREFIX,
    ApiClient,
    DeviceRecord,
    ModelRecord,
    RolloutDeviceRecord,
    RolloutRecord,
)
from roadside.cloud.registry.rollouts import Rollouts
from roadside.cloud.registry.schema import BASELINE_REVISION, MIGRATIONS_DIR, Schema, alembic_config
from roadside.cloud.registry.tables import Base
from roadside.cloud.registry.unit_of_work import UnitOfWork
from roadside.shared.keys import PublicKeys

__all__ = [
    "BASELINE_REVISION",
    "DEFAULT_ACTOR",
    "MIGRATIONS_DIR",
    "MODEL_STATUSES",
    "ROLLOUT_STATUSES",
    "SCOPES",
    "TARGET_METADATA",
    "TOKEN_PREFIX",
    "ApiClient",
    "ApiClients",
    "DeviceRecord",
    "Devices",
    "ModelRecord",
    "ModelVersions",
    "Registry",
    "RolloutDeviceRecord",
    "RolloutRecord",
    "Rollouts",
    "Schema",
    "UnitOfWork",
    "alembic_config",
]

# What the migrations build, for Alembic's autogenerate and the drift test.
TARGET_METADATA: Final[tuple[MetaData, ...]] = (Base.metadata, audit.METADATA)


class Registry:
    """The registry database: its repositories over one unit of work."""

    def __init__(self, url: str) -> None:
        self._unit = UnitOfWork(url)
        self.schema = Schema(self._unit)
        self.devices = Devices(self._unit)
        self.api_clients = ApiClients(self._unit)
        self.models = ModelVersions(self._unit)
        self.rollouts = Rollouts(self._unit)
        self.audit = AuditLog(self._unit.engine)

    @property
    def engine(self) -> Engine:
        return self._unit.engine

    def create_schema(self) -> None:
        """Bring the schema to the newest revision; safe to call on every start."""
        self.schema.create()

    def ping(self) -> None:
        """Raise ``TransportError`` if the registry database cannot be reached."""
        self._unit.ping()

    def close(self) -> None:
        self._unit.close()

    def record_audit(self, actor: str, action: str, subject: str, details: Mapping[str, Any]) -> None:
        """Append an audit entry for a decision that changes no registry row (a gate verdict)."""
        self._unit.record_audit(actor, action, subject, details)

    # Deprecated: the flat methods of Roadside 0.1, kept for one release (removed in 0.3).
    # Each delegates to its repository; new code calls the repository.

    def migrate(self, revision: str = "head") -> None:
        """Deprecated: ``registry.schema.migrate``."""
        self.schema.migrate(revision)

    def downgrade(self, revision: str) -> None:
        """Deprecated: ``registry.schema.downgrade``."""
        self.schema.downgrade(revision)

    def current_revision(self) -> str | None:
        """Deprecated: ``registry.schema.current_revision``."""
        return self.schema.current_revision()

    def enroll(
        self,
        device_id: str,
        site: str,
        keys: PublicKeys,
        *,
        actor: str = DEFAULT_ACTOR,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Deprecated: ``registry.devices.enroll``."""
        self.devices.enroll(device_id, site, keys, actor=actor, before_commit=before_commit)

    def add_key(self, device_id: str, keys: PublicKeys, *, actor: str = DEFAULT_ACTOR) -> None:
        """Deprecated: ``registry.devices.add_key``."""
        self.devices.add_key(device_id, keys, actor=actor)

    def revoke(self, device_id: str, *, actor: str = DEFAULT_ACTOR) -> None:
        """Deprecated: ``registry.devices.revoke``."""
        self.devices.revoke(device_id, actor=actor)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        """Deprecated: ``registry.devices.get``."""
        return self.devices.get(device_id)

    def list_devices(self, site: str | None = None) -> list[DeviceRecord]:
        """Deprecated: ``registry.devices.list``."""
        return self.devices.list(site)

    def device_key(self, device_id: str, kid: str) -> tuple[str, PublicKeys] | None:
        """Deprecated: ``registry.devices.key``."""
        return self.devices.key(device_id, kid)

    def active_keys(self, device_id: str) -> list[PublicKeys]:
        """Deprecated: ``registry.devices.active_keys``."""
        return self.devices.active_keys(device_id)

    def mark_seen(self, seen: Iterable[tuple[str, datetime]]) -> None:
        """Deprecated: ``registry.devices.mark_seen``."""
        self.devices.mark_seen(seen)

    def create_api_client(
        self, name: str, scopes: Iterable[str], department: str = "", *, actor: str = DEFAULT_ACTOR
    ) -> str:
        """Deprecated: ``registry.api_clients.create``."""
        return self.api_clients.create(name, scopes, department, actor=actor)

    def authenticate(self, token: str) -> ApiClient | None:
        """Deprecated: ``registry.api_clients.authenticate``."""
        return self.api_clients.authenticate(token)

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
        """Deprecated: ``registry.models.publish``."""
        return self.models.publish(name, version, sha256, size, metadata, parent, status=status, actor=actor)

    def set_model_status(
        self, name: str, version: str, status: str, *, reason: str = "", actor: str = DEFAULT_ACTOR
    ) -> ModelRecord:
        """Deprecated: ``registry.models.set_status``."""
        return self.models.set_status(name, version, status, reason=reason, actor=actor)

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        """Deprecated: ``registry.models.get``."""
        return self.models.get(name, version)

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """Deprecated: ``registry.models.list``."""
        return self.models.list(name)

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
        """Deprecated: ``registry.rollouts.create``."""
        return self.rollouts.create(
            model_name, model_version, target, waves, spec=spec, assignments=assignments, actor=actor
        )

    def set_rollout_status(
        self, rollout_id: int, status: str, *, reason: str = "", actor: str = DEFAULT_ACTOR
    ) -> RolloutRecord:
        """Deprecated: ``registry.rollouts.set_status``."""
        return self.rollouts.set_status(rollout_id, status, reason=reason, actor=actor)

    def get_rollout(self, rollout_id: int) -> RolloutRecord | None:
        """Deprecated: ``registry.rollouts.get``."""
        return self.rollouts.get(rollout_id)

    def list_rollouts(self, status: str | None = None) -> list[RolloutRecord]:
        """Deprecated: ``registry.rollouts.list``."""
        return self.rollouts.list(status)

    def start_wave(self, rollout_id: int, wave: int, *, actor: str = DEFAULT_ACTOR) -> RolloutRecord:
        """Deprecated: ``registry.rollouts.start_wave``."""
        return self.rollouts.start_wave(rollout_id, wave, actor=actor)

    def rollout_devices(self, rollout_id: int) -> list[RolloutDeviceRecord]:
        """Deprecated: ``registry.rollouts.devices``."""
        return self.rollouts.devices(rollout_id)

    def update_rollout_device(
        self,
        rollout_id: int,
        device_id: str,
        advance: Callable[[RolloutDeviceRecord], Mapping[str, Any] | None],
    ) -> RolloutDeviceRecord | None:
        """Deprecated: ``registry.rollouts.update_device``."""
        return self.rollouts.update_device(rollout_id, device_id, advance)

    def update_rollout_devices(
        self,
        changes: Sequence[tuple[int, str, Callable[[RolloutDeviceRecord], Mapping[str, Any] | None]]],
    ) -> list[RolloutDeviceRecord | None]:
        """Deprecated: ``registry.rollouts.update_devices``."""
        return self.rollouts.update_devices(changes)
