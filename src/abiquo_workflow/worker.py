"""Runs the queued jobs: triage, approval emails, deliveries to Abiquo, the requester's email.

How it works. The worker claims due jobs (`JobQueue.claim`, a lease of `worker.lease` seconds each, the
most urgent first) and runs them concurrently. How many at once is bounded by what they use: each job
kind belongs to a `Pool` with a number of slots (runtime.py gives deliveries and triage
`abiquo.max_connections` each, emails `mail.max_connections`), and all of them together by
`worker.concurrency`. The worker claims jobs of a pool only for its free slots, so it never holds the
lease of a job it could not start at once: the others stay queued for other replicas, or for this
worker as its slots free. It claims only the kinds it has handlers for.

A job that raises a temporary error (`exceptions.is_temporary`: Abiquo or the mail relay unreachable,
the database locked) is retried after an exponential backoff with jitter, capped at
`worker.retry_max_delay`, and `on_retry` told (a delivery's failed attempt goes into the audit log);
when its attempts (`worker.max_attempts`) run out it is buried (status `dead`) and `on_failed` records
the failure where people look (the task shows delivery `failed`, the email shows `failed`, the
request's audit `triage_failed`).

When it wakes. At once when this process enqueues (the store signals after COMMIT), at once on
PostgreSQL when another process enqueues (LISTEN/NOTIFY), when a retry it scheduled becomes due, when
one of its jobs ends (a slot is free), and otherwise every `poll_interval` seconds (how other processes'
retries and expired leases are found). A pool whose last claim came back short is not asked again
until one of the wake-ups or the poll says something may have become due.

How it fails. A job that raises an error that is not temporary (a link we refuse to follow, a 4xx from
Abiquo we do not expect, a 5xx refusal from the mail relay, a stored record we cannot read, a bug) is
buried on that attempt, the same way as one whose attempts ran out: repeating it would fail the same way,
and only hide the failure from people for the quarter of an hour the retries take by default. `tasks
retry` queues it again once the cause is fixed.

Whether it is alive (`/readyz`). Each time its loop goes round (at least every `poll_interval`) the
worker notes the time (`alive`: within `STALE_AFTER_POLLS` poll intervals), and at most once a second
it writes a heartbeat to the database (`JobQueue.heartbeat`), which it removes when it stops: a process
without a worker of its own (`serve --no-worker`) reads those. While a job runs, its log lines carry
the job's id and kind and the request and task it is about (structlog contextvars, `job_context`).

Killed mid-job, the job stays `running` until its lease runs out; then the next claim, by this process
after a restart or by another replica, takes it up again. Every job kind is safe to repeat.
Stopping (`stop()`, or SIGINT/SIGTERM in the CLI) stops claiming and waits for the running jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from abiquo_workflow import metrics
from abiquo_workflow.config import WorkerSettings
from abiquo_workflow.exceptions import AbiquoWorkflowError, is_temporary
from abiquo_workflow.jobs import MalformedJob, from_record
from abiquo_workflow.store import JobQueue
from abiquo_workflow.store.records import JobRecord

log = structlog.stdlib.get_logger(__name__)

#: Longest sleep between two looks at the queue when nothing wakes the worker (`poll_interval`).
POLL_INTERVAL = 1.0
#: A worker whose loop has not gone round for this many poll intervals is not alive (`/readyz`).
STALE_AFTER_POLLS = 5
#: How old the latest heartbeat in the database may be while its worker is alive (`/readyz` of a
#: process without a worker of its own): `STALE_AFTER_POLLS` poll intervals of the default.
HEARTBEAT_STALE_AFTER = STALE_AFTER_POLLS * POLL_INTERVAL
#: Seconds between two heartbeats a worker writes to the database, at least.
HEARTBEAT_EVERY = 1.0
#: Seconds a stopping worker gives the database to remove its heartbeat (a stop never hangs on it).
SIGN_OFF_WITHIN = 5.0

Handler = Callable[[JobRecord], Awaitable[None]]
OnFailed = Callable[[JobRecord, str], Awaitable[None]]
#: Called with the job (as it ran: `attempts` counts that run), its error and the seconds until it runs
#: again, once a retry is scheduled.
OnRetry = Callable[[JobRecord, str, float], Awaitable[None]]

#: Why a job is buried on its first attempt, as the log says: no later attempt can do better.
_HOPELESS = "the error is not temporary, so it failed for good"


@dataclass(frozen=True, slots=True)
class Pool:
    """Job kinds that draw on one resource, and how many of them one worker runs at once (its slots)."""

    name: str
    kinds: tuple[str, ...]
    slots: int

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"pool {self.name!r} needs at least one slot, got {self.slots}")


def retry_delay(attempts: int, settings: WorkerSettings, *, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt: base·2^(attempts-1), capped, with "equal jitter" (half to all)."""
    ceiling = min(settings.retry_max_delay, settings.retry_base_delay * 2.0 ** max(attempts - 1, 0))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


def release_free_memory() -> None:
    """Give the memory freed by a burst of jobs back to the operating system (glibc only).

    A 100-VM request briefly holds hundreds of API answers and three large emails. Python frees them,
    but glibc's allocator keeps the freed pages in its arenas, so the process's resident size stays at
    the burst's peak. `malloc_trim(0)` returns them; it takes about a millisecond, once per idle spell.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def job_context(record: JobRecord) -> dict[str, object]:
    """What the log lines of a job's run carry: the job's id and kind, and the request and task it is
    about, read from its payload as its typed job (jobs.py); a task only when the job is about one."""
    context: dict[str, object] = {"job_id": record.id, "kind": record.kind}
    try:
        job = from_record(record)
    except MalformedJob:
        return context  # a kind of another version, or a payload it cannot read: the run says so
    request_id: object = getattr(job, "request_id", None)
    task_id: object = getattr(job, "task_id", None)
    task_ids: tuple[str, ...] = getattr(job, "task_ids", ())
    if task_id is None and len(task_ids) == 1:
        (task_id,) = task_ids
    if request_id is not None:
        context["request_id"] = request_id
    if task_id is not None:
        context["task_id"] = task_id
    return context


def describe(error: BaseException) -> str:
    """One line for the job's `last_error`, shown to people when the job is buried.

    Our own errors are sentences and stand alone. Any other error is prefixed with its name, since its
    message alone (`'vm'` for a KeyError) does not say what went wrong.
    """
    name, text = type(error).__name__, str(error).strip()
    if not text:
        return name
    return text if isinstance(error, AbiquoWorkflowError) else f"{name}: {text}"


class Worker:
    """Claims and runs jobs until stopped.

    Parameters
    ----------
    queue:
        Where jobs are claimed and their outcomes recorded (`Store.queue`): all a worker needs of the store.
    handlers:
        The coroutine to run for each job kind. Jobs of other kinds are left to workers that run them.
    settings:
        The `worker` section: `concurrency` (jobs in flight in all), attempts, backoff, lease.
    pools:
        Which kinds share slots, and how many; every kind of `handlers` in exactly one. By default
        one pool of every kind with `settings.concurrency` slots.
    on_failed:
        Called with the job and its last error when a job is buried.
    on_retry:
        Called with the job, its error and the delay when a failed job is scheduled to run again
        (the approvals record a delivery's failed attempt). A failure of its own is logged, not raised.
    poll_interval:
        Longest sleep between two looks at the queue when nothing wakes the worker.
    """

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        *,
        settings: WorkerSettings,
        pools: Sequence[Pool] | None = None,
        on_failed: OnFailed | None = None,
        on_retry: OnRetry | None = None,
        poll_interval: float = POLL_INTERVAL,
        worker_id: str | None = None,
    ) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self.settings = settings
        self.pools = tuple(pools or (Pool("jobs", tuple(sorted(handlers)), settings.concurrency),))
        pooled = sorted(kind for pool in self.pools for kind in pool.kinds)
        if pooled != sorted(self.handlers):
            raise ValueError(
                f"every job kind the worker runs must be in exactly one pool: pools hold {pooled}, "
                f"handlers are for {sorted(self.handlers)}"
            )
        self.on_failed = on_failed
        self.on_retry = on_retry
        self.poll_interval = poll_interval
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._running: set[asyncio.Task[None]] = set()
        self._running_in: dict[str, set[asyncio.Task[None]]] = {pool.name: set() for pool in self.pools}
        #: The order pools are claimed for, turned by one at each round (see `_claim_some`).
        self._turns = deque(self.pools)
        #: Pools whose last claim came back short: not asked again until something may be due.
        self._dry: set[str] = set()
        self._stopping = asyncio.Event()
        #: True while jobs ran since the worker last went idle (then memory is given back, once).
        self._busy = False
        #: Heartbeat (see `alive`): set once the worker starts, cleared when its loop ends.
        self._started = False
        self._looping = False
        self._started_at = datetime.now(UTC)
        #: When the loop last went round, and when it last wrote its heartbeat (monotonic seconds).
        self._beat_at: float | None = None
        self._stored_beat_at: float | None = None
        self._heartbeat_failing = False

    def start(self) -> asyncio.Task[None]:
        """Run the worker (`run`) in a task of its own, which is returned. From this call on the worker
        counts as started: `alive` says whether its loop is going round."""
        self._started = True
        self._looping = True
        self._beat_at = time.monotonic()
        return asyncio.create_task(self.run(), name="worker")

    @property
    def started(self) -> bool:
        """Whether `start` or `run` was called: this process runs this worker (not `serve --no-worker`)."""
        return self._started

    @property
    def stale_after(self) -> float:
        """Seconds without going round its loop after which the worker is not alive."""
        return STALE_AFTER_POLLS * self.poll_interval

    def since_beat(self) -> float | None:
        """Seconds since the loop last went round (claimed, or woke from its sleep); None before start."""
        return None if self._beat_at is None else time.monotonic() - self._beat_at

    def alive(self) -> bool:
        """Whether the worker runs and its loop went round within `stale_after` seconds.

        The loop goes round at least every `poll_interval` while it runs; one that has not for several
        is stuck (a claim that never returns, an event loop held up) or gone.
        """
        since = self.since_beat()
        return self._looping and since is not None and since <= self.stale_after

    @property
    def stopped(self) -> bool:
        """Whether the worker was started and its loop has ended (`stop()`, or a crash)."""
        return self._started and not self._looping

    def stop(self) -> None:
        """Stop claiming; `run` returns once the jobs already running have finished."""
        self._stopping.set()

    async def run(self) -> None:
        """Claim and run jobs until `stop()` is called."""
        log.info(
            "worker.started",
            worker=self.worker_id,
            concurrency=self.settings.concurrency,
            pools={pool.name: pool.slots for pool in self.pools},
        )
        self._started = self._looping = True
        first_beat = True
        try:
            while not self._stopping.is_set():
                await self._beat(first=first_beat)
                first_beat = False
                claimed = await self._claim_some()
                if not claimed:
                    await self._sleep()
        finally:
            self._looping = False
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            await self._sign_off()
            log.info("worker.stopped", worker=self.worker_id)

    async def _beat(self, *, first: bool) -> None:
        """Note that the loop goes round; write the heartbeat to the database every `HEARTBEAT_EVERY`
        seconds (where `/readyz` of a process without a worker looks for it)."""
        now = self._beat_at = time.monotonic()
        if not first and self._stored_beat_at is not None and now - self._stored_beat_at < HEARTBEAT_EVERY:
            return
        self._stored_beat_at = now
        try:
            await self.queue.heartbeat(self.worker_id, started_at=self._started_at, first=first)
        except Exception as exc:  # the database may be briefly unreachable: said once, tried again
            if not self._heartbeat_failing:
                log.warning("worker.heartbeat_failed", worker=self.worker_id, error=describe(exc))
            self._heartbeat_failing = True
        else:
            self._heartbeat_failing = False

    async def _sign_off(self) -> None:
        """Remove the heartbeat, so that nobody counts on this worker any more."""
        try:
            async with asyncio.timeout(SIGN_OFF_WITHIN):
                await self.queue.sign_off(self.worker_id)
        except Exception as exc:  # it goes stale on its own
            log.debug("worker.sign_off_failed", worker=self.worker_id, error=describe(exc))

    async def _claim_some(self) -> int:
        """Claim jobs for each pool's free slots, within `worker.concurrency` in all; start them.

        The pools take turns at going first: when `worker.concurrency` is the tighter bound, the slots
        it leaves go to each pool in turn, so that no pool's jobs keep the others waiting.
        """
        self._turns.rotate(-1)
        claimed = 0
        for pool in tuple(self._turns):
            free = min(
                pool.slots - len(self._running_in[pool.name]),
                self.settings.concurrency - len(self._running),
            )
            if free <= 0 or pool.name in self._dry:
                continue
            try:
                jobs = await self.queue.claim(
                    self.worker_id, limit=free, lease=self.settings.lease, kinds=pool.kinds
                )
            except Exception as exc:  # the database may be briefly unreachable; keep going
                log.warning("worker.claim_failed", error=describe(exc))
                break
            if len(jobs) < free:
                self._dry.add(pool.name)
            for job in jobs:
                self._start(pool, job)
            claimed += len(jobs)
        self._busy = self._busy or bool(claimed)
        return claimed

    def _start(self, pool: Pool, job: JobRecord) -> None:
        task = asyncio.create_task(self._run_one(job), name=f"job-{job.id}-{job.kind}")
        for running in (self._running, self._running_in[pool.name]):
            running.add(task)
            task.add_done_callback(running.discard)

    async def _sleep(self) -> None:
        """Wait for a wake-up, the poll interval, a job to end (a slot is free) or `stop()`."""
        if self._busy and not self._running:
            self._busy = False
            release_free_memory()
        waiting = asyncio.ensure_future(self.queue.wait_for_jobs(self.poll_interval))
        stopping = asyncio.ensure_future(self._stopping.wait())
        slot_freed = (
            [asyncio.ensure_future(asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED))]
            if self._running
            else []
        )
        try:
            done, _ = await asyncio.wait(
                [waiting, stopping, *slot_freed], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for future in (waiting, stopping, *slot_freed):
                future.cancel()
        if waiting in done:  # woken, or time for the poll: any pool may have due jobs again
            self._dry.clear()

    async def _run_one(self, job: JobRecord) -> None:
        # Every line logged while the job runs (in the approvals, the clients) says which job, request
        # and task it is about. The job runs in a task of its own, so the binding ends with it.
        with structlog.contextvars.bound_contextvars(**job_context(job)):
            bound = log.bind(job_id=job.id, kind=job.kind, attempt=job.attempts, worker=self.worker_id)
            try:
                await self._run_and_record(job, bound)
            except Exception as exc:  # recording the outcome failed; the lease runs out and it runs again
                bound.error("job.outcome_not_recorded", error=describe(exc))

    async def _run_and_record(self, job: JobRecord, bound: structlog.stdlib.BoundLogger) -> None:
        heartbeat = asyncio.create_task(self._keep_lease(job))
        try:
            await self.handlers[job.kind](job)
        except Exception as exc:
            await self._stop_heartbeat(heartbeat)
            await self._failed(job, exc, bound)
        else:
            await self._stop_heartbeat(heartbeat)
            await self.queue.complete(job.id, self.worker_id)
            bound.debug("job.done")

    @staticmethod
    async def _stop_heartbeat(heartbeat: asyncio.Task[None]) -> None:
        """Cancel the lease renewal and wait until it is gone, so that it never writes after the outcome."""
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat

    async def _failed(self, job: JobRecord, exc: Exception, bound: structlog.stdlib.BoundLogger) -> None:
        """Retry a job after a temporary error; bury it after any other, or when out of attempts."""
        error = describe(exc)
        if not is_temporary(exc):
            await self._bury(job, error, bound, because=_HOPELESS)
        elif job.exhausted:
            await self._bury(job, error, bound, because=f"it failed all {job.max_attempts} attempts")
        else:
            await self._retry(job, error, bound)

    async def _retry(self, job: JobRecord, error: str, bound: structlog.stdlib.BoundLogger) -> None:
        delay = retry_delay(job.attempts, self.settings)
        metrics.JOB_RETRIES.labels(job.kind).inc()
        bound.warning("job.retry", error=error, delay=round(delay, 2))
        run_after = datetime.now(UTC) + timedelta(seconds=delay)
        if await self.queue.retry(job.id, self.worker_id, error=error, run_after=run_after):
            # Look again when it is due, rather than at the next poll: a 50 ms backoff stays 50 ms.
            asyncio.get_running_loop().call_later(delay, self.queue.wake)
            if self.on_retry is not None:
                try:
                    await self.on_retry(job, error, delay)
                except Exception as exc:  # the retry is scheduled; only its record is missing
                    bound.warning("job.retry_not_recorded", error=describe(exc))

    async def _bury(
        self, job: JobRecord, error: str, bound: structlog.stdlib.BoundLogger, *, because: str
    ) -> None:
        """Record the failure where people look (`on_failed`), then mark the job dead; `because` says
        in the log why it failed for good.

        In that order: a crash between the two leaves the failure visible and the job running, and the
        next claim buries it once its lease runs out. The other order could leave a dead job behind a
        task that still looks queued.
        """
        bound.error("job.dead", error=error, because=because)
        if self.on_failed is not None:
            await self.on_failed(job, error)
        await self.queue.bury(job.id, self.worker_id, error=error)

    async def _keep_lease(self, job: JobRecord) -> None:
        """Renew the lease while a long job runs, so no other worker takes it over."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self.settings.lease / 3)
                try:
                    held = await self.queue.extend_lease(job.id, self.worker_id, self.settings.lease)
                except Exception as exc:  # the database may be briefly unreachable; try at the next beat
                    log.warning("worker.lease_not_renewed", job_id=job.id, error=describe(exc))
                    continue
                if not held:
                    return
