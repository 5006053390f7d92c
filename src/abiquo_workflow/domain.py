"""Plain values shared by every part of the connector.

Nothing here does I/O. The Abiquo layer (`abiquo/`) turns wire formats into these values, the store keeps
them, the policy reasons about them, and the mail and web layers show them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

#: The task types Abiquo's workflow feature holds (docs/protocol.md §3.5).
WORKFLOW_TASK_TYPES: tuple[str, ...] = ("DEPLOY", "UNDEPLOY", "RECONFIGURE")


class PayloadFormat(enum.StrEnum):
    """The dialect a callback body arrived in: XML (Abiquo 2.6) or JSON (3.x and later)."""

    XML = "xml"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Link:
    """One Abiquo link (`<link rel href type title/>` or `{"rel", "href", "type", "title"}`)."""

    rel: str
    href: str
    type: str | None = None
    title: str | None = None


@dataclass(frozen=True, slots=True)
class TaskJob:
    """One planned step of a held task (Abiquo calls it a job; the queue's jobs are `JobRecord`s).
    Informational only: decisions act on whole tasks."""

    id: str
    type: str
    description: str | None = None
    state: str | None = None


@dataclass(frozen=True, slots=True)
class HeldTask:
    """A task Abiquo holds until someone POSTs its `continue` or `cancel` link.

    Hrefs are kept exactly as received (often relative to the API root, docs/protocol.md §3.7); the
    Abiquo client resolves them against `abiquo.api_url` when it calls them.
    """

    task_id: str
    task_type: str
    user_id: str | None
    owner_id: str | None
    state: str | None
    continue_href: str
    cancel_href: str
    target_href: str | None = None
    user_href: str | None = None
    self_href: str | None = None
    timestamp: int | None = None
    creation_timestamp: int | None = None
    jobs: tuple[TaskJob, ...] = ()
    links: tuple[Link, ...] = ()


@dataclass(frozen=True, slots=True)
class Callback:
    """One POST from Abiquo: one or more held tasks (one per VM for a virtual appliance)."""

    tasks: tuple[HeldTask, ...]
    format: PayloadFormat
    #: True when the body's root was a single task (`<task>` / a task object), as for a reconfigure.
    single_root: bool = False


# --- What the Abiquo API tells us about the people and things involved -----------------------------


@dataclass(frozen=True, slots=True)
class User:
    """An Abiquo user. `role` is the role's name (for example ENTERPRISE_ADMIN); `email` may be empty."""

    id: str
    nick: str
    name: str = ""
    surname: str = ""
    email: str | None = None
    role: str | None = None
    enterprise_id: str | None = None
    enterprise_name: str | None = None
    href: str | None = None
    active: bool = True

    @property
    def display_name(self) -> str:
        """`Name Surname (nick)`, as the original tool showed requesters; falls back to the nick."""
        full = f"{self.name} {self.surname}".strip()
        return f"{full} ({self.nick})" if full else self.nick


@dataclass(frozen=True, slots=True)
class Enterprise:
    id: str
    name: str
    href: str | None = None
    users_href: str | None = None
    pendingtasks_href: str | None = None
    workflow: bool | None = None


@dataclass(frozen=True, slots=True)
class Disk:
    """A VM hard disk; `size_mb` comes from `sizeInMb` (lower-case b), or `hdInBytes` on 2.x."""

    id: str
    sequence: int
    size_mb: int
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Volume:
    """An attached volume; `size_mb` comes from `sizeInMB` (capital B)."""

    id: str
    name: str
    size_mb: int
    state: str | None = None


@dataclass(frozen=True, slots=True)
class VirtualMachine:
    id: str
    name: str
    cpu: int | None = None
    ram_mb: int | None = None
    state: str | None = None
    href: str | None = None
    enterprise_href: str | None = None
    enterprise_name: str | None = None
    vdc_href: str | None = None
    vdc_name: str | None = None
    vapp_href: str | None = None
    vapp_name: str | None = None
    harddisks_href: str | None = None
    volumes_href: str | None = None
    #: 2.x only: size of the primary disk in bytes.
    hd_in_bytes: int | None = None
    disks: tuple[Disk, ...] = ()
    volumes: tuple[Volume, ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualDatacenter:
    id: str
    name: str
    href: str | None = None
    #: The `location` (3.x) or `datacenter` (2.x) link of the VDC.
    datacenter_href: str | None = None
    datacenter_name: str | None = None


@dataclass(frozen=True, slots=True)
class Datacenter:
    id: str
    name: str
    location: str | None = None


@dataclass(frozen=True, slots=True)
class VirtualAppliance:
    id: str
    name: str
    href: str | None = None
    state: str | None = None


@dataclass(frozen=True, slots=True)
class AbiquoTaskState:
    """A task as Abiquo's API shows it, read with the connector's credentials.

    Read when a callback's task is verified before triage (only what Abiquo holds is acted on, with the
    type, requester, target and links given here) and when a refused continue or cancel is re-read.
    `gone` is True when Abiquo has no such task. Hrefs are as Abiquo wrote them (absolute).
    """

    task_id: str
    state: str | None
    task_type: str | None = None
    gone: bool = False
    user_id: str | None = None
    owner_id: str | None = None
    self_href: str | None = None
    target_href: str | None = None
    user_href: str | None = None
    continue_href: str | None = None
    cancel_href: str | None = None


class DeliveryResult(enum.StrEnum):
    """How Abiquo answered a continue or cancel."""

    #: Abiquo answered 2xx: the task continues (or is cancelled) now.
    DONE = "done"
    #: Abiquo says the task is gone (TASK-1 / 404) or no longer held (TASK-2 / 409 / 400).
    ALREADY_DECIDED_OR_GONE = "already_decided_or_gone"


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    result: DeliveryResult
    #: Present when the result is ALREADY_DECIDED_OR_GONE: the task as Abiquo shows it now.
    now: AbiquoTaskState | None = None
    #: Abiquo's error code and message, when it sent one (for example TASK-2).
    error_code: str | None = None
    message: str | None = None
    #: The HTTP status Abiquo answered the continue or cancel with (204, or the refusal's 409).
    status: int | None = None


# --- Our side: what we decide and deliver ------------------------------------------------------------


class Action(enum.StrEnum):
    """What an approver asks for. ACCEPT posts the task's `continue` link, DECLINE its `cancel` link."""

    ACCEPT = "accept"
    DECLINE = "decline"


class DecisionState(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    #: Abiquo does not hold the task as the callback described it (unknown id, not waiting for review,
    #: a callback mixing requesters): nothing is decided, nobody asked, nothing sent to Abiquo.
    REJECTED = "rejected"

    @classmethod
    def for_action(cls, action: Action) -> DecisionState:
        return cls.ACCEPTED if action is Action.ACCEPT else cls.DECLINED


class DecidedBy(enum.StrEnum):
    """Who or what made a decision (docs/design.md, "State of a task")."""

    APPROVER = "approver"
    POLICY = "policy"
    DEADLINE = "deadline"
    NO_APPROVER = "no_approver"
    EXTERNAL = "external"
    #: Our check of the callback against Abiquo's API (only for REJECTED tasks).
    VERIFICATION = "verification"


class DeliveryState(enum.StrEnum):
    """Where a decision stands on its way to Abiquo. Only exists once a task is decided."""

    QUEUED = "queued"
    DELIVERED = "delivered"
    SUPERSEDED = "superseded"
    FAILED = "failed"


class Channel(enum.StrEnum):
    """Where a decision or audit event came from."""

    EMAIL = "email"
    WEB = "web"
    #: A person signed in to the dashboard (web/dashboard.py).
    DASHBOARD = "dashboard"
    API = "api"
    CLI = "cli"
    POLICY = "policy"
    ABIQUO = "abiquo"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class VmDetails:
    """Everything an approver is shown about one VM of a request."""

    task_id: str
    task_type: str
    vm: VirtualMachine | None
    #: Set when the VM could not be read from Abiquo; the email still goes out without the details.
    error: str | None = None
    #: For a reconfigure: the same VM as an earlier request's triage read it from Abiquo (the latest
    #: such read, docs/protocol.md §7.11), to compare `vm` with; None when we never saw it before.
    last_seen: VirtualMachine | None = None
    #: When `last_seen` was read (that request's triage).
    last_seen_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RequestDetails:
    """The enriched picture of one callback, as shown in the approval and outcome emails."""

    requester: User | None
    enterprise: Enterprise | None
    vdc: VirtualDatacenter | None
    datacenter: Datacenter | None
    vapp: VirtualAppliance | None
    vms: tuple[VmDetails, ...] = field(default_factory=tuple)
    #: The `[[policy.rules]]` rule triage applied to the request, by name; None for the default rule
    #: (or a snapshot of a version without rules). The approver check at decision time reads it.
    policy_rule: str | None = None
    #: Distinct approvals that accept a task under that rule, as triage found it (a decline vetoes).
    approvals_needed: int = 1
    #: When the still-pending tasks are decided by `at_deadline` (None: no deadline, they wait).
    deadline_at: datetime | None = None
    #: `accept` or `cancel`: what the deadline decides.
    at_deadline: str | None = None
