"""What the store hands back: frozen snapshots of rows, never live ORM objects or driver rows.

Every datetime is timezone-aware UTC. JSON columns come back as plain dicts and lists.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from abiquo_workflow.domain import Channel, DecidedBy, DecisionState, DeliveryState, PayloadFormat


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


def _optional(enum_type: type[enum.StrEnum], value: str | None) -> Any:
    return None if value is None else enum_type(value)


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

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RequestRecord:
        approvers = row["approvers"]
        return cls(
            id=row["id"],
            received_at=row["received_at"],
            format=PayloadFormat(row["format"]),
            single_root=bool(row["single_root"]),
            content_type=row["content_type"],
            source=row["source"],
            body=row["body"],
            requester_id=row["requester_id"],
            requester_href=row["requester_href"],
            details=row["details"],
            approvers=None if approvers is None else tuple(approvers),
            triaged_at=row["triaged_at"],
            triage_error=row["triage_error"],
        )


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
    def from_row(cls, row: Mapping[Any, Any]) -> TaskRecord:
        return cls(
            task_id=row["task_id"],
            request_id=row["request_id"],
            position=row["position"],
            task_type=row["task_type"],
            user_id=row["user_id"],
            owner_id=row["owner_id"],
            state=row["state"],
            target_href=row["target_href"],
            user_href=row["user_href"],
            self_href=row["self_href"],
            continue_href=row["continue_href"],
            cancel_href=row["cancel_href"],
            vm_name=row["vm_name"],
            created_at=row["created_at"],
            decision=DecisionState(row["decision"]),
            decided_by=_optional(DecidedBy, row["decided_by"]),
            actor=row["actor"],
            decided_at=row["decided_at"],
            reason=row["reason"],
            channel=_optional(Channel, row["channel"]),
            delivery=_optional(DeliveryState, row["delivery"]),
            delivery_detail=row["delivery_detail"],
            delivery_attempts=row["delivery_attempts"],
            delivered_at=row["delivered_at"],
            abiquo_state=row["abiquo_state"],
            verified_at=row["verified_at"],
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

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> NotificationRecord:
        task_ids = row["task_ids"]
        return cls(
            id=row["id"],
            request_id=row["request_id"],
            task_ids=None if task_ids is None else tuple(task_ids),
            kind=row["kind"],
            recipient=row["recipient"],
            status=NotificationStatus(row["status"]),
            attempts=row["attempts"],
            last_error=row["last_error"],
            created_at=row["created_at"],
            sent_at=row["sent_at"],
        )


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

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AuditRecord:
        return cls(
            id=row["id"],
            at=row["at"],
            request_id=row["request_id"],
            task_id=row["task_id"],
            actor=row["actor"],
            action=row["action"],
            channel=_optional(Channel, row["channel"]),
            detail=row["detail"],
        )


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

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> JobRecord:
        return cls(
            id=row["id"],
            kind=row["kind"],
            payload=row["payload"],
            status=JobStatus(row["status"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            run_after=row["run_after"],
            locked_by=row["locked_by"],
            locked_until=row["locked_until"],
            last_error=row["last_error"],
            dedupe_key=row["dedupe_key"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
        )
