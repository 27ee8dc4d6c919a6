"""What only ``InfluxV1Store`` does, against a real ``influxd`` (1.6 from Debian): chunked
writes, InfluxDB's refusals (field types, retention policies), outages and a dropped database.
What every store does is in ``test_store_contract.py``.

The process's shared server serves these tests, each with its own database; the outage tests
start their own server so that stopping it disturbs no one else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from roadside.cloud.storage.base import CountQuery
from roadside.cloud.storage.influx import WRITE_CHUNK, InfluxV1Store
from roadside.shared.errors import ConfigError, SchemaError, TransportError
from tests.component.influxd import InfluxServer
from tests.component.stores import T0, batch, count, shared_influx_server, unique_name

pytestmark = pytest.mark.timeout(15)

DAY = CountQuery(T0 - timedelta(hours=12), T0 + timedelta(hours=12))


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> InfluxServer:
    return shared_influx_server(tmp_path_factory)


@pytest.fixture
def store(server: InfluxServer) -> Iterator[InfluxV1Store]:
    s = InfluxV1Store(server.url, unique_name(), timeout_s=5)
    yield s
    s.close()


def test_a_large_write_goes_in_chunks(store: InfluxV1Store) -> None:
    envelopes = WRITE_CHUNK // 10 + 50
    store.write([batch(seq, counts=[count(m, 1) for m in range(10)]) for seq in range(envelopes)])
    assert sum(b.count for b in store.count_buckets(DAY)) == envelopes * 10
    assert len(store.recent_sequences("pole-1", 10**6)) == envelopes


def test_a_field_type_conflict_is_a_clear_schema_error(server: InfluxServer, store: InfluxV1Store) -> None:
    # Someone else's float "count" in the same shard (1.x fixes field types per shard, a week here).
    line = f"counts,device=x count=1.5 {int(T0.timestamp()) * 10**9}".encode()
    foreign = httpx.post(f"{server.url}/write", params={"db": store._database}, content=line)
    assert foreign.status_code == 204
    with pytest.raises(SchemaError, match="field type conflict"):
        store.write([batch(1, counts=[count()])])


def test_a_missing_retention_policy_is_a_config_error(server: InfluxServer) -> None:
    s = InfluxV1Store(server.url, unique_name(), retention_policy="nope")
    try:
        with pytest.raises(ConfigError, match="retention policy not found"):
            s.write([batch(1, counts=[count()])])
    finally:
        s.close()


def test_stopped_server_is_a_transport_error_then_writes_resume(tmp_path: Path) -> None:
    with InfluxServer(tmp_path) as own:
        s = InfluxV1Store(own.url, "roadside", timeout_s=2)
        try:
            s.write([batch(1, counts=[count(n=1)])])
            own.stop()
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"127\.0\.0\.1"):
                s.write([batch(2, counts=[count(n=2)])])
            with pytest.raises(TransportError):
                s.ping()
            with pytest.raises(TransportError):
                s.count_buckets(DAY)
            assert time.monotonic() - started < 3
            own.start()
            s.write([batch(2, counts=[count(n=2)])])
            assert [b.count for b in s.count_buckets(DAY)] == [3]
        finally:
            s.close()


def test_a_store_made_while_influxdb_is_down_creates_the_database_later(tmp_path: Path) -> None:
    with InfluxServer(tmp_path) as own:
        own.stop()
        s = InfluxV1Store(own.url, "late", timeout_s=2)
        try:
            own.start()
            s.write([batch(1, counts=[count(n=4)])])
            assert [b.count for b in s.count_buckets(DAY)] == [4]
        finally:
            s.close()


def test_a_dropped_database_is_created_again(server: InfluxServer, store: InfluxV1Store) -> None:
    store.write([batch(1, counts=[count()])])
    dropped = httpx.post(f"{server.url}/query", data={"q": f'DROP DATABASE "{store._database}"'})
    assert dropped.status_code == 200
    store.write([batch(2, counts=[count(n=2)])])
    assert [b.count for b in store.count_buckets(DAY)] == [2]
