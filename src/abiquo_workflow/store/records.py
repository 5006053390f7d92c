"""What the store hands back: frozen snapshots of rows, never live ORM objects or driver rows.

Every datetime is timezone-aware UTC. JSON columns come back as plain dicts and lists, except where a
field says tuple. A record's fields are its table's columns, by name: `from_row` builds any record from
a row by reading the fields' types, so adding a column to a record means adding the field, nothing more.
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from abiquo_workflow.domain import Channel, DecidedBy, DecisionState, DeliveryState, HeldTask, PayloadFormat

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class JobStatus(enum.StrEnum):
    """queued → running → done | dead; a failed run goes back to queued until its attempts run out."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


class NotificationStatus(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One callback from Abiquo, as received, plus what triage learned about it."""

    id: str
    received_at: datetime
    format: PayloadFormat
    single_root: bool
    content_type: str | None
    #: The remote address the callback came from.
    source: str | None
    body: str
    requester_id: str | None
    requester_href: str | None
    #: The enriched snapshot saved by triage (None until then).
    details: Mapping[str, Any] | None
    #: The approvers' email addresses chosen by triage (None until then).
    approvers: tuple[str, ...] | None
    triaged_at: datetime | None
    triage_error: str | None
    #: The enterprise's id as triage read it (the VM's, else the requester's); None until then.
    enterprise_id: str | None


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """One approver's answer on one task (`approvals`): an accept counts towards the quorum."""

    id: int
    task_id: str
    request_id: str
    #: The approver's email, lower-cased: what makes two answers the same person's.
    approver: str
    #: `Name <email>`, as the audit log writes it.
    actor: str
    #: `accept` or `decline`.
    action: str
    at: datetime
    channel: Channel | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A held task: what Abiquo sent, what we decided, and how the decision reached Abiquo."""

    task_id: str
    request_id: str
    #: The task's place in its callback (0 for the first).
    position: int
    task_type: str
    user_id: str | None
    owner_id: str | None
    #: The task's state as received (normally QUEUEING or PENDING).
    state: str | None
    target_href: str | None
    user_href: str | None
    self_href: str | None
    continue_href: str
    cancel_href: str
    vm_name: str | None
    created_at: datetime
    decision: DecisionState
    decided_by: DecidedBy | None
    #: Who decided: an approver's email, a policy rule's name, "deadline"…
    actor: str | None
    decided_at: datetime | None
    reason: str | None
    channel: Channel | None
    #: None while the task is pending; then queued → delivered | superseded | failed.
    delivery: DeliveryState | None
    #: What Abiquo answered, or the last error on the way.
    delivery_detail: str | None
    delivery_attempts: int
    delivered_at: datetime | None
    #: The task's state as Abiquo reported it when we read it back.
    abiquo_state: str | None
    #: When triage confirmed the task with Abiquo (its hrefs, type and requester are Abiquo's since).
    verified_at: datetime | None

    @classmethod
    def arrived(
        cls,
        task: HeldTask,
        *,
        request_id: str,
        position: int,
        created_at: datetime,
        vm_name: str | None = None,
        verified_at: datetime | None = None,
    ) -> TaskRecord:
        """`task` as the store holds it when its callback has just been stored: pending, undelivered."""
        return cls(
            task_id=task.task_id,
            request_id=request_id,
            position=position,
            task_type=task.task_type,
            user_id=task.user_id,
            owner_id=task.owner_id,
            state=task.state,
            target_href=task.target_href,
            user_href=task.user_href,
            self_href=task.self_href,
            continue_href=task.continue_href,
            cancel_href=task.cancel_href,
            vm_name=vm_name,
            created_at=created_at,
            decision=DecisionState.PENDING,
            decided_by=None,
            actor=None,
            decided_at=None,
            reason=None,
            channel=None,
            delivery=None,
            delivery_detail=None,
            delivery_attempts=0,
            delivered_at=None,
            abiquo_state=None,
            verified_at=verified_at,
        )


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    """One email we meant to send (to an approver or the requester) and how sending it went."""

    id: int
    request_id: str
    task_ids: tuple[str, ...] | None
    #: What the message is for, as the approvals layer names it ("approval", "outcome"…).
    kind: str
    recipient: str
    status: NotificationStatus
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the append-only audit log."""

    id: int
    at: datetime
    request_id: str | None
    task_id: str | None
    actor: str | None
    #: What happened: received, triaged, emailed, decided, delivered, superseded, delivery_failed, retried…
    action: str
    channel: Channel | None
    #: Why, or what exactly.
    detail: str | None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A unit of background work (the outbox). The store never interprets `kind` or `payload`."""

    id: int
    kind: str
    payload: Mapping[str, Any]
    status: JobStatus
    #: How many times the job has been claimed, this run included.
    attempts: int
    max_attempts: int
    #: Not claimed before this time.
    run_after: datetime
    #: The worker that claimed it last.
    locked_by: str | None
    #: While running: the end of the claim's lease. After that another worker may take the job over.
    locked_until: datetime | None
    last_error: str | None
    dedupe_key: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def exhausted(self) -> bool:
        """True when this was the last allowed attempt: on failure, bury the job rather than retry it."""
        return self.attempts >= self.max_attempts


_Record = TypeVar("_Record", bound="DataclassInstance")

#: Turns a column's value into the field's; None where the driver's value already is the field's.
_Convert = Callable[[Any], Any]


def from_row(record_type: type[_Record], row: Mapping[Any, Any]) -> _Record:
    """The record of `record_type` holding a row of its table (each field read from the column of its name).

    Values become the field's type where the database cannot hold it: enums from their text (None
    staying None where the field allows it), tuples from JSON lists.
    """
    return record_type(
        **{
            name: row[name] if convert is None else convert(row[name])
            for name, convert in _conversions(record_type)
        }
    )


@functools.cache
def _conversions(record_type: type[DataclassInstance]) -> tuple[tuple[str, _Convert | None], ...]:
    """Each field's name and conversion, worked out once per record type (rows are read on hot paths)."""
    hints = typing.get_type_hints(record_type)
    return tuple((field.name, _conversion(hints[field.name])) for field in fields(record_type))


def _conversion(hint: Any) -> _Convert | None:
    """How a column's value becomes a field of type `hint`: None when it needs nothing."""
    origin = typing.get_origin(hint)
    if origin is types.UnionType:  # `T | None`: the one union a field may be
        (present,) = (arg for arg in typing.get_args(hint) if arg is not types.NoneType)
        convert = _conversion(present)
        return None if convert is None else functools.partial(_unless_none, convert)
    if origin is tuple:
        return tuple
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    return None


def _unless_none(convert: _Convert, value: Any) -> Any:
    return None if value is None else convert(value)
