"""Alembic's entry point: migrate over the connection `schema.alembic_config` put in the attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from abiquo_workflow.store.tables import metadata

#: Key of the PostgreSQL advisory lock held while migrating ("awf" in ASCII).
MIGRATION_LOCK = 0x617766


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite can alter little in place: rebuild tables instead
        compare_type=True,
        # One transaction for the whole upgrade, SQLite included: `sqlite.configure_sqlite` makes its DDL
        # transactional.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("abiquo-workflow migrates a live database; offline (--sql) mode is not supported")
run_migrations(context.config.attributes["connection"])
