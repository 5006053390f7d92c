"""The use cases of the approval loop, composed from the store, the Abiquo client, the mailer and the links.

    receive   callback → request + tasks + a triage job, in one transaction (then 200 at once)
    triage    job: verify each task with Abiquo (verification.py; what Abiquo does not hold is rejected),
              enrich, apply the policy → automatic decision, or one approval email job per approver
    decide    a person (or the policy) decides → conditional pending→accepted|declined + a delivery job
    deliver   job: POST continue|cancel to Abiquo → delivered | superseded; retried until it gets through
    notify    job: once every task of a request has settled, one email to the requester; and once
              every task is decided, one "settled" email to each approver asked who did not decide

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
from email.utils import parseaddr
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError

from abiquo_workflow import display, metrics
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.config import Settings
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
    Deliver,
    Job,
    MalformedJob,
    NotifyRequester,
    NotifySettled,
    SendApproval,
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
    AskApprovers,
    AutoDecision,
    approval_rule,
    evaluate,
    is_gated,
    request_facts,
    ungated_decision,
)
from abiquo_workflow.store import Store
from abiquo_workflow.store.records import JobRecord, JobStatus, NotificationStatus, TaskRecord
from abiquo_workflow.store.store import UnitOfWork
from abiquo_workflow.verification import verify

log = structlog.stdlib.get_logger(__name__)

#: The kinds `tasks retry` names when it says what it queued again (task_commands.py).
SEND_APPROVAL = SendApproval.kind
NOTIFY_REQUESTER = NotifyRequester.kind
NOTIFY_SETTLED = NotifySettled.kind

#: The notification kind of the email telling the approvers who did not decide that a request is settled.
SETTLED = "settled"
#: At most this many task ids go into one log line (with the count of them all).
_LOGGED_IDS = 10

_details_json = TypeAdapter(RequestDetails)

#: Task states that show Abiquo went ahead with a task (after a continue), and that it dropped it.
_CONTINUED_STATES = frozenset({"PENDING", "STARTED", "FINISHED_SUCCESSFULLY", "FINISHED_UNSUCCESSFULLY"})
_CANCELLED_STATES = frozenset({"CANCELLED", "ABORTED"})


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
    wanted = _CONTINUED_STATES if task.decision is DecisionState.ACCEPTED else _CANCELLED_STATES
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
    ) -> None:
        self.settings = settings
        self.store = store
        self.abiquo = abiquo
        self.mailer = mailer
        self.signer = signer
        self.directory = directory

    def job_handlers(self) -> Mapping[str, Callable[[JobRecord], Awaitable[None]]]:
        """What the worker runs for each kind of job: the record read into its job, then its use case."""
        return {
            Triage.kind: runner(Triage, self.triage),
            SendApproval.kind: runner(SendApproval, self.send_approval),
            Deliver.kind: runner(Deliver, self.deliver),
            NotifyRequester.kind: runner(NotifyRequester, self.notify_requester),
            NotifySettled.kind: runner(NotifySettled, self.notify_settled),
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
        details = dataclasses.replace(enriched.details, policy_rule=evaluation.rule if evaluation else None)
        vm_names = {vm.task_id: vm.vm.name for vm in details.vms if vm.vm is not None}
        approvers = verdict.approvers if isinstance(verdict, AskApprovers) else ()
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
            summary = _triage_summary(verdict, ungated, enriched.problems)
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
            request_id, kind="approval", recipient=approver.email or "", task_ids=task_ids
        )
        await self._enqueue(tx, SendApproval(request_id, notification, approver, tuple(task_ids)))

    # --- approval emails ---------------------------------------------------------------------------

    async def send_approval(self, job: SendApproval) -> None:
        """Write and send one approver's email, with signed links per task and, for all of them, links
        to this email's task list (short, whatever the number of tasks)."""
        request_id, approver, task_ids = job.request_id, job.approver, job.task_ids
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
                self.signer.notice_url(job.notification_id, Action.ACCEPT, email),
                self.signer.notice_url(job.notification_id, Action.DECLINE, email),
            )
            if len(task_ids) > 1
            else None
        )
        shown = dataclasses.replace(details, vms=tuple(vm for vm in details.vms if vm.task_id in links))
        message = render_approval(
            ApprovalRequest(shown, approver, links, all_links, self.signer.expires_at(), request_id),
            self.settings.mail,
        )
        await self._send(
            job.notification_id, message, request_id=request_id, recipient=approver.email, kind="approval"
        )

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
        """
        reason = (reason or "").strip() or None
        async with self.store.transaction() as tx:
            decided = await tx.decide(
                task_ids,
                DecisionState.for_action(action),
                decided_by=decided_by,
                actor=actor,
                reason=reason,
                channel=channel,
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
        return Decided(tuple(decided), tuple(others), unknown)

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
        asked = [n for n in emails if n.kind == "approval" and n.status is not NotificationStatus.FAILED]
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
                case SendApproval() | NotifyRequester() | NotifySettled():
                    if job.notification_id is not None:
                        await tx.set_notification(job.notification_id, NotificationStatus.FAILED, error=error)
                    await tx.audit(
                        "email_failed", channel=Channel.EMAIL, request_id=job.request_id, detail=error
                    )
                case Triage():
                    await tx.audit(
                        "triage_failed", channel=Channel.SYSTEM, request_id=job.request_id, detail=error
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
        isinstance(job, Triage | SendApproval | NotifyRequester | NotifySettled)
        and job.request_id == request_id
    )


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
    verdict: AutoDecision | AskApprovers | None, ungated: Sequence[TaskRecord], problems: Sequence[str]
) -> str:
    parts: list[str] = []
    if ungated:
        parts.append(f"{len(ungated)} task(s) accepted at once (type not gated)")
    if isinstance(verdict, AutoDecision):
        parts.append(f"{verdict.action} by {verdict.rule}: {verdict.reason}")
    elif isinstance(verdict, AskApprovers):
        parts.append("asked " + ", ".join(a.email or a.nick for a in verdict.approvers))
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
