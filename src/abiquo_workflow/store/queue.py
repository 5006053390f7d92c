"""The job queue (the outbox): claims with leases, in priority order with ageing, and waking workers.

A job moves queued → running (claimed by one worker for a lease) → done, or back to queued to be
retried later, or dead once its attempts run out (visible, and requeued by hand with `requeue`).

Which due jobs are claimed first: the lowest `priority - seconds overdue / AGEING_STEP`. A job of
priority p is ranked as if it had fallen due p * AGEING_STEP seconds later than it did (`claim_rank`,
stored with it: run_after in milliseconds since the epoch, plus p * AGEING_STEP), and claims take the
lowest rank first, the oldest job on a tie. So of jobs due at the same time the most urgent kind goes
first, but nothing that falls due more than p * AGEING_STEP seconds after a job of priority p goes
before it: once a job has waited that long no newcomer passes it, however many urgent jobs keep
arriving, and it is claimed as soon as the jobs already ahead of it are. The rank is recomputed when
a job is retried (from its new run_after) or requeued (from now). An index on (status, claim_rank, id)
serves the claim's ORDER BY … LIMIT, on SQLite and PostgreSQL alike.

How it fails, and what then:
- A worker that dies mid-job leaves it `running`; when its lease runs out, the next `claim` by any worker
  takes it over (attempts + 1), ranked as it was queued. If that was its last attempt, `claim` buries it
  instead, naming the cause.
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

from sqlalchemy import (
    BigInteger,
    Executable,
    Integer,
    Select,
    Update,
    bindparam,
    delete,
    insert,
    select,
    text,
    update,
)

from abiquo_workflow.store.connection import Connection, insert_on_conflict_for
from abiquo_workflow.store.records import JobRecord, JobStatus, from_row
from abiquo_workflow.store.tables import jobs, workers

#: The PostgreSQL NOTIFY channel enqueues are announced on.
JOBS_CHANNEL = "awf_jobs"

#: Attempts a job gets when the caller does not say (the worker's `max_attempts` setting overrides it).
DEFAULT_MAX_ATTEMPTS = 8

#: Seconds of waiting that make up for one step of priority (see the module docstring).
AGEING_STEP = 30.0
_AGEING_STEP_MS = int(AGEING_STEP * 1000)


def _claim_rank(run_after: datetime, priority: int) -> int:
    """Where a job stands in claim order: `run_after` in milliseconds, plus its priority's handicap."""
    return _milliseconds(run_after) + priority * _AGEING_STEP_MS


def _milliseconds(moment: datetime) -> int:
    """`moment` in milliseconds since the epoch."""
    return int(moment.timestamp() * 1000)


async def enqueue(
    conn: Connection,
    now: datetime,
    kind: str,
    payload: Mapping[str, Any],
    *,
    run_after: datetime | None,
    dedupe_key: str | None,
    max_attempts: int,
    priority: int,
) -> int | None:
    """Insert a queued job; None (and nothing inserted) when `dedupe_key` is already taken."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if priority < 0:
        raise ValueError(f"priority must be 0 (the most urgent) or more, got {priority}")
    due = run_after or now
    values = {
        "kind": kind,
        "payload": dict(payload),
        "status": JobStatus.QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_after": due,
        "priority": priority,
        "claim_rank": _claim_rank(due, priority),
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
    """Take up to `limit` due jobs for `worker_id`, lowest claim rank first; see `JobQueue.claim`.

    Due jobs are found by two ordered walks of the (status, claim_rank, id) index: running jobs whose
    lease ran out (crash recovery; those that were on their last attempt are buried instead, naming the
    cause) and queued jobs whose time has come. The lowest ranks of both are claimed. The statements
    are built once: a worker claims after nearly every job it finishes.
    """
    params = {"now": now, "kinds": list(kinds or ()), "limit": limit}
    of_kinds = kinds is not None
    ran_out = (await conn.execute(_lease_ran_out(of_kinds=of_kinds), params)).all()
    abandoned = [row.id for row in ran_out if row.exhausted]
    if abandoned:
        await conn.execute(_BURY_ABANDONED, {"ids": abandoned, "buried_at": now})
    ranked = [(row.claim_rank, row.id) for row in ran_out if not row.exhausted]
    ranked += [
        (row.claim_rank, row.id) for row in (await conn.execute(queued_due(of_kinds=of_kinds), params))
    ]
    ids = [job_id for _, job_id in sorted(ranked)[:limit]]
    if not ids:
        return []
    claimed = await conn.execute(
        _CLAIM,
        {"ids": ids, "claimer": worker_id, "lease_ends": now + timedelta(seconds=lease), "claimed_at": now},
    )
    position = {job_id: index for index, job_id in enumerate(ids)}
    records = [from_row(JobRecord, row) for row in claimed.mappings()]
    return sorted(records, key=lambda job: position[job.id])


@functools.cache
def queued_due(*, of_kinds: bool) -> Select[Any]:
    """The claim's walk over queued jobs: those due at `:now` (of `:kinds`), at most `:limit`, lowest
    claim rank first. The (status, claim_rank, id) index serves it without a sort (test_queue.py checks)."""
    query = select(jobs.c.claim_rank, jobs.c.id).where(
        jobs.c.status == JobStatus.QUEUED, jobs.c.run_after <= bindparam("now")
    )
    return _in_claim_order(query, of_kinds=of_kinds).limit(bindparam("limit", type_=Integer()))


@functools.cache
def _lease_ran_out(*, of_kinds: bool) -> Select[Any]:
    """Running jobs (of `:kinds`) whose lease ran out by `:now`, in claim order, each saying whether that
    was its last attempt. Few: only a worker that stopped leaves any."""
    query = select(
        jobs.c.claim_rank, jobs.c.id, (jobs.c.attempts >= jobs.c.max_attempts).label("exhausted")
    ).where(jobs.c.status == JobStatus.RUNNING, jobs.c.locked_until <= bindparam("now"))
    return _in_claim_order(query, of_kinds=of_kinds)


def _in_claim_order(query: Select[Any], *, of_kinds: bool) -> Select[Any]:
    """`query` narrowed to `:kinds` if asked, lowest claim rank first, its rows locked for this transaction.

    PostgreSQL skips rows another claimer holds; SQLite renders no FOR UPDATE, and needs none: the
    transaction began IMMEDIATE, so no other writer runs until it commits.
    """
    if of_kinds:
        query = query.where(jobs.c.kind.in_(bindparam("kinds", expanding=True)))
    return query.order_by(jobs.c.claim_rank, jobs.c.id).with_for_update(skip_locked=True)


_CLAIM = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=JobStatus.RUNNING,
        attempts=jobs.c.attempts + 1,
        locked_by=bindparam("claimer"),
        locked_until=bindparam("lease_ends"),
        updated_at=bindparam("claimed_at"),
    )
    .returning(*jobs.c)
)

_BURY_ABANDONED = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=JobStatus.DEAD,
        last_error="the worker running its last attempt stopped before finishing (its lease ran out)",
        locked_until=None,
        finished_at=bindparam("buried_at"),
        updated_at=bindparam("buried_at"),
    )
)


async def complete(conn: Connection, now: datetime, job_id: int, worker_id: str) -> bool:
    return await _end_run(conn, now, job_id, worker_id, JobStatus.DONE, finished_at=now)


async def retry(
    conn: Connection, now: datetime, job_id: int, worker_id: str, *, error: str, run_after: datetime
) -> bool:
    return await _end_run(
        conn,
        now,
        job_id,
        worker_id,
        JobStatus.QUEUED,
        run_after=run_after,
        claim_rank=_milliseconds(run_after),
        last_error=error,
    )


async def bury(conn: Connection, now: datetime, job_id: int, worker_id: str, *, error: str) -> bool:
    return await _end_run(conn, now, job_id, worker_id, JobStatus.DEAD, last_error=error, finished_at=now)


async def extend_lease(conn: Connection, now: datetime, job_id: int, worker_id: str, lease: float) -> bool:
    return await _change(
        conn,
        job_id,
        JobStatus.RUNNING,
        worker_id,
        locked_until=now + timedelta(seconds=lease),
        updated_at=now,
    )


async def _end_run(
    conn: Connection, now: datetime, job_id: int, worker_id: str, status: JobStatus, **values: Any
) -> bool:
    """End a run: the job leaves `running` for `status` and its lease is given up."""
    return await _change(
        conn, job_id, JobStatus.RUNNING, worker_id, status=status, locked_until=None, updated_at=now, **values
    )


async def requeue(conn: Connection, now: datetime, job_id: int) -> bool:
    """Give a dead job a fresh set of attempts, due now. False when the job is not dead."""
    requeued = await _change(
        conn,
        job_id,
        JobStatus.DEAD,
        None,
        status=JobStatus.QUEUED,
        attempts=0,
        run_after=now,
        claim_rank=_milliseconds(now),
        locked_by=None,
        locked_until=None,
        finished_at=None,
        updated_at=now,
    )
    if requeued:
        await notify(conn)
    return requeued


#: A heartbeat row older than this belongs to a worker that died without signing off: removed.
FORGET_WORKERS_AFTER = timedelta(days=1)


async def heartbeat(
    conn: Connection, now: datetime, worker_id: str, *, started_at: datetime, first: bool
) -> None:
    """Record that `worker_id` is alive at `now` (one row per worker, written over); on its `first`
    beat, also forget the workers that stopped beating a day ago."""
    await conn.execute(
        _heartbeat_statement(conn.dialect.name),
        {"worker_id": worker_id, "started_at": started_at, "beat_at": now},
    )
    if first:
        await conn.execute(delete(workers).where(workers.c.beat_at < now - FORGET_WORKERS_AFTER))


@functools.cache
def _heartbeat_statement(dialect: str) -> Executable:
    """The upsert of a worker's heartbeat, built once per database kind (it runs every second)."""
    statement = insert_on_conflict_for(dialect, workers)
    return statement.on_conflict_do_update(
        index_elements=[workers.c.worker_id], set_={"beat_at": statement.excluded.beat_at}
    )


async def sign_off(conn: Connection, worker_id: str) -> None:
    """Remove `worker_id`'s heartbeat: it has stopped."""
    await conn.execute(delete(workers).where(workers.c.worker_id == worker_id))


async def _change(
    conn: Connection, job_id: int, in_status: JobStatus, holder: str | None, /, **values: Any
) -> bool:
    """Set `values` on a job in `in_status` and, given a `holder`, running under that worker's lease.

    False when the job is not so: its lease ran out and another worker took it over, or it moved on.
    A `claim_rank` is given as the job's new due time in milliseconds; the statement adds the handicap
    of the job's priority.
    """
    statement = _change_statement(tuple(sorted(values)), held=holder is not None)
    parameters = {"job_id": job_id, "in_status": in_status, "holder": holder}
    parameters.update({f"new_{name}": value for name, value in values.items()})
    return (await conn.execute(statement, parameters)).scalar_one_or_none() is not None


@functools.cache
def _change_statement(columns: tuple[str, ...], *, held: bool) -> Update:
    """The UPDATE of `_change` for one set of columns, built once (one runs at the end of every job)."""
    condition = [jobs.c.id == bindparam("job_id"), jobs.c.status == bindparam("in_status")]
    if held:
        condition.append(jobs.c.locked_by == bindparam("holder"))
    values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in columns}
    if "claim_rank" in values:
        values["claim_rank"] = (
            bindparam("new_claim_rank", type_=BigInteger()) + jobs.c.priority * _AGEING_STEP_MS
        )
    return update(jobs).where(*condition).values(values).returning(jobs.c.id)


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
