"""What the rest of the connector hands the mail layer: one value per email to write.

These are inputs only. The approvals layer fills them from the store and the Abiquo client; `render`
turns them into `EmailMessage`s. Nothing here is cleaned, capped or escaped yet, and nothing should be
(the store keeps what Abiquo said): the renderer cleans each name with `display`, the templates escape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from abiquo_workflow.domain import DecidedBy, DecisionState, DeliveryState, RequestDetails, User


@dataclass(frozen=True, slots=True)
class ActionLinks:
    """The signed accept and decline links of one task, or of a set of tasks ("all")."""

    accept_url: str
    decline_url: str


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One approval email: what is asked, of whom, and the links that answer it.

    Parameters
    ----------
    details:
        The enriched request (requester, enterprise, VDC, datacenter, vApp, one `VmDetails` per task).
    approver:
        The person the email goes to; must have an email address.
    task_links:
        Links per task id. A task without links is shown without buttons.
    all_links:
        Links acting on every task at once; shown only when the request has several tasks.
    expires_at:
        When the links stop working, shown to the approver.
    request_id:
        Our id of the request, printed small at the bottom for support.
    reminder:
        The reminder's number (1, 2…) when this email is a reminder; None for the first email.
    approved_by:
        Who accepted already (`Name <email>`), under a rule that needs several approvals.
    """

    details: RequestDetails
    approver: User
    task_links: Mapping[str, ActionLinks] = field(default_factory=dict)
    all_links: ActionLinks | None = None
    expires_at: datetime | None = None
    request_id: str = ""
    reminder: int | None = None
    approved_by: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How one task of a request ended, as the requester is told.

    `actor` names the approver (display name or email) when `decided_by` is APPROVER. `reason` is a
    clause such as policy's "the requester holds the ENTERPRISE_ADMIN role", or an approver's comment.
    `abiquo_state` is what Abiquo showed when it reported the task already decided (SUPERSEDED).
    """

    task_id: str
    vm_name: str | None
    task_type: str
    decision: DecisionState
    decided_by: DecidedBy | None = None
    actor: str | None = None
    reason: str | None = None
    delivery: DeliveryState | None = None
    abiquo_state: str | None = None
    #: When it was decided (None while pending): the settled email and the 410 page say when.
    decided_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OutcomeNotice:
    """One outcome email to the requester, covering every task of the request."""

    details: RequestDetails
    requester: User
    results: Sequence[TaskResult]
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class SettledNotice:
    """One "settled" email: to an approver who was asked about the request but did not decide it, once
    every task of it is decided (`results`, the rejected ones left out)."""

    details: RequestDetails
    #: The address the email goes to: an approver the request's approval email went to.
    recipient: str
    results: Sequence[TaskResult]
    request_id: str = ""
