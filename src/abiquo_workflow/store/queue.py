"""The job queue (the outbox): claims with leases, and waking workers when work arrives.

A job moves queued → running (claimed by one worker for a lease) → done, or back to queued to be
retried later, or dead once its attempts run out (visible, and requeued by hand with `requeue`).

How it fails, and what then:
- A worker that dies mid-job leaves it `running`; when its lease runs out, the next `claim` by any worker
  takes it over (attempts + 1). If that was its last attempt, `claim` buries it instead, naming the cause.
- Two workers never hold the same job: on PostgreSQL they pick rows with `FOR UPDATE SKIP LOCKED`; on
  SQLite each claim runs under `BEGIN IMMEDIATE`, one writer at a time. A worker whose lease ran out and
  whose job was taken over can no longer complete, retry, bury or extend it (those calls return False).
- A job can run more than once (a worker dies after the work but before `complete`): each job kind
  must be safe to repeat, which is why task transitions are conditional.

Wake-ups: the store sets `Wakeup` after the COMMIT of a transaction that enqueued (before it the
worker would not see the row). On PostgreSQL the enqueuing transaction also sends NOTIFY, and
`postgres.JobListener` LISTENs, so an enqueue in another process wakes this one. Without either, workers still
find work by polling: a wake-up only saves the wait.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Executable, and_, insert, or_, select, text, update

from abiquo_workflow.store.connection import Connection, insert_on_conflict_for
from abiquo_workflow.store.records import JobRecord, JobStatus, from_row
from abiquo_workflow.store.tables import jobs

#: The PostgreSQL NOTIFY channel enqueues are announced on.
JOBS_CHANNEL = "awf_jobs"

#: Attempts a job gets when the caller does not say (the worker's `max_attempts` setting overrides it).
DEFAULT_MAX_ATTEMPTS = 8


async def enqueue(
    conn: Connection,
    now: datetime,
    kind: str,
    payload: Mapping[str, Any],
    *,
    run_after: datetime | None,
    dedupe_key: str | None,
    max_attempts: int,
) -> int | None:
    """Insert a queued job; None (and nothing inserted) when `dedupe_key` is already taken."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    values = {
        "kind": kind,
        "payload": dict(payload),
        "status": JobStatus.QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_after": run_after or now,
        "dedupe_key": dedupe_key,
        "created_at": now,
        "updated_at": now,
    }
    statement = _enqueue_statement(conn.dialect.name, deduplicated=dedupe_key is not None)
    job_id: int | None = (await conn.execute(statement, values)).scalar_one_or_none()
    if job_id is not None:
        await notify(conn)
    return job_id


@functools.cache
def _enqueue_statement(dialect: str, *, deduplicated: bool) -> Executable:
    """The INSERT of a job, built once per database kind and run with parameters (it is on every
    callback's path; see `store._INSERT_REQUEST`)."""
    if not deduplicated:
        return insert(jobs).returning(jobs.c.id)
    return (
        insert_on_conflict_for(dialect, jobs)
        .on_conflict_do_nothing(index_elements=[jobs.c.dedupe_key])
        .returning(jobs.c.id)
    )


async def notify(conn: Connection) -> None:
    """On PostgreSQL, announce new work to other processes; delivered at COMMIT, dropped on ROLLBACK."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": JOBS_CHANNEL})


async def claim(
    conn: Connection,
    now: datetime,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    kinds: Sequence[str] | None,
) -> list[JobRecord]:
    """Take up to `limit` due jobs for `worker_id`; see `JobQueue.claim`."""
    await _bury_abandoned(conn, now, kinds)
    due = or_(
        and_(jobs.c.status == JobStatus.QUEUED, jobs.c.run_after <= now),
        # Crash recovery: the worker holding it stopped renewing its lease.
        and_(
            jobs.c.status == JobStatus.RUNNING,
            jobs.c.locked_until <= now,
            jobs.c.attempts < jobs.c.max_attempts,
        ),
    )
    ids = await _lock_ids(conn, due, kinds, limit=limit)
    if not ids:
        return []
    claimed = await conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(ids))
        .values(
            status=JobStatus.RUNNING,
            attempts=jobs.c.attempts + 1,
            locked_by=worker_id,
            locked_until=now + timedelta(seconds=lease),
            updated_at=now,
        )
        .returning(*jobs.c)
    )
    records = [from_row(JobRecord, row) for row in claimed.mappings()]
    return sorted(records, key=lambda job: (job.run_after, job.id))


async def _bury_abandoned(conn: Connection, now: datetime, kinds: Sequence[str] | None) -> None:
    """Mark dead the running jobs whose lease ran out during their last allowed attempt."""
    abandoned = and_(
        jobs.c.status == JobStatus.RUNNING,
        jobs.c.locked_until <= now,
        jobs.c.attempts >= jobs.c.max_attempts,
    )
    ids = await _lock_ids(conn, abandoned, kinds, limit=None)
    if ids:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(ids))
            .values(
                status=JobStatus.DEAD,
                last_error="the worker running its last attempt stopped before finishing (its lease ran out)",
                locked_until=None,
                finished_at=now,
                updated_at=now,
            )
        )


async def _lock_ids(
    conn: Connection, condition: Any, kinds: Sequence[str] | None, *, limit: int | None
) -> list[int]:
    """Ids of matching jobs, oldest first, locked for this transaction.

    PostgreSQL skips rows another claimer holds; SQLite renders no FOR UPDATE, and needs none: the
    transaction began IMMEDIATE, so no other writer runs until it commits.
    """
    query = select(jobs.c.id).where(condition)
    if kinds is not None:
        query = query.where(jobs.c.kind.in_(list(kinds)))
    query = query.order_by(jobs.c.run_after, jobs.c.id).limit(limit).with_for_update(skip_locked=True)
    return list((await conn.execute(query)).scalars())


async def complete(conn: Connection, now: datetime, job_id: int, worker_id: str) -> bool:
    return await _end_run(conn, now, job_id, worker_id, JobStatus.DONE, finished_at=now)


async def retry(
    conn: Connection, now: datetime, job_id: int, worker_id: str, *, error: str, run_after: datetime
) -> bool:
    return await _end_run(
        conn, now, job_id, worker_id, JobStatus.QUEUED, run_after=run_after, last_error=error
    )


async def bury(conn: Connection, now: datetime, job_id: int, worker_id: str, *, error: str) -> bool:
    return await _end_run(conn, now, job_id, worker_id, JobStatus.DEAD, last_error=error, finished_at=now)


async def extend_lease(conn: Connection, now: datetime, job_id: int, worker_id: str, lease: float) -> bool:
    return await _change_run(conn, now, job_id, worker_id, locked_until=now + timedelta(seconds=lease))


async def _end_run(
    conn: Connection, now: datetime, job_id: int, worker_id: str, status: JobStatus, **values: Any
) -> bool:
    """End a run: the job leaves `running` for `status` and its lease is given up."""
    return await _change_run(conn, now, job_id, worker_id, status=status, locked_until=None, **values)


async def _change_run(conn: Connection, now: datetime, job_id: int, worker_id: str, **values: Any) -> bool:
    """Change a running job, but only for the worker that holds it."""
    changed = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING, jobs.c.locked_by == worker_id)
        .values(updated_at=now, **values)
        .returning(jobs.c.id)
    )
    return changed.scalar_one_or_none() is not None


async def requeue(conn: Connection, now: datetime, job_id: int) -> bool:
    """Give a dead job a fresh set of attempts, due now. False when the job is not dead."""
    changed = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == JobStatus.DEAD)
        .values(
            status=JobStatus.QUEUED,
            attempts=0,
            run_after=now,
            locked_by=None,
            locked_until=None,
            finished_at=None,
            updated_at=now,
        )
        .returning(jobs.c.id)
    )
    if changed.scalar_one_or_none() is None:
        return False
    await notify(conn)
    return True


class Wakeup:
    """A flag set when jobs may have become due, for workers to wait on instead of sleeping blindly.

    `wait` returns at once if the flag was set since the last wait, and clears it; every waiter waiting
    when it is set wakes up. Claim until nothing is left after waking: one wake-up may stand for many jobs.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    # A timeout argument (ASYNC109) on purpose: running out of time is the normal case, not an error.
    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to `timeout` seconds; True if woken, False if the time ran out."""
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True
