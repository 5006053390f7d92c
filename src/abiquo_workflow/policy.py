"""Pure rules: which tasks need approval, and who approves or what happens without anyone.

The rules run in this order (docs/design.md, README "Policy"):

1. A task whose type is not in `policy.task_types` is accepted at once.
2. A requester who holds `policy.approver_role` gets `policy.when_requester_is_approver`
   (accept, cancel, or ask the other approvers).
3. The approvers are the users of the VM's enterprise with `policy.approver_role` and an email address,
   the requester excluded (nobody approves their own request).
4. When there is none, `policy.when_no_approver` applies.

Nothing here does I/O: the approvals layer fetches the requester and the enterprise's users, then asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from abiquo_workflow.config import PolicySettings
from abiquo_workflow.domain import Action, DecidedBy, User


@dataclass(frozen=True, slots=True)
class AutoDecision:
    """Decide without asking anyone."""

    action: Action
    decided_by: DecidedBy
    #: The setting that made the decision, for the audit log and the requester's email.
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class AskApprovers:
    """Email each of these people; the first to decide a task decides it."""

    approvers: tuple[User, ...]


Verdict = AutoDecision | AskApprovers


def _action(word: str) -> Action:
    return Action.ACCEPT if word == "accept" else Action.DECLINE


def is_gated(task_type: str, settings: PolicySettings) -> bool:
    """True when a task of this type waits for a person (rule 1)."""
    return task_type.upper() in settings.task_types


def ungated_decision(task_type: str) -> AutoDecision:
    return AutoDecision(
        Action.ACCEPT,
        DecidedBy.POLICY,
        "policy.task_types",
        f"{task_type} tasks do not need approval",
    )


def holds_role(user: User | None, role: str) -> bool:
    return user is not None and user.role is not None and user.role.upper() == role.upper()


def approvers_among(
    users: Sequence[User], requester: User | None, settings: PolicySettings
) -> tuple[User, ...]:
    """Users with the approver role and an email, active, without the requester (rule 3)."""
    chosen: dict[str, User] = {}
    for user in users:
        if not holds_role(user, settings.approver_role) or not user.email or not user.active:
            continue
        if requester is not None and user.id == requester.id:
            continue
        chosen.setdefault(user.email.lower(), user)  # one email per address, even if listed twice
    return tuple(chosen.values())


def evaluate(requester: User | None, users: Sequence[User], settings: PolicySettings) -> Verdict:
    """Rules 2 to 4 for a gated request. `users` are the users of the VM's enterprise."""
    if holds_role(requester, settings.approver_role) and settings.when_requester_is_approver != "ask":
        word = settings.when_requester_is_approver
        return AutoDecision(
            _action(word),
            DecidedBy.POLICY,
            "policy.when_requester_is_approver",
            f"the requester holds the {settings.approver_role} role",
        )
    approvers = approvers_among(users, requester, settings)
    if approvers:
        return AskApprovers(approvers)
    return AutoDecision(
        _action(settings.when_no_approver),
        DecidedBy.NO_APPROVER,
        "policy.when_no_approver",
        f"nobody in the enterprise holds the {settings.approver_role} role with an email address",
    )
