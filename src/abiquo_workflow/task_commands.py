"""`abiquo-workflow tasks list | show | retry`: the operator's view of the store, as lines of text.

They never create or migrate a database: a missing SQLite file is reported, not made.

A task is named by its id or by a unique prefix of it (`MIN_PREFIX` characters at least): Abiquo's ids
are UUIDs, too long to type from a listing. A prefix that fits several tasks is refused with the
candidates, never resolved to one of them, since `retry` acts on what it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from abiquo_workflow import display
from abiquo_workflow.approvals import (
    NOTIFY_REQUESTER,
    NOTIFY_SETTLED,
    SEND_APPROVAL,
    retry_delivery,
    retry_request_jobs,
)
from abiquo_workflow.config import Settings
from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.exceptions import AbiquoWorkflowError
from abiquo_workflow.runtime import sqlite_file
from abiquo_workflow.store import Reader, Store, utc_now
from abiquo_workflow.store.reads import ListedTask, TaskFilter
from abiquo_workflow.store.records import JobRecord, TaskRecord
from abiquo_workflow.store.urls import display_url

#: The fewest characters of a task id that `show`, `retry` and `list --after` take for the whole id:
#: enough to be unique among thousands of UUIDs, few enough to type.
MIN_PREFIX = 6
#: Candidates listed when a prefix fits several tasks.
CANDIDATES_SHOWN = 10

#: Widest a free-text cell of `tasks list` is shown (names and addresses people typed), so one long
#: VM name cannot push the other columns off the screen. Longer ones end in "…".
_VM_WIDTH = 32
_PERSON_WIDTH = 32


async def _open_store(settings: Settings) -> Store:
    url = settings.database.url
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise AbiquoWorkflowError(
            f"there is no database at {display_url(url)} yet; `abiquo-workflow serve` creates it "
            "(or check database.url)"
        )
    return await Store.open(url, migrate=False, busy_timeout=settings.database.busy_timeout)


async def find_task(reader: Reader, given: str) -> TaskRecord:
    """The task `given` names: its whole id, or a prefix of at least `MIN_PREFIX` characters that
    begins exactly one stored id. Otherwise raises AbiquoWorkflowError: a sentence, followed by the
    candidate ids (one a line) when the prefix begins several.

    The whole id wins over a prefix: `task-1` names task-1 even when task-10 is stored too.
    """
    task = await reader.get_task(given)
    if task is not None:
        return task
    if len(given) < MIN_PREFIX:
        raise AbiquoWorkflowError(
            f"no task {given} is stored here (a shortened task id needs at least {MIN_PREFIX} characters)"
        )
    candidates = await reader.task_ids_starting_with(given, limit=CANDIDATES_SHOWN + 1)
    if len(candidates) > 1:
        shown = [f"  {candidate}" for candidate in candidates[:CANDIDATES_SHOWN]]
        if len(candidates) > CANDIDATES_SHOWN:
            shown.append("  …")
        raise AbiquoWorkflowError(
            "\n".join([f"{given} is the start of more than one task id; give more of it:", *shown])
        )
    found = await reader.get_task(candidates[0]) if candidates else None
    if found is None:
        raise AbiquoWorkflowError(f"no task {given} is stored here")
    return found


@dataclass(frozen=True, slots=True)
class Listing:
    """What `tasks list` prints: the table on stdout, and what it left out on stderr (so a script
    reading the table reads only tasks)."""

    lines: list[str]
    #: How many more tasks match, and how to see them; None when the table shows them all.
    more: str | None


_HEADER = ("TASK", "TYPE", "VM", "REQUESTER", "CREATED (UTC)", "DECISION", "DECIDED BY", "DELIVERY")


def _cells(entry: ListedTask) -> tuple[str, ...]:
    """One row of `tasks list`. Names were typed by Abiquo's users: they are cleaned (no control or
    format characters reach the operator's terminal) and cut to a column's width."""
    task = entry.task
    if entry.requester_nick:
        requester = display.clean(entry.requester_nick, _PERSON_WIDTH)
    else:
        requester = f"#{display.clean(entry.requester_id, _PERSON_WIDTH)}" if entry.requester_id else "?"
    decided_by = task.actor or (task.decided_by.value if task.decided_by else "")
    return (
        display.clean(task.task_id, len(task.task_id)),
        display.clean(task.task_type, _PERSON_WIDTH),
        display.clean(task.vm_name, _VM_WIDTH) or "?",
        requester,
        f"{task.created_at:%Y-%m-%d %H:%M}",
        task.decision.value,
        display.clean(decided_by, _PERSON_WIDTH) or "-",
        task.delivery.value if task.delivery else "-",
    )


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart, each as wide as its widest cell."""
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


async def list_tasks(
    settings: Settings,
    *,
    decision: DecisionState | None = None,
    delivery: DeliveryState | None = None,
    enterprise: str | None = None,
    requester: str | None = None,
    older_than: timedelta | None = None,
    newer_than: timedelta | None = None,
    limit: int = 50,
    after: str | None = None,
) -> Listing:
    """One page of the tasks that match, newest first, and how many more there are.

    `after` (a task id or unique prefix) continues the listing after that task: the last one of the
    page before, as the stderr line says. Durations count back from now.
    """
    now = utc_now()
    filters = TaskFilter(
        decision=decision,
        delivery=delivery,
        enterprise=enterprise,
        requester=requester,
        created_before=None if older_than is None else now - older_than,
        created_since=None if newer_than is None else now - newer_than,
    )
    async with await _open_store(settings) as store:
        cursor = None if after is None else await find_task(store, after)
        page = await store.find_tasks(filters, limit=limit, after=cursor)
        more = await store.count_tasks(filters, after=page[-1].task) if len(page) == limit else 0
    if not page:
        return Listing(["no tasks"], None)
    lines = _table([_HEADER, *(_cells(entry) for entry in page)])
    note = f"… {more} more; the next page: --after {page[-1].task.task_id}" if more else None
    return Listing(lines, note)


async def show_task(settings: Settings, task_id: str) -> list[str]:
    """A task (named by its id or a unique prefix), its decision, delivery and audit trail.

    The trail is the task's own lines (decided, each delivery attempt) among its request's (received,
    verified, triaged, every email), in the order they were written.
    """
    async with await _open_store(settings) as store:
        task = await find_task(store, task_id)
        own = await store.audit_log(task_id=task.task_id)
        about_request = await store.audit_log(request_id=task.request_id)
    lines_by_id = {entry.id: entry for entry in own}
    lines_by_id.update((entry.id, entry) for entry in about_request if entry.task_id is None)
    audit = [lines_by_id[line_id] for line_id in sorted(lines_by_id)]
    lines = [
        f"task       {task.task_id} ({task.task_type}) on {task.vm_name or 'an unknown VM'}",
        f"request    {task.request_id}, received {task.created_at:%Y-%m-%d %H:%M:%S} UTC",
        f"decision   {task.decision.value}"
        + (f" by {task.actor} ({task.decided_by}) via {task.channel}" if task.decided_by else ""),
    ]
    if task.reason:
        lines.append(f"reason     {task.reason}")
    if task.delivery:
        lines.append(f"delivery   {task.delivery.value} after {task.delivery_attempts} attempt(s)")
    if task.delivery_detail:
        lines.append(f"           {task.delivery_detail}")
    lines.append("audit")
    for entry in audit:
        line = f"  {entry.at:%Y-%m-%d %H:%M:%S}  {entry.action:<18} {entry.actor or ''} {entry.detail or ''}"
        lines.append(line.rstrip())
    return lines


def _job_words(job: JobRecord) -> str:
    if job.kind == SEND_APPROVAL:
        approver = job.payload.get("approver") or {}
        return f"the approval email to {approver.get('email') or 'an approver'}"
    if job.kind == NOTIFY_REQUESTER:
        return "the requester's email"
    if job.kind == NOTIFY_SETTLED:
        return f"the email telling {job.payload.get('recipient') or 'an approver'} it is settled"
    return "reading the request's details from Abiquo (triage)"


async def retry_task(settings: Settings, task_id: str) -> str:
    """Queue again what failed for a task (named by its id or a unique prefix): its delivery to
    Abiquo, its request's triage or emails.

    The running `serve` (or `worker`) process does the work.
    """
    async with await _open_store(settings) as store:
        current = await find_task(store, task_id)
        task_id = current.task_id
        delivery = await retry_delivery(store, task_id, max_attempts=settings.worker.max_attempts)
        jobs = await retry_request_jobs(store, current.request_id)
    if delivery is None and not jobs:
        state = current.delivery.value if current.delivery else "not decided yet"
        raise AbiquoWorkflowError(
            f"task {task_id} has not failed (its delivery is {state}); nothing to retry"
        )
    if delivery is not None and not jobs:
        return f"task {task_id} is queued for delivery again"
    queued = (["its delivery to Abiquo"] if delivery is not None else []) + [_job_words(job) for job in jobs]
    return f"task {task_id}: queued again: " + "; ".join(queued)
