"""Alembic environment for the registry: run from code, no ``alembic.ini`` needed.

``roadside.cloud.registry.Registry.migrate`` builds the config (``script_location``
pointing here) and passes its open connection in ``config.attributes``, so
the migration runs inside the caller's transaction and lock. With a
``sqlalchemy.url`` option instead (``alembic_config(url=...)``), it opens its
own connection, or in offline mode (``--sql``) prints the SQL for a DBA.

SQLite gets ``render_as_batch``: it cannot ALTER most things, so Alembic's
batch mode rebuilds the table (copy, drop, rename) for later migrations.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from roadside.cloud.registry import TARGET_METADATA

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=list(TARGET_METADATA),
        render_as_batch=connection.dialect.name == "sqlite",
        # SQLite can roll DDL back too, once the driver stops committing behind our back
        # (cloud.audit.use_explicit_sqlite_transactions): a failed migration leaves nothing.
        transactional_ddl=True,
        compare_type=True,
    )


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=list(TARGET_METADATA),
        render_as_batch=bool(url and url.startswith("sqlite")),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use cloud.registry.Registry.migrate()")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
