"""Migrations: the schema Alembic builds is the schema `tables.py` describes, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.jobs import Deliver, NotifyRequester, SendApproval, Triage, enqueue, from_record
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


#: The jobs table as 0.2 knows it, to write jobs the way 0.2 queues them.
JOBS_0002 = sa.table(
    "jobs",
    *(sa.column(name) for name in ("kind", "status", "attempts", "max_attempts", "dedupe_key")),
    sa.column("payload", sa.JSON()),
    *(sa.column(name, sa.DateTime(timezone=True)) for name in ("run_after", "created_at", "updated_at")),
)

#: A requester email as 0.2 queues it: the outcome it reports only in its dedupe key.
NOTIFY_0_2 = ("notify_requester", {"request_id": "r1", "notification_id": 7}, "outcome:r1:0123456789abcdef")


def queue_as_0_2(url: str, jobs: list[tuple[str, dict[str, Any], str | None]], due: datetime) -> None:
    engine = create_sync_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.insert(JOBS_0002),
                [
                    {
                        "kind": kind,
                        "payload": payload,
                        "status": "queued",
                        "attempts": 0,
                        "max_attempts": 3,
                        "dedupe_key": key,
                        "run_after": due,
                        "created_at": due,
                        "updated_at": due,
                    }
                    for kind, payload, key in jobs
                ],
            )
    finally:
        engine.dispose()


async def test_upgrading_from_0002_ranks_the_stored_jobs_by_their_kind_and_due_time(
    database_url: str,
) -> None:
    with alembic_config(database_url) as config:
        command.upgrade(config, "0002")
    approval = {
        "request_id": "r1",
        "notification_id": 6,
        "approver": {"id": "1", "nick": "zoe"},
        "task_ids": [],
    }
    queue_as_0_2(
        database_url,
        [
            NOTIFY_0_2,
            ("triage", {"request_id": "r2"}, "triage:r2"),
            ("send_approval", approval, "approval:r1:"),
            ("deliver", {"task_id": "t1"}, None),
        ],
        due=datetime.now(UTC) - timedelta(seconds=45),  # ranked -45, -15, +15, +45 s from now
    )
    migrate(database_url)

    async with await Store.open(database_url, migrate=False) as store:
        async with store.transaction() as tx:
            await enqueue(tx, Deliver("t-new"), max_attempts=3)  # ranked now
        claimed = [from_record(job) for job in await store.queue.claim("worker-a", limit=10, lease=60)]

    assert [type(job) for job in claimed] == [Deliver, SendApproval, Deliver, Triage, NotifyRequester]
    assert claimed[2] == Deliver("t-new")


async def test_a_job_a_0_2_process_queues_after_the_upgrade_is_stored_claimed_and_read(
    migrated_database_url: str,
) -> None:
    queue_as_0_2(migrated_database_url, [NOTIFY_0_2], due=datetime.now(UTC))

    async with await Store.open(migrated_database_url, migrate=False) as store:
        [claimed] = await store.queue.claim("worker-a", limit=10, lease=60)

    assert from_record(claimed) == NotifyRequester("r1", 7, "0123456789abcdef")


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
