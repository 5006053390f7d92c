"""Reconciliation with Abiquo: its pending tasks compared with ours, at start and every `reconcile.interval`.

Abiquo POSTs a held task to the connector once and never again (docs/protocol.md §2.5), and a held task
can be decided behind the connector's back: cancelled by its requester, or continued or cancelled in
Abiquo's own "Workflow tasks" tab (§1, §5). Both leave the two sides apart for good unless someone
looks. This module looks, in two directions:

A. A held task Abiquo lists that we never received (a lost callback: the connector was down, the user
   saw WKF-01) becomes a request, stored through `Approvals.receive` with source `reconciliation` (what
   its `received` audit line names as actor), and is triaged as usual: read back from Abiquo,
   enriched, the policy applied, the approvers emailed. Found tasks are grouped as Abiquo would have
   sent them, one request per requester and vApp (`verification.request_key`) and task type, a
   reconfigure alone. A task held for less than `callback_grace` seconds is left to its callback, which
   may be on its way; the next run takes it if not. A task id we know, in whatever state, is never
   received again, so a second run creates nothing.
B. A task pending with us that Abiquo's listings no longer show, confirmed held by Abiquo when its
   request was triaged (a triage still under way is left to finish: it may be queueing the approval
   emails), is read on its own (its `self` href). If Abiquo shows it continued, cancelled, or has no
   such task any more, it is closed as decided `external` (accepted when continued, declined
   otherwise) with what Abiquo shows as its reason; its delivery is `superseded` at once, so nothing
   is ever sent to Abiquo for it. Then `Approvals.tell_when_settled` queues the usual emails: each
   approver asked is told it is settled, and the requester its outcome once the request has settled.
   Its links answer 410 with that story, as for any decided task. A task still held (listings and
   reads can disagree for a moment), a read that fails, or a state that says neither, leaves it alone.
   The close is the store's conditional `decide`: a task an approver decided meanwhile is not pending
   any more and is not touched, and one we decided and are delivering never was a candidate.

Which enterprises. Abiquo has no global pending-task listing (§6): every enterprise is listed
(`admin/enterprises`, all pages) and those whose `workflow` flag is false are skipped, since Abiquo holds
no task of theirs (§2.2). An enterprise without the flag (an API that does not send it) is read all the
same. Each listing is read to its end by `AbiquoClient.pending_tasks`, which pages by `totalSize` since
these listings link no `next` page (§6).

When it runs. As a job of the queue (`jobs.Reconcile`, lowest priority), not a timer in memory: each run
first queues the next for `reconcile.interval` later (so a run whose job dies does not end the chain),
with a dedupe key naming the run it follows, and a
starting process (`schedule`) queues one only when none is queued or running. So two replicas on one
PostgreSQL never reconcile at once (a job is claimed by one worker), a restart loses no run, and a run
repeated after a crash queues its follower once. `reconcile.interval = 0` turns it off: nothing is
queued, and a run queued before does nothing and queues no other.

How it fails. If Abiquo cannot be read (the enterprises, or any enterprise's listing), the run changes
nothing, logs `reconcile.failed` with the cause, and the next run, an interval later, tries again:
tasks are never closed on a listing that failed. A failed read of one task in B leaves that task alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from abiquo_workflow import metrics
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.approvals import Approvals
from abiquo_workflow.config import Settings
from abiquo_workflow.domain import (
    AbiquoTaskState,
    Callback,
    Channel,
    DecidedBy,
    DecisionState,
    DeliveryState,
    Enterprise,
    HeldTask,
    PayloadFormat,
)
from abiquo_workflow.exceptions import AbiquoError, AbiquoNotFound
from abiquo_workflow.jobs import Reconcile, enqueue, read
from abiquo_workflow.store import Store
from abiquo_workflow.store.records import JobRecord, JobStatus, TaskRecord
from abiquo_workflow.store.store import UnitOfWork
from abiquo_workflow.verification import CANCELLED_STATES, CONTINUED_STATES, HELD_STATES, request_key

log = structlog.stdlib.get_logger(__name__)

#: What a request found by reconciliation names as its source, and its `received` audit line as actor.
SOURCE = "reconciliation"
#: The actor of a task closed as decided in Abiquo (the pages and emails say "Cancelled in Abiquo" or
#: "Accepted in Abiquo" for any external decision); its audit line names `SOURCE` as who found it.
ACTOR = "Abiquo"
#: Seconds a held task is left to its callback before reconciliation takes it as lost (Abiquo waits at
#: most 10 s for the endpoint's answer, docs/protocol.md §2.3).
CALLBACK_GRACE = 60.0
#: Stored tasks read per statement, and task ids looked up per statement.
_BATCH = 500


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What one run found and did."""

    #: Enterprises whose pending tasks were read.
    enterprises: int
    #: Tasks Abiquo holds for review, in all of them.
    held: int
    #: Requests made of held tasks we had never received (direction A), by id.
    received: tuple[str, ...]
    #: Our pending tasks closed because Abiquo no longer holds them (direction B), by id.
    closed: tuple[str, ...]


class Reconciler:
    """Reconciliation's use case and its job; built once per process, holds no state between runs."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        abiquo: AbiquoClient,
        approvals: Approvals,
        clock: Callable[[], datetime] | None = None,
        callback_grace: float = CALLBACK_GRACE,
    ) -> None:
        self.settings = settings
        self.store = store
        self.abiquo = abiquo
        self.approvals = approvals
        self._clock = clock or store.queue.now
        self._grace = callback_grace

    @property
    def enabled(self) -> bool:
        return self.settings.reconcile.interval.total_seconds() > 0

    def job_handlers(self) -> Mapping[str, Callable[[JobRecord], Awaitable[None]]]:
        """What the worker runs for reconcile jobs."""
        return {Reconcile.kind: self.run_job}

    # --- the chain of jobs ------------------------------------------------------------------------

    async def schedule(self) -> int | None:
        """Queue a run now unless one is queued or running already (a process starting); its job id, or
        None when none was queued (one waits already, another process queued it first, or it is off)."""
        if not self.enabled:
            return None
        async with self.store.transaction() as tx:
            latest = await tx.latest_job(Reconcile.kind)
            if latest is not None and latest.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                return None
            return await self._enqueue(tx, Reconcile(after=latest.id if latest else 0), None)

    async def run_job(self, record: JobRecord) -> None:
        """Queue the next run an interval later, then run. The follower goes first so that a run that
        fails for good (the database gone, a bug: its job dies after its attempts) does not end the
        chain; a repeated attempt queues no second follower (the dedupe key names this run). Abiquo
        failing is logged, not raised: the next run is the retry (a job retried at once would only ask
        a failing Abiquo again)."""
        read(Reconcile, record)  # a payload this version cannot read fails the job at once (MalformedJob)
        if not self.enabled:
            log.info("reconcile.off", reason="reconcile.interval is 0")
            return
        async with self.store.transaction() as tx:
            await self._enqueue(
                tx, Reconcile(after=record.id), self._clock() + self.settings.reconcile.interval
            )
        try:
            await self.reconcile()
        except AbiquoError as exc:
            metrics.RECONCILE_RUNS.labels("failed").inc()
            log.warning("reconcile.failed", error=str(exc), retry_in=str(self.settings.reconcile.interval))
        else:
            metrics.RECONCILE_RUNS.labels("done").inc()

    async def _enqueue(self, tx: UnitOfWork, job: Reconcile, run_after: datetime | None) -> int | None:
        return await enqueue(tx, job, max_attempts=self.settings.worker.max_attempts, run_after=run_after)

    # --- one run ----------------------------------------------------------------------------------

    async def reconcile(self) -> Reconciliation:
        """Compare Abiquo's pending tasks with ours and mend what differs (the module docstring says
        how). Raises `AbiquoError`, having changed nothing, when a listing cannot be read."""
        started = self._clock()
        enterprises = [e for e in await self.abiquo.enterprises() if e.workflow is not False]
        listings = await asyncio.gather(*(self.abiquo.pending_tasks(enterprise_href(e)) for e in enterprises))
        held = {task.task_id: task for listing in listings for task in listing}
        received = await self._receive_lost(held, started)
        closed = await self._close_settled(held)
        outcome = Reconciliation(len(enterprises), len(held), tuple(received), tuple(closed))
        metrics.RECONCILED_TASKS.labels("closed").inc(len(closed))
        log.info(
            "reconcile.done",
            enterprises=outcome.enterprises,
            held=outcome.held,
            received=len(outcome.received),
            closed=len(outcome.closed),
        )
        return outcome

    # --- A: held tasks we never received ----------------------------------------------------------

    async def _receive_lost(self, held: Mapping[str, HeldTask], started: datetime) -> list[str]:
        known: set[str] = set()
        ids = list(held)
        for start in range(0, len(ids), _BATCH):
            known.update(t.task_id for t in await self.store.get_tasks(ids[start : start + _BATCH]))
        cutoff = started.timestamp() - self._grace
        lost = [
            task
            for task_id, task in held.items()
            if task_id not in known and (task.creation_timestamp is None or task.creation_timestamp <= cutoff)
        ]
        request_ids: list[str] = []
        for group in self._as_callbacks(lost):
            callback = Callback(
                tuple(group), PayloadFormat.JSON, single_root=group[0].task_type == "RECONFIGURE"
            )
            received = await self.approvals.receive(
                callback, body=_body(group).encode(), content_type="application/json", source=SOURCE
            )
            if received.request_id is not None:
                request_ids.append(received.request_id)
                metrics.RECONCILED_TASKS.labels("received").inc(len(received.new_task_ids))
                log.info(
                    "reconcile.found",
                    request_id=received.request_id,
                    tasks=len(received.new_task_ids),
                    task_ids=list(received.new_task_ids)[:10],
                )
        return request_ids

    def _as_callbacks(self, tasks: Iterable[HeldTask]) -> list[list[HeldTask]]:
        """The tasks grouped as Abiquo sends them: one requester's vApp (or VM) and operation per
        callback, a reconfigure alone."""
        groups: dict[tuple[str, ...], list[HeldTask]] = {}
        for task in tasks:
            requester, target = request_key(self.abiquo, task)
            alone = task.task_id if task.task_type == "RECONFIGURE" else ""
            groups.setdefault((requester, target, task.task_type, alone), []).append(task)
        return list(groups.values())

    # --- B: our pending tasks that Abiquo no longer holds ------------------------------------------

    async def _close_settled(self, held: Mapping[str, HeldTask]) -> list[str]:
        missing = [t for t in await self._pending() if t.task_id not in held and t.verified_at is not None]
        triaged = {
            request_id
            for request_id in dict.fromkeys(t.request_id for t in missing)
            if (request := await self.store.get_request(request_id)) is not None and request.triaged_at
        }
        candidates = [t for t in missing if t.request_id in triaged]
        shown = await asyncio.gather(*(self._shown(task) for task in candidates))
        by_request: dict[str, list[tuple[TaskRecord, AbiquoTaskState]]] = {}
        for task, now in zip(candidates, shown, strict=True):
            if now is not None:
                by_request.setdefault(task.request_id, []).append((task, now))
        closed: list[str] = []
        for request_id, settled in by_request.items():
            closed.extend(await self._close(request_id, settled))
            await self.approvals.tell_when_settled(request_id)
        return closed

    async def _pending(self) -> list[TaskRecord]:
        pending: list[TaskRecord] = []
        while True:
            page = await self.store.list_tasks(
                decision=DecisionState.PENDING, limit=_BATCH, offset=len(pending)
            )
            pending.extend(page)
            if len(page) < _BATCH:
                return pending

    async def _shown(self, task: TaskRecord) -> AbiquoTaskState | None:
        """What Abiquo shows of a task missing from its listings, when that settles it: continued,
        cancelled, or gone; None when it is still held, says neither, or cannot be read now."""
        if not task.self_href:
            return None
        try:
            now = await self.abiquo.get_task(task.self_href)
        except AbiquoNotFound:
            return AbiquoTaskState(task.task_id, None, task.task_type, gone=True)
        except AbiquoError as exc:
            log.warning("reconcile.task_unread", task_id=task.task_id, error=str(exc))
            return None
        state = (now.state or "").upper()
        if state in HELD_STATES or state not in CONTINUED_STATES | CANCELLED_STATES:
            return None
        return now

    async def _close(
        self, request_id: str, settled: Sequence[tuple[TaskRecord, AbiquoTaskState]]
    ) -> list[str]:
        closed: list[TaskRecord] = []
        async with self.store.transaction() as tx:
            for task, now in settled:
                decision, story = _story(now)
                decided = await tx.decide(
                    [task.task_id],
                    decision,
                    decided_by=DecidedBy.EXTERNAL,
                    actor=ACTOR,
                    reason=story,
                    channel=Channel.ABIQUO,
                    delivery=DeliveryState.SUPERSEDED,
                )
                if not decided:
                    continue  # decided meanwhile, by an approver or the policy: theirs stands
                await tx.set_delivery(
                    task.task_id,
                    DeliveryState.SUPERSEDED,
                    detail=f"nothing sent: {story}",
                    abiquo_state=now.state,
                    expect=DeliveryState.SUPERSEDED,
                    attempted=False,
                )
                await tx.audit(
                    "decided",
                    actor=SOURCE,
                    channel=Channel.ABIQUO,
                    request_id=request_id,
                    task_id=task.task_id,
                    detail=f"{decision} ({DecidedBy.EXTERNAL}), found by reconciliation: {story}",
                )
                metrics.DECISIONS.labels(decision.value, str(Channel.ABIQUO)).inc()
                closed.extend(decided)
        if closed:
            log.info(
                "decision.made",
                request_id=request_id,
                task_ids=[t.task_id for t in closed][:10],
                by=ACTOR,
                channel=str(Channel.ABIQUO),
                found_by=SOURCE,
            )
        return [t.task_id for t in closed]


def enterprise_href(enterprise: Enterprise) -> str:
    """Where an enterprise is, as its listing gave it (or built from its id when the listing did not)."""
    return enterprise.href or f"admin/enterprises/{enterprise.id}"


def _story(now: AbiquoTaskState) -> tuple[DecisionState, str]:
    """The decision a task settled in Abiquo is recorded as, and what Abiquo shows, in words."""
    if now.gone:
        return DecisionState.DECLINED, "the task no longer exists in Abiquo"
    state = (now.state or "").upper()
    if state in CONTINUED_STATES:
        return (
            DecisionState.ACCEPTED,
            f"continued in Abiquo, not through abiquo-workflow (Abiquo shows {state})",
        )
    return (
        DecisionState.DECLINED,
        f"cancelled in Abiquo, by its requester or in Abiquo's Workflow tasks tab (Abiquo shows {state})",
    )


def _body(tasks: Sequence[HeldTask]) -> str:
    """What is stored as the request's body: the tasks as Abiquo listed them, in its JSON shape."""
    return json.dumps(
        {
            "collection": [
                {
                    "taskId": t.task_id,
                    "type": t.task_type,
                    "state": t.state,
                    "userId": t.user_id,
                    "ownerId": t.owner_id,
                    "timestamp": t.timestamp,
                    "creationTimestamp": t.creation_timestamp,
                    "links": [
                        {"rel": link.rel, "href": link.href}
                        | ({"type": link.type} if link.type else {})
                        | ({"title": link.title} if link.title else {})
                        for link in t.links
                    ],
                }
                for t in tasks
            ]
        },
        ensure_ascii=False,
    )
