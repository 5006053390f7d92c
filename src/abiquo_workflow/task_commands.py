"""`abiquo-workflow tasks list | show | retry`: the operator's view of the store, as lines of text.

They never create or migrate a database: a missing SQLite file is reported, not made.
"""

from __future__ import annotations

from abiquo_workflow.approvals import NOTIFY_REQUESTER, SEND_APPROVAL, retry_delivery, retry_request_jobs
from abiquo_workflow.config import Settings
from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.exceptions import AbiquoWorkflowError
from abiquo_workflow.runtime import sqlite_file
from abiquo_workflow.store import Store
from abiquo_workflow.store.records import JobRecord, TaskRecord
from abiquo_workflow.store.urls import display_url


async def _open_store(settings: Settings) -> Store:
    url = settings.database.url
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise AbiquoWorkflowError(
            f"there is no database at {display_url(url)} yet; `abiquo-workflow serve` creates it "
            "(or check database.url)"
        )
    return await Store.open(url, migrate=False, busy_timeout=settings.database.busy_timeout)


def _line(task: TaskRecord) -> str:
    delivery = task.delivery.value if task.delivery else "-"
    return (
        f"{task.task_id}  {task.task_type:<11} {task.decision.value:<8} {delivery:<10} {task.vm_name or '?'}"
    )


async def list_tasks(
    settings: Settings, *, decision: DecisionState | None, delivery: DeliveryState | None, limit: int
) -> list[str]:
    async with await _open_store(settings) as store:
        tasks = await store.list_tasks(decision=decision, delivery=delivery, limit=limit)
    if not tasks:
        return ["no tasks"]
    return [f"{'TASK':<36}  {'TYPE':<11} {'DECISION':<8} {'DELIVERY':<10} VM", *(_line(t) for t in tasks)]


async def show_task(settings: Settings, task_id: str) -> list[str]:
    async with await _open_store(settings) as store:
        task = await store.get_task(task_id)
        if task is None:
            raise AbiquoWorkflowError(f"no task {task_id} is stored here")
        audit = await store.audit_log(task_id=task_id)
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
    return "reading the request's details from Abiquo (triage)"


async def retry_task(settings: Settings, task_id: str) -> str:
    """Queue again what failed for a task: its delivery to Abiquo, its request's triage or emails.

    The running `serve` (or `worker`) process does the work.
    """
    async with await _open_store(settings) as store:
        current = await store.get_task(task_id)
        if current is None:
            raise AbiquoWorkflowError(f"no task {task_id} is stored here")
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
