"""The registry's tables, as SQLAlchemy declarative classes (the migrations own the schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from roadside.cloud.fleet import audit


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DeviceKeyRow(Base):
    __tablename__ = "device_keys"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    x25519: Mapped[str] = mapped_column(String(64))
    ed25519: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiClientRow(Base):
    __tablename__ = "api_clients"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    department: Mapped[str] = mapped_column(String(64), default="")
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(256))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRow(Base):
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


class RolloutRow(Base):
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


class RolloutDeviceRow(Base):
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


class SignalRow(Base):
    """A signal and its channel map (migration 0004; ``roadside.cloud.registry.signals``)."""

    __tablename__ = "signals"
    signal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    channels: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertAckRow(Base):
    """An operator's acknowledgement of one alert occurrence (migration 0005; ``registry.alerts``)."""

    __tablename__ = "alert_acks"
    alert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    acknowledged_by: Mapped[str] = mapped_column(String(128))
    acknowledged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str] = mapped_column(String(512))


class ConsoleSessionRow(Base):
    """A console session by the SHA-256 of its cookie (migration 0005; ``registry.console_sessions``)."""

    __tablename__ = "console_sessions"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_name: Mapped[str] = mapped_column(String(64), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float] = mapped_column(Float, index=True)


# What the migrations build, for Alembic's autogenerate and the drift test.
TARGET_METADATA: Final[tuple[MetaData, ...]] = (Base.metadata, audit.METADATA)
