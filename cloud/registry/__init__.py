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
``signals``         :class:`Signals`: signals and their channel maps
``alert_acks``      :class:`AlertAcks`: acknowledged alerts (audited)
``console_sessions`` :class:`ConsoleSessions`: console sessions by digest
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

from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

from roadside.cloud.fleet import audit
from roadside.cloud.fleet.audit import AuditLog
from roadside.cloud.registry.alert_acks import AlertAck, AlertAcks
from roadside.cloud.registry.api_clients import ApiClients
from roadside.cloud.registry.console_sessions import ConsoleSessions, StoredSession
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
from roadside.cloud.registry.signals import SignalRecord, Signals
from roadside.cloud.registry.tables import Base
from roadside.cloud.registry.unit_of_work import UnitOfWork

__all__ = [
    "BASELINE_REVISION",
    "DEFAULT_ACTOR",
    "MIGRATIONS_DIR",
    "MODEL_STATUSES",
    "ROLLOUT_STATUSES",
    "SCOPES",
    "TARGET_METADATA",
    "TOKEN_PREFIX",
    "AlertAck",
    "AlertAcks",
    "ApiClient",
    "ApiClients",
    "ConsoleSessions",
    "DeviceRecord",
    "Devices",
    "ModelRecord",
    "ModelVersions",
    "Registry",
    "RolloutDeviceRecord",
    "RolloutRecord",
    "Rollouts",
    "Schema",
    "SignalRecord",
    "Signals",
    "StoredSession",
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
        self.signals = Signals(self._unit)
        self.alert_acks = AlertAcks(self._unit)
        self.console_sessions = ConsoleSessions(self._unit)
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
