"""The use cases of the approval loop, composed from the store, the Abiquo client, the mailer and the links.

    receive   callback → request + tasks + a triage job, in one transaction (then 200 at once)
    triage    job: verify each task with Abiquo (verification.py; what Abiquo does not hold is rejected),
              enrich, apply the policy → automatic decision, or one approval email job per approver
    decide    a person (or the policy) decides → conditional pending→accepted|declined + a delivery job
    deliver   job: POST continue|cancel to Abiquo → delivered | superseded; retried until it gets through
    notify    job: once every task of a request has settled, one email to the requester; and once
              every task is decided, one "settled" email to each approver asked who did not decide
    timers    jobs triage queues with the time they fall due, under a rule with a deadline, reminders
              or escalation: `deadline` decides what is still pending (`DecidedBy.DEADLINE`), through
              the same conditional pending→decided as a click, so whichever commits first wins;
              `remind` queues one reminder per approver who has not answered; `escalate` asks the
              rule's `escalate_to` addresses

A rule's `approvals_needed` (the quorum) is kept in triage's snapshot; each approver's answer is
recorded (`UnitOfWork.approve`) and decides a task only when it is a decline (a veto) or the N-th
distinct accept.

The jobs are the typed values of jobs.py, queued with `jobs.enqueue` and read back by `jobs.runner`.
Each state change is written in the same transaction as the job that acts on it (the outbox), so a
crash at any point loses nothing: the job is still queued, or its lease runs out and another run takes
it up. (The requester's and the other approvers' emails are queued just after a decision or a delivery
commits, by the delivery's job, so that tasks settling at once cannot each miss the others; see
`_notify_when_settled` and `_tell_others_when_decided`.) Each job is safe
to run twice: every transition is conditional, and Abiquo answers a repeated continue with TASK-2,
which `deliver` recognises as "already done" when the task shows our decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError

from abiquo_workflow import display, metrics
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.config import Settings, duration_words
from abiquo_workflow.directory import ApproverDirectory
from abiquo_workflow.domain import (
    AbiquoTaskState,
    Action,
    Callback,
    Channel,
    DecidedBy,
    DecisionState,
    DeliveryOutcome,
    DeliveryResult,
    DeliveryState,
    HeldTask,
    RequestDetails,
    User,
)
from abiquo_workflow.enrichment import enrich
from abiquo_workflow.exceptions import AbiquoError, MailError, NotAnApprover
from abiquo_workflow.jobs import (
    Deadline,
    Deliver,
    Escalate,
    Job,
    MalformedJob,
    NotifyRequester,
    NotifySettled,
    Remind,
    SendApproval,
    SendReminder,
    Triage,
    enqueue,
    from_record,
    runner,
)
from abiquo_workflow.links import LinkSigner
from abiquo_workflow.mail import words
from abiquo_workflow.mail.model import ActionLinks, ApprovalRequest, OutcomeNotice, SettledNotice, TaskResult
from abiquo_workflow.mail.render import render_approval, render_outcome, render_settled
from abiquo_workflow.mail.send import Mailer
from abiquo_workflow.policy import (
    ApprovalRule,
    AskApprovers,
    AutoDecision,
    approval_rule,
    evaluate,
    is_gated,
    request_facts,
    ungated_decision,
)
from abiquo_workflow.store import Clock, Reader, Store, utc_now
from abiquo_workflow.store.records import (
    ApprovalRecord,
    JobRecord,
    JobStatus,
    NotificationRecord,
    NotificationStatus,
    TaskRecord,
)
from abiquo_workflow.store.store import UnitOfWork
from abiquo_workflow.verification import CANCELLED_STATES, CONTINUED_STATES, verify

log = structlog.stdlib.get_logger(__name__)

#: The kinds `tasks retry` names when it says what it queued again (task_commands.py).
SEND_APPROVAL = SendApproval.kind
NOTIFY_REQUESTER = NotifyRequester.kind
NOTIFY_SETTLED = NotifySettled.kind

#: The notification kind of the email telling the approvers who did not decide that a request is settled.
SETTLED = "settled"
#: The notification kinds of the emails that ask someone to decide (their links decide).
APPROVAL = "approval"
REMINDER = "reminder"
ASKING_KINDS = frozenset({APPROVAL, REMINDER})
#: At most this many task ids go into one log line (with the count of them all).
_LOGGED_IDS = 10

_details_json = TypeAdapter(RequestDetails)


@dataclass(frozen=True, slots=True)
class Received:
    """What a callback added: a request with its new tasks, or nothing when every task was known."""

    request_id: str | None
    new_task_ids: tuple[str, ...]
    known_task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decided:
    """The result of a decision on some tasks: those this call decided, those decided before, unknown ids."""

    decided: tuple[TaskRecord, ...]
    already: tuple[TaskRecord, ...]
    unknown: tuple[str, ...]
    #: Tasks still pending where this approval counted, or had already been counted, but more are
    #: needed (`approvals_needed`).
    waiting: tuple[TaskRecord, ...] = ()


def held_task(task: TaskRecord) -> HeldTask:
    """The parts of a stored task the Abiquo client needs to continue or cancel it."""
    return HeldTask(
        task_id=task.task_id,
        task_type=task.task_type,
        user_id=task.user_id,
        owner_id=task.owner_id,
        state=task.state,
        continue_href=task.continue_href,
        cancel_href=task.cancel_href,
        target_href=task.target_href,
        user_href=task.user_href,
        self_href=task.self_href,
    )


#: Characters that make an address's display name need quotes (RFC 5322 "specials").
_SPECIALS = frozenset('()<>[]:;@\\,."')


def approver_address(user: User) -> str:
    """`Alice Smith <alice@acme.example>`: whom an action link speaks for; who decided, in the audit log.

    Written for people, not for a mail header: a name such as "Zoë Zimmermann" stays as it is
    (`email.utils.formataddr` would MIME-encode it into `=?utf-8?q?Zo=C3=AB_Zimmermann?=`, which then
    showed in the requester's email, on the decision pages and in Abiquo's event text).
    """
    name = f"{user.name} {user.surname}".strip() or user.nick
    if not user.email:
        return name
    if _SPECIALS.intersection(name):
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        name = f'"{escaped}"'
    return f"{name} <{user.email}>"


def details_from_json(data: Mapping[str, Any] | None) -> RequestDetails | None:
    return None if data is None else _details_json.validate_python(data)


def abiquo_message(task: TaskRecord) -> str:
    """The text/plain body of a continue or cancel: who decided, and why. Abiquo shows it in its events."""
    verb = "Accepted" if task.decision is DecisionState.ACCEPTED else "Declined"
    who = task.actor or "abiquo-workflow"
    text = f"{verb} by {who} via abiquo-workflow"
    return f"{text}: {task.reason}" if task.reason else text


def task_result(task: TaskRecord) -> TaskResult:
    """How a stored task ended, as the emails and the decision pages tell it."""
    return TaskResult(
        task_id=task.task_id,
        vm_name=task.vm_name,
        task_type=task.task_type,
        decision=task.decision,
        decided_by=task.decided_by,
        actor=task.actor,
        reason=task.reason,
        delivery=task.delivery,
        abiquo_state=task.abiquo_state,
        decided_at=task.decided_at,
    )


def matches_decision(task: TaskRecord, now: AbiquoTaskState) -> bool:
    """True when Abiquo already shows the task as we decided it (our earlier attempt got through)."""
    if now.gone or now.state is None:
        return False
    wanted = CONTINUED_STATES if task.decision is DecisionState.ACCEPTED else CANCELLED_STATES
    return now.state.upper() in wanted


class Approvals:
    """The approval loop's use cases. Built once per process with its dependencies; holds no state."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        abiquo: AbiquoClient,
        mailer: Mailer,
        signer: LinkSigner,
        directory: ApproverDirectory,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.store = store
        self.abiquo = abiquo
        self.mailer = mailer
        self.signer = signer
        self.directory = directory
        #: Where deadlines and reminders count from; the store's own clock (tests move both).
        self.clock = clock

    def job_handlers(self) -> Mapping[str, Callable[[JobRecord], Awaitable[None]]]:
        """What the worker runs for each kind of job: the record read into its job, then its use case."""
        return {
            Triage.kind: runner(Triage, self.triage),
            SendApproval.kind: runner(SendApproval, self.send_approval),
            Deliver.kind: runner(Deliver, self.deliver),
            NotifyRequester.kind: runner(NotifyRequester, self.notify_requester),
            NotifySettled.kind: runner(NotifySettled, self.notify_settled),
            Deadline.kind: runner(Deadline, self.deadline),
            Remind.kind: runner(Remind, self.remind),
            Escalate.kind: runner(Escalate, self.escalate),
            SendReminder.kind: runner(SendReminder, self.send_reminder),
        }

    async def _enqueue(self, tx: UnitOfWork, job: Job) -> int | None:
        return await enqueue(tx, job, max_attempts=self.settings.worker.max_attempts)

    # --- receive -----------------------------------------------------------------------------------

    async def receive(
        self, callback: Callback, *, body: bytes, content_type: str | None, source: str | None
    ) -> Received:
        """Store a callback and queue its triage, in one transaction. Never calls Abiquo or SMTP.

        A task id already stored (Abiquo sent it again) is not stored twice; a callback made only of
        known tasks stores nothing at all (its request row is rolled back with the rest).
        """
        try:
            async with self.store.transaction() as tx:
                request_id = await tx.insert_request(
                    callback,
                    body=body.decode("utf-8", errors="replace"),
                    content_type=content_type,
                    source=source,
                )
                inserted = await tx.insert_tasks(request_id, callback.tasks)
                if not inserted:
                    raise _NothingNew
                await self._enqueue(tx, Triage(request_id))
                await tx.audit(
                    "received",
                    channel=Channel.ABIQUO,
                    request_id=request_id,
                    actor=source,
                    detail=f"{len(inserted)} task(s): "
                    + ", ".join(
                        f"{t.task_type} {t.task_id}" for t in callback.tasks if t.task_id in inserted
                    ),
                )
        except _NothingNew:
            return Received(None, (), tuple(t.task_id for t in callback.tasks))
        known_ids = tuple(t.task_id for t in callback.tasks if t.task_id not in inserted)
        log.info(
            "callback.received",
            request_id=request_id,
            tasks=len(inserted),
            task_ids=_logged(inserted),
            known=len(known_ids),
        )
        return Received(request_id, tuple(inserted), known_ids)

    # --- triage ------------------------------------------------------------------------------------

    async def triage(self, job: Triage) -> None:
        """Enrich a request through Abiquo, then decide automatically or ask the approvers by email."""
        request_id = job.request_id
        request = await self.store.get_request(request_id)
        if request is None or request.triaged_at is not None:
            return  # triaged by an earlier run of this job, cut off before it was marked done
        pending = [
            t for t in await self.store.tasks_of_request(request_id) if t.decision is DecisionState.PENDING
        ]
        if not pending:
            return
        pending = await self._verified(request_id, pending)
        if not pending:
            async with self.store.transaction() as tx:
                await tx.save_triage(request_id, None, [], {}, error="Abiquo holds none of its tasks")
            return
        gated = [t for t in pending if is_gated(t.task_type, self.settings.policy)]
        enriched = await enrich(self.abiquo, pending, with_users=bool(gated), history=self.store)
        gated_ids = {t.task_id for t in gated}
        evaluation = (
            evaluate(
                request_facts(enriched.details, gated_ids), enriched.enterprise_users, self.settings.policy
            )
            if gated
            else None
        )
        verdict = evaluation.verdict if evaluation is not None else None
        approvers = verdict.approvers if isinstance(verdict, AskApprovers) else ()
        approval = evaluation.approval if evaluation is not None and approvers else None
        now = self.clock()
        details = dataclasses.replace(
            enriched.details,
            policy_rule=evaluation.rule if evaluation else None,
            **_quorum_and_deadline(approval, now),
        )
        vm_names = {vm.task_id: vm.vm.name for vm in details.vms if vm.vm is not None}
        async with self.store.transaction() as tx:
            await tx.save_triage(
                request_id,
                _details_json.dump_python(details, mode="json"),
                [a.email or "" for a in approvers],
                vm_names,
                error="; ".join(enriched.problems) or None,
            )
            ungated = [t for t in pending if t not in gated]
            for task in ungated:
                await self._decide_automatically(tx, [task.task_id], ungated_decision(task.task_type))
            if isinstance(verdict, AutoDecision):
                await self._decide_automatically(tx, [t.task_id for t in gated], verdict)
            for approver in approvers:
                await self._queue_approval_email(tx, request_id, approver, [t.task_id for t in gated])
            if approval is not None:
                await self._queue_timers(tx, request_id, approval, now, details.deadline_at)
            summary = _triage_summary(verdict, ungated, enriched.problems, approval)
            if evaluation is not None:
                summary = f"{evaluation.label}: {summary}"  # which policy rule applied
            await tx.audit("triaged", channel=Channel.SYSTEM, request_id=request_id, detail=summary)
        log.info(
            "request.triaged",
            request_id=request_id,
            task_ids=_logged(t.task_id for t in pending),
            outcome=summary,
        )

    async def _verified(self, request_id: str, pending: Sequence[TaskRecord]) -> list[TaskRecord]:
        """The pending tasks Abiquo confirms, with Abiquo's type, requester, target and links; the
        others rejected (an audit line each, a metric, one warning). Abiquo unreachable raises, and
        triage is retried."""
        outcome = await verify(self.abiquo, pending)
        by_reason: dict[tuple[str, str], list[str]] = {}
        for rejection in outcome.rejected:
            by_reason.setdefault((rejection.kind, rejection.reason), []).append(rejection.task_id)
        rejected: dict[str, list[str]] = {}
        async with self.store.transaction() as tx:
            confirmed = await tx.confirm_tasks(outcome.confirmed)
            for (kind, reason), task_ids in by_reason.items():
                changed = [t.task_id for t in await tx.reject(task_ids, reason)]
                await tx.audit_each(
                    "rejected", changed, channel=Channel.SYSTEM, request_id=request_id, detail=reason
                )
                rejected.setdefault(kind, []).extend(changed)
            if confirmed:
                await tx.audit(
                    "verified",
                    channel=Channel.ABIQUO,
                    request_id=request_id,
                    detail=f"Abiquo holds {_count(len(confirmed), 'task')} as the callback said",
                )
        for kind, task_ids in rejected.items():
            metrics.TASKS_REJECTED.labels(kind).inc(len(task_ids))
        if any(rejected.values()):
            log.warning(
                "triage.tasks_rejected",
                request_id=request_id,
                rejected={kind: len(ids) for kind, ids in rejected.items() if ids},
                task_ids=[task_id for ids in rejected.values() for task_id in ids][:5],
            )
        return confirmed

    async def _decide_automatically(
        self, tx: UnitOfWork, task_ids: Sequence[str], auto: AutoDecision
    ) -> None:
        decided = await tx.decide(
            task_ids,
            DecisionState.for_action(auto.action),
            decided_by=auto.decided_by,
            actor=auto.rule,
            reason=auto.reason,
            channel=Channel.POLICY,
        )
        await self._queue_deliveries(tx, decided)

    async def _queue_approval_email(
        self, tx: UnitOfWork, request_id: str, approver: User, task_ids: Sequence[str]
    ) -> None:
        notification = await tx.add_notification(
            request_id, kind=APPROVAL, recipient=approver.email or "", task_ids=task_ids
        )
        await self._enqueue(tx, SendApproval(request_id, notification, approver, tuple(task_ids)))

    async def _queue_timers(
        self,
        tx: UnitOfWork,
        request_id: str,
        approval: ApprovalRule,
        now: datetime,
        deadline_at: datetime | None,
    ) -> None:
        """Queue the rule's deadline (at `deadline_at`, what the snapshot announces), reminders and
        escalation, each due at its time from now."""
        timing = approval.timing
        if deadline_at is not None:
            await self._enqueue(tx, Deadline(request_id, deadline_at))
        for number, after in enumerate(timing.reminders, start=1):
            await self._enqueue(tx, Remind(request_id, number, now + timedelta(seconds=after)))
        if timing.escalate_after is not None and timing.escalate_to:
            await self._enqueue(tx, Escalate(request_id, now + timedelta(seconds=timing.escalate_after)))

    # --- approval emails ---------------------------------------------------------------------------

    async def send_approval(self, job: SendApproval) -> None:
        """Write and send one approver's email, with signed links per task and, for all of them, links
        to this email's task list (short, whatever the number of tasks)."""
        await self._ask(job.request_id, job.notification_id, job.approver, job.task_ids, APPROVAL)

    async def send_reminder(self, job: SendReminder) -> None:
        """The approval email again, marked as reminder `number`, about the tasks still waiting for
        this approver; nothing when every one of them was decided meanwhile."""
        tasks = await self.store.get_tasks(job.task_ids)
        waiting = tuple(t.task_id for t in tasks if t.decision is DecisionState.PENDING)
        if not waiting:
            async with self.store.transaction() as tx:
                await tx.set_notification(
                    job.notification_id, NotificationStatus.FAILED, error="decided before it was sent"
                )
            return
        await self._ask(job.request_id, job.notification_id, job.approver, waiting, REMINDER, job.number)

    async def _ask(
        self,
        request_id: str,
        notification_id: int,
        approver: User,
        task_ids: Sequence[str],
        kind: str,
        reminder: int | None = None,
    ) -> None:
        request = await self.store.get_request(request_id)
        details = details_from_json(request.details if request else None)
        if details is None or approver.email is None:
            raise RuntimeError(f"request {request_id} has not been triaged")
        email = approver_address(approver)
        links = {
            task_id: ActionLinks(
                self.signer.task_url(task_id, Action.ACCEPT, email),
                self.signer.task_url(task_id, Action.DECLINE, email),
            )
            for task_id in task_ids
        }
        all_links = (
            ActionLinks(
                self.signer.notice_url(notification_id, Action.ACCEPT, email),
                self.signer.notice_url(notification_id, Action.DECLINE, email),
            )
            if len(task_ids) > 1
            else None
        )
        shown = dataclasses.replace(details, vms=tuple(vm for vm in details.vms if vm.task_id in links))
        approved = await self.store.approvals_of(task_ids)
        message = render_approval(
            ApprovalRequest(
                shown,
                approver,
                links,
                all_links,
                self.signer.expires_at(),
                request_id,
                reminder=reminder,
                approved_by=_accepted_by(approved),
            ),
            self.settings.mail,
        )
        await self._send(notification_id, message, request_id=request_id, recipient=approver.email, kind=kind)

    async def _send(
        self, notification_id: int, message: Any, *, request_id: str, recipient: str, kind: str
    ) -> None:
        try:
            await self.mailer.send(message)
        except MailError as exc:
            async with self.store.transaction() as tx:
                await tx.set_notification(notification_id, NotificationStatus.QUEUED, error=str(exc))
            raise
        metrics.EMAILS.labels(kind, "sent").inc()
        async with self.store.transaction() as tx:
            await tx.set_notification(notification_id, NotificationStatus.SENT)
            await tx.audit(
                "emailed",
                channel=Channel.EMAIL,
                request_id=request_id,
                actor=recipient,
                detail=f"{kind} email",
            )
        log.info("email.sent", request_id=request_id, kind=kind, to=recipient, notification=notification_id)

    # --- decide ------------------------------------------------------------------------------------

    async def check_approver(self, task_ids: Sequence[str], approver: str) -> None:
        """Raise `NotAnApprover` unless `approver` is, in Abiquo now, an approver of the enterprise of
        each request with a pending task among `task_ids` (directory.py says why and how fresh).

        Unknown and decided tasks are left to `decide`. Raises `AbiquoError` when Abiquo cannot be
        asked: then nothing may be decided.
        """
        pending = [t for t in await self.store.get_tasks(task_ids) if t.decision is DecisionState.PENDING]
        for request_id in dict.fromkeys(t.request_id for t in pending):
            enterprise_href = await self._enterprise_of(
                request_id, [t for t in pending if t.request_id == request_id]
            )
            if enterprise_href is None:
                raise NotAnApprover(
                    "This request has not been checked with Abiquo yet, so nobody can decide it from a "
                    "link. Open the link again in a few minutes."
                )
            rule = await self._rule_of(request_id)
            if not await self.directory.is_approver(enterprise_href, approver, rule):
                approval = approval_rule(self.settings.policy, rule)
                again = (
                    f"ask an Abiquo administrator to give you {approval.role_words} again"
                    if approval.roles
                    else f"ask this connector's administrator to name you in policy rule '{rule}' again"
                )
                raise NotAnApprover(
                    f"{display.name(approver)} is no longer an approver of this request's enterprise in "
                    f"Abiquo, so this link cannot decide it. If you should still approve, {again}; "
                    "otherwise the other approvers can decide, or an administrator in Abiquo."
                )

    async def _rule_of(self, request_id: str) -> str | None:
        """The policy rule triage applied to a request, by name (its snapshot keeps it); None for the
        default rule, or a snapshot this version cannot read."""
        request = await self.store.get_request(request_id)
        try:
            details = details_from_json(request.details if request else None)
        except ValidationError:
            return None
        return details.policy_rule if details is not None else None

    async def _enterprise_of(self, request_id: str, tasks: Sequence[TaskRecord]) -> str | None:
        """The enterprise whose approvers decide a request: from triage's snapshot, else from the
        requester link Abiquo gave a verified task (`…/admin/enterprises/{id}/users/{user}`)."""
        request = await self.store.get_request(request_id)
        try:
            details = details_from_json(request.details if request else None)
        except ValidationError:
            details = None  # a snapshot another version wrote; the verified task still says
        if details is not None and details.enterprise is not None and details.enterprise.href:
            return details.enterprise.href
        if details is not None and details.requester is not None and details.requester.enterprise_id:
            return f"admin/enterprises/{details.requester.enterprise_id}"
        for task in tasks:
            if task.verified_at is not None and task.user_href:
                head, sep, _user = task.user_href.rstrip("/").rpartition("/users/")
                if sep and not head.endswith("/_"):
                    return head
        return None

    async def decide(
        self,
        task_ids: Sequence[str],
        action: Action,
        *,
        actor: str,
        reason: str | None,
        channel: Channel,
        decided_by: DecidedBy = DecidedBy.APPROVER,
    ) -> Decided:
        """Decide the still-pending tasks among `task_ids` and queue their delivery, atomically.

        Of two people deciding the same task at once exactly one wins; the other finds it in `already`.
        An approver's answer (`DecidedBy.APPROVER`) is recorded, and decides only as the request's quorum
        says (`approvals_needed`: a decline, or the N-th distinct accept); the tasks it leaves waiting
        for more approvals are in `waiting`.
        """
        reason = (reason or "").strip() or None
        state = DecisionState.for_action(action)
        counted: list[str] = []
        async with self.store.transaction() as tx:
            if decided_by is DecidedBy.APPROVER:
                approved = await tx.approve(
                    task_ids,
                    state,
                    approver=_email_of(actor),
                    actor=actor,
                    reason=reason,
                    channel=channel,
                    needed=await self._approvals_needed(tx, task_ids),
                )
                decided = approved.decided
                counted = approved.waiting + approved.repeated
                for task in await tx.get_tasks(approved.waiting):
                    await tx.audit(
                        "approved",
                        actor=actor,
                        channel=channel,
                        task_id=task.task_id,
                        request_id=task.request_id,
                        detail="accepted; more approvals are needed" + (f": {reason}" if reason else ""),
                    )
            else:
                decided = await tx.decide(
                    task_ids, state, decided_by=decided_by, actor=actor, reason=reason, channel=channel
                )
            await self._queue_deliveries(tx, decided)
            decided_ids = {t.task_id for t in decided}
            others = [t for t in await tx.get_tasks(task_ids) if t.task_id not in decided_ids]
        for request_id in dict.fromkeys(t.request_id for t in decided):
            log.info(
                "decision.made",
                request_id=request_id,
                task_ids=_logged(t.task_id for t in decided if t.request_id == request_id),
                decision=DecisionState.for_action(action).value,
                by=actor,
                channel=str(channel),
            )
        known = decided_ids | {t.task_id for t in others}
        unknown = tuple(t for t in dict.fromkeys(task_ids) if t not in known)
        waiting = tuple(t for t in others if t.task_id in counted)
        already = tuple(t for t in others if t.task_id not in counted)
        return Decided(tuple(decided), already, unknown, waiting)

    async def _approvals_needed(self, tx: UnitOfWork, task_ids: Sequence[str]) -> int:
        """The quorum of the request(s) of these tasks, from triage's snapshot (1 before quorums, or
        for a snapshot this version cannot read). A link's tasks are of one request."""
        needed = 1
        for request_id in {t.request_id for t in await tx.get_tasks(task_ids)}:
            details = _readable_details(await tx.get_request(request_id))
            if details is not None:
                needed = max(needed, details.approvals_needed)
        return needed

    async def quorum(self, task_ids: Sequence[str]) -> Quorum | None:
        """Where these tasks' quorum stands (None when one approval decides): how many accepted, how
        many are needed, who accepted and who has not answered yet. For the decision pages."""
        tasks = await self.store.get_tasks(task_ids)
        if not tasks:
            return None
        request = await self.store.get_request(tasks[0].request_id)
        details = _readable_details(request)
        if details is None or details.approvals_needed <= 1:
            return None
        answers = await self.store.approvals_of(t.task_id for t in tasks)
        accepted = _accepted_by(answers)
        answered = {a.approver for a in answers}
        asked = [
            n.recipient for n in await self.store.notifications(tasks[0].request_id) if n.kind == APPROVAL
        ]
        waiting = tuple(
            [
                approver_address(await self._approver_of(self.store, tasks[0].request_id, r))
                for r in dict.fromkeys(r for r in asked if r.lower() not in answered)
            ]
        )
        return Quorum(
            min(len(accepted), details.approvals_needed), details.approvals_needed, accepted, waiting
        )

    async def has_accepted(self, task_ids: Sequence[str], actor: str) -> bool:
        """Whether `actor`'s accept is counted on every one of these tasks (their quorum not reached
        yet): the dashboard then offers them only Decline, as another accept would not count again."""
        approver = _email_of(actor)
        answers = await self.store.approvals_of(task_ids)
        accepted = {a.task_id for a in answers if a.approver == approver and a.action == "accept"}
        return bool(task_ids) and accepted >= set(task_ids)

    async def _queue_deliveries(self, tx: UnitOfWork, decided: Sequence[TaskRecord]) -> None:
        for task in decided:
            metrics.DECISIONS.labels(task.decision.value, str(task.channel)).inc()
            await self._enqueue(tx, Deliver(task.task_id))
            await tx.audit(
                "decided",
                actor=task.actor,
                channel=task.channel,
                request_id=task.request_id,
                task_id=task.task_id,
                detail=f"{task.decision} ({task.decided_by})" + (f": {task.reason}" if task.reason else ""),
            )

    # --- timers ------------------------------------------------------------------------------------

    async def _still_pending(self, request_id: str) -> tuple[RequestDetails, list[str]] | None:
        """A timer's request: its triage snapshot and its still-pending task ids; None when it has no
        readable snapshot or nothing is left pending (the timer then has nothing to do)."""
        details = _readable_details(await self.store.get_request(request_id))
        if details is None:
            return None
        tasks = await self.store.tasks_of_request(request_id)
        pending = [t.task_id for t in tasks if t.decision is DecisionState.PENDING]
        return (details, pending) if pending else None

    async def deadline(self, job: Deadline) -> None:
        """Decide the request's still-pending tasks as its rule's `at_deadline` says, through the same
        conditional pending→decided as a click: what an approver decided first stays, and a deadline
        that runs twice (or on two replicas) decides nothing the second time. Delivered, and the
        approvers and the requester told, as any decision is."""
        still = await self._still_pending(job.request_id)
        if still is None:
            return
        details, pending = still
        action = Action.ACCEPT if details.at_deadline == "accept" else Action.DECLINE
        approval = approval_rule(self.settings.policy, details.policy_rule)
        when = words.moment_words(details.deadline_at or job.due)
        rule = f" of policy rule '{details.policy_rule}'" if details.policy_rule else ""
        result = await self.decide(
            pending,
            action,
            actor=approval.key("deadline"),
            reason=f"nobody decided by {when}, the deadline{rule}",
            channel=Channel.SYSTEM,
            decided_by=DecidedBy.DEADLINE,
        )
        if result.decided:
            log.info(
                "request.deadline", request_id=job.request_id, decided=len(result.decided), action=str(action)
            )

    async def remind(self, job: Remind) -> None:
        """Queue reminder `number` to each approver asked who has not answered every still-pending task
        they were asked about; each reminder once per approver (its dedupe key)."""
        pending = {
            t.task_id
            for t in await self.store.tasks_of_request(job.request_id)
            if t.decision is DecisionState.PENDING
        }
        if not pending:
            return
        answers = await self.store.approvals_of(pending)
        answered: dict[str, set[str]] = {}
        for answer in answers:
            answered.setdefault(answer.approver, set()).add(answer.task_id)
        reminded: list[str] = []
        try:
            async with self.store.transaction() as tx:
                for asked in _asked(await tx.notifications(job.request_id)):
                    waiting = [
                        t
                        for t in asked.task_ids or ()
                        if t in pending and t not in answered.get(asked.recipient.lower(), set())
                    ]
                    if not waiting:
                        continue
                    approver = await self._approver_of(tx, job.request_id, asked.recipient)
                    notification = await tx.add_notification(
                        job.request_id, kind=REMINDER, recipient=asked.recipient, task_ids=waiting
                    )
                    queued = SendReminder(job.request_id, notification, approver, tuple(waiting), job.number)
                    if await self._enqueue(tx, queued) is None:
                        raise _AlreadyQueued
                    reminded.append(asked.recipient)
                if reminded:
                    await tx.audit(
                        "reminded",
                        channel=Channel.SYSTEM,
                        request_id=job.request_id,
                        detail=f"reminder {job.number} to {', '.join(reminded)}",
                    )
        except _AlreadyQueued:
            pass  # a run cut off after its commit: the reminders are out already

    async def escalate(self, job: Escalate) -> None:
        """Ask the rule's `escalate_to` addresses about the still-pending tasks, with links of their own
        (they may decide, and count towards the quorum); an address already asked is not asked again."""
        still = await self._still_pending(job.request_id)
        if still is None:
            return
        details, pending = still
        approval = approval_rule(self.settings.policy, details.policy_rule)
        async with self.store.transaction() as tx:
            asked = {
                n.recipient.lower() for n in await tx.notifications(job.request_id) if n.kind == APPROVAL
            }
            escalated: list[str] = []
            for address in approval.timing.escalate_to:
                user = _addressed(address)
                if (user.email or "").lower() in asked:
                    continue
                await self._queue_approval_email(tx, job.request_id, user, pending)
                escalated.append(approver_address(user))
            if escalated:
                await tx.audit(
                    "escalated",
                    channel=Channel.SYSTEM,
                    request_id=job.request_id,
                    detail=f"nobody decided in time; asked {', '.join(escalated)}",
                )

    async def _approver_of(self, reader: Reader, request_id: str, recipient: str) -> User:
        """Whom an approval email went to, as its job named them (their Abiquo name)."""
        record = await reader.job_with_key(SendApproval(request_id, 0, _addressed(recipient), ()).dedupe_key)
        try:
            job = from_record(record) if record is not None else None
        except MalformedJob:
            job = None
        return job.approver if isinstance(job, SendApproval) else _addressed(recipient)

    # --- deliver -----------------------------------------------------------------------------------

    async def deliver(self, job: Deliver) -> None:
        """POST the task's continue or cancel link; record what Abiquo said. Raises to be retried.

        Then, in transactions of their own, queue the "settled" emails to the other approvers if
        every task of the request is now decided (even while Abiquo refuses the delivery: the decision
        stands), and the requester's email if this settled the request's last task. A run cut off
        between the steps (a crash) is repeated: the task is already settled, so only the later steps
        run again, and their dedupe keys let each email through once.
        """
        task = await self.store.get_task(job.task_id)
        if task is None:
            return
        try:
            if task.delivery is DeliveryState.QUEUED:
                await self._deliver(task)
        finally:
            await self._tell_others_when_decided(task.request_id)
        await self._notify_when_settled(task.request_id)

    async def _deliver(self, task: TaskRecord) -> None:
        send = (
            self.abiquo.continue_task if task.decision is DecisionState.ACCEPTED else self.abiquo.cancel_task
        )
        try:
            outcome = await send(held_task(task), abiquo_message(task))
        except AbiquoError as exc:
            async with self.store.transaction() as tx:
                await tx.set_delivery(
                    task.task_id, DeliveryState.QUEUED, detail=str(exc), expect=DeliveryState.QUEUED
                )
            raise
        state, detail, abiquo_state = _delivery_record(task, outcome)
        async with self.store.transaction() as tx:
            settled = await tx.set_delivery(
                task.task_id, state, detail=detail, abiquo_state=abiquo_state, expect=DeliveryState.QUEUED
            )
            if settled is None:
                return  # settled meanwhile by another run of this job
            metrics.DELIVERIES.labels(state.value).inc()
            await tx.audit(
                state.value,
                channel=Channel.ABIQUO,
                request_id=task.request_id,
                task_id=task.task_id,
                detail=f"attempt {settled.delivery_attempts}, HTTP {outcome.status or '?'}: {detail}",
            )
        log.info(
            "task.delivered" if state is DeliveryState.DELIVERED else "task.superseded",
            request_id=task.request_id,
            task_id=task.task_id,
            status=outcome.status,
            attempt=settled.delivery_attempts,
            detail=detail,
        )

    async def tell_when_settled(self, request_id: str) -> None:
        """Queue the emails that follow decisions taken outside the loop, as `deliver` does after a
        delivery: the other approvers' "settled" emails once every task is decided, the requester's once
        every task has settled. Reconciliation (reconcile.py) calls it after closing tasks that Abiquo
        no longer holds; like `deliver`, safe to call more than once."""
        await self._tell_others_when_decided(request_id)
        await self._notify_when_settled(request_id)

    async def _notify_when_settled(self, request_id: str) -> None:
        """Queue the requester's email once no task of the request is pending or on its way.

        This runs in its own transaction, after the one that settled a task has committed. Checked
        inside that transaction instead, deliveries settling at once (an "accept all") each saw the
        others still queued on PostgreSQL, and nobody told the requester. Now the last to commit is
        sure to see every task settled; others may see it too, so the job's dedupe key (the request
        and the outcome being reported) lets one through and the rest roll back, notification included.
        An outcome that changes later (a failed delivery retried by hand) is reported again.
        """
        try:
            async with self.store.transaction() as tx:
                tasks = _acted_on(await tx.tasks_of_request(request_id))
                if not tasks or any(
                    t.decision is DecisionState.PENDING or t.delivery is DeliveryState.QUEUED for t in tasks
                ):
                    return
                request = await tx.get_request(request_id)
                details = details_from_json(request.details if request else None)
                requester = details.requester if details else None
                email = requester.email if requester is not None else None
                notification = (
                    await tx.add_notification(
                        request_id, kind="outcome", recipient=email, task_ids=[t.task_id for t in tasks]
                    )
                    if email
                    else None
                )
                queued = await self._enqueue(tx, NotifyRequester(request_id, notification, _outcome(tasks)))
                if queued is None:
                    raise _AlreadyQueued
                if notification is None:
                    await tx.audit(
                        "requester_not_told",
                        channel=Channel.EMAIL,
                        request_id=request_id,
                        detail="the requester has no email address in Abiquo",
                    )
        except _AlreadyQueued:
            pass  # another delivery of this request queued the same email first

    async def _tell_others_when_decided(self, request_id: str) -> None:
        """Queue one "settled" email to each approver the request was emailed to who decided none of
        it, once every task of it (but the rejected) is accepted or declined.

        Like the requester's email, this runs after the decision's transaction has committed (each
        delivery runs it), so the last decision to commit is sure to see the others. Each delivery
        that sees the request decided may try; the dedupe key (the request and the approver) lets one
        email through per approver, and the others roll back, notifications included. A request
        decided by policy emailed nobody, so nobody is told; nor is an approver whose approval email
        failed (they were never asked).
        """
        emails = await self.store.notifications(request_id)
        if any(n.kind == SETTLED for n in emails):
            return  # told already
        asked = _asked(emails)
        if not asked:
            return
        tasks = _acted_on(await self.store.tasks_of_request(request_id))
        settled = words.settlement([task_result(t) for t in tasks])
        if settled is None:
            return  # a task is still pending
        deciders = {_email_of(t.actor) for t in tasks if t.decided_by is DecidedBy.APPROVER}
        others = {n.recipient.lower(): n.recipient for n in asked if n.recipient.lower() not in deciders}
        if not others:
            return
        try:
            async with self.store.transaction() as tx:
                for recipient in others.values():
                    notification = await tx.add_notification(
                        request_id, kind=SETTLED, recipient=recipient, task_ids=[t.task_id for t in tasks]
                    )
                    if await self._enqueue(tx, NotifySettled(request_id, notification, recipient)) is None:
                        raise _AlreadyQueued
                await tx.audit(
                    SETTLED,
                    channel=Channel.SYSTEM,
                    request_id=request_id,
                    detail=f"{settled.sentence}; telling {', '.join(others.values())}",
                )
        except _AlreadyQueued:
            pass  # another delivery of this request queued them first

    # --- the requester's email ---------------------------------------------------------------------

    async def notify_requester(self, job: NotifyRequester) -> None:
        """Tell the requester how each task of the request ended."""
        request_id = job.request_id
        request = await self.store.get_request(request_id)
        details = details_from_json(request.details if request else None)
        if (
            job.notification_id is None
            or details is None
            or details.requester is None
            or not details.requester.email
        ):
            return
        tasks = _acted_on(await self.store.tasks_of_request(request_id))
        results = [task_result(t) for t in tasks]
        message = render_outcome(
            OutcomeNotice(details, details.requester, results, request_id), self.settings.mail
        )
        await self._send(
            job.notification_id,
            message,
            request_id=request_id,
            recipient=details.requester.email,
            kind="outcome",
        )

    # --- the other approvers' email ----------------------------------------------------------------

    async def notify_settled(self, job: NotifySettled) -> None:
        """Tell an approver who was asked, and did not decide, who settled the request, when and how."""
        request = await self.store.get_request(job.request_id)
        details = details_from_json(request.details if request else None)
        if details is None:
            return  # nothing to say it about: no approver is asked before triage saves its snapshot
        tasks = _acted_on(await self.store.tasks_of_request(job.request_id))
        notice = SettledNotice(details, job.recipient, [task_result(t) for t in tasks], job.request_id)
        message = render_settled(notice, self.settings.mail)
        await self._send(
            job.notification_id, message, request_id=job.request_id, recipient=job.recipient, kind=SETTLED
        )

    # --- when a job runs out of attempts -----------------------------------------------------------

    async def job_failed(self, record: JobRecord, error: str) -> None:
        """Make a job's final failure visible where people look: the task, the email, the request.

        A job this version cannot read (`MalformedJob`) names nothing to mark: its own `last_error`
        and the worker's log say what is wrong with it.
        """
        metrics.JOBS_DEAD.labels(record.kind).inc()
        try:
            job = from_record(record)
        except MalformedJob:
            return
        failed: TaskRecord | None = None
        async with self.store.transaction() as tx:
            match job:
                case Deliver(task_id=task_id):
                    failed = await tx.set_delivery(
                        task_id,
                        DeliveryState.FAILED,
                        detail=error,
                        expect=DeliveryState.QUEUED,
                        attempted=False,
                    )
                    if failed is not None:
                        metrics.DELIVERIES.labels(DeliveryState.FAILED.value).inc()
                        await tx.audit(
                            "delivery_failed",
                            channel=Channel.SYSTEM,
                            request_id=failed.request_id,
                            task_id=task_id,
                            detail=f"gave up after {_count(failed.delivery_attempts, 'attempt')}: {error}",
                        )
                case SendApproval() | SendReminder() | NotifyRequester() | NotifySettled():
                    if job.notification_id is not None:
                        await tx.set_notification(job.notification_id, NotificationStatus.FAILED, error=error)
                    await tx.audit(
                        "email_failed", channel=Channel.EMAIL, request_id=job.request_id, detail=error
                    )
                case Triage():
                    await tx.audit(
                        "triage_failed", channel=Channel.SYSTEM, request_id=job.request_id, detail=error
                    )
                case Deadline() | Remind() | Escalate():
                    await tx.audit(
                        f"{job.kind}_failed", channel=Channel.SYSTEM, request_id=job.request_id, detail=error
                    )
        if failed is not None:
            await self._notify_when_settled(failed.request_id)

    async def job_retried(self, record: JobRecord, error: str, delay: float) -> None:
        """Record in the audit log a delivery attempt that failed and will be tried again (the worker's
        `on_retry`): its number, the error, and when. A run that failed after its delivery was recorded
        (while queueing the emails that follow it) is not a failed delivery, and is left to the log."""
        try:
            job = from_record(record)
        except MalformedJob:
            return
        if not isinstance(job, Deliver):
            return
        task = await self.store.get_task(job.task_id)
        if task is None or task.delivery is not DeliveryState.QUEUED:
            return
        async with self.store.transaction() as tx:
            await tx.audit(
                "delivery_retry",
                channel=Channel.SYSTEM,
                request_id=task.request_id,
                task_id=task.task_id,
                detail=f"attempt {task.delivery_attempts} failed, trying again in {_seconds(delay)}: {error}",
            )


def _stalls_request(record: JobRecord, request_id: str) -> bool:
    """Whether a dead job leaves the request short of a decision or of an email about it."""
    try:
        job = from_record(record)
    except MalformedJob:
        return False
    return (
        isinstance(
            job,
            Triage
            | SendApproval
            | SendReminder
            | NotifyRequester
            | NotifySettled
            | Deadline
            | Remind
            | Escalate,
        )
        and job.request_id == request_id
    )


@dataclass(frozen=True, slots=True)
class Quorum:
    """Where a quorum stands: `accepted` of `needed` approvals, by whom, and who has not answered."""

    accepted: int
    needed: int
    approved_by: tuple[str, ...]
    waiting_for: tuple[str, ...]


def _quorum_and_deadline(approval: ApprovalRule | None, now: datetime) -> dict[str, Any]:
    """What triage's snapshot keeps of the rule's quorum and deadline (nothing when nobody is asked)."""
    if approval is None:
        return {}
    timing = approval.timing
    deadline_at = now + timedelta(seconds=timing.deadline) if timing.deadline is not None else None
    return {
        "approvals_needed": timing.approvals_needed,
        "deadline_at": deadline_at,
        "at_deadline": timing.at_deadline if deadline_at is not None else None,
    }


def _addressed(address: str) -> User:
    """Someone known only by an address (`Carla <carla@x.example>`), as the emails name them."""
    name, email = parseaddr(address)
    return User(id="", nick=email.partition("@")[0], name=name, email=email)


def _readable_details(request: Any) -> RequestDetails | None:
    """Triage's snapshot of a request, or None (no request, not triaged, or another version's)."""
    try:
        return details_from_json(request.details if request is not None else None)
    except ValidationError:
        return None


def _accepted_by(answers: Sequence[ApprovalRecord]) -> tuple[str, ...]:
    """Who accepted (`Name <email>`), each once, in the order they did."""
    return tuple(dict.fromkeys(a.actor for a in answers if a.action == "accept"))


def _asked(emails: Sequence[NotificationRecord]) -> list[NotificationRecord]:
    """The approval emails of a request that did not fail (their recipients were asked)."""
    return [n for n in emails if n.kind == APPROVAL and n.status is not NotificationStatus.FAILED]


def _acted_on(tasks: Sequence[TaskRecord]) -> list[TaskRecord]:
    """The tasks the requester hears about: all but those rejected (Abiquo never held them so)."""
    return [t for t in tasks if t.decision is not DecisionState.REJECTED]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seconds(delay: float) -> str:
    """A retry's delay in words: "1 s", "45 s", "under a second"."""
    return f"{delay:.0f} s" if delay >= 0.5 else "under a second"


def _email_of(actor: str | None) -> str:
    """The address in an approver's `Name <email>` (what `approver_address` wrote), lower-cased."""
    return parseaddr(actor or "")[1].lower()


def _logged(task_ids: Iterable[str]) -> list[str]:
    """Task ids for a log line: the first `_LOGGED_IDS` of them (the line counts them all)."""
    return list(task_ids)[:_LOGGED_IDS]


class _NothingNew(Exception):
    """Raised to roll back a callback's request row when every one of its tasks was already stored."""


class _AlreadyQueued(Exception):
    """Raised to roll back a transaction whose job another transaction queued first."""


def _outcome(tasks: Sequence[TaskRecord]) -> str:
    """A digest of how each task of a request ended: what the requester's email reports."""
    ended = ",".join(
        f"{t.task_id}={t.decision.value}/{t.delivery}" for t in sorted(tasks, key=lambda t: t.task_id)
    )
    return hashlib.sha256(ended.encode()).hexdigest()[:16]


def _delivery_record(task: TaskRecord, outcome: DeliveryOutcome) -> tuple[DeliveryState, str, str | None]:
    """How to record Abiquo's answer: (delivery state, detail, task state Abiquo reported)."""
    if outcome.result is DeliveryResult.DONE:
        verb = "continued" if task.decision is DecisionState.ACCEPTED else "cancelled"
        return DeliveryState.DELIVERED, f"Abiquo {verb} the task", None
    now = outcome.now
    said = f"Abiquo answered {outcome.error_code or 'a refusal'}" + (
        f" ({outcome.message})" if outcome.message else ""
    )
    if now is not None and matches_decision(task, now):
        return DeliveryState.DELIVERED, f"{said}; the task already shows {now.state}", now.state
    if now is None or now.gone:
        return DeliveryState.SUPERSEDED, f"{said}; the task no longer exists in Abiquo", None
    return DeliveryState.SUPERSEDED, f"{said}; the task was already decided in Abiquo: {now.state}", now.state


def _triage_summary(
    verdict: AutoDecision | AskApprovers | None,
    ungated: Sequence[TaskRecord],
    problems: Sequence[str],
    approval: ApprovalRule | None = None,
) -> str:
    parts: list[str] = []
    if ungated:
        parts.append(f"{len(ungated)} task(s) accepted at once (type not gated)")
    if isinstance(verdict, AutoDecision):
        parts.append(f"{verdict.action} by {verdict.rule}: {verdict.reason}")
    elif isinstance(verdict, AskApprovers):
        parts.append("asked " + ", ".join(a.email or a.nick for a in verdict.approvers))
    if approval is not None and approval.timing.approvals_needed > 1:
        parts.append(f"{approval.timing.approvals_needed} approvals needed")
    if approval is not None and approval.timing.deadline is not None:
        parts.append(
            f"deadline in {duration_words(approval.timing.deadline)}, then {approval.timing.at_deadline}"
        )
    parts.extend(f"could not read: {p}" for p in problems)
    return "; ".join(parts)


async def retry_delivery(
    store: Store,
    task_id: str,
    *,
    max_attempts: int,
    channel: Channel = Channel.CLI,
    actor: str | None = None,
) -> TaskRecord | None:
    """Queue a failed delivery again (`abiquo-workflow tasks retry ID`, the dashboard's Retry); None if
    it had not failed. The audit line says who asked (`actor`, none for the CLI) and through `channel`.

    Only the store is needed: whichever process runs the worker (`serve` or `worker`) delivers it.
    """
    async with store.transaction() as tx:
        task = await tx.set_delivery(
            task_id,
            DeliveryState.QUEUED,
            detail="queued again by hand",
            expect=DeliveryState.FAILED,
            attempted=False,
        )
        if task is None:
            return None
        await enqueue(tx, Deliver(task_id), max_attempts=max_attempts)
        await tx.audit("retried", actor=actor, channel=channel, request_id=task.request_id, task_id=task_id)
    return task


async def retry_request_jobs(
    store: Store, request_id: str, *, channel: Channel = Channel.CLI, actor: str | None = None
) -> list[JobRecord]:
    """Queue again a request's dead jobs: a triage that never finished, emails that never went out.

    Part of `abiquo-workflow tasks retry ID` and of the dashboard's Retry (audited as `retry_delivery`).
    Each job gets a fresh set of attempts. Jobs this version
    cannot read are left dead: queued again, they would fail the same way.
    """
    dead = [
        record
        for record in await store.list_jobs(status=JobStatus.DEAD, limit=10_000)
        if _stalls_request(record, request_id)
    ]
    requeued: list[JobRecord] = []
    async with store.transaction() as tx:
        for job in dead:
            if await tx.requeue(job.id):
                requeued.append(job)
                await tx.audit(
                    "retried",
                    actor=actor,
                    channel=channel,
                    request_id=request_id,
                    detail=f"{job.kind} queued again",
                )
    return requeued
