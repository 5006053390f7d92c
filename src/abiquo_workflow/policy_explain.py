"""`abiquo-workflow policy explain`: which policy rule a request meets, why each earlier rule does not,
and who would be asked or what would be decided, as lines of text. It decides, stores and sends nothing.

The request is a stored one (named by one of its tasks: the id or a unique prefix, as `tasks show`
takes) or a callback body in a file, as Abiquo posts it (XML or JSON, read by the connector's own
parser). Either way the reads are those of triage, done against the configured Abiquo with the
connector's credentials (the simulator in tests):

1. Each task is read back from Abiquo (verification.py). A task Abiquo does not hold as described is
   one triage would reject, and the output says so; the policy is then explained for the tasks as the
   callback (or the store) describes them, with links outside `abiquo.api_url` left unread.
2. The requester, VMs, VDC, datacenter, enterprise and its users are read (enrichment.py).
3. The policy (policy.py) is evaluated on those facts, under the rules configured now.

For a stored request it says too how its tasks were decided and which rule triage applied then.
The store, when needed, is only read: nothing is written, no job is queued, no email is sent, and
Abiquo is only read (no continue or cancel).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from abiquo_workflow import display
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.abiquo.payload import parse_callback
from abiquo_workflow.approvals import details_from_json
from abiquo_workflow.config import Settings, Timing, duration_words
from abiquo_workflow.domain import Action, HeldTask, User
from abiquo_workflow.enrichment import enrich
from abiquo_workflow.exceptions import AbiquoWorkflowError, PayloadError
from abiquo_workflow.policy import (
    AskApprovers,
    AutoDecision,
    Evaluation,
    RequestFacts,
    evaluate,
    is_gated,
    request_facts,
)
from abiquo_workflow.runtime import sqlite_file
from abiquo_workflow.store import Store, utc_now
from abiquo_workflow.store.records import RequestRecord, TaskRecord
from abiquo_workflow.store.urls import display_url
from abiquo_workflow.task_commands import find_task
from abiquo_workflow.verification import verify

#: The request id shown for a callback read from a file (it is never stored).
_FROM_FILE = "(from the file)"
#: The closing line: what `policy explain` never does.
NOTHING_DONE = "Nothing was decided, stored or sent."

_CONTENT_TYPES = {".xml": "application/xml", ".json": "application/json"}


async def explain_payload(settings: Settings, path: Path) -> list[str]:
    """Explain the policy for a callback body in `path` (`--payload FILE`), without a database."""
    try:
        body = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise AbiquoWorkflowError(f"{path}: cannot read the payload file ({exc.strerror})") from None
    try:
        callback = parse_callback(
            body,
            _CONTENT_TYPES.get(path.suffix.lower()),
            max_bytes=settings.server.max_body,
            max_tasks=settings.server.max_tasks,
        )
    except PayloadError as exc:
        raise AbiquoWorkflowError(f"{path}: not a callback the connector would take: {exc}") from None
    tasks = [_unstored(task, position) for position, task in enumerate(callback.tasks)]
    head = [f"Callback in {path}: {_count(len(tasks), 'task')} ({callback.format.value.upper()})"]
    async with AbiquoClient(settings.abiquo) as client:
        return head + await _explain(settings, client, tasks)


async def explain_task(settings: Settings, given: str) -> list[str]:
    """Explain the policy for the stored request of the task `given` names (its id or a unique prefix)."""
    async with await _open_existing(settings) as store:
        task = await find_task(store, given)
        request = await store.get_request(task.request_id)
        tasks = await store.tasks_of_request(task.request_id)
    head = _stored_head(request, tasks)
    async with AbiquoClient(settings.abiquo) as client:
        return head + await _explain(settings, client, tasks)


async def _open_existing(settings: Settings) -> Store:
    """The configured database, opened to read; never created or migrated."""
    url = settings.database.url
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise AbiquoWorkflowError(f"there is no database at {display_url(url)} (check database.url)")
    return await Store.open(url, migrate=False, busy_timeout=settings.database.busy_timeout)


def _unstored(task: HeldTask, position: int) -> TaskRecord:
    """A callback's task as the store would hold it on arrival: pending, unverified."""
    return TaskRecord.arrived(task, request_id=_FROM_FILE, position=position, created_at=utc_now())


def _stored_head(request: RequestRecord | None, tasks: Sequence[TaskRecord]) -> list[str]:
    """What the store says of the request: when it came, how each task was decided, the rule then."""
    first = tasks[0]
    lines = [
        f"Request {first.request_id}, received {first.created_at:%Y-%m-%d %H:%M:%S} UTC: "
        f"{_count(len(tasks), 'task')}"
    ]
    for task in tasks:
        decided = task.decision.value
        if task.decided_by is not None:
            decided += f" by {display.name(task.actor) or task.decided_by.value} ({task.decided_by.value})"
        vm = display.name(task.vm_name) or "an unknown VM"
        lines.append(f"  {display.clean(task.task_id, 64)} {display.name(task.task_type)} on {vm}: {decided}")
    if request is not None and request.triaged_at is not None:
        try:
            details = details_from_json(request.details)
        except ValueError:
            details = None
        if details is not None:
            rule = "the default rule" if details.policy_rule is None else f"rule '{details.policy_rule}'"
            lines.append(f"Triage on {request.triaged_at:%Y-%m-%d %H:%M:%S} UTC applied {rule}.")
    lines.append("The policy as configured now, with what Abiquo shows now:")
    return lines


def _as_abiquo_shows(task: TaskRecord, held: HeldTask | None, client: AbiquoClient) -> TaskRecord:
    """The task to explain the policy for: as Abiquo shows it when it holds it (what triage would act
    on), else as described, with links outside the Abiquo API dropped (never followed)."""
    if held is not None:
        return dataclasses.replace(
            task,
            task_type=held.task_type,
            user_id=held.user_id,
            owner_id=held.owner_id,
            state=held.state,
            self_href=held.self_href,
            target_href=held.target_href,
            user_href=held.user_href,
        )

    def inside(href: str | None) -> str | None:
        return href if href and client.is_api_url(client.resolve(href)) else None

    return dataclasses.replace(task, target_href=inside(task.target_href), user_href=inside(task.user_href))


async def _explain(settings: Settings, client: AbiquoClient, tasks: Sequence[TaskRecord]) -> list[str]:
    lines: list[str] = []
    outcome = await verify(client, tasks)
    held = {task.task_id: task for task in outcome.confirmed}
    if not outcome.rejected:
        lines.append(f"Abiquo holds {_every(len(tasks))} for review as described.")
    for rejection in outcome.rejected:
        lines.append(
            f"Task {display.clean(rejection.task_id, 64)}: triage would reject it: "
            f"{display.reason(rejection.reason)}."
        )
    if not held:
        lines.append(
            "Triage would reject the whole request: nobody would be asked and nothing decided. Below, the "
            "policy for its tasks as described, read from Abiquo where it can be."
        )
    seen = [_as_abiquo_shows(task, held.get(task.task_id), client) for task in tasks]
    gated = [task for task in seen if is_gated(task.task_type, settings.policy)]
    enriched = await enrich(client, seen, with_users=bool(gated))
    facts = request_facts(enriched.details, {task.task_id for task in gated})
    lines.extend(_fact_lines(facts))
    ungated = [task for task in seen if task not in gated]
    if ungated:
        types = ", ".join(dict.fromkeys(display.name(task.task_type) for task in ungated))
        lines.append(
            f"Not gated (policy.task_types): {_count(len(ungated), 'task')} ({types}) would be continued "
            "at once, asking nobody."
        )
    lines.extend(f"Could not read: {display.reason(problem)}" for problem in enriched.problems)
    if not gated:
        lines.append("No rule is tried: none of the tasks needs approval.")
    else:
        lines.extend(_evaluation_lines(evaluate(facts, enriched.enterprise_users, settings.policy), settings))
    lines.append(NOTHING_DONE)
    return lines


def _fact_lines(facts: RequestFacts) -> list[str]:
    requester = facts.requester
    who = (
        f"{display.name(requester.display_name)}, role {display.name(requester.role) or 'unknown'}"
        if requester is not None
        else "unknown"
    )
    return [
        f"Requester: {who}",
        f"Enterprise: {_named(facts.enterprise_name, facts.enterprise_id)}; "
        f"datacenter: {_named(facts.datacenter_name, facts.datacenter_id)}",
        f"Gated tasks: {', '.join(facts.task_types) or 'none'}; {_count(facts.vms, 'VM')}, {_sizes(facts)}",
    ]


def _evaluation_lines(evaluation: Evaluation, settings: Settings) -> list[str]:
    lines = ["Rules, in order:" if settings.policy.rules else "Rules: none configured (policy.rules)."]
    lines.extend(f"  {display.reason(sentence)}" for sentence in evaluation.skipped)
    if evaluation.rule is not None:
        lines.append(f"  {evaluation.label}: matches")
        lines.append(f"Applies: {evaluation.label}.")
    else:
        if settings.policy.rules:
            lines.append("  (none matches)")
        lines.append(
            "Applies: the default rule (policy.approver_role, policy.when_requester_is_approver, "
            "policy.when_no_approver)."
        )
    approval = evaluation.approval
    if approval is not None:
        named = ", ".join(display.address(address) for address in approval.named) or "none"
        lines.append(
            f"Approvers under it: users of the enterprise with {approval.role_words}, and the addresses "
            f"it names: {named}; when the requester is one: {approval.when_requester_is_approver}; "
            f"when there is none: {approval.when_no_approver}."
        )
        lines.extend(_timing_lines(approval.timing))
    verdict = evaluation.verdict
    if isinstance(verdict, AskApprovers):
        needed = approval.timing.approvals_needed if approval is not None else 1
        how = (
            "the first to decide a task decides it"
            if needed == 1
            else f"{needed} distinct accepts decide a task, and one decline cancels it"
        )
        lines.append(f"Would ask {_count(len(verdict.approvers), 'approver')} (one email each; {how}):")
        lines.extend(f"  {_approver(user, evaluation)}" for user in verdict.approvers)
    elif isinstance(verdict, AutoDecision):
        word = "accept" if verdict.action is Action.ACCEPT else "cancel"
        lines.append(
            f"Would {word} at once, asking nobody (recorded as decided by {verdict.decided_by.value}, "
            f"{verdict.rule!r}): {display.reason(verdict.reason)}."
        )
    return lines


def _timing_lines(timing: Timing) -> list[str]:
    """The rule's quorum, deadline and its action, reminders and escalation, one line each."""
    outcome = "accepted" if timing.at_deadline == "accept" else "cancelled"
    deadline = (
        f"Deadline: {duration_words(timing.deadline)} after triage; then what is still pending is "
        f"{outcome} (at_deadline = {timing.at_deadline})."
        if timing.deadline is not None
        else "Deadline: none; a request waits for its approvers for as long as it takes."
    )
    reminders = (
        "Reminders: " + ", ".join(duration_words(r) for r in timing.reminders) + " after the approval email, "
        "each once to every approver who has not answered."
        if timing.reminders
        else "Reminders: none."
    )
    escalation = (
        f"Escalation: after {duration_words(timing.escalate_after)}, "
        + ", ".join(display.address(a) for a in timing.escalate_to)
        + " asked too, with links of their own."
        if timing.escalate_after is not None
        else "Escalation: none."
    )
    return [f"Approvals needed: {timing.approvals_needed}.", deadline, reminders, escalation]


def _approver(user: User, evaluation: Evaluation) -> str:
    address = (
        f"{display.name(f'{user.name} {user.surname}'.strip() or user.nick)} <{display.address(user.email)}>"
    )
    approval = evaluation.approval
    if approval is not None and approval.names(user.email or ""):
        return f"{address} (named by the rule)"
    return f"{address} (role {display.name(user.role)})"


def _named(name: str | None, id_: str | None) -> str:
    if name and id_:
        return f'"{display.name(name)}" (id {display.clean(id_, 64)})'
    if name:
        return f'"{display.name(name)}"'
    return f"id {display.clean(id_, 64)}" if id_ else "unknown"


def _sizes(facts: RequestFacts) -> str:
    """`8 CPUs, 14,336 MB RAM, 61,440 MB disk and volumes`, or why the size is unknown."""
    if facts.cpu is None or facts.ram_mb is None or facts.disk_mb is None:
        return "size unknown (Abiquo could not say for every VM)"
    return f"{_count(facts.cpu, 'CPU')}, {facts.ram_mb:,} MB RAM, {facts.disk_mb:,} MB disk and volumes"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _every(n: int) -> str:
    return "the task" if n == 1 else f"all {n:,} tasks"
