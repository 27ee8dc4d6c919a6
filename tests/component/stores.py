"""What the store tests share: records to write, and the stores to write them to.

``open_store(kind, tmp_path)`` gives a fresh, empty ``TimeSeriesStore`` of one kind:

* ``sqlite``: a file under the test's ``tmp_path``;
* ``influx_v1``: a database of its own (``roadside_<random>``) on one ``influxd`` that the whole
  test process shares (:func:`shared_influx_server`), so no test sees another's points and the
  server starts once, not once per module;
* ``influx_v2``: a bucket of its own on the InfluxDB 2.x named by ``ROADSIDE_TEST_INFLUX2_URL``,
  ``..._TOKEN`` (an all-access token) and ``..._ORG``; skipped when they are unset, as they are
  where this project is built (no 2.x server can be installed there).

Tests that stop or break the server start one of their own (``InfluxServer``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest

from roadside.cloud.storage.base import IngestBatch, Origin, TimeSeriesStore
from roadside.shared.schemas import CountRecord, DetectionEvent, Health, StreamHealth
from tests.component.influxd import InfluxServer

STORE_KINDS: Final = ("sqlite", "influx_v1", "influx_v2")

T0: Final = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def count(minute: int = 0, n: int = 1, **kw: Any) -> CountRecord:
    """A one-minute count at ``T0 + minute``."""
    values = {
        "interval_start": T0 + timedelta(minutes=minute),
        "interval_s": 60,
        "line": "north",
        "cls": "car",
        "direction": "in",
        "count": n,
        "model_version": "det-1.0",
    }
    return CountRecord(**{**values, **kw})


def event(second: float = 0, **kw: Any) -> DetectionEvent:
    """A line crossing at ``T0 + second``."""
    values = {
        "event_id": uuid.uuid4(),
        "ts": T0 + timedelta(seconds=second),
        "type": "line_crossing",
        "stream": "cam0",
        "cls": "car",
        "line": "north",
        "direction": "in",
        "track_id": 4,
        "confidence": 0.75,
        "speed_kmh": 42.5,
        "model_version": "det-1.0",
    }
    return DetectionEvent(**{**values, **kw})


def health(second: float = 0, **kw: Any) -> Health:
    """A health report at ``T0 + second``."""
    values = {
        "ts": T0 + timedelta(seconds=second),
        "uptime_s": 100.0 + second,
        "model_version": "det-1.0",
        "provider": "CPUExecutionProvider",
        "streams": {"cam0": StreamHealth(fps=9.5, dropped_frames=2)},
        "inference_p50_ms": 8.0,
        "outbox_backlog": 3,
    }
    return Health(**{**values, **kw})


def batch(seq: int, device: str = "pole-1", site: str = "main-st", **records: Any) -> IngestBatch:
    """One envelope's records from ``device``."""
    return IngestBatch(Origin(device, site, seq), **records)


_shared_server: InfluxServer | None = None


def shared_influx_server(tmp_path_factory: pytest.TempPathFactory) -> InfluxServer:
    """The ``influxd`` every InfluxDB store test of this process writes to, started on first use.

    It stops when the process exits (``InfluxServer`` registers that, and the kernel stops it
    if the process dies first). Give each test a database of its own on it.
    """
    global _shared_server  # noqa: PLW0603 (one server per process, across test modules)
    if _shared_server is None or not _shared_server.running:
        _shared_server = InfluxServer(tmp_path_factory.mktemp("influx-shared")).__enter__()
    return _shared_server


def unique_name(prefix: str = "roadside") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def open_store(
    kind: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TimeSeriesStore]:
    """A fresh, empty store of ``kind`` (one of ``STORE_KINDS``), closed on leaving."""
    if kind == "sqlite":
        from roadside.cloud.storage.sqlite import SqliteStore

        sqlite = SqliteStore(tmp_path / "telemetry.db")
        try:
            yield sqlite
        finally:
            sqlite.close()
    elif kind == "influx_v1":
        from roadside.cloud.storage.influx import InfluxV1Store

        server = shared_influx_server(tmp_path_factory)
        v1 = InfluxV1Store(server.url, unique_name(), timeout_s=5)
        try:
            yield v1
        finally:
            v1.close()
    elif kind == "influx_v2":
        with _influx_v2_store() as v2:
            yield v2
    else:
        raise ValueError(f"unknown store kind {kind!r}; one of {STORE_KINDS}")


@contextlib.contextmanager
def _influx_v2_store() -> Iterator[TimeSeriesStore]:
    url, token, org = (os.environ.get(f"ROADSIDE_TEST_INFLUX2_{k}") for k in ("URL", "TOKEN", "ORG"))
    if not (url and token and org):
        pytest.skip("no InfluxDB 2.x server: set ROADSIDE_TEST_INFLUX2_URL, _TOKEN, _ORG to run against one")
    from influxdb_client.client.influxdb_client import InfluxDBClient

    from roadside.cloud.storage.influx import InfluxV2Store

    admin = InfluxDBClient(url=url, token=token, org=org)
    buckets = admin.buckets_api()
    bucket = buckets.create_bucket(bucket_name=unique_name(), org=org)
    store = InfluxV2Store(url, token, org, bucket.name, timeout_s=5)
    try:
        yield store
    finally:
        store.close()
        buckets.delete_bucket(bucket)  # type: ignore[no-untyped-call]
        admin.close()  # type: ignore[no-untyped-call]
