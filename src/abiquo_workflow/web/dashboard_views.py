"""What the dashboard's pages show: plain strings chosen from the listings' records.

As in views.py, templates escape everything and this module only picks words: every name that comes
from Abiquo (VMs, vApps, people, enterprises) and every reason or error is cleaned by `display`. The
list reads names from the triage snapshot as stored (a dict), without parsing all of it: a page of fifty
100-VM requests must not cost fifty parses of a hundred VMs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from abiquo_workflow import display
from abiquo_workflow.access import Role, Viewer
from abiquo_workflow.domain import DeliveryState
from abiquo_workflow.mail import words
from abiquo_workflow.store.listing import RequestState, RequestSummary
from abiquo_workflow.store.records import AuditRecord, NotificationRecord, NotificationStatus, TaskRecord
from abiquo_workflow.web.views import TaskRow

#: The lists' tabs: the state each shows ("" for all), and its label.
TABS: tuple[tuple[str, str], ...] = (
    ("pending", "Pending"),
    ("decided", "Decided"),
    ("failed", "Failed"),
    ("", "All"),
)

#: The task-type filter's choices (Abiquo's task types that can be held).
TASK_TYPES: tuple[tuple[str, str], ...] = (
    ("DEPLOY", "Deploy"),
    ("UNDEPLOY", "Undeploy"),
    ("RECONFIGURE", "Reconfigure"),
)

#: The age filter's choices: a key, its label, and (since, before) as ages from now.
AGES: tuple[tuple[str, str, timedelta | None, timedelta | None], ...] = (
    ("1h", "In the last hour", timedelta(hours=1), None),
    ("1d", "In the last day", timedelta(days=1), None),
    ("7d", "In the last 7 days", timedelta(days=7), None),
    ("over-1h", "More than an hour ago", None, timedelta(hours=1)),
    ("over-1d", "More than a day ago", None, timedelta(days=1)),
    ("over-7d", "More than 7 days ago", None, timedelta(days=7)),
)

_STATE_WORDS = {
    RequestState.PENDING: "Waiting for a decision",
    RequestState.DECIDED: "Decided",
    RequestState.FAILED: "Delivery failed",
}

#: What each role is called, and (for the list's first line) what it lets the person do.
_ROLE_NAMES = {Role.ADMIN: "administrator", Role.APPROVER: "approver", Role.REQUESTER: "requester"}
_ROLE_WORDS = {
    Role.ADMIN: "see and decide every request",
    Role.APPROVER: "see and decide your enterprise's requests",
    Role.REQUESTER: "see the requests you made, read-only: your enterprise's approvers decide them",
}

#: What each audit action is called on the timeline.
_ACTIONS = {
    "received": "Received from Abiquo",
    "verified": "Checked with Abiquo",
    "rejected": "Rejected: Abiquo does not hold it as the callback said",
    "triaged": "Triaged",
    "approved": "Approval counted",
    "reminded": "Reminder sent",
    "escalated": "Escalated",
    "emailed": "Email sent",
    "decided": "Decided",
    "settled": "Settled",
    "delivery_retry": "Delivery attempt failed, will retry",
    "delivered": "Delivered to Abiquo",
    "superseded": "Superseded in Abiquo",
    "delivery_failed": "Delivery failed",
    "email_failed": "Email failed",
    "triage_failed": "Triage failed",
    "retried": "Queued again",
    "requester_not_told": "Requester not told",
}

_NOTIFICATION_KINDS = {
    "approval": "Approval request",
    "reminder": "Reminder",
    "outcome": "Outcome, to the requester",
    "settled": "Settled, to an approver",
}


def role_name(viewer: Viewer) -> str:
    return _ROLE_NAMES[viewer.role]


def role_sentence(viewer: Viewer) -> str:
    """ "As an approver, you see and decide your enterprise's requests." """
    name = _ROLE_NAMES[viewer.role]
    article = "an" if name[0] in "aeiou" else "a"
    return f"As {article} {name}, you {_ROLE_WORDS[viewer.role]}."


_DELIVERY_WORDS = {
    DeliveryState.QUEUED: "Being passed on to Abiquo",
    DeliveryState.DELIVERED: "Passed on to Abiquo",
    DeliveryState.SUPERSEDED: "Decided otherwise in Abiquo",
    DeliveryState.FAILED: "Could not be passed on to Abiquo",
}


def with_delivery(rows: Sequence[TaskRow], tasks: Sequence[TaskRecord]) -> list[TaskRow]:
    """The task rows with what became of each decision's delivery to Abiquo (the dashboard shows it;
    the decision pages do not)."""
    by_id = {task.task_id: task for task in tasks}
    shown = []
    for row in rows:
        task = by_id.get(row.task_id)
        if task is None or task.delivery is None:
            shown.append(row)
            continue
        note = _DELIVERY_WORDS[task.delivery]
        if task.delivery is DeliveryState.FAILED and task.delivery_detail:
            note += f": {display.reason(task.delivery_detail)}"
        shown.append(replace(row, delivery=task.delivery.value, delivery_note=note))
    return shown


def age_bounds(key: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The (since, before) times of an age filter's key; (None, None) for an unknown or empty one."""
    for known, _label, since, before in AGES:
        if known == key:
            return (now - since if since else None, now - before if before else None)
    return None, None


def _snapshot_name(details: Mapping[str, Any] | None, *path: str) -> str | None:
    value: Any = details
    for step in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value if isinstance(value, str) and value else None


def requester_words(details: Mapping[str, Any] | None, nick: str | None, requester_id: str | None) -> str:
    """ "John Doe", from the snapshot's requester; else their nick or id; else "unknown"."""
    first = _snapshot_name(details, "requester", "name") or ""
    last = _snapshot_name(details, "requester", "surname") or ""
    full = f"{first} {last}".strip()
    return display.name(full or nick or (f"user #{requester_id}" if requester_id else None)) or words.UNKNOWN


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One row of a list of requests."""

    request_id: str
    title: str
    operation: str
    vm_count: str
    requester: str
    enterprise: str
    enterprise_id: str | None
    received: str
    state: str
    state_words: str
    #: "2 of 3 pending", "1 failed"; empty when it adds nothing to `state_words`.
    progress: str
    #: While pending under a deadline: "If undecided, cancelled on 6 Dec 2026, 13:49 UTC"; else empty.
    due: str = ""


def request_title(
    details: Mapping[str, Any] | None, vm_names: Sequence[str | None], tasks: int, request_id: str
) -> str:
    """What a request is about: its vApp's name for several VMs, else its VM's name."""
    vapp = _snapshot_name(details, "vapp", "name")
    if tasks > 1 and vapp:
        return display.name(vapp)
    named = next((name for name in vm_names if name), None)
    return display.name(named or vapp) or f"request {display.name(request_id)}"


def summary_row(summary: RequestSummary) -> RequestRow:
    request = summary.request
    progress = ""
    if summary.state is RequestState.PENDING and summary.pending != summary.tasks:
        progress = f"{summary.pending} of {summary.tasks} pending"
    elif summary.state is RequestState.FAILED:
        progress = f"{summary.failed} of {summary.tasks} failed"
    return RequestRow(
        request_id=request.id,
        title=request_title(request.details, summary.vm_names, summary.tasks, request.id),
        operation=words.task_words(summary.task_types),
        vm_count=words.counted(summary.tasks, "VM"),
        requester=requester_words(request.details, summary.requester_nick, request.requester_id),
        enterprise=display.name(summary.enterprise_name) or words.UNKNOWN,
        enterprise_id=summary.enterprise_id,
        received=words.moment_words(request.received_at),
        state=summary.state.value,
        state_words=_STATE_WORDS[summary.state],
        progress=progress,
        due=_due(request.details) if summary.state is RequestState.PENDING else "",
    )


def _due(details: Mapping[str, Any] | None) -> str:
    """The deadline from the stored snapshot as it is (a dict: see the module docstring), in words."""
    stamp = details.get("deadline_at") if details else None
    try:
        deadline = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        return ""
    if deadline is None:
        return ""
    outcome = "accepted" if details and details.get("at_deadline") == "accept" else "cancelled"
    return f"If undecided, {outcome} on {words.moment_words(deadline)}"


def state_words(state: RequestState) -> str:
    return _STATE_WORDS[state]


@dataclass(frozen=True, slots=True)
class TimelineRow:
    at: str
    what: str
    who: str
    channel: str
    #: The task the line is about (None for the request's own lines).
    task_id: str | None
    detail: str


def timeline_rows(audit: Sequence[AuditRecord]) -> list[TimelineRow]:
    return [
        TimelineRow(
            at=words.moment_words(entry.at),
            what=_ACTIONS.get(entry.action, display.name(entry.action)),
            who=display.name(entry.actor),
            channel=str(entry.channel) if entry.channel else "",
            task_id=display.name(entry.task_id) or None,
            detail=display.reason(entry.detail),
        )
        for entry in audit
    ]


@dataclass(frozen=True, slots=True)
class NotificationRow:
    kind: str
    recipient: str
    status: str
    status_words: str
    detail: str


def notification_rows(notifications: Sequence[NotificationRecord]) -> list[NotificationRow]:
    rows = []
    for notice in notifications:
        if notice.status is NotificationStatus.SENT and notice.sent_at is not None:
            said = f"Sent {words.moment_words(notice.sent_at)}"
        elif notice.status is NotificationStatus.FAILED:
            said = "Failed" + (
                f" after {words.counted(notice.attempts, 'attempt')}" if notice.attempts else ""
            )
        else:
            said = f"{notice.status.value.capitalize()}"
        rows.append(
            NotificationRow(
                kind=_NOTIFICATION_KINDS.get(notice.kind, display.name(notice.kind)),
                recipient=display.address(notice.recipient),
                status=notice.status.value,
                status_words=said,
                detail=display.reason(notice.last_error)
                if notice.status is NotificationStatus.FAILED
                else "",
            )
        )
    return rows
