"""The job runner on its own: handlers written here, a real store on SQLite and PostgreSQL.

These say how the worker runs, retries, buries, bounds (pools of slots, and the total) and wakes; what the
jobs of the approval loop do is tested with the loop."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from pydantic import TypeAdapter, ValidationError

from abiquo_workflow.config import WorkerSettings
from abiquo_workflow.exceptions import (
    AbiquoAuthError,
    AbiquoNotFound,
    AbiquoProtocolError,
    AbiquoUnavailable,
    ConfigError,
    MailError,
    NotAnApprover,
    PayloadError,
    StoreError,
    TokenError,
    is_temporary,
)
from abiquo_workflow.jobs import MalformedJob
from abiquo_workflow.store import JobRecord, JobStatus, Store
from abiquo_workflow.worker import Handler, Pool, Worker, retry_delay

WAIT = 15.0


@dataclass
class Running:
    """A worker running in the background, and the failures it reported through `on_failed`."""

    worker: Worker
    task: asyncio.Task[None]
    failed: list[tuple[JobRecord, str]] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop claiming and wait until the running jobs (and their reports) are finished."""
        self.worker.stop()
        async with asyncio.timeout(WAIT):
            await self.task


Start = Callable[..., Awaitable[Running]]


def settings(**changes: Any) -> WorkerSettings:
    values: dict[str, Any] = {"concurrency": 4, "retry_base_delay": 0.05, "retry_max_delay": 0.5, "lease": 5}
    return WorkerSettings.model_validate({**values, **changes})


async def enqueue(store: Store, kind: str, payload: Mapping[str, Any] | None = None, **options: Any) -> int:
    async with store.transaction() as tx:
        job_id = await tx.enqueue(kind, payload or {}, **options)
    assert job_id is not None
    return job_id


async def job(store: Store, job_id: int) -> JobRecord:
    found = await store.get_job(job_id)
    assert found is not None
    return found


async def status_is(store: Store, job_id: int, status: JobStatus) -> bool:
    return (await job(store, job_id)).status is status


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after WAIT seconds."""
    try:
        async with asyncio.timeout(WAIT):
            while True:  # the condition lives in the database: there is no event to wait on
                if await condition():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {WAIT:g} s") from None


@pytest.fixture
async def start_worker(store: Store) -> AsyncIterator[Start]:
    """Start workers in the background: `running = await start_worker(handlers, pools=…, poll_interval=…,
    on_store=…, **worker_settings)`. Any still running are stopped at the end of the test."""
    started: list[Running] = []

    async def start(
        handlers: Mapping[str, Handler],
        *,
        pools: tuple[Pool, ...] | None = None,
        on_store: Store | None = None,
        poll_interval: float = 0.05,
        **worker_settings: Any,
    ) -> Running:
        failed: list[tuple[JobRecord, str]] = []

        async def on_failed(job: JobRecord, error: str) -> None:
            failed.append((job, error))

        worker = Worker(
            (on_store or store).queue,
            handlers,
            settings=settings(**worker_settings),
            pools=pools,
            on_failed=on_failed,
            poll_interval=poll_interval,
        )
        running = Running(worker, asyncio.create_task(worker.run()), failed)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


# --- running, retrying, burying ----------------------------------------------------------------------


async def test_a_job_runs_once_and_is_done(store: Store, start_worker: Start) -> None:
    ran: list[Mapping[str, Any]] = []

    async def handle(job: JobRecord) -> None:
        ran.append(job.payload)

    job_id = await enqueue(store, "greet", {"name": "Zoë"})
    running = await start_worker({"greet": handle})
    await until(lambda: status_is(store, job_id, JobStatus.DONE), "the job is done")
    await running.stop()

    assert ran == [{"name": "Zoë"}]
    done = await job(store, job_id)
    assert done.attempts == 1 and done.finished_at is not None
    assert running.failed == []


async def test_a_job_failing_while_abiquo_is_unavailable_is_retried_after_a_growing_backoff_and_succeeds(
    store: Store, start_worker: Start
) -> None:
    due: list[datetime] = []  # when each attempt was due
    failed_at: list[datetime] = []

    async def flaky(job: JobRecord) -> None:
        due.append(job.run_after)
        if job.attempts < 3:
            failed_at.append(datetime.now(UTC))
            raise AbiquoUnavailable(f"flaky {job.attempts}")

    job_id = await enqueue(store, "flaky")
    running = await start_worker({"flaky": flaky}, retry_base_delay=0.2, retry_max_delay=5)
    await until(lambda: status_is(store, job_id, JobStatus.DONE), "the job is done")
    await running.stop()

    assert len(due) == 3
    # Each retry was due at least half its backoff ceiling after the failure: ceilings 0.2 s, then 0.4 s.
    assert due[1] - failed_at[0] >= timedelta(seconds=0.1)
    assert due[2] - failed_at[1] >= timedelta(seconds=0.2)
    done = await job(store, job_id)
    assert done.attempts == 3
    assert done.last_error == "flaky 2"
    assert running.failed == []


async def test_a_job_failing_every_time_is_buried_after_max_attempts_and_reported_once(
    store: Store, start_worker: Start
) -> None:
    runs: list[int] = []

    async def broken(job: JobRecord) -> None:
        runs.append(job.attempts)
        raise MailError(f"still broken after {job.attempts}")  # the relay stays down

    job_id = await enqueue(store, "broken", max_attempts=3)
    running = await start_worker({"broken": broken})
    await until(lambda: status_is(store, job_id, JobStatus.DEAD), "the job is dead")
    await running.stop()

    assert runs == [1, 2, 3]
    ((reported, error),) = running.failed
    assert reported.id == job_id
    assert error == "still broken after 3"
    assert (await job(store, job_id)).last_error == "still broken after 3"


async def test_a_job_of_a_kind_the_worker_does_not_run_is_left_queued_for_a_worker_that_does(
    store: Store, start_worker: Start
) -> None:
    async def handle(job: JobRecord) -> None:
        pass

    mystery = await enqueue(store, "mystery", max_attempts=5)
    ping = await enqueue(store, "ping")
    running = await start_worker({"ping": handle})
    await until(lambda: status_is(store, ping, JobStatus.DONE), "the job it runs is done")
    await running.stop()

    left = await job(store, mystery)
    assert (left.status, left.attempts, left.locked_by) == (JobStatus.QUEUED, 0, None)
    assert running.failed == []


async def test_a_retry_runs_when_due_not_at_the_next_poll(store: Store, start_worker: Start) -> None:
    # Nothing else wakes a worker that polls every 30 s: only the wake-up it schedules for the retry
    # can make the second attempt happen within the wait below.
    attempts: list[int] = []

    async def flaky(job: JobRecord) -> None:
        attempts.append(job.attempts)
        if job.attempts == 1:
            raise ConnectionRefusedError("not yet")

    job_id = await enqueue(store, "flaky")
    await start_worker({"flaky": flaky}, poll_interval=30)
    await until(lambda: status_is(store, job_id, JobStatus.DONE), "the retried job is done")

    assert attempts == [1, 2]


async def test_a_handler_raising_a_lookup_error_is_not_taken_for_a_job_of_an_unknown_kind(
    store: Store, start_worker: Start
) -> None:
    async def missing_key(job: JobRecord) -> None:
        raise KeyError("vm")

    job_id = await enqueue(store, "lookup", max_attempts=3)
    running = await start_worker({"lookup": missing_key})
    await until(lambda: status_is(store, job_id, JobStatus.DEAD), "the job is dead")
    await running.stop()

    assert (await job(store, job_id)).last_error == "KeyError: 'vm'"
    assert [error for _, error in running.failed] == ["KeyError: 'vm'"]


# --- errors that are not temporary -------------------------------------------------------------------

REFUSED_HREF = (
    "Refusing to send the connector's credentials to https://elsewhere.example/api/tasks/1/action/"
    "continue: it is outside the configured Abiquo API https://abiquo.acme.example/api."
)


async def test_a_job_failing_with_an_error_that_is_not_temporary_is_buried_at_its_first_attempt(
    store: Store, start_worker: Start
) -> None:
    runs: list[int] = []

    async def refused_href(job: JobRecord) -> None:
        runs.append(job.attempts)
        raise AbiquoProtocolError(REFUSED_HREF)

    job_id = await enqueue(store, "deliver", max_attempts=5)
    running = await start_worker({"deliver": refused_href})
    await until(lambda: status_is(store, job_id, JobStatus.DEAD), "the job is dead")
    await running.stop()

    assert runs == [1]
    assert [(reported.id, error) for reported, error in running.failed] == [(job_id, REFUSED_HREF)]
    assert (await job(store, job_id)).last_error == REFUSED_HREF


async def test_a_handler_failing_on_a_malformed_record_is_buried_at_once(
    store: Store, start_worker: Start
) -> None:
    runs: list[int] = []

    async def read_record(job: JobRecord) -> None:
        runs.append(job.attempts)
        int(job.payload["notification_id"])

    job_id = await enqueue(store, "send_approval", {"notification_id": "seven"}, max_attempts=5)
    running = await start_worker({"send_approval": read_record})
    await until(lambda: status_is(store, job_id, JobStatus.DEAD), "the job is dead")
    await running.stop()

    assert runs == [1]
    ((_, error),) = running.failed
    assert error == "ValueError: invalid literal for int() with base 10: 'seven'"


async def test_a_job_buried_at_once_is_logged_once_as_an_error_saying_why(
    store: Store, start_worker: Start
) -> None:
    async def refused_href(job: JobRecord) -> None:
        raise AbiquoProtocolError(REFUSED_HREF)

    job_id = await enqueue(store, "deliver", max_attempts=5)
    with structlog.testing.capture_logs() as logs:
        running = await start_worker({"deliver": refused_href})
        await until(lambda: status_is(store, job_id, JobStatus.DEAD), "the job is dead")
        await running.stop()

    [logged] = [entry for entry in logs if entry["log_level"] in ("warning", "error")]
    assert logged["event"] == "job.dead" and logged["log_level"] == "error"
    assert logged["error"] == REFUSED_HREF
    assert logged["because"] == "the error is not temporary, so it failed for good"


def _validation_error() -> ValidationError:
    try:
        TypeAdapter(int).validate_python("seven")
    except ValidationError as exc:
        return exc
    raise AssertionError("'seven' was read as an int")


@pytest.mark.parametrize(
    ("error", "temporary"),
    [
        # Waiting may help: the far side is down, slow or busy.
        (AbiquoUnavailable("Abiquo answered 503 after 3 attempts"), True),  # down, or 5xx every time
        (AbiquoProtocolError("Abiquo answered 429", status=429), True),  # asks us to come back later
        (AbiquoProtocolError("Abiquo answered 408", status=408), True),  # gave up waiting for us
        (StoreError("the database is locked"), True),  # another writer holds the lock
        (MailError("could not connect to the SMTP relay"), True),  # relay down, or a 4xx answer
        (ConnectionRefusedError(111, "Connection refused"), True),  # a stdlib network error
        (TimeoutError(), True),  # asyncio.timeout ran out
        (OSError(24, "Too many open files"), True),  # the operating system, for now
        # Waiting cannot help: the same attempt fails the same way.
        (AbiquoProtocolError(REFUSED_HREF), False),  # a link we will not follow
        (AbiquoProtocolError("Abiquo answered 400", status=400), False),  # a 4xx we do not expect
        (AbiquoAuthError("Abiquo answered 401", status=401), False),  # credentials that are wrong
        (AbiquoNotFound("Abiquo answered 404", status=404), False),  # something Abiquo no longer has
        (MailError("550 No such mailbox", temporary=False), False),  # a 5xx refusal by the relay
        (PayloadError("not XML"), False),  # a callback body we cannot accept
        (ConfigError(["abiquo.url: required"]), False),  # settings nobody has fixed yet
        (TokenError("the link has expired"), False),  # a link that will stay expired
        (NotAnApprover("no longer an approver"), False),  # a role that waiting does not give back
        (KeyError("vm"), False),  # a stored record without a field we need
        (ValueError("invalid literal for int()"), False),  # a stored field we cannot read
        (_validation_error(), False),  # a stored record pydantic cannot read
        (RuntimeError("request R has not been triaged"), False),  # a bug or a broken invariant
        (MalformedJob("job 5 (deliver) holds a payload this version cannot read"), False),  # stays so
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_is_temporary_says_which_errors_may_go_away_by_waiting(error: BaseException, temporary: bool) -> None:
    assert is_temporary(error) is temporary


# --- how many at once, and waking up -----------------------------------------------------------------


async def test_concurrency_bounds_how_many_jobs_run_at_once(store: Store, start_worker: Start) -> None:
    in_flight = 0
    most = 0

    async def slow(job: JobRecord) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1

    for _ in range(7):
        await enqueue(store, "slow")
    running = await start_worker({"slow": slow}, concurrency=3)
    await until(lambda: all_done(store, 7), "every job is done")
    await running.stop()

    assert most == 3


async def all_done(store: Store, count: int) -> bool:
    return len(await store.list_jobs(status=JobStatus.DONE)) == count


@dataclass
class InFlight:
    """Handlers that hold their jobs until released, counting how many of each kind run at once."""

    #: The kind of each job, in the order they started.
    started: list[str] = field(default_factory=list)
    now: dict[str, int] = field(default_factory=dict)
    most: dict[str, int] = field(default_factory=dict)
    most_in_all: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def handler(self, hold: float | None = None) -> Handler:
        """Holds each job until `release` is set, or for `hold` seconds."""

        async def handle(job: JobRecord) -> None:
            self.started.append(job.kind)
            self.now[job.kind] = self.now.get(job.kind, 0) + 1
            self.most[job.kind] = max(self.most.get(job.kind, 0), self.now[job.kind])
            self.most_in_all = max(self.most_in_all, sum(self.now.values()))
            if hold is None:
                await self.release.wait()
            else:
                await asyncio.sleep(hold)
            self.now[job.kind] -= 1

        return handle


@pytest.fixture
async def in_flight(start_worker: Start) -> AsyncIterator[InFlight]:
    """Handlers that count jobs in flight, released at the end of the test: before the workers stop,
    which wait for their running jobs (this fixture depends on `start_worker`, so it ends first)."""
    jobs = InFlight()
    yield jobs
    jobs.release.set()


async def running_jobs(store: Store, worker_id: str) -> list[JobRecord]:
    return [j for j in await store.list_jobs(status=JobStatus.RUNNING) if j.locked_by == worker_id]


async def has_running(store: Store, worker_id: str, count: int) -> bool:
    return len(await running_jobs(store, worker_id)) == count


async def test_a_worker_claims_no_more_jobs_of_a_pool_than_it_has_free_slots_for(
    store: Store, migrated_database_url: str, start_worker: Start, in_flight: InFlight
) -> None:
    for _ in range(5):
        await enqueue(store, "deliver")
    first = await start_worker({"deliver": in_flight.handler()}, pools=(Pool("abiquo", ("deliver",), 2),))
    await until(lambda: has_running(store, first.worker.worker_id, 2), "the first worker runs two jobs")
    await asyncio.sleep(0.3)  # several polls: it claims no more while its two slots are taken
    held_by_first = len(await running_jobs(store, first.worker.worker_id))
    async with await Store.open(migrated_database_url, migrate=False) as other_process:
        second = await start_worker(
            {"deliver": in_flight.handler()}, pools=(Pool("abiquo", ("deliver",), 5),), on_store=other_process
        )
        await until(lambda: has_running(store, second.worker.worker_id, 3), "another worker takes the rest")
        in_flight.release.set()
        await second.stop()

    assert held_by_first == 2


async def test_each_pool_runs_at_most_its_slots_at_once_and_the_pools_side_by_side(
    store: Store, start_worker: Start, in_flight: InFlight
) -> None:
    for kind in ("triage", "send_approval") * 6:
        await enqueue(store, kind)
    pools = (Pool("abiquo", ("triage",), 3), Pool("smtp", ("send_approval",), 2))
    handlers = {"triage": in_flight.handler(hold=0.1), "send_approval": in_flight.handler(hold=0.1)}
    running = await start_worker(handlers, pools=pools, concurrency=10)
    await until(lambda: all_done(store, 12), "every job is done")
    await running.stop()

    assert in_flight.most == {"triage": 3, "send_approval": 2}
    assert in_flight.most_in_all == 5


async def test_concurrency_bounds_the_jobs_in_flight_of_every_pool_together(
    store: Store, start_worker: Start, in_flight: InFlight
) -> None:
    for kind in ("triage", "send_approval") * 6:
        await enqueue(store, kind)
    pools = (Pool("abiquo", ("triage",), 3), Pool("smtp", ("send_approval",), 3))
    handlers = {"triage": in_flight.handler(hold=0.1), "send_approval": in_flight.handler(hold=0.1)}
    running = await start_worker(handlers, pools=pools, concurrency=4)
    await until(lambda: all_done(store, 12), "every job is done")
    await running.stop()

    assert in_flight.most_in_all == 4


async def test_when_concurrency_is_the_tighter_bound_the_pools_take_turns_at_its_slots(
    store: Store, start_worker: Start, in_flight: InFlight
) -> None:
    for kind in ("triage",) * 6 + ("send_approval",) * 6:
        await enqueue(store, kind)
    pools = (Pool("abiquo", ("triage",), 2), Pool("smtp", ("send_approval",), 2))
    handlers = {"triage": in_flight.handler(hold=0.05), "send_approval": in_flight.handler(hold=0.05)}
    running = await start_worker(handlers, pools=pools, concurrency=2)
    await until(lambda: all_done(store, 12), "every job is done")
    await running.stop()

    # Either pool alone could take both slots for as long as it has jobs: the emails did not wait for
    # every triage to start.
    last_triage = max(i for i, kind in enumerate(in_flight.started) if kind == "triage")
    assert in_flight.started.index("send_approval") < last_triage


async def test_a_slot_freed_by_one_job_is_filled_at_once_while_the_others_still_run(
    store: Store, start_worker: Start, in_flight: InFlight
) -> None:
    await enqueue(store, "slow")
    await enqueue(store, "quick")
    third = await enqueue(store, "quick")
    # Nothing else wakes a worker that polls every 30 s: only the first quick job ending, while the slow
    # one still runs, can start the third job within the wait below.
    await start_worker(
        {"slow": in_flight.handler(), "quick": in_flight.handler(hold=0.1)},
        pools=(Pool("abiquo", ("quick", "slow"), 2),),
        poll_interval=30,
    )

    await until(lambda: status_is(store, third, JobStatus.DONE), "the third job is done")

    assert in_flight.now["slow"] == 1


def test_a_worker_refuses_pools_that_do_not_hold_exactly_the_kinds_it_runs(store: Store) -> None:
    async def handle(job: JobRecord) -> None:
        pass

    with pytest.raises(ValueError, match="every job kind the worker runs must be in exactly one pool"):
        Worker(
            store.queue,
            {"deliver": handle, "triage": handle},
            settings=settings(),
            pools=(Pool("abiquo", ("deliver",), 2),),
        )


async def test_an_enqueue_in_this_process_wakes_a_sleeping_worker_at_once(
    store: Store, start_worker: Start
) -> None:
    ran = asyncio.Event()

    async def handle(job: JobRecord) -> None:
        ran.set()

    await start_worker({"ping": handle}, poll_interval=30)
    await asyncio.sleep(0.3)  # the worker found nothing and sleeps for up to 30 s
    await enqueue(store, "ping")

    async with asyncio.timeout(5):  # only the wake-up can explain it: the next poll is ~30 s away
        await ran.wait()


@pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True)
async def test_an_enqueue_by_another_process_wakes_a_sleeping_worker_on_postgresql(
    store: Store, migrated_database_url: str, start_worker: Start
) -> None:
    ran = asyncio.Event()

    async def handle(job: JobRecord) -> None:
        ran.set()

    await start_worker({"ping": handle}, poll_interval=30)
    await asyncio.sleep(0.3)
    async with await Store.open(migrated_database_url, migrate=False) as other_process:
        await enqueue(other_process, "ping")

    async with asyncio.timeout(5):  # only LISTEN/NOTIFY can explain it: the next poll is ~30 s away
        await ran.wait()


# --- stopping and leases -----------------------------------------------------------------------------


async def test_stop_lets_the_running_job_finish(store: Store, start_worker: Start) -> None:
    started = asyncio.Event()
    finished: list[int] = []

    async def slow(job: JobRecord) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(job.id)

    job_id = await enqueue(store, "slow")
    running = await start_worker({"slow": slow})
    async with asyncio.timeout(WAIT):
        await started.wait()
    await running.stop()

    assert finished == [job_id]
    assert (await job(store, job_id)).status is JobStatus.DONE


async def test_a_long_job_keeps_its_lease_so_no_other_worker_takes_it_over(
    store: Store, migrated_database_url: str, start_worker: Start
) -> None:
    runs: list[str] = []

    def long_job(worker_name: str) -> Handler:
        async def handle(job: JobRecord) -> None:
            runs.append(worker_name)
            await asyncio.sleep(2.5)  # more than two leases

        return handle

    job_id = await enqueue(store, "long")
    # A lease of 1 s is renewed every third of it; on a loaded machine a renewal can take a few
    # hundred milliseconds, so a shorter lease would test the machine rather than the worker.
    first = await start_worker({"long": long_job("first")}, lease=1.0)
    await until(lambda: status_is(store, job_id, JobStatus.RUNNING), "the first worker runs the job")
    async with await Store.open(migrated_database_url, migrate=False) as other_process:
        second = await start_worker(
            {"long": long_job("second")}, on_store=other_process, lease=1.0, poll_interval=0.02
        )
        await until(lambda: status_is(store, job_id, JobStatus.DONE), "the job is done")
        await second.stop()
    await first.stop()

    assert runs == ["first"]
    assert (await job(store, job_id)).attempts == 1


async def test_a_job_whose_lease_nobody_renews_is_taken_over_when_it_runs_out(
    store: Store, start_worker: Start
) -> None:
    """The other side of the lease: a claim that is not renewed (its worker crashed) runs again."""
    job_id = await enqueue(store, "orphan")
    (claimed,) = await store.queue.claim("crashed-worker", limit=1, lease=0.2)
    attempts: list[int] = []

    async def handle(job: JobRecord) -> None:
        attempts.append(job.attempts)

    running = await start_worker({"orphan": handle})
    await until(lambda: status_is(store, job_id, JobStatus.DONE), "the job is done")
    await running.stop()

    assert claimed.id == job_id
    assert attempts == [2]


# --- the backoff ---------------------------------------------------------------------------------------

BACKOFF = WorkerSettings(retry_base_delay=1.0, retry_max_delay=60.0)


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [
        (1, 1.0),  # after the first failure: the base delay
        (2, 2.0),  # doubled
        (3, 4.0),  # doubled again
        (6, 32.0),
        (7, 60.0),  # 64 s, capped at retry_max_delay
        (30, 60.0),  # and it stays there
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retry_delay_lies_between_half_and_all_of_its_ceiling(
    attempts: int, ceiling: float, seed: int
) -> None:
    delay = retry_delay(attempts, BACKOFF, rng=random.Random(seed))

    assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize("attempts", [1, 2, 3, 4, 5])
def test_with_the_same_draw_each_retry_waits_twice_as_long_as_the_one_before(attempts: int) -> None:
    before = retry_delay(attempts, BACKOFF, rng=random.Random(7))
    after = retry_delay(attempts + 1, BACKOFF, rng=random.Random(7))

    assert after == pytest.approx(2 * before)


def test_retry_delay_jitter_spreads_over_the_whole_upper_half() -> None:
    rng = random.Random(42)
    delays = [retry_delay(3, BACKOFF, rng=rng) for _ in range(500)]

    assert all(2.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 2.2 and max(delays) > 3.8


async def test_on_retry_is_told_of_each_retry_it_schedules_and_not_of_the_burial(store: Store) -> None:
    retries: list[tuple[int, str, float]] = []
    buried = asyncio.Event()

    async def on_retry(job: JobRecord, error: str, delay: float) -> None:
        retries.append((job.attempts, error, delay))

    async def on_failed(job: JobRecord, error: str) -> None:
        buried.set()

    async def broken(job: JobRecord) -> None:
        raise AbiquoUnavailable(f"503 on attempt {job.attempts}")

    job_id = await enqueue(store, "broken", max_attempts=3)
    worker = Worker(
        store.queue,
        {"broken": broken},
        settings=settings(),
        on_failed=on_failed,
        on_retry=on_retry,
        poll_interval=0.05,
    )
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(WAIT):
            await buried.wait()
    finally:
        worker.stop()
        await running

    assert [(attempt, error) for attempt, error, _ in retries] == [
        (1, "503 on attempt 1"),
        (2, "503 on attempt 2"),
    ]
    assert all(0 <= delay <= 0.5 for _, _, delay in retries)
    assert (await job(store, job_id)).status is JobStatus.DEAD


# --- the heartbeat: whether the worker is alive (/readyz) ----------------------------------------------


class StuckClaims:
    """The store's queue, except that a claim, once `stick()` is called, does not return until `free()`."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._stuck = False
        self._freed = asyncio.Event()
        self.claims_started = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)

    def stick(self) -> None:
        self._stuck = True

    def free(self) -> None:
        self._freed.set()

    async def claim(self, *args: Any, **kwargs: Any) -> list[JobRecord]:
        if self._stuck:
            self.claims_started += 1
            await self._freed.wait()
            return []
        result: list[JobRecord] = await self._queue.claim(*args, **kwargs)
        return result


async def test_a_running_worker_is_alive_and_a_stopped_one_is_not(store: Store, start_worker: Start) -> None:
    running = await start_worker({"noop": noop}, poll_interval=0.05)
    await until(lambda: _true(running.worker.alive()), "the worker to be alive")

    await running.stop()

    assert not running.worker.alive() and running.worker.stopped


async def test_a_worker_whose_loop_is_stuck_is_not_alive_after_a_few_poll_intervals(store: Store) -> None:
    queue = StuckClaims(store.queue)
    worker = Worker(queue, {"noop": noop}, settings=settings(), poll_interval=0.05)  # type: ignore[arg-type]
    task = worker.start()
    try:
        await until(lambda: _true(worker.alive()), "the worker to be alive")
        queue.stick()
        store.queue.wake()
        await until(lambda: _true(queue.claims_started > 0), "a claim to get stuck")
        await asyncio.sleep(worker.stale_after + 0.1)

        assert not worker.alive() and not worker.stopped
    finally:
        worker.stop()
        queue.free()
        await task


async def test_a_running_worker_beats_in_the_database_and_signs_off_when_it_stops(
    store: Store, start_worker: Start
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    running = await start_worker({"noop": noop}, poll_interval=0.05)
    await until(lambda: _alive_in_database(store, since, 1), "the worker's heartbeat in the database")

    await running.stop()

    beats = await store.worker_beats(since)
    assert beats.alive == 0 and beats.latest is None


async def noop(job: JobRecord) -> None:
    return None


async def _true(value: bool) -> bool:
    return value


async def _alive_in_database(store: Store, since: datetime, count: int) -> bool:
    return (await store.worker_beats(since)).alive == count
