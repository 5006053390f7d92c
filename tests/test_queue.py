"""The job queue: claims, leases, claim order (priorities and ageing), retries, burial, requeueing,
dedupe keys and wake-ups.

Every test runs on SQLite and on PostgreSQL. Time is a clock the test moves, never a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy import text

from abiquo_workflow.store import DEFAULT_MAX_ATTEMPTS, JobRecord, JobStatus, Store
from abiquo_workflow.store.postgres import LISTENER_APPLICATION_NAME, JobListener
from abiquo_workflow.store.queue import AGEING_STEP, JOBS_CHANNEL, Wakeup, queued_due
from abiquo_workflow.store.schema import create_sync_engine
from abiquo_workflow.store.urls import libpq_conninfo


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def store(migrated_database_url: str, clock: ManualClock) -> AsyncIterator[Store]:
    """The conftest store, but on a clock the test moves."""
    async with await Store.open(migrated_database_url, clock=clock) as opened:
        yield opened


async def enqueue(
    store: Store,
    kind: str = "deliver",
    *,
    run_after: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    priority: int = 0,
) -> int:
    async with store.transaction() as work:
        job_id = await work.enqueue(
            kind, {"task_id": "t1"}, run_after=run_after, max_attempts=max_attempts, priority=priority
        )
    assert job_id is not None
    return job_id


async def job(store: Store, job_id: int) -> JobRecord:
    found = await store.get_job(job_id)
    assert found is not None
    return found


# --- claims and leases ---------------------------------------------------------------------------------


async def test_a_claimed_job_is_running_for_its_worker_until_the_lease_ends(
    store: Store, clock: ManualClock
) -> None:
    job_id = await enqueue(store)

    [claimed] = await store.queue.claim("worker-a", limit=10, lease=60)

    assert claimed.id == job_id
    assert (claimed.kind, claimed.payload) == ("deliver", {"task_id": "t1"})
    assert (claimed.status, claimed.attempts, claimed.locked_by) == (JobStatus.RUNNING, 1, "worker-a")
    assert claimed.locked_until == clock.now + timedelta(seconds=60)


async def test_a_running_job_is_not_claimed_again_while_its_lease_lasts(
    store: Store, clock: ManualClock
) -> None:
    await enqueue(store)
    await store.queue.claim("worker-a", limit=10, lease=60)
    clock.advance(59)

    assert await store.queue.claim("worker-b", limit=10, lease=60) == []


async def test_an_expired_lease_lets_another_worker_take_the_job(store: Store, clock: ManualClock) -> None:
    job_id = await enqueue(store)
    await store.queue.claim("worker-a", limit=10, lease=60)
    clock.advance(60)

    [taken_over] = await store.queue.claim("worker-b", limit=10, lease=60)

    assert (taken_over.id, taken_over.locked_by, taken_over.attempts) == (job_id, "worker-b", 2)
    assert await store.queue.complete(job_id, "worker-a") is False
    assert await store.queue.complete(job_id, "worker-b") is True


async def test_an_extended_lease_keeps_the_job_from_other_workers(store: Store, clock: ManualClock) -> None:
    job_id = await enqueue(store)
    await store.queue.claim("worker-a", limit=10, lease=60)
    clock.advance(50)

    assert await store.queue.extend_lease(job_id, "worker-a", 60) is True
    clock.advance(50)
    assert await store.queue.claim("worker-b", limit=10, lease=60) == []
    assert await store.queue.extend_lease(job_id, "worker-b", 60) is False


async def test_each_job_goes_to_exactly_one_of_two_racing_workers(store: Store) -> None:
    enqueued = set()
    async with store.transaction() as work:
        for n in range(50):
            enqueued.add(await work.enqueue("deliver", {"n": n}))

    async def drain(worker_id: str) -> list[int]:
        mine: list[int] = []
        while batch := await store.queue.claim(worker_id, limit=3, lease=60):
            mine.extend(claimed.id for claimed in batch)
        return mine

    first, second = await asyncio.gather(drain("worker-a"), drain("worker-b"))

    assert len(first) + len(second) == 50
    assert set(first) | set(second) == enqueued


async def test_claim_takes_the_oldest_due_jobs_up_to_the_limit(store: Store) -> None:
    ids = [await enqueue(store) for _ in range(3)]

    claimed = await store.queue.claim("worker-a", limit=2, lease=60)

    assert [c.id for c in claimed] == ids[:2]


async def test_claim_takes_only_the_kinds_asked_for(store: Store) -> None:
    await enqueue(store, "triage")
    notify_id = await enqueue(store, "notify_requester")

    claimed = await store.queue.claim("worker-a", limit=10, lease=60, kinds=["notify_requester"])

    assert [c.id for c in claimed] == [notify_id]


async def test_a_completed_job_is_done_and_never_claimed_again(store: Store, clock: ManualClock) -> None:
    job_id = await enqueue(store)
    await store.queue.claim("worker-a", limit=10, lease=60)

    assert await store.queue.complete(job_id, "worker-a") is True

    done = await job(store, job_id)
    clock.advance(3600)
    assert (done.status, done.finished_at, done.locked_until) == (
        JobStatus.DONE,
        clock.now - timedelta(hours=1),
        None,
    )
    assert await store.queue.claim("worker-b", limit=10, lease=60) == []


# --- claim order: priorities and ageing -------------------------------------------------------------


async def test_of_jobs_due_together_the_lowest_priority_is_claimed_first(store: Store) -> None:
    ids = {priority: await enqueue(store, priority=priority) for priority in (3, 1, 2, 0)}

    claimed = await store.queue.claim("worker-a", limit=10, lease=60)

    assert [c.id for c in claimed] == [ids[0], ids[1], ids[2], ids[3]]


async def test_a_low_priority_job_that_has_waited_past_the_ageing_limit_goes_before_a_new_urgent_one(
    store: Store, clock: ManualClock
) -> None:
    old = await enqueue(store, "notify_requester", priority=3)
    clock.advance(3 * AGEING_STEP + 1)
    await enqueue(store, "deliver", priority=0)

    [claimed] = await store.queue.claim("worker-a", limit=1, lease=60)

    assert claimed.id == old


async def test_a_low_priority_job_within_the_ageing_limit_waits_behind_a_new_urgent_one(
    store: Store, clock: ManualClock
) -> None:
    await enqueue(store, "notify_requester", priority=3)
    clock.advance(3 * AGEING_STEP - 1)
    urgent = await enqueue(store, "deliver", priority=0)

    [claimed] = await store.queue.claim("worker-a", limit=1, lease=60)

    assert claimed.id == urgent


async def test_a_retried_job_takes_its_place_from_its_new_due_time(store: Store, clock: ManualClock) -> None:
    retried = await enqueue(store)
    await store.queue.claim("worker-a", limit=10, lease=60)
    await store.queue.retry(retried, "worker-a", error="503", run_after=clock.now + timedelta(seconds=10))
    newer = await enqueue(store)
    clock.advance(10)

    claimed = await store.queue.claim("worker-a", limit=10, lease=60)

    assert [c.id for c in claimed] == [newer, retried]


async def test_a_requeued_job_takes_its_place_from_the_time_it_was_requeued(
    store: Store, clock: ManualClock
) -> None:
    requeued = await enqueue(store, max_attempts=1)
    await store.queue.claim("worker-a", limit=10, lease=60)
    await store.queue.bury(requeued, "worker-a", error="Abiquo unreachable")
    clock.advance(300)
    waiting = await enqueue(store)
    clock.advance(300)
    await store.queue.requeue(requeued)

    claimed = await store.queue.claim("worker-b", limit=10, lease=60)

    assert [c.id for c in claimed] == [waiting, requeued]


async def test_a_job_whose_worker_stopped_is_taken_up_in_claim_order_with_the_queued_ones(
    store: Store, clock: ManualClock
) -> None:
    orphan = await enqueue(store, "notify_requester", priority=3)
    await store.queue.claim("crashed-worker", limit=10, lease=60)
    clock.advance(60)
    urgent = await enqueue(store, "deliver", priority=0)

    claimed = await store.queue.claim("worker-b", limit=10, lease=60)

    assert [(c.id, c.attempts) for c in claimed] == [(urgent, 1), (orphan, 2)]


async def test_a_negative_priority_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="priority must be 0"):
        await enqueue(store, priority=-1)


async def test_the_claim_walks_its_index_in_order_without_sorting(
    store: Store, clock: ManualClock, migrated_database_url: str
) -> None:
    for priority in range(4):
        await enqueue(store, priority=priority)
    engine = create_sync_engine(migrated_database_url)
    try:
        with engine.begin() as connection:
            query = queued_due(of_kinds=True).params(now=clock.now, kinds=["deliver", "triage"], limit=10)
            sql = str(query.compile(connection, compile_kwargs={"literal_binds": True}))
            if engine.dialect.name == "postgresql":
                # Four rows: let the planner see what it would do with thousands.
                connection.execute(text("SET LOCAL enable_seqscan = off"))
                connection.execute(text("SET LOCAL enable_sort = off"))
                plan = " ".join(row[0] for row in connection.execute(text(f"EXPLAIN {sql}")))
            else:
                plan = " ".join(row[-1] for row in connection.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    finally:
        engine.dispose()

    assert "ix_jobs_status_claim_rank_id" in plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan


# --- retries, burial, requeueing -----------------------------------------------------------------------


async def test_a_retried_job_is_not_claimed_before_its_run_after(store: Store, clock: ManualClock) -> None:
    job_id = await enqueue(store)
    await store.queue.claim("worker-a", limit=10, lease=60)
    await store.queue.retry(
        job_id, "worker-a", error="Abiquo answered 503", run_after=clock.now + timedelta(seconds=30)
    )

    clock.advance(29)
    assert await store.queue.claim("worker-a", limit=10, lease=60) == []
    clock.advance(1)
    [again] = await store.queue.claim("worker-a", limit=10, lease=60)

    assert (again.id, again.attempts, again.last_error) == (job_id, 2, "Abiquo answered 503")


async def test_a_job_scheduled_for_later_waits_for_its_time(store: Store, clock: ManualClock) -> None:
    await enqueue(store, run_after=clock.now + timedelta(minutes=5))

    assert await store.queue.claim("worker-a", limit=10, lease=60) == []
    clock.advance(300)
    assert len(await store.queue.claim("worker-a", limit=10, lease=60)) == 1


async def test_a_job_buried_after_its_last_attempt_is_dead_and_listed(
    store: Store, clock: ManualClock
) -> None:
    job_id = await enqueue(store, max_attempts=2)
    await store.queue.claim("worker-a", limit=10, lease=60)
    await store.queue.retry(job_id, "worker-a", error="503", run_after=clock.now)
    [last] = await store.queue.claim("worker-a", limit=10, lease=60)
    assert last.exhausted

    assert await store.queue.bury(job_id, "worker-a", error="Abiquo answered 503 eight times") is True

    [dead] = await store.list_jobs(status=JobStatus.DEAD)
    assert (dead.id, dead.attempts, dead.last_error) == (job_id, 2, "Abiquo answered 503 eight times")
    assert dead.finished_at == clock.now
    assert await store.list_jobs(status=JobStatus.QUEUED) == []


async def test_a_last_attempt_whose_worker_stopped_is_buried_by_the_next_claim(
    store: Store, clock: ManualClock
) -> None:
    job_id = await enqueue(store, max_attempts=1)
    await store.queue.claim("worker-a", limit=10, lease=60)
    clock.advance(60)

    assert await store.queue.claim("worker-b", limit=10, lease=60) == []

    dead = await job(store, job_id)
    assert dead.status is JobStatus.DEAD
    assert dead.last_error is not None
    assert "lease ran out" in dead.last_error


async def test_requeue_gives_a_dead_job_fresh_attempts(store: Store, clock: ManualClock) -> None:
    job_id = await enqueue(store, max_attempts=1)
    await store.queue.claim("worker-a", limit=10, lease=60)
    await store.queue.bury(job_id, "worker-a", error="Abiquo unreachable")
    clock.advance(600)

    assert await store.queue.requeue(job_id) is True

    requeued = await job(store, job_id)
    assert (requeued.status, requeued.attempts, requeued.run_after) == (JobStatus.QUEUED, 0, clock.now)
    assert [c.id for c in await store.queue.claim("worker-b", limit=10, lease=60)] == [job_id]


async def test_requeue_leaves_a_job_that_is_not_dead_alone(store: Store) -> None:
    job_id = await enqueue(store)
    await store.queue.claim("worker-a", limit=10, lease=60)

    assert await store.queue.requeue(job_id) is False
    assert (await job(store, job_id)).status is JobStatus.RUNNING


async def test_a_worker_that_does_not_hold_a_job_cannot_finish_it(store: Store, clock: ManualClock) -> None:
    job_id = await enqueue(store)
    await store.queue.claim("worker-a", limit=10, lease=60)

    assert await store.queue.retry(job_id, "worker-b", error="?", run_after=clock.now) is False
    assert await store.queue.bury(job_id, "worker-b", error="?") is False
    assert await store.queue.complete(job_id, "worker-b") is False
    assert (await job(store, job_id)).status is JobStatus.RUNNING


# --- enqueueing ----------------------------------------------------------------------------------------


async def test_a_dedupe_key_enqueues_once(store: Store) -> None:
    async with store.transaction() as work:
        first = await work.enqueue("triage", {"request": "r1"}, dedupe_key="triage:r1")
    async with store.transaction() as work:
        second = await work.enqueue("triage", {"request": "r1"}, dedupe_key="triage:r1")
        other = await work.enqueue("triage", {"request": "r2"}, dedupe_key="triage:r2")

    assert first is not None and other is not None
    assert second is None
    assert [j.dedupe_key for j in await store.list_jobs()] == ["triage:r1", "triage:r2"]


async def test_jobs_without_a_dedupe_key_never_collide(store: Store) -> None:
    async with store.transaction() as work:
        ids = [await work.enqueue("deliver", {"task_id": "t1"}) for _ in range(2)]

    assert None not in ids
    assert len(set(ids)) == 2


# --- waking workers ------------------------------------------------------------------------------------


async def test_wakeup_fires_after_the_commit_and_not_before(store: Store) -> None:
    async with store.transaction() as work:
        await work.enqueue("deliver", {"task_id": "t1"})
        assert await store.queue.wait_for_jobs(timeout=0) is False

    assert await store.queue.wait_for_jobs(timeout=0) is True


async def test_wakeup_does_not_fire_when_the_transaction_rolls_back(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as work:
            await work.enqueue("deliver", {"task_id": "t1"})
            raise RuntimeError("abandon")

    assert await store.queue.wait_for_jobs(timeout=0) is False


async def test_waiting_clears_the_wakeup(store: Store) -> None:
    await enqueue(store)

    assert await store.queue.wait_for_jobs(timeout=0) is True
    assert await store.queue.wait_for_jobs(timeout=0) is False


async def test_requeueing_a_dead_job_wakes_the_workers(store: Store) -> None:
    job_id = await enqueue(store, max_attempts=1)
    await store.queue.claim("worker-a", limit=10, lease=60)
    await store.queue.bury(job_id, "worker-a", error="Abiquo unreachable")
    assert await store.queue.wait_for_jobs(timeout=0) is True  # the enqueue's wake-up

    assert await store.queue.requeue(job_id) is True
    assert await store.queue.wait_for_jobs(timeout=0) is True


async def test_a_transaction_without_jobs_wakes_nobody(store: Store) -> None:
    async with store.transaction() as work:
        await work.audit("received")

    assert await store.queue.wait_for_jobs(timeout=0) is False


async def test_an_enqueue_by_another_process_wakes_this_one_on_postgresql(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite serves one process")
    async with await Store.open(database_url) as worker, await Store.open(database_url, migrate=False) as web:
        async with web.transaction() as work:
            await work.enqueue("deliver", {"task_id": "t1"})

        assert await worker.queue.wait_for_jobs(timeout=30) is True


async def test_the_listener_comes_back_after_losing_its_connection_on_postgresql(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite serves one process")
    conninfo = libpq_conninfo(database_url)
    wakeup = Wakeup()
    listener = JobListener(conninfo, wakeup, reconnect_delay=0.01)
    await listener.start()
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as other:
            await other.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                [LISTENER_APPLICATION_NAME],
            )
            assert await wakeup.wait(timeout=30) is True  # back, and telling workers to look
            await other.execute(f"NOTIFY {JOBS_CHANNEL}")
            assert await wakeup.wait(timeout=30) is True  # and listening again
    finally:
        await listener.stop()
