"""Migrations: the schema Alembic builds is the schema `tables.py` describes, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.store import Store, migrate
from abiquo_workflow.store.schema import (
    HEAD_REVISION,
    alembic_config,
    create_sync_engine,
    current_revision,
    head_revision,
)
from abiquo_workflow.store.tables import metadata


def schema_differences(url: str) -> list[object]:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            return current_revision(connection)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_sync_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrading_an_empty_database_builds_exactly_the_tables_of_the_code(database_url: str) -> None:
    migrate(database_url)

    assert schema_differences(database_url) == []


def test_the_head_revision_the_store_expects_is_alembics_head() -> None:
    # Fails when a migration is added without updating schema.HEAD_REVISION.
    assert head_revision() == HEAD_REVISION


def test_an_upgraded_database_is_at_the_head_revision(database_url: str) -> None:
    migrate(database_url)

    assert revision_of(database_url) == head_revision()


def test_migrating_twice_changes_nothing(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)

    assert revision_of(database_url) == head_revision()
    assert schema_differences(database_url) == []


def test_downgrading_to_base_removes_every_table(database_url: str) -> None:
    migrate(database_url)

    with alembic_config(database_url) as config:
        command.downgrade(config, "base")

    assert table_names(database_url) <= {"alembic_version"}
    assert revision_of(database_url) is None


def _insert_task(connection: Any, task_id: str, decision: str) -> None:
    connection.execute(
        text(
            "INSERT INTO tasks (task_id, request_id, position, task_type, continue_href, cancel_href, "
            "created_at, decision, delivery_attempts) VALUES (:id, 'r1', 0, 'DEPLOY', 'c', 'x', "
            "CURRENT_TIMESTAMP, :decision, 0)"
        ),
        {"id": task_id, "decision": decision},
    )


def test_upgrading_from_0001_keeps_the_tasks_and_allows_the_rejected_decision(database_url: str) -> None:
    with alembic_config(database_url) as config:
        command.upgrade(config, "0001")
    engine = create_sync_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO requests (id, received_at, format, single_root, body) "
                    "VALUES ('r1', CURRENT_TIMESTAMP, 'json', false, '{}')"
                )
            )
            _insert_task(connection, "t-old", "pending")
        migrate(database_url)
        with engine.begin() as connection:
            _insert_task(connection, "t-new", "rejected")
            rows = connection.execute(text("SELECT task_id, decision FROM tasks ORDER BY task_id")).all()
        with pytest.raises(IntegrityError), engine.begin() as connection:
            _insert_task(connection, "t-bad", "maybe")
    finally:
        engine.dispose()

    assert [tuple(row) for row in rows] == [("t-new", "rejected"), ("t-old", "pending")]


def test_a_database_migrated_by_a_newer_version_is_refused(database_url: str) -> None:
    migrate(database_url)
    engine = create_sync_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()

    with pytest.raises(StoreError, match=r"newer than this version of abiquo-workflow"):
        migrate(database_url)


async def test_opening_a_database_migrated_by_a_newer_version_is_refused(database_url: str) -> None:
    migrate(database_url)
    engine = create_sync_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()

    with pytest.raises(StoreError, match=r"newer than this version of abiquo-workflow"):
        await Store.open(database_url, migrate=False)


async def test_a_migrated_database_opens_without_migrating(database_url: str) -> None:
    migrate(database_url)

    async with await Store.open(database_url, migrate=False) as store:
        assert await store.list_jobs() == []


def test_migrating_an_unreachable_database_is_reported_in_a_sentence() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on port 1

    with pytest.raises(StoreError, match=re.escape(f"the database at {url} is not reachable")):
        migrate(url)


OPEN_AND_LIST_DRIVER_MODULES = """
import asyncio, sys
from abiquo_workflow.store import Store

async def main():
    async with await Store.open(sys.argv[1]) as store:
        await store.list_jobs()

asyncio.run(main())
print(sorted(
    m for m in sys.modules
    if m.split(".")[0] in {"alembic", "psycopg"} or m.startswith("sqlalchemy.dialects.postgresql")
))
"""


@pytest.mark.slow
def test_opening_a_migrated_sqlite_database_loads_no_migration_or_postgresql_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'abiquo-workflow.db'}"
    migrate(url)

    opened = subprocess.run(
        [sys.executable, "-c", OPEN_AND_LIST_DRIVER_MODULES, url], capture_output=True, text=True, check=True
    )

    assert opened.stdout.strip() == "[]"
