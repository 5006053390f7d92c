"""The jobs as typed values: through the queue and back, in priority order, once per dedupe key, and a
stored payload this version cannot read refused at once.

Tests that use the queue run on SQLite and on PostgreSQL, on a clock the test moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from abiquo_workflow.config import WorkerSettings
from abiquo_workflow.domain import User
from abiquo_workflow.exceptions import is_temporary
from abiquo_workflow.jobs import (
    Deliver,
    Job,
    MalformedJob,
    NotifyRequester,
    NotifySettled,
    Reconcile,
    SendApproval,
    Triage,
    enqueue,
    from_record,
    read,
    runner,
    to_queue,
)
from abiquo_workflow.store import JobRecord, JobStatus, Store
from abiquo_workflow.worker import Worker
from tests.test_queue import ManualClock

ZOE = User(id="7", nick="zoe", name="Zoë", surname="Zimmermann", email="Zoe@Acme.example", role="ADMIN")

#: One job of each kind, with every field set.
EXAMPLES: list[Job] = [
    Triage("r1"),
    SendApproval("r1", 12, ZOE, ("t1", "t2")),
    Deliver("t1"),
    NotifyRequester("r1", 13, "0123456789abcdef"),
    NotifyRequester("r2", None, "fedcba9876543210"),  # a requester without an email address
    NotifySettled("r1", 16, "Zoe@Acme.example"),
    Reconcile(after=41),
]


@pytest_asyncio.fixture
async def store(migrated_database_url: str) -> AsyncIterator[Store]:
    """The conftest store on a clock that stands still: jobs enqueued one after another are due together."""
    async with await Store.open(migrated_database_url, clock=ManualClock()) as opened:
        yield opened


async def queue(store: Store, *jobs: Job) -> list[int | None]:
    async with store.transaction() as tx:
        return [await enqueue(tx, job, max_attempts=3) for job in jobs]


def record(kind: str, payload: dict[str, Any], dedupe_key: str | None = None) -> JobRecord:
    """A stored job as the queue would hand it to a worker."""
    clock = ManualClock()
    return JobRecord(
        id=5,
        kind=kind,
        payload=payload,
        status=JobStatus.RUNNING,
        attempts=1,
        max_attempts=3,
        run_after=clock.now,
        locked_by="worker-a",
        locked_until=None,
        last_error=None,
        dedupe_key=dedupe_key,
        created_at=clock.now,
        updated_at=clock.now,
        finished_at=None,
    )


# --- through the queue and back --------------------------------------------------------------------


@pytest.mark.parametrize("job", EXAMPLES, ids=lambda job: type(job).__name__)
async def test_each_job_type_comes_back_from_the_queue_as_it_went_in(store: Store, job: Job) -> None:
    await queue(store, job)

    [claimed] = await store.queue.claim("worker-a", limit=10, lease=60)

    assert (claimed.kind, claimed.dedupe_key) == (job.kind, job.dedupe_key)
    assert from_record(claimed) == job


async def test_due_jobs_are_claimed_deliveries_then_approval_emails_then_triage_then_requester_emails(
    store: Store,
) -> None:
    await queue(store, NotifyRequester("r1", 13, "0123"), Triage("r2"), SendApproval("r1", 12, ZOE, ("t1",)))
    await queue(store, Deliver("t1"))  # the newest of all

    claimed = await store.queue.claim("worker-a", limit=10, lease=60)

    assert [job.kind for job in claimed] == ["deliver", "send_approval", "triage", "notify_requester"]


async def test_an_approver_is_emailed_once_per_request_whatever_the_case_of_the_address(store: Store) -> None:
    shouting = SendApproval("r1", 14, User(id="7", nick="zoe", email="ZOE@ACME.EXAMPLE"), ("t1",))

    first, again = await queue(store, SendApproval("r1", 12, ZOE, ("t1",)), shouting)
    [other_request] = await queue(store, SendApproval("r2", 15, ZOE, ("t3",)))

    assert first is not None and other_request is not None
    assert again is None


async def test_the_requester_is_emailed_once_per_outcome_of_the_request(store: Store) -> None:
    first, same_outcome, new_outcome = await queue(
        store,
        NotifyRequester("r1", 13, "0123456789abcdef"),
        NotifyRequester("r1", 14, "0123456789abcdef"),
        NotifyRequester("r1", 15, "aaaaaaaaaaaaaaaa"),
    )

    assert first is not None and new_outcome is not None
    assert same_outcome is None


async def test_an_approver_is_told_a_request_is_settled_once_whatever_the_case_of_the_address(
    store: Store,
) -> None:
    first, again, other = await queue(
        store,
        NotifySettled("r1", 16, "Zoe@Acme.example"),
        NotifySettled("r1", 17, "ZOE@ACME.EXAMPLE"),
        NotifySettled("r1", 18, "bob.jones@acme.example"),
    )
    [other_request] = await queue(store, NotifySettled("r2", 19, "Zoe@Acme.example"))

    assert first is not None and other is not None and other_request is not None
    assert again is None


def test_the_settled_email_is_queued_at_the_requester_emails_priority() -> None:
    queued = to_queue(NotifySettled("r1", 16, "Zoe@Acme.example"))

    assert (queued.kind, queued.dedupe_key, queued.priority) == (
        "notify_settled",
        "settled:r1:zoe@acme.example",
        to_queue(NotifyRequester("r1", 13, "0123")).priority,
    )


def test_a_job_is_queued_with_its_kind_fields_dedupe_key_and_priority() -> None:
    queued = to_queue(SendApproval("r1", 12, ZOE, ("t1", "t2")))

    assert (queued.kind, queued.dedupe_key, queued.priority) == (
        "send_approval",
        "approval:r1:zoe@acme.example",
        1,
    )
    assert queued.payload["task_ids"] == ["t1", "t2"]
    assert queued.payload["approver"]["email"] == "Zoe@Acme.example"


def test_a_requester_email_queued_by_0_2_reports_the_outcome_its_dedupe_key_names() -> None:
    queued_by_0_2 = record("notify_requester", {"request_id": "r1", "notification_id": 13}, "outcome:r1:0123")

    assert from_record(queued_by_0_2) == NotifyRequester("r1", 13, "0123")


# --- what this version cannot read -------------------------------------------------------------------


def test_a_payload_without_a_field_its_kind_needs_is_refused_naming_the_field() -> None:
    with pytest.raises(MalformedJob) as refused:
        read(SendApproval, record("send_approval", {"request_id": "r1", "notification_id": "seven"}))

    assert str(refused.value) == (
        "job 5 (send_approval) holds a payload this version cannot read: notification_id: Input should "
        "be a valid integer, unable to parse string as an integer; approver: Field required; "
        "task_ids: Field required"
    )


def test_a_job_of_a_kind_this_version_does_not_run_is_refused() -> None:
    with pytest.raises(MalformedJob, match="job 5 is of kind 'summon', which this version does not run"):
        from_record(record("summon", {"request_id": "r1"}))


def test_a_job_read_as_another_kind_is_refused() -> None:
    with pytest.raises(MalformedJob, match="job 5 is a 'triage' job, not a 'deliver' job"):
        read(Deliver, record("triage", {"request_id": "r1"}))


def test_a_job_that_cannot_be_read_is_not_temporary() -> None:
    assert is_temporary(MalformedJob("job 5 (deliver) holds a payload this version cannot read")) is False


async def test_a_job_whose_payload_cannot_be_read_is_buried_at_its_first_attempt(store: Store) -> None:
    ran: list[SendApproval] = []

    async def send(job: SendApproval) -> None:
        ran.append(job)

    async with store.transaction() as tx:
        job_id = await tx.enqueue("send_approval", {"request_id": "r1"}, max_attempts=5)
    assert job_id is not None
    failed: list[str] = []
    buried = asyncio.Event()

    async def on_failed(job: JobRecord, error: str) -> None:
        failed.append(error)
        buried.set()

    worker = Worker(
        store.queue,
        {SendApproval.kind: runner(SendApproval, send)},
        settings=WorkerSettings(lease=5),
        on_failed=on_failed,
        poll_interval=0.05,
    )
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(15):
            await buried.wait()
    finally:
        worker.stop()
        await running  # the running job, its burial included, finishes first
    dead = await store.get_job(job_id)

    assert dead is not None and dead.status is JobStatus.DEAD
    assert (ran, dead.attempts) == ([], 1)
    assert failed == [dead.last_error]
    assert dead.last_error is not None and "notification_id: Field required" in dead.last_error
