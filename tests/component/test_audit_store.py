"""The audit log in the registry database, on SQLite and on a real PostgreSQL.

The database refuses UPDATE and DELETE of audit rows; a DBA who drops the
triggers can still tamper, and verification catches it. Concurrent appenders
(threads, and processes) queue on the head row and keep one unbroken chain.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError

from roadside.cloud.fleet.audit import AuditLog, recompute
from roadside.cloud.registry import Registry
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.keys import KeyPair
from tests.component.postgres import PostgresServer

pytestmark = pytest.mark.timeout(20)

PER_WORKER = 20


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'registry.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def registry(url: str) -> Iterator[Registry]:
    registry = Registry(url)
    registry.create_schema()
    yield registry
    registry.close()


@pytest.fixture
def log(registry: Registry) -> AuditLog:
    audit = AuditLog(registry)
    for n in range(5):
        audit.append("cli:alice", "device.enroll", f"cam-{n}", {"site": "s1", "n": n})
    return audit


def as_dba(engine: Engine, *statements: str, **params: object) -> None:
    """Run ``statements`` with the append-only triggers dropped, as a database owner could."""
    if engine.dialect.name == "postgresql":
        drop = ["ALTER TABLE audit_log DISABLE TRIGGER USER"]
    else:
        drop = ["DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"]
    with engine.begin() as conn:
        for statement in drop:
            conn.execute(text(statement))
        for statement in statements:
            conn.execute(text(statement), params)


def test_appended_entries_read_back_and_verify(log: AuditLog) -> None:
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[2].details == {"site": "s1", "n": 2}
    assert entries[0].ts.utcoffset() is not None
    assert [e.seq for e in log.entries(since_seq=3)] == [4, 5]
    assert [e.seq for e in log.entries(since_seq=1, limit=2)] == [2, 3]
    report = log.verify()
    assert report.ok
    assert report.head_hash == entries[-1].hash
    assert log.head() == (5, entries[-1].hash)


def test_an_append_survives_a_reopen(url: str, log: AuditLog) -> None:
    again = Registry(url)
    try:
        assert again.audit.append("hub", "rollout.create", "1").seq == 6
        assert again.audit.verify().ok
    finally:
        again.close()


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET actor = 'cli:mallory' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 5"],
)
def test_the_database_refuses_update_and_delete(registry: Registry, log: AuditLog, statement: str) -> None:
    with pytest.raises(DatabaseError, match="append-only"), registry.engine.begin() as conn:
        conn.execute(text(statement))
    assert log.verify().ok


def test_postgres_refuses_truncate(postgres: PostgresServer) -> None:
    registry = Registry(postgres.create_database(f"t_{uuid.uuid4().hex[:12]}"))  # SQLite has no TRUNCATE
    try:
        registry.create_schema()
        registry.audit.append("hub", "device.enroll", "cam-1")
        with pytest.raises(DatabaseError, match="append-only"), registry.engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_log"))
        assert registry.audit.verify().entries == 1
    finally:
        registry.close()


def test_an_edit_behind_the_triggers_is_detected(registry: Registry, log: AuditLog) -> None:
    as_dba(registry.engine, "UPDATE audit_log SET subject = 'cam-x' WHERE seq = 3")
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 3, "edited")


def test_an_edit_with_its_hash_recomputed_is_detected(registry: Registry, log: AuditLog) -> None:
    forged = recompute(replace(log.entries()[1], actor="cli:mallory"))
    as_dba(
        registry.engine, "UPDATE audit_log SET actor = 'cli:mallory', hash = :hash WHERE seq = 2", hash=forged
    )
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 2, "edited")


def test_a_deleted_row_is_detected(registry: Registry, log: AuditLog) -> None:
    as_dba(registry.engine, "DELETE FROM audit_log WHERE seq = 3")
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 3, "missing")


def test_a_cut_off_tail_is_caught_by_the_head_row(registry: Registry, log: AuditLog) -> None:
    as_dba(registry.engine, "DELETE FROM audit_log WHERE seq >= 4")
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 4, "missing")


def test_swapped_rows_are_detected(registry: Registry, log: AuditLog) -> None:
    as_dba(
        registry.engine,
        "UPDATE audit_log SET seq = -2 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = -2",
    )
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 2, "reordered")


def test_a_duplicate_seq_is_refused_by_the_key(registry: Registry, log: AuditLog) -> None:
    # The backstop behind the head lock: if the head row is wound back, appends collide
    # with the primary key, retry, and give up rather than fork the chain.
    entry = log.entries()[3]
    with registry.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_head SET seq = :seq, hash = :hash"), {"seq": entry.seq, "hash": entry.hash}
        )
    with pytest.raises(TransportError, match="colliding"):
        log.append("hub", "device.revoke", "cam-1")
    with pytest.raises(IntegrityError), registry.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO audit_log VALUES (5, :ts, 'hub', 'x.y', '', '{}', :prev, :hash)"),
            {"ts": entry.ts, "prev": entry.hash, "hash": "e" * 64},
        )
    assert log.verify().ok


def test_registry_changes_are_audited_with_their_actor(registry: Registry) -> None:
    keys, rotated = KeyPair.generate().public(), KeyPair.generate().public()
    registry.devices.enroll("cam-1", "s1", keys, actor="cli:alice")
    registry.devices.add_key("cam-1", rotated, actor="api:traffic-ops")
    registry.api_clients.create("dashboard", ["read:telemetry"], "traffic")
    registry.devices.revoke("cam-1", actor="hub")
    entries = registry.audit.entries()
    assert [(e.actor, e.action, e.subject) for e in entries] == [
        ("cli:alice", "device.enroll", "cam-1"),
        ("api:traffic-ops", "device.add_key", "cam-1"),
        ("system", "apiclient.create", "dashboard"),
        ("hub", "device.revoke", "cam-1"),
    ]
    assert entries[0].details == {"site": "s1", "kid": keys.kid}
    assert "token" not in str(entries[2].details)
    assert registry.audit.verify().ok


def test_a_refused_change_leaves_no_audit_entry(registry: Registry) -> None:
    registry.devices.enroll("cam-1", "s1", KeyPair.generate().public())
    with pytest.raises(ConfigError):
        registry.devices.enroll("cam-1", "s1", KeyPair.generate().public())
    with pytest.raises(ConfigError):
        registry.devices.add_key("cam-9", KeyPair.generate().public())
    assert [e.action for e in registry.audit.entries()] == ["device.enroll"]


def test_concurrent_appends_from_threads_keep_one_chain(registry: Registry) -> None:
    audit = registry.audit
    errors: list[BaseException] = []
    together = threading.Barrier(2, timeout=10)

    def work(name: str) -> None:
        try:
            together.wait()
            for n in range(PER_WORKER):
                audit.append(f"api:{name}", "rollout.create", f"{name}-{n}")
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",), name=f"appender-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert errors == []
    _assert_one_chain(audit, 2 * PER_WORKER)


def _append_from_another_process(url: str, name: str, count: int, together: Any) -> None:
    engine = create_engine(url)
    try:
        audit = AuditLog(engine)
        audit.head()  # imported and connected: what is left is the race itself
        together.wait(10)
        for n in range(count):
            audit.append(f"api:{name}", "model.publish", f"{name}-{n}")
    finally:
        engine.dispose()


def test_concurrent_appends_from_processes_keep_one_chain(url: str, registry: Registry) -> None:
    # spawn, not fork: a forked child would inherit this process's pooled connections.
    context = multiprocessing.get_context("spawn")
    together = context.Barrier(2)  # both start appending at once, after their imports
    workers = [
        context.Process(
            target=_append_from_another_process,
            args=(url, f"p{i}", PER_WORKER, together),
            name=f"appender-{i}",
        )
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(15)
        if worker.is_alive():
            worker.kill()
    assert [w.exitcode for w in workers] == [0, 0]
    _assert_one_chain(registry.audit, 2 * PER_WORKER)


def _assert_one_chain(audit: AuditLog, count: int) -> None:
    entries = audit.entries(limit=None)
    assert [e.seq for e in entries] == list(range(1, count + 1))  # no gaps, no duplicates
    assert len({e.subject for e in entries}) == count
    report = audit.verify()
    assert report.ok, report
    assert report.entries == count
