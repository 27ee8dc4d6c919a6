"""The registry's records: frozen values handed out by the repositories, and their row conversions."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from roadside.cloud.registry.tables import DeviceKeyRow, DeviceRow, ModelRow, RolloutDeviceRow, RolloutRow
from roadside.shared.keys import PublicKeys, b64

SCOPES: Final = frozenset({"read:telemetry", "write:devices", "write:rollouts", "write:signals", "admin"})
TOKEN_PREFIX: Final = "rs_"  # noqa: S105 - a public marker, not a secret
MODEL_STATUSES: Final = frozenset({"draft", "published", "retired"})
ROLLOUT_STATUSES: Final = frozenset(
    {"pending", "running", "paused", "rolling_back", "completed", "rolled_back", "aborted"}
)
DEFAULT_ACTOR: Final = "system"


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


def utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns; PostgreSQL
    # hands back aware ones in the session's time zone. Both become UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now_or(value: datetime | None) -> datetime:
    found = utc(value)
    assert found is not None
    return found


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def key_row(device_id: str, keys: PublicKeys, now: datetime) -> DeviceKeyRow:
    return DeviceKeyRow(
        device_id=device_id,
        kid=keys.kid,
        x25519=b64(keys.x25519),
        ed25519=b64(keys.ed25519),
        active=True,
        created_at=now,
    )


def device_record(row: DeviceRow) -> DeviceRecord:
    return DeviceRecord(
        row.device_id, row.site, row.status, utc_now_or(row.enrolled_at), utc(row.last_seen_at)
    )


def model_record(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        row.name, row.version, row.sha256, row.size, row.status, utc_now_or(row.created_at),
        dict(row.meta), row.parent,
    )  # fmt: skip


def rollout_record(row: RolloutRow) -> RolloutRecord:
    return RolloutRecord(
        row.id, row.model_name, row.model_version, row.target, tuple(dict(w) for w in row.waves),
        row.status, utc_now_or(row.created_at), utc_now_or(row.updated_at),
        dict(row.spec) if row.spec is not None else None, row.current_wave or 0,
        utc(row.wave_started_at), row.reason or "",
    )  # fmt: skip


def rollout_device_record(row: RolloutDeviceRow) -> RolloutDeviceRecord:
    return RolloutDeviceRecord(
        row.rollout_id, row.device_id, row.wave, row.state, row.detail,
        dict(row.shadow) if row.shadow is not None else None,
        dict(row.baseline) if row.baseline is not None else None,
        dict(row.health) if row.health is not None else None,
        utc_now_or(row.updated_at),
    )  # fmt: skip
