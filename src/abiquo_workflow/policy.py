"""Pure rules: which tasks need approval, which policy rule applies to a request, and who approves it or
what happens without anyone.

For each request (one callback), in this order (docs/design.md, README "Policy"):

1. A task whose type is not in `policy.task_types` is accepted at once (`is_gated`).
2. The gated tasks' facts (`RequestFacts`: enterprise, datacenter, task types, number of VMs, total CPU,
   RAM and disk, the requester) are matched against `policy.rules` in order; the first rule whose
   conditions all hold applies. When none does, the default rule applies: the `policy.*` keys.
3. A rule with `decide` accepts or cancels at once, recorded as "policy: <rule name>".
4. Otherwise the rule says who approves (`ApprovalRule`, the default rule's values filling in the keys a
   rule leaves out). A requester who holds one of its roles, or whom it names, gets
   `when_requester_is_approver` (accept, cancel, or ask the other approvers).
5. The approvers are the users of the VM's enterprise with one of the rule's roles, active and with an
   email address, and the addresses the rule names; the requester excluded (nobody approves their own
   request). When there is none, `when_no_approver` applies.

`evaluate` returns the verdict with its explanation: the rule that applied and why each earlier rule did
not (`policy explain` prints it; the audit log and `requests.policy_rule` keep the rule's name, which the
decision-time approver check reads back with `approval_rule`).

Nothing here does I/O: the approvals layer fetches the requester, the VMs and the enterprise's users,
then asks.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from email.utils import parseaddr

from abiquo_workflow.config import PolicyRule, PolicySettings, Timing
from abiquo_workflow.domain import Action, DecidedBy, RequestDetails, User, VirtualMachine


@dataclass(frozen=True, slots=True)
class AutoDecision:
    """Decide without asking anyone."""

    action: Action
    decided_by: DecidedBy
    #: The setting that made the decision, for the audit log and the requester's email: a key of the
    #: default rule (`policy.when_no_approver`…) or `policy: <rule name>`.
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class AskApprovers:
    """Email each of these people; the first to decide a task decides it."""

    approvers: tuple[User, ...]


Verdict = AutoDecision | AskApprovers


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the rules' conditions look at: one request's gated tasks, as triage read them from Abiquo."""

    #: The types of the tasks, upper-case, each once.
    task_types: tuple[str, ...]
    #: How many VMs (one task each).
    vms: int
    #: Totals over the VMs; None when a VM's size could not be read (then no `max_*` condition holds).
    cpu: int | None
    ram_mb: int | None
    #: Hard disks and attached volumes together, in MB.
    disk_mb: int | None
    requester: User | None
    enterprise_id: str | None
    enterprise_name: str | None
    datacenter_id: str | None
    datacenter_name: str | None


def _disk_mb(vm: VirtualMachine) -> int:
    """A VM's disks and volumes in MB; on Abiquo 2.x only the primary disk is known (`hdInBytes`)."""
    disks = sum(disk.size_mb for disk in vm.disks)
    if not vm.disks and vm.hd_in_bytes is not None:
        disks = vm.hd_in_bytes // (1024 * 1024)
    return disks + sum(volume.size_mb for volume in vm.volumes)


def _total(values: Sequence[int | None], unknown: int) -> int | None:
    if unknown or any(value is None for value in values):
        return None
    return sum(value for value in values if value is not None)


def request_facts(details: RequestDetails, task_ids: Collection[str] | None = None) -> RequestFacts:
    """The facts of the tasks `task_ids` of a request (all of them when None), from triage's snapshot."""
    vms = [vm for vm in details.vms if task_ids is None or vm.task_id in task_ids]
    known = [vm.vm for vm in vms if vm.vm is not None]
    unknown = len(vms) - len(known)
    requester, enterprise, datacenter = details.requester, details.enterprise, details.datacenter
    return RequestFacts(
        task_types=tuple(dict.fromkeys(vm.task_type.upper() for vm in vms)),
        vms=len(vms),
        cpu=_total([vm.cpu for vm in known], unknown),
        ram_mb=_total([vm.ram_mb for vm in known], unknown),
        disk_mb=_total([_disk_mb(vm) for vm in known], unknown),
        requester=requester,
        enterprise_id=(enterprise.id if enterprise is not None and enterprise.id else None)
        or (requester.enterprise_id if requester is not None else None),
        enterprise_name=(enterprise.name if enterprise is not None and enterprise.name else None)
        or (requester.enterprise_name if requester is not None else None),
        datacenter_id=datacenter.id if datacenter is not None and datacenter.id else None,
        datacenter_name=(datacenter.name if datacenter is not None and datacenter.name else None)
        or (details.vdc.datacenter_name if details.vdc is not None else None),
    )


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """Who approves under one rule, with the default rule's values where the rule leaves a key out."""

    #: The rule's name; None for the default rule (the `policy.*` keys).
    name: str | None
    roles: tuple[str, ...]
    #: The addresses the rule names (`approvers`), as configured: `a@x.example` or `Ann <a@x.example>`.
    named: tuple[str, ...]
    when_requester_is_approver: str
    when_no_approver: str
    #: Quorum, deadline, reminders and escalation under the rule (config.Timing).
    timing: Timing

    def names(self, address: str) -> bool:
        """Whether the rule names `address` (`Name <email>` or a bare email) as an approver."""
        return _among(address, self.named)

    def escalates_to(self, address: str) -> bool:
        """Whether `address` is one of the rule's `escalate_to` addresses, who may decide once asked."""
        return _among(address, self.timing.escalate_to)

    def key(self, setting: str) -> str:
        """What a decision made by `setting` of this rule is recorded as (`AutoDecision.rule`)."""
        return f"policy.{setting}" if self.name is None else rule_key(self.name)

    @property
    def role_words(self) -> str:
        """`the ENTERPRISE_ADMIN role`, `the ENTERPRISE_ADMIN or VDC_APPROVER role`."""
        return f"the {' or '.join(self.roles)} role" if self.roles else "no role"


def _among(address: str, configured: Sequence[str]) -> bool:
    email = parseaddr(address)[1].strip().lower()
    return bool(email) and any(parseaddr(n)[1].lower() == email for n in configured)


def rule_key(name: str) -> str:
    """How a decision of a named rule is recorded (the actor in the audit log and `tasks list`)."""
    return f"policy: {name}"


def _approval_of(rule: PolicyRule | None, settings: PolicySettings) -> ApprovalRule:
    if rule is None:
        return ApprovalRule(
            None,
            (settings.approver_role,),
            (),
            settings.when_requester_is_approver,
            settings.when_no_approver,
            settings.timing(None),
        )
    return ApprovalRule(
        rule.name,
        (settings.approver_role,) if rule.approver_roles is None else rule.approver_roles,
        rule.approvers or (),
        rule.when_requester_is_approver or settings.when_requester_is_approver,
        rule.when_no_approver or settings.when_no_approver,
        settings.timing(rule),
    )


def approval_rule(settings: PolicySettings, name: str | None) -> ApprovalRule:
    """Who approves under the rule named `name` as configured now; the default rule when `name` is
    None (a request of the default rule, or triaged before rules existed), or names no rule that asks
    (renamed, removed, or made a `decide` rule since)."""
    rule = settings.rule_named(name)
    return _approval_of(rule if rule is not None and rule.decide is None else None, settings)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The verdict for a request, with why: the rule that applied and why each earlier one did not."""

    verdict: Verdict
    #: The name of the rule that applied; None for the default rule.
    rule: str | None
    #: One sentence per rule tried before it, in order: "rule 'small': 5 VMs is more than max_vms 3".
    skipped: tuple[str, ...]
    #: Who approves under that rule; None when the rule decides by itself (`decide`).
    approval: ApprovalRule | None

    @property
    def label(self) -> str:
        """`rule 'small'`, or `the default rule`."""
        return "the default rule" if self.rule is None else f"rule '{self.rule}'"


def _action(word: str) -> Action:
    return Action.ACCEPT if word == "accept" else Action.DECLINE


def is_gated(task_type: str, settings: PolicySettings) -> bool:
    """True when a task of this type waits for a person (step 1)."""
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


def _held_role(user: User | None, roles: Sequence[str]) -> str | None:
    return next((role for role in roles if holds_role(user, role)), None)


def approvers_among(users: Sequence[User], requester: User | None, roles: Sequence[str]) -> tuple[User, ...]:
    """Users with one of `roles` and an email, active, without the requester (step 5)."""
    chosen: dict[str, User] = {}
    for user in users:
        if _held_role(user, roles) is None or not user.email or not user.active:
            continue
        if requester is not None and user.id == requester.id:
            continue
        chosen.setdefault(user.email.lower(), user)  # one email per address, even if listed twice
    return tuple(chosen.values())


def _is_requester(requester: User | None, email: str) -> bool:
    return requester is not None and (requester.email or "").lower() == email


def approvers_for(users: Sequence[User], requester: User | None, approval: ApprovalRule) -> tuple[User, ...]:
    """Everyone a rule asks: its roles' users (step 5), then the addresses it names, each address once
    and never the requester's. A named address that is an Abiquo user of the enterprise is shown with
    their Abiquo name; any other is shown with the name the configuration gives it, if any."""
    chosen = {(u.email or "").lower(): u for u in approvers_among(users, requester, approval.roles)}
    for address in approval.named:
        name, email = parseaddr(address)
        key = email.lower()
        if key in chosen or _is_requester(requester, key):
            continue
        known = next((u for u in users if (u.email or "").lower() == key), None)
        if known is not None and requester is not None and known.id == requester.id:
            continue
        chosen[key] = known or User(id="", nick=email.partition("@")[0], name=name, email=email)
    return tuple(chosen.values())


def _suffix(approval: ApprovalRule) -> str:
    return "" if approval.name is None else f" (policy rule '{approval.name}')"


def _ask(requester: User | None, users: Sequence[User], approval: ApprovalRule) -> Verdict:
    """Steps 4 and 5 under one rule."""
    role = _held_role(requester, approval.roles)
    named = requester is not None and bool(requester.email) and approval.names(requester.email or "")
    if (role is not None or named) and approval.when_requester_is_approver != "ask":
        why = (
            f"the requester holds the {role} role"
            if role is not None
            else "the requester is one of the approvers the rule names"
        )
        return AutoDecision(
            _action(approval.when_requester_is_approver),
            DecidedBy.POLICY,
            approval.key("when_requester_is_approver"),
            why + _suffix(approval),
        )
    approvers = approvers_for(users, requester, approval)
    needed = approval.timing.approvals_needed
    if approvers and len(approvers) < needed:
        return AutoDecision(
            _action(approval.when_no_approver),
            DecidedBy.NO_APPROVER,
            approval.key("when_no_approver"),
            f"only {len(approvers)} approver(s) can be asked, and {needed} approvals are needed"
            + _suffix(approval),
        )
    if approvers:
        return AskApprovers(approvers)
    if not approval.named:
        why = f"nobody in the enterprise holds {approval.role_words} with an email address"
    elif not approval.roles:
        why = "the rule names no approver but the requester"
    else:
        why = (
            f"nobody in the enterprise holds {approval.role_words} with an email address, and the rule "
            "names no approver but the requester"
        )
    return AutoDecision(
        _action(approval.when_no_approver),
        DecidedBy.NO_APPROVER,
        approval.key("when_no_approver"),
        why + _suffix(approval),
    )


# --- matching a rule's conditions ------------------------------------------------------------------------


def _listed(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


def _one_of(values: Sequence[str], id_: str | None, name: str | None) -> bool:
    """Whether an enterprise or datacenter (`id_`, `name`) is one of `values` (ids, or names in any case)."""
    wanted = {value.casefold() for value in values}
    return (id_ is not None and id_.casefold() in wanted) or (name is not None and name.casefold() in wanted)


def _thing(kind: str, id_: str | None, name: str | None) -> str:
    if name and id_:
        return f'{kind} "{name}" (id {id_})'
    if name or id_:
        return f'{kind} "{name}"' if name else f"{kind} id {id_}"
    return f"the {kind} is unknown, so it"


def _vms(count: int) -> str:
    return f"{count:,} VM" if count == 1 else f"{count:,} VMs"


def _size(value: int, what: str, *, bare: bool = False) -> str:
    """`8 CPUs`, `14,336 MB of RAM`; with `bare`, the limit as written after its key: `4`, `4,096 MB`."""
    if what == "CPU":
        return f"{value:,}" if bare else f"{value:,} CPU" + ("" if value == 1 else "s")
    return f"{value:,} MB" if bare else f"{value:,} MB of {what}"


def _mismatch(rule: PolicyRule, facts: RequestFacts) -> str | None:
    """Why `rule` does not match (the first condition that fails, as a short sentence), or None.

    A condition on something Abiquo could not tell (an unknown enterprise, requester or VM size) does
    not hold: a rule that auto-accepts small requests must not accept one whose size is unknown.
    """
    if rule.enterprise is not None and not _one_of(
        rule.enterprise, facts.enterprise_id, facts.enterprise_name
    ):
        thing = _thing("enterprise", facts.enterprise_id, facts.enterprise_name)
        return f"{thing} is not in enterprise {_listed(rule.enterprise)}"
    if rule.datacenter is not None and not _one_of(
        rule.datacenter, facts.datacenter_id, facts.datacenter_name
    ):
        thing = _thing("datacenter", facts.datacenter_id, facts.datacenter_name)
        return f"{thing} is not in datacenter {_listed(rule.datacenter)}"
    if rule.task_types is not None:
        other = [t for t in facts.task_types if t not in rule.task_types]
        if other:
            return f"{', '.join(other)} is not in task_types {_listed(rule.task_types)}"
    if rule.requester_role is not None and _held_role(facts.requester, rule.requester_role) is None:
        role = facts.requester.role if facts.requester is not None else None
        shown = f"the requester's role {role}" if role else "the requester's role is unknown, so it"
        return f"{shown} is not in requester_role {_listed(rule.requester_role)}"
    if rule.vms is not None and facts.vms != rule.vms:
        return f"{_vms(facts.vms)} is not vms {rule.vms}"
    if rule.min_vms is not None and facts.vms < rule.min_vms:
        return f"{_vms(facts.vms)} is fewer than min_vms {rule.min_vms}"
    if rule.max_vms is not None and facts.vms > rule.max_vms:
        return f"{_vms(facts.vms)} is more than max_vms {rule.max_vms}"
    for key, limit, total, what in (
        ("max_cpu", rule.max_cpu, facts.cpu, "CPU"),
        ("max_ram", rule.max_ram, facts.ram_mb, "RAM"),
        ("max_disk", rule.max_disk, facts.disk_mb, "disk"),
    ):
        if limit is None:
            continue
        if total is None:
            return f"the size of a VM is unknown (Abiquo could not say), so {key} cannot hold"
        if total > limit:
            return f"{_size(total, what)} is more than {key} {_size(limit, what, bare=True)}"
    return None


def evaluate(facts: RequestFacts, users: Sequence[User], settings: PolicySettings) -> Evaluation:
    """Steps 2 to 5 for a request's gated tasks. `users` are the users of the VMs' enterprise."""
    skipped: list[str] = []
    for rule in settings.rules:
        why = _mismatch(rule, facts)
        if why is not None:
            skipped.append(f"rule '{rule.name}': {why}")
            continue
        if rule.decide is not None:
            decision = AutoDecision(
                _action(rule.decide),
                DecidedBy.POLICY,
                rule_key(rule.name),
                f"the request matches policy rule '{rule.name}'",
            )
            return Evaluation(decision, rule.name, tuple(skipped), None)
        approval = _approval_of(rule, settings)
        return Evaluation(_ask(facts.requester, users, approval), rule.name, tuple(skipped), approval)
    approval = _approval_of(None, settings)
    return Evaluation(_ask(facts.requester, users, approval), None, tuple(skipped), approval)
