"""Hub settings: built once at the entry point from a file and ``ROADSIDE_HUB_*`` variables."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from roadside.cloud.air.config import AirConfig
from roadside.cloud.release.rollouts import RolloutPlan
from roadside.cloud.storage.retention import RetentionPolicy
from roadside.shared.config import load_settings
from roadside.shared.errors import ConfigError

_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "password", "token"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SqliteStoreConfig(_Section):
    type: Literal["sqlite"] = "sqlite"
    path: Path | None = None  # None: <home>/telemetry.db


class InfluxV1StoreConfig(_Section):
    """InfluxDB through the v1 HTTP API (1.x, and 2.x/3.x compatibility endpoints)."""

    type: Literal["influx_v1"] = "influx_v1"
    url: str = "http://127.0.0.1:8086"
    database: str = "roadside"
    username: str | None = None
    password: SecretStr | None = None
    retention_policy: str | None = None
    create_database: bool = True  # False on 2.x/3.x, where databases are buckets made by their admin


class InfluxV2StoreConfig(_Section):
    type: Literal["influx_v2"] = "influx_v2"
    url: str
    token: SecretStr
    org: str
    bucket: str = "roadside"

    @field_validator("token")
    @classmethod
    def _real_token(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().lower() in _PLACEHOLDERS:
            raise ValueError("set a real InfluxDB token (ROADSIDE_HUB_STORE__TOKEN), not a placeholder")
        return value


StoreConfig = Annotated[
    SqliteStoreConfig | InfluxV1StoreConfig | InfluxV2StoreConfig, Field(discriminator="type")
]


class RetentionConfig(_Section):
    """How long telemetry is kept (see cloud.storage.retention and docs/operations.md, Retention)."""

    enabled: bool = True
    raw_days: int = Field(default=7, ge=1)
    minute_days: int = Field(default=90, ge=1)
    hour_days: int = Field(default=730, ge=1)
    interval_s: float = Field(default=300.0, ge=10, le=86_400)  # how often the retention job runs

    @model_validator(mode="after")
    def _tiers_in_order(self) -> RetentionConfig:
        try:
            self.policy()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc  # reported with the rest, under the key "retention"
        return self

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(self.raw_days, self.minute_days, self.hour_days)


class RetrainConfig(_Section):
    """The closed loop (cloud.retrain_loop): retrain on hard examples, gate, publish, roll out. Off by default.

    ``rollout`` is the plan each new version goes out with (:class:`RolloutPlan`, declared once
    in ``roadside.cloud.release.rollouts``); its keys may also sit directly under ``retrain`` as before.
    """

    enabled: bool = False
    name: str = "detector"
    min_samples: int = Field(default=60, ge=1)  # labelled hard examples waiting before a run
    check_s: float = Field(default=30.0, gt=0)
    # After a published run, before the next: a fleet is not retrained in a loop. A refused run is
    # tried again as soon as another min_samples labelled examples have arrived (more data, new chance).
    min_interval_s: float = Field(default=3600.0, ge=0)
    finetune_seconds: float | None = Field(default=None, gt=0)  # None: the recipe's fixed steps
    eval_frames: int = Field(default=160, ge=8)
    rollout: RolloutPlan = Field(default_factory=RolloutPlan)

    @model_validator(mode="before")
    @classmethod
    def _flat_rollout_keys(cls, data: Any) -> Any:
        """``retrain.waves`` means ``retrain.rollout.waves`` (the shape before the plan had a name)."""
        if not isinstance(data, dict):
            return data
        flat = {key: data[key] for key in _ROLLOUT_KEYS if key in data}
        if not flat:
            return data
        nested = data.get("rollout", {})
        if isinstance(nested, RolloutPlan):
            nested = {f.name: getattr(nested, f.name) for f in fields(RolloutPlan)}
        rest = {key: value for key, value in data.items() if key not in flat}
        return {**rest, "rollout": {**dict(nested), **flat}}


_ROLLOUT_KEYS: Final = frozenset(f.name for f in fields(RolloutPlan))


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROADSIDE_HUB_", env_nested_delimiter="__", extra="forbid")

    home: Path = Path("/var/lib/roadside-hub")
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=8883, ge=1, le=65535)
    device_broker_host: str | None = None  # what enrolled devices connect to; None: broker_host
    device_broker_port: int | None = Field(default=None, ge=1, le=65535)
    registry_refresh_s: float = Field(default=5.0, gt=0, le=300)  # how soon a CLI revocation takes effect
    client_id: str = "hub"  # "hub" or "hub-<name>": the CN of its own certificate (cloud.home.hub_identity)
    group: str | None = None  # None: the secret group in <home>/hub_group; "" : a plain subscription
    registry_url: str | None = None  # None: SQLite in <home>
    store: StoreConfig = Field(default_factory=SqliteStoreConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=-1, le=65535)  # 0: a free port; -1: no API (an ingest worker)
    api_rate_per_s: float = Field(default=20.0, gt=0)  # per API client, token bucket
    api_rate_burst: int = Field(default=100, ge=1)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    # How long a micro-batch's first message waits for company. Short: under load the queue fills
    # the batch anyway (it grows while the last one is written); when quiet, a longer wait was
    # all of an event's time in the hub (0.1 s before; bench.latency, docs/performance.md).
    batch_wait_s: float = Field(default=0.005, gt=0, le=5)
    ingest_workers: int = Field(default=0, ge=0, le=64)  # 0: check and write on the writer thread
    # Worker processes started ahead, beyond ingest_workers: one takes a dead worker's devices over
    # at once (ADR 0032). 0: a dead worker is replaced by one started then, while ingest waits.
    ingest_spare_workers: int = Field(default=1, ge=0, le=8)
    # The ingest connection: "lean" (mqttlink.lean, ADR 0025), or "paho" for a broker it does not serve.
    ingest_mqtt_client: Literal["lean", "paho"] = "lean"
    # The ingest connection's MQTT keepalive; the broker drops a client silent for 1.5 times it.
    ingest_keepalive_s: int = Field(default=30, ge=2, le=600)
    # Messages received and not yet written, at most: past it the hub stops reading from the broker
    # (which holds the rest) and keeps acknowledging and pinging. Bounds the hub's memory.
    ingest_queue_size: int = Field(default=20_000, ge=1, le=1_000_000)
    max_message_age_s: float = Field(default=900.0, ge=10)
    max_message_bytes: int = Field(
        default=256 * 1024, ge=1024, le=256 * 1024
    )  # the broker caps at 256 KiB too
    online_after_s: float = Field(default=180.0, ge=1)
    # The console at /ui (ADR 0013): a session ends after this long, or after this long unused.
    console_session_s: float = Field(default=12 * 3600.0, ge=60, le=7 * 86_400)
    console_idle_s: float = Field(default=30 * 60.0, ge=60, le=7 * 86_400)
    # The model repository (<home>/release/repository), served read-only over HTTPS with the
    # broker's certificate when it exists. repo_port 0: a free port; -1: not served by this process.
    repo_host: str = "127.0.0.1"
    repo_port: int = Field(default=8443, ge=-1, le=65535)
    repo_public_url: str | None = None  # what enrolled devices fetch from; None: https://repo_host:port
    timestamp_refresh_s: float = Field(default=3600.0, ge=1)
    rollout_tick_s: float = Field(default=1.0, gt=0, le=60)
    # Webhooks reach only global addresses; these networks too (e.g. ["10.20.0.0/16"] for a
    # receiver inside the city network, ["127.0.0.0/8"] for one on the hub's machine).
    webhook_allow_networks: list[IPvAnyNetwork] = Field(default_factory=list, max_length=64)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    air: AirConfig | None = None  # air-quality locations, calibrations and rules (docs/air-quality.md)


def load_hub_settings(path: Path | None = None, **overrides: Any) -> HubSettings:
    """Settings from an optional TOML/JSON file, the environment and ``overrides``; ``ConfigError`` if invalid."""
    return load_settings(HubSettings, path, "hub config", overrides)
