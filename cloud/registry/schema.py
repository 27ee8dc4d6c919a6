"""The registry schema: Alembic migrations under ``cloud/migrations``, run on one unit of work.

:meth:`Schema.create` upgrades to the newest revision, adopting a database that an
older Roadside made with ``create_all``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError

from roadside.cloud.registry.unit_of_work import UnitOfWork
from roadside.shared.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

_LOCKED_RETRIES: Final = 10
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"
# The revision whose tables are exactly what ``create_all`` made before migrations existed.
BASELINE_REVISION: Final = "0001"
_LEGACY_TABLES: Final = frozenset({"devices", "device_keys", "api_clients"})
# Any constant will do: hubs starting together take turns to migrate instead of racing.
_MIGRATION_LOCK_KEY: Final = 0x526F616473696465  # "Roadside"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for the registry migrations; no ``alembic.ini`` needed.

    ``connection`` (preferred) runs migrations on it, inside its transaction;
    ``url`` is for offline ``--sql`` generation.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class Schema:
    """Migrations of one registry database."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit

    def create(self) -> None:
        """Bring the schema to the newest revision; safe to call on every start."""
        self.migrate("head")

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision``, adopting a pre-migration database first."""

        def upgrade(connection: Connection) -> None:
            _adopt_unversioned(connection)
            _require_known_revision(connection)
            command.upgrade(alembic_config(connection), revision)

        self._run_migration(upgrade)

    def downgrade(self, revision: str) -> None:
        """Take the schema back to ``revision`` (``"base"``: nothing). Drops data; never automatic."""
        self._run_migration(lambda connection: command.downgrade(alembic_config(connection), revision))

    def current_revision(self) -> str | None:
        """The schema revision the database is at; ``None`` when it has never been migrated."""
        try:
            with self._unit.engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc

    def _run_migration(self, migrate: Callable[[Connection], None]) -> None:
        # Two hubs starting together on one SQLite file: the loser of BEGIN IMMEDIATE can
        # outwait the busy timeout on a loaded machine. The migration rolled back whole, so
        # trying again is safe; it then finds the schema current and does nothing.
        for attempt in range(_LOCKED_RETRIES):
            try:
                self._migrate_once(migrate)
                return
            except TransportError as exc:
                if "locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                    raise
                log.info("registry locked by another migrating process; retrying")
                time.sleep(0.2 * (attempt + 1))

    def _migrate_once(self, migrate: Callable[[Connection], None]) -> None:
        try:
            with self._unit.writer.connect() as connection:
                sqlite = connection.dialect.name == "sqlite"
                if sqlite:
                    # SQLite rebuilds tables for ALTERs (Alembic batch mode); with foreign
                    # keys enforced, dropping the old copy of a parent table would cascade or
                    # fail. The pragma is ignored inside a transaction, so it goes first, and
                    # the keys are checked before the commit instead.
                    _driver_execute(connection, "PRAGMA foreign_keys=OFF")
                try:
                    with connection.begin():
                        if connection.dialect.name == "postgresql":
                            connection.execute(
                                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                            )
                        migrate(connection)
                        if sqlite:
                            _check_foreign_keys(connection)
                finally:
                    if sqlite:
                        _driver_execute(connection, "PRAGMA foreign_keys=ON")
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable or migration failed: {exc.orig}") from exc
        except DBAPIError as exc:
            raise ConfigError(f"registry migration failed and was rolled back: {exc.orig}") from exc
        except CommandError as exc:
            raise ConfigError(f"registry migration failed: {exc}") from exc


def _adopt_unversioned(connection: Connection) -> None:
    """Stamp a database made by ``create_all`` (before migrations) as the baseline revision."""
    inspector = inspect(connection)
    if inspector.has_table("alembic_version"):
        return
    present = {name for name in _LEGACY_TABLES if inspector.has_table(name)}
    if not present:
        return
    if present != _LEGACY_TABLES:
        raise ConfigError(
            f"the registry database has tables {sorted(present)} but not {sorted(_LEGACY_TABLES - present)} "
            "and no alembic_version: it was not made by Roadside; point registry_url at another database"
        )
    log.info("registry tables predate migrations; stamping them as revision %s", BASELINE_REVISION)
    command.stamp(alembic_config(connection), BASELINE_REVISION)


def _require_known_revision(connection: Connection) -> None:
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    if current not in {rev.revision for rev in script.walk_revisions()}:
        raise ConfigError(
            f"the registry schema is at revision {current!r}, which this Roadside does not know "
            f"(newest here: {script.get_current_head()!r}); a newer Roadside migrated it: upgrade Roadside"
        )


def _driver_execute(connection: Connection, sql: str) -> None:
    # Straight to sqlite3 (in autocommit mode): SQLAlchemy would BEGIN first.
    connection.connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise ConfigError(f"migration would leave broken foreign keys: {broken[:5]}; rolled back")
