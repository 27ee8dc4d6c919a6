"""The registered ``TimeSeriesStore`` adapter for a store's settings.

Its own module, not the hub's, so that what needs only a store (an ingest worker process) does
not import the API server with it.
"""

from __future__ import annotations

from roadside.cloud.home import HubHome
from roadside.cloud.settings import InfluxV1StoreConfig, InfluxV2StoreConfig, SqliteStoreConfig, StoreConfig
from roadside.cloud.storage.base import TimeSeriesStore


def open_store(config: StoreConfig, home: HubHome) -> TimeSeriesStore:
    """The registered adapter for ``config.type``."""
    if isinstance(config, SqliteStoreConfig):
        from roadside.cloud.storage.sqlite import SqliteStore

        return SqliteStore(config.path or home.telemetry_db)
    if isinstance(config, InfluxV1StoreConfig):
        from roadside.cloud.storage.influx import InfluxV1Store

        password = config.password.get_secret_value() if config.password else None
        return InfluxV1Store(
            config.url,
            config.database,
            username=config.username,
            password=password,
            retention_policy=config.retention_policy,
            create_database=config.create_database,
        )
    if isinstance(config, InfluxV2StoreConfig):
        from roadside.cloud.storage.influx import InfluxV2Store

        return InfluxV2Store(config.url, config.token.get_secret_value(), config.org, config.bucket)
    raise AssertionError(f"unregistered store type {config!r}")
