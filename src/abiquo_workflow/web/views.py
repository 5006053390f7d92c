"""What the decision pages show about tasks: plain strings built from the store and triage's snapshot.

Templates escape everything; this module only chooses words, reusing the emails' wording, so every name
and the approver shown in a status comes out cleaned by `display` as in the emails (format characters
removed, length capped with "…"), while the stored snapshot stays as Abiquo sent it. Sizes carry a
no-break space between number and unit ("20 GB" never splits over two lines on a phone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from abiquo_workflow import display
from abiquo_workflow.domain import DecidedBy, DecisionState, RequestDetails, VirtualMachine, VmDetails
from abiquo_workflow.mail import changes, words
from abiquo_workflow.store.records import TaskRecord


@dataclass(frozen=True, slots=True)
class TaskRow:
    task_id: str
    name: str
    operation: str
    cpu: str
    ram: str
    storage: str
    decision: str
    status: str
    #: The reason given with the decision, cleaned; None while pending or when none was given.
    reason: str | None = None
    #: A reconfigure's sentence about its sizes: what "was → now" compares, or that Abiquo does not say
    #: what changes (mail/changes.py, as in the email); None for other tasks.
    note: str | None = None
    #: True when `note` says the change cannot be told.
    change_unknown: bool = False
    #: The decision's delivery state and a sentence about it (the dashboard's rows; None elsewhere).
    delivery: str | None = None
    delivery_note: str | None = None


def _storage(vm: VirtualMachine) -> str:
    return words.keep_units(", ".join(words.disk_words(vm) + words.volume_words(vm)) or words.UNKNOWN)


def status_words(task: TaskRecord) -> str:
    """ "Waiting for a decision", "Accepted by Alice Smith <…> on 4 Mar 2025, 14:05 UTC", or what decided
    it when no person here did: "Cancelled at its deadline on …", "Cancelled in Abiquo on …" (found by
    reconciliation), "Accepted automatically on …" (a policy rule, or no approver; the reason says which).
    """
    if task.decision is DecisionState.PENDING:
        return "Waiting for a decision"
    if task.decision is DecisionState.REJECTED:
        return "Not held by Abiquo as the callback said, so nobody decides it"
    accepted = task.decision is DecisionState.ACCEPTED
    when = f" on {words.moment_words(task.decided_at)}" if task.decided_at else ""
    match task.decided_by:
        case DecidedBy.DEADLINE:
            return f"{'Accepted' if accepted else 'Cancelled'} at its deadline{when}"
        case DecidedBy.EXTERNAL:
            return f"{'Accepted' if accepted else 'Cancelled'} in Abiquo{when}"
        case DecidedBy.POLICY | DecidedBy.NO_APPROVER:
            return f"{'Accepted' if accepted else 'Cancelled'} automatically{when}"
    return f"{'Accepted' if accepted else 'Declined'} by {words.or_unknown(task.actor)}{when}"


def task_rows(tasks: Sequence[TaskRecord], details: RequestDetails | None) -> list[TaskRow]:
    shown = {vm.task_id: vm for vm in details.vms} if details else {}
    rows = []
    for task in tasks:
        vm_details = shown.get(task.task_id)
        vm = vm_details.vm if vm_details else None
        row = TaskRow(
            task_id=task.task_id,
            name=words.or_unknown(vm.name if vm else task.vm_name),
            operation=words.task_word(task.task_type),
            cpu=str(vm.cpu) if vm and vm.cpu is not None else words.UNKNOWN,
            ram=words.keep_units(words.size_words(vm.ram_mb)) if vm else words.UNKNOWN,
            storage=_storage(vm) if vm else words.UNKNOWN,
            decision=task.decision.value,
            status=status_words(task),
            reason=None if task.decision is DecisionState.PENDING else display.reason(task.reason) or None,
        )
        rows.append(_with_change(row, vm_details) if vm_details else row)
    return rows


def _with_change(row: TaskRow, vm_details: VmDetails) -> TaskRow:
    """A reconfigure's row with its sizes as "was → now" and its sentence, as its email shows them."""
    change = changes.reconfigure(vm_details)
    if change is None:
        return row
    storage = ", ".join(change.disks + change.volumes) or words.UNKNOWN
    return replace(
        row,
        cpu=words.keep_units(change.cpu),
        ram=words.keep_units(change.ram),
        storage=words.keep_units(storage),
        note=change.note.removesuffix(":") + "." if change.changed else change.note,
        change_unknown=not change.changed,
    )


def shared_reason(rows: Sequence[TaskRow]) -> str | None:
    """The reason every decided row gives, when there are several and they all give the same one: the
    page says it once above the table instead of on every row."""
    reasons = {row.reason for row in rows if row.decision != DecisionState.PENDING.value}
    if len(rows) > 1 and len(reasons) == 1:
        return next(iter(reasons))
    return None


def request_context(tasks: Sequence[TaskRecord], details: RequestDetails | None) -> dict[str, Any]:
    """The `_tasks.html` context: who asked, where, and a row per task."""
    context: dict[str, Any] = {"details": details, "rows": task_rows(tasks, details)}
    if details is not None:
        requester = details.requester
        datacenter = details.datacenter.name if details.datacenter else None
        context["requester"] = words.or_unknown(requester.display_name if requester else None)
        context["place"] = (  # shown as "Acme › Production (Barcelona DC) › Web tier"
            [
                words.or_unknown(details.enterprise.name if details.enterprise else None),
                words.or_unknown(details.vdc.name if details.vdc else None)
                + f" ({words.or_unknown(datacenter)})",
                words.or_unknown(details.vapp.name if details.vapp else None),
            ]
        )
    return context
