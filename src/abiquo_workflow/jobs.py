"""The jobs of the approval loop as typed values: what each kind carries, its dedupe key, its priority.

A job goes into the queue as its kind, a JSON payload, a dedupe key and a priority (`to_queue`, which
`enqueue` uses), and comes back out of the stored record (`read`, `from_record`). Only this module
knows how a payload is laid out, so the code that queues a job and the code that runs it cannot come to
disagree about it. A stored payload this version cannot read raises `MalformedJob`, which is not
temporary: the worker buries the job at once instead of failing the same way for a quarter of an hour.

Priorities, most urgent first (the queue ages them, so none waits for ever; see `store/queue.py`):

    0  deliver           a decision: an approver has pressed the button and waits to see it in Abiquo
    1  send_approval     an approver waiting to be asked about a request that has been triaged
    2  triage            a new request: finishing the requests already started gets their emails out
                         sooner than starting more of them would
    3  notify_requester  the outcome, which the requester can already see in Abiquo
    3  notify_settled    telling the approvers who did not decide that nothing is left for them to do
    4  reconcile         comparing Abiquo's pending tasks with ours (reconcile.py): a background check
                         that runs every few minutes, so whatever people wait for goes first

The timers of a request's rule (README "Rules") are jobs too, queued by triage with the time they fall
due (`due`, the queue's `run_after`), so they live in the database: they survive restarts, are claimed by
one worker of any number, and one due while every process was down runs when a worker starts again:

    0  deadline          decide the still-pending tasks with `at_deadline`
    1  remind            queue a reminder to each approver who has not answered yet
    1  escalate          ask the rule's `escalate_to` addresses
    1  send_reminder     email one reminder
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, TypeAlias, TypeVar

from pydantic import TypeAdapter, ValidationError

from abiquo_workflow.domain import User
from abiquo_workflow.exceptions import AbiquoWorkflowError
from abiquo_workflow.store import JobRecord, UnitOfWork


class Priority(enum.IntEnum):
    """The order in which due jobs are claimed: lower first (then by how long they have waited)."""

    DELIVERY = 0
    APPROVAL_EMAIL = 1
    TRIAGE = 2
    REQUESTER_EMAIL = 3
    RECONCILE = 4


class MalformedJob(AbiquoWorkflowError):
    """A stored job this version cannot read: an unknown kind, or a payload without the fields its kind
    needs. Not temporary: reading it again fails the same way."""


@dataclass(frozen=True, slots=True)
class Triage:
    """Verify a request's tasks with Abiquo, read what approvers are shown, apply the policy."""

    kind: ClassVar[str] = "triage"
    priority: ClassVar[Priority] = Priority.TRIAGE

    request_id: str

    @property
    def dedupe_key(self) -> str:
        """One triage per request."""
        return f"triage:{self.request_id}"


@dataclass(frozen=True, slots=True)
class SendApproval:
    """Email one approver the request's tasks (`task_ids`), with links signed for them."""

    kind: ClassVar[str] = "send_approval"
    priority: ClassVar[Priority] = Priority.APPROVAL_EMAIL

    request_id: str
    notification_id: int
    approver: User
    task_ids: tuple[str, ...]

    @property
    def dedupe_key(self) -> str:
        """One email per approver and request, whatever case Abiquo writes the address in."""
        return f"approval:{self.request_id}:{(self.approver.email or '').lower()}"


@dataclass(frozen=True, slots=True)
class Deliver:
    """POST a decided task's continue or cancel to Abiquo."""

    kind: ClassVar[str] = "deliver"
    priority: ClassVar[Priority] = Priority.DELIVERY

    task_id: str

    @property
    def dedupe_key(self) -> None:
        """None: a task is decided once, and a failed delivery queued again by hand is a new job."""
        return None


@dataclass(frozen=True, slots=True)
class NotifyRequester:
    """Email the requester how each task of the request ended (`notification_id` None: no address)."""

    kind: ClassVar[str] = "notify_requester"
    priority: ClassVar[Priority] = Priority.REQUESTER_EMAIL

    request_id: str
    notification_id: int | None
    #: A digest of how each task ended: the outcome this email reports.
    outcome: str

    @property
    def dedupe_key(self) -> str:
        """One email per request and outcome: every delivery that settles the request's last task
        tries to queue it, and one gets through. An outcome that changes later is reported again."""
        return f"outcome:{self.request_id}:{self.outcome}"


@dataclass(frozen=True, slots=True)
class NotifySettled:
    """Email one approver who was asked about a request, and did not decide it, that every task of it
    is decided: who settled it, when, and how (`recipient` is their address)."""

    kind: ClassVar[str] = "notify_settled"
    priority: ClassVar[Priority] = Priority.REQUESTER_EMAIL

    request_id: str
    notification_id: int
    recipient: str

    @property
    def dedupe_key(self) -> str:
        """One email per request and approver, whatever case the address is in: every delivery that
        finds the request decided tries to queue it, and one gets through."""
        return f"settled:{self.request_id}:{self.recipient.lower()}"


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Compare every workflow-enabled enterprise's pending tasks in Abiquo with ours (reconcile.py).

    One run at a time, chained through the database: each run queues the next (`after` = its own job
    id) for `reconcile.interval` later, and a process starting queues one only when none is waiting.
    """

    kind: ClassVar[str] = "reconcile"
    priority: ClassVar[Priority] = Priority.RECONCILE

    #: The id of the reconcile job this one follows (0 for the first ever).
    after: int

    @property
    def dedupe_key(self) -> str:
        """One follower per run: a run repeated after a crash, or two processes starting at once, queue
        the same job, and one gets through."""
        return f"reconcile:after:{self.after}"


@dataclass(frozen=True, slots=True)
class Deadline:
    """At `due`, decide the request's still-pending tasks as its rule's `at_deadline` says."""

    kind: ClassVar[str] = "deadline"
    priority: ClassVar[Priority] = Priority.DELIVERY

    request_id: str
    due: datetime

    @property
    def dedupe_key(self) -> str:
        """One deadline per request."""
        return f"deadline:{self.request_id}"


@dataclass(frozen=True, slots=True)
class Remind:
    """At `due`, remind each approver asked about the request who has not answered (reminder `number`,
    counting from 1)."""

    kind: ClassVar[str] = "remind"
    priority: ClassVar[Priority] = Priority.APPROVAL_EMAIL

    request_id: str
    number: int
    due: datetime

    @property
    def dedupe_key(self) -> str:
        """Each reminder of a request once."""
        return f"remind:{self.request_id}:{self.number}"


@dataclass(frozen=True, slots=True)
class Escalate:
    """At `due`, ask the rule's `escalate_to` addresses about the request's still-pending tasks."""

    kind: ClassVar[str] = "escalate"
    priority: ClassVar[Priority] = Priority.APPROVAL_EMAIL

    request_id: str
    due: datetime

    @property
    def dedupe_key(self) -> str:
        """One escalation per request."""
        return f"escalate:{self.request_id}"


@dataclass(frozen=True, slots=True)
class SendReminder:
    """Email one approver reminder `number` about the tasks (`task_ids`) they have not answered."""

    kind: ClassVar[str] = "send_reminder"
    priority: ClassVar[Priority] = Priority.APPROVAL_EMAIL

    request_id: str
    notification_id: int
    approver: User
    task_ids: tuple[str, ...]
    number: int

    @property
    def dedupe_key(self) -> str:
        """Each reminder once per approver and request."""
        return f"reminder:{self.request_id}:{self.number}:{(self.approver.email or '').lower()}"


Job: TypeAlias = (
    Triage
    | SendApproval
    | Deliver
    | NotifyRequester
    | NotifySettled
    | Reconcile
    | Deadline
    | Remind
    | Escalate
    | SendReminder
)
AnyJob = TypeVar("AnyJob", bound=Job)
#: The jobs that fall due at a time of their own (`due`) rather than at once.
TIMERS: Final = (Deadline, Remind, Escalate)

_TYPES: Final[Mapping[str, type[Job]]] = {
    job_type.kind: job_type
    for job_type in (
        Triage,
        SendApproval,
        Deliver,
        NotifyRequester,
        NotifySettled,
        Reconcile,
        Deadline,
        Remind,
        Escalate,
        SendReminder,
    )
}
_ADAPTERS: Final[Mapping[str, TypeAdapter[Any]]] = {kind: TypeAdapter(t) for kind, t in _TYPES.items()}


@dataclass(frozen=True, slots=True)
class Queued:
    """A job as the queue stores it (`UnitOfWork.enqueue`'s arguments)."""

    kind: str
    payload: Mapping[str, Any]
    dedupe_key: str | None
    priority: int
    #: When it falls due; None: at once.
    run_after: datetime | None = None


def to_queue(job: Job) -> Queued:
    """The job as the queue stores it: its kind, its fields as JSON, its dedupe key, priority and, for
    a timer, when it falls due."""
    payload = _ADAPTERS[job.kind].dump_python(job, mode="json")
    due = job.due if isinstance(job, Deadline | Remind | Escalate) else None
    return Queued(job.kind, payload, job.dedupe_key, int(job.priority), due)


async def enqueue(
    tx: UnitOfWork, job: Job, *, max_attempts: int, run_after: datetime | None = None
) -> int | None:
    """Queue `job` in the transaction `tx`, due at `run_after` (now if None); its id, or None when its
    dedupe key was taken already."""
    queued = to_queue(job)
    return await tx.enqueue(
        queued.kind,
        queued.payload,
        run_after=run_after if run_after is not None else queued.run_after,
        dedupe_key=queued.dedupe_key,
        priority=queued.priority,
        max_attempts=max_attempts,
    )


def read(job_type: type[AnyJob], record: JobRecord) -> AnyJob:
    """The job a stored record holds, which must be of `job_type`; `MalformedJob` when it is not one."""
    if record.kind != job_type.kind:
        raise MalformedJob(f"job {record.id} is a {record.kind!r} job, not a {job_type.kind!r} job")
    payload = record.payload
    if job_type is NotifyRequester and "outcome" not in payload and record.dedupe_key:
        # Queued by 0.2 (before the upgrade, or by a 0.2 process during a rolling one), whose payload
        # did not carry the outcome; its dedupe key, `outcome:<request>:<outcome>`, does.
        payload = {**payload, "outcome": record.dedupe_key.rpartition(":")[2]}
    try:
        job: AnyJob = _ADAPTERS[record.kind].validate_python(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc'])) or 'payload'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise MalformedJob(
            f"job {record.id} ({record.kind}) holds a payload this version cannot read: {problems}"
        ) from error
    return job


def from_record(record: JobRecord) -> Job:
    """The job a stored record holds, whatever its kind; `MalformedJob` for a kind nothing runs."""
    job_type = _TYPES.get(record.kind)
    if job_type is None:
        raise MalformedJob(f"job {record.id} is of kind {record.kind!r}, which this version does not run")
    return read(job_type, record)


def runner(
    job_type: type[AnyJob], use_case: Callable[[AnyJob], Awaitable[None]]
) -> Callable[[JobRecord], Awaitable[None]]:
    """What the worker runs for jobs of `job_type`: the record read into its job, then `use_case`."""

    async def run(record: JobRecord) -> None:
        await use_case(read(job_type, record))

    return run
