"""The worker's handle on the job queue: claim due jobs, record how each run ended, wait for more.

A worker needs nothing else of the store, so it is given a `JobQueue` (`Store.queue`) rather than the
Store. Each call is one short write transaction of its own; the statements, and the guarantees and
failure modes they give, are in `queue.py`. Jobs are enqueued elsewhere: by a `UnitOfWork`, in the
transaction of the change they act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from abiquo_workflow.store import queue
from abiquo_workflow.store.clock import Clock
from abiquo_workflow.store.connection import Database
from abiquo_workflow.store.records import JobRecord


class JobQueue:
    """Claims, leases and outcomes of jobs, and the wake-up workers wait on."""

    def __init__(self, database: Database, *, clock: Clock, wakeup: queue.Wakeup) -> None:
        """Use `Store.queue`: the Store sets the same `wakeup` after committing an enqueue."""
        self._database = database
        self._clock = clock
        self._wakeup = wakeup

    async def claim(
        self, worker_id: str, *, limit: int, lease: float, kinds: Sequence[str] | None = None
    ) -> list[JobRecord]:
        """Claim up to `limit` due jobs for `worker_id`, each for `lease` seconds, in claim order.

        Due means queued with `run_after` now or earlier, or running under a lease that ran out (its
        worker stopped). Claim order is by priority, aged by how long each job has waited: the rule is
        in queue.py's docstring. Claimed jobs are `running`, locked by `worker_id`, with one more
        attempt counted, and come back in claim order. No job is given to two workers. Only jobs of
        `kinds` are claimed, if given: a worker asks for as many jobs of some kinds as it has slots
        free for them, and leaves the rest to other workers.
        """
        async with self._database.transaction(read_only=False) as conn:
            return await queue.claim(conn, self._clock(), worker_id, limit=limit, lease=lease, kinds=kinds)

    async def complete(self, job_id: int, worker_id: str) -> bool:
        """Mark a claimed job done. False if `worker_id` no longer holds it (its lease was taken over)."""
        async with self._database.transaction(read_only=False) as conn:
            return await queue.complete(conn, self._clock(), job_id, worker_id)

    async def retry(self, job_id: int, worker_id: str, *, error: str, run_after: datetime) -> bool:
        """Put a claimed job back in the queue, due at `run_after`, noting `error`. False if not held.

        Bury it instead when `job.exhausted` (this was its last attempt).
        """
        async with self._database.transaction(read_only=False) as conn:
            return await queue.retry(conn, self._clock(), job_id, worker_id, error=error, run_after=run_after)

    async def bury(self, job_id: int, worker_id: str, *, error: str) -> bool:
        """Mark a claimed job dead (no more attempts), noting `error`. False if not held."""
        async with self._database.transaction(read_only=False) as conn:
            return await queue.bury(conn, self._clock(), job_id, worker_id, error=error)

    async def extend_lease(self, job_id: int, worker_id: str, lease: float) -> bool:
        """Keep a long job: its lease now ends `lease` seconds from now. False if not held any more."""
        async with self._database.transaction(read_only=False) as conn:
            return await queue.extend_lease(conn, self._clock(), job_id, worker_id, lease)

    async def requeue(self, job_id: int) -> bool:
        """Give a dead job a fresh set of attempts, due now, and wake the workers. False if it is not dead."""
        async with self._database.transaction(read_only=False) as conn:
            requeued = await queue.requeue(conn, self._clock(), job_id)
        if requeued:
            self.wake()
        return requeued

    async def heartbeat(self, worker_id: str, *, started_at: datetime, first: bool = False) -> None:
        """Record that `worker_id` (started at `started_at`) is alive now; see `queue.heartbeat`."""
        async with self._database.transaction(read_only=False) as conn:
            await queue.heartbeat(conn, self._clock(), worker_id, started_at=started_at, first=first)

    async def sign_off(self, worker_id: str) -> None:
        """Remove `worker_id`'s heartbeat: it has stopped and counts as alive no more."""
        async with self._database.transaction(read_only=False) as conn:
            await queue.sign_off(conn, worker_id)

    def now(self) -> datetime:
        """The store's time (UTC), as its heartbeats and leases are written."""
        return self._clock()

    def wake(self) -> None:
        """Tell this process's workers that jobs may be due (after a COMMIT, or when a retry falls due)."""
        self._wakeup.set()

    async def wait_for_jobs(self, timeout: float) -> bool:  # noqa: ASYNC109 (see Wakeup.wait)
        """True once jobs may be due (`wake`, or NOTIFY on PostgreSQL); False after `timeout` seconds."""
        return await self._wakeup.wait(timeout)
