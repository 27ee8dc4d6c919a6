"""Registry migrations on SQLite and on a real PostgreSQL started for this module.

Every test runs on both backends: SQLite in a file under ``tmp_path``, and a
fresh database in the module's own PostgreSQL cluster (``PostgresServer``).
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    inspect,
    text,
)

from roadside.cloud.registry import TARGET_METADATA, Registry, alembic_config
from roadside.shared.errors import ConfigError, RoadsideError
from roadside.shared.keys import KeyPair
from tests.component.postgres import PostgresServer

pytestmark = pytest.mark.timeout(20)

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
TABLES_0001 = {"devices", "device_keys", "api_clients"}
TABLES_HEAD = TABLES_0001 | {
    "models",
    "rollouts",
    "audit_log",
    "audit_head",
    "rollout_devices",
    "signals",
    "alert_acks",
    "console_sessions",
}


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
    yield registry
    registry.close()


def tables(registry: Registry) -> set[str]:
    return set(inspect(registry.engine).get_table_names()) - {"alembic_version"}


def test_an_empty_database_upgrades_to_head(registry: Registry) -> None:
    assert HEAD == "0005"
    assert registry.schema.current_revision() is None
    registry.create_schema()
    assert registry.schema.current_revision() == HEAD
    assert tables(registry) == TABLES_HEAD
    assert registry.audit.head() == (0, "0" * 64)


def test_create_schema_is_idempotent(registry: Registry) -> None:
    registry.create_schema()
    registry.devices.enroll("cam-1", "s1", KeyPair.generate().public())
    registry.create_schema()
    assert registry.schema.current_revision() == HEAD
    assert registry.devices.get("cam-1") is not None


def test_downgrade_to_base_and_up_again(registry: Registry) -> None:
    registry.create_schema()
    registry.schema.downgrade("base")
    assert registry.schema.current_revision() is None
    assert tables(registry) == set()
    registry.schema.migrate()
    assert registry.schema.current_revision() == HEAD
    assert tables(registry) == TABLES_HEAD
    registry.devices.enroll("cam-1", "s1", KeyPair.generate().public())
    assert registry.audit.verify().ok


def test_step_by_step_keeps_the_devices(registry: Registry) -> None:
    registry.schema.migrate("0001")
    assert registry.schema.current_revision() == "0001"
    assert tables(registry) == TABLES_0001
    with registry.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO devices VALUES ('cam-1', 's1', 'active', :now, NULL)"),
            {"now": datetime.now(UTC)},
        )
    registry.schema.migrate()
    registry.schema.downgrade("0001")
    assert tables(registry) == TABLES_0001
    registry.schema.migrate()
    device = registry.devices.get("cam-1")
    assert device is not None
    assert device.enrolled_at.tzinfo is not None


def _legacy_metadata() -> MetaData:
    """The tables exactly as Roadside 0.1's ``create_all`` made them (frozen here on purpose)."""
    metadata = MetaData()
    Table(
        "devices",
        metadata,
        Column("device_id", String(64), primary_key=True),
        Column("site", String(64), nullable=False, index=True),
        Column("status", String(16), nullable=False),
        Column("enrolled_at", DateTime(timezone=True), nullable=False),
        Column("last_seen_at", DateTime(timezone=True), nullable=True),
    )
    Table(
        "device_keys",
        metadata,
        Column("device_id", ForeignKey("devices.device_id"), primary_key=True),
        Column("kid", String(32), primary_key=True),
        Column("x25519", String(64), nullable=False),
        Column("ed25519", String(64), nullable=False),
        Column("active", Boolean, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "api_clients",
        metadata,
        Column("name", String(64), primary_key=True),
        Column("department", String(64), nullable=False),
        Column("token_sha256", String(64), nullable=False, unique=True),
        Column("scopes", String(256), nullable=False),
        Column("revoked", Boolean, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    return metadata


def test_a_failed_migration_leaves_nothing_behind(registry: Registry) -> None:
    # DDL is transactional on both backends (on SQLite once the driver stops committing
    # on its own): 0002 fails at its third table, and its first two go too.
    registry.schema.migrate("0001")
    with registry.engine.begin() as conn:
        conn.execute(text("CREATE TABLE audit_log (seq INTEGER PRIMARY KEY)"))
    with pytest.raises(RoadsideError, match="audit_log"):
        registry.schema.migrate()
    assert registry.schema.current_revision() == "0001"
    assert tables(registry) == TABLES_0001 | {"audit_log"}


def test_a_database_made_by_create_all_is_stamped_and_upgraded(url: str) -> None:
    legacy = _legacy_metadata()
    engine = create_engine(url)
    legacy.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(legacy.tables["devices"]).values(
                device_id="cam-old", site="s1", status="active", enrolled_at=datetime.now(UTC)
            )
        )
    engine.dispose()
    registry = Registry(url)
    try:
        registry.create_schema()
        assert registry.schema.current_revision() == HEAD
        assert tables(registry) == TABLES_HEAD
        assert registry.devices.get("cam-old") is not None
        registry.devices.enroll("cam-new", "s1", KeyPair.generate().public())
        assert [d.device_id for d in registry.devices.list()] == ["cam-new", "cam-old"]
    finally:
        registry.close()


def test_the_old_create_all_schema_is_revision_0001(url: str) -> None:
    # What makes stamping safe: 0001 builds what create_all built, constraint for constraint.
    legacy = _legacy_metadata()
    registry = Registry(url)
    try:
        registry.schema.migrate("0001")
        with registry.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), legacy)
        assert diffs == []
    finally:
        registry.close()


def test_foreign_tables_without_alembic_version_are_refused(registry: Registry) -> None:
    with registry.engine.begin() as conn:
        conn.execute(text("CREATE TABLE devices (device_id VARCHAR(64) PRIMARY KEY)"))
    with pytest.raises(ConfigError, match="not made by Roadside"):
        registry.create_schema()


def test_a_schema_newer_than_this_code_is_refused(registry: Registry) -> None:
    registry.create_schema()
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigError, match="newer Roadside"):
        registry.create_schema()


def test_migrations_build_what_the_models_describe(registry: Registry) -> None:
    registry.create_schema()
    with registry.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        # Alembic takes a list of MetaData here as it does for autogenerate's target_metadata.
        diffs = compare_metadata(context, list(TARGET_METADATA))  # type: ignore[arg-type]
    assert diffs == []


def test_hubs_starting_together_migrate_once(url: str) -> None:
    registries = [Registry(url) for _ in range(2)]
    errors: list[BaseException] = []

    def start(registry: Registry) -> None:
        try:
            registry.create_schema()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,), name=f"hub-{i}") for i, r in enumerate(registries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    try:
        assert errors == []
        assert [r.schema.current_revision() for r in registries] == [HEAD, HEAD]
    finally:
        for registry in registries:
            registry.close()


def test_registry_round_trip(registry: Registry) -> None:
    registry.create_schema()
    keys = KeyPair.generate().public()
    registry.devices.enroll("cam-1", "s1", keys, actor="cli:alice")
    assert registry.devices.key("cam-1", keys.kid) == ("s1", keys)
    token = registry.api_clients.create("dashboard", ["read:telemetry"], department="traffic")
    client = registry.api_clients.authenticate(token)
    assert client is not None
    assert (client.name, client.department, client.allows("read:telemetry")) == ("dashboard", "traffic", True)
    assert registry.api_clients.authenticate(token + "x") is None
    registry.devices.revoke("cam-1")
    assert registry.devices.key("cam-1", keys.kid) is None
    assert [e.action for e in registry.audit.entries()] == [
        "device.enroll",
        "apiclient.create",
        "device.revoke",
    ]


def test_datetimes_come_back_in_utc_whatever_the_session_zone(request: pytest.FixtureRequest) -> None:
    server: PostgresServer = request.getfixturevalue("postgres")
    base = server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    # The session's zone is what PostgreSQL uses to render timestamptz values.
    registry = Registry(base + "?options=-c%20timezone%3DAmerica/New_York")
    try:
        registry.create_schema()
        before = datetime.now(UTC)
        registry.devices.enroll("cam-1", "s1", KeyPair.generate().public())
        seen = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
        registry.devices.mark_seen([("cam-1", seen)])
        device = registry.devices.get("cam-1")
        assert device is not None
        assert device.enrolled_at.utcoffset() is not None
        assert device.enrolled_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert device.enrolled_at >= before
        assert device.last_seen_at == seen
        assert registry.audit.verify().ok  # the chain hashes UTC, not the zone it was read in
    finally:
        registry.close()


def test_last_seen_times_are_written_for_many_devices_at_once_and_never_move_back(registry: Registry) -> None:
    registry.create_schema()
    for n in range(3):
        registry.devices.enroll(f"cam-{n}", "s1", KeyPair.generate().public())
    t = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    registry.devices.mark_seen([("cam-0", t), ("cam-1", t.replace(minute=5))])
    # One call for many devices: a newer time moves, an older one does not, an unknown device is ignored.
    registry.devices.mark_seen(
        [("cam-0", t.replace(minute=1)), ("cam-1", t), ("cam-2", t.replace(minute=2)), ("ghost", t)]
    )
    assert registry.devices.presence() == [
        ("cam-0", "active", t.replace(minute=1)),
        ("cam-1", "active", t.replace(minute=5)),
        ("cam-2", "active", t.replace(minute=2)),
    ]
    assert [d.last_seen_at for d in registry.devices.list()] == [p[2] for p in registry.devices.presence()]
    registry.devices.mark_seen([])


def test_models_and_rollouts_round_trip(registry: Registry) -> None:
    registry.create_schema()
    v1 = registry.models.publish("detector", "1.0", "a" * 64, 1234, {"opset": 17, "labels": ["car"]})
    v2 = registry.models.publish("detector", "1.1", "b" * 64, 1300, parent="1.0", actor="cli:ml")
    assert registry.models.get("detector", "1.0") == v1
    assert [m.version for m in registry.models.list("detector")] == ["1.0", "1.1"]
    assert v2.parent == "1.0"
    with pytest.raises(ConfigError, match="parent"):
        registry.models.publish("detector", "2.0", "c" * 64, 1, parent="0.9")
    rollout = registry.rollouts.create("detector", "1.1", "site:s1", [{"name": "canary", "devices": 1}])
    assert rollout.status == "pending"
    moved = registry.rollouts.set_status(rollout.id, "running", actor="hub")
    assert moved.status == "running"
    assert registry.rollouts.get(rollout.id) == moved
    assert registry.rollouts.list("running") == [moved]
    with pytest.raises(ConfigError, match="not published"):
        registry.rollouts.create("detector", "9.9", "all", [{"name": "all"}])
    actions = [e.action for e in registry.audit.entries()]
    assert actions == ["model.publish", "model.publish", "rollout.create", "rollout.status"]


def test_offline_mode_prints_the_sql_for_a_dba() -> None:
    config = alembic_config(url="postgresql+psycopg://dba@db.example/roadside")
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    assert "CREATE TABLE audit_log" in sql
    assert "CREATE TRIGGER audit_log_no_change" in sql
    assert "INSERT INTO audit_head" in sql
