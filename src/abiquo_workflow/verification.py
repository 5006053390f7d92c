"""A callback is a hint, not a command: read each task back from Abiquo before acting on it.

Abiquo sends no credentials with its callback, so anyone who reaches `/callback` can post one. What the
connector acts on is therefore what Abiquo's API says, read with the connector's own credentials:

1. Where to read the task. Its `self` href, else the task href cut from its `continue` (or `cancel`)
   href (`…/tasks/{taskId}/action/continue` → `…/tasks/{taskId}`). The href must resolve inside the
   configured API (`abiquo.api_url`) and its path must end in `/tasks/{taskId}` for this very task id,
   so a callback cannot point one task's check at another task.
2. `GET` it. Abiquo must answer with the same `taskId`, in a held state (`QUEUEING`, docs/protocol.md
   §3.5), and with a type. docs/protocol.md §2.6 tells the same from Abiquo's side.
3. Take the type, the requester (`user` link, else `userId`), the target (`target` link, else the VM the
   task href lives under) and the `continue`/`cancel` links from Abiquo's answer; where the answer has no
   such link, exactly `{the href read}/action/continue|cancel`. Nothing the callback said about the task
   is used afterwards.
4. One requester, one virtual appliance per request: Abiquo sends one user's VM or vApp per callback, so
   tasks whose requester or vApp (as Abiquo shows them) differ from the request's first confirmed task
   are rejected. Otherwise one enterprise's approvers could be shown another enterprise's task.

A task that fails 1–4 is *rejected*: recorded with the reason, nothing decided, nobody asked, nothing
posted to Abiquo. Abiquo being unreachable is not a reason to reject: the error propagates and triage is
retried like any job.

Cost: one GET per task, run concurrently with the enrichment's bound on requests in flight
(`abiquo.max_connections`); a 100-VM vApp costs one more round of 100 reads (README, Performance).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.domain import AbiquoTaskState, HeldTask
from abiquo_workflow.exceptions import AbiquoNotFound
from abiquo_workflow.store.records import TaskRecord

#: The states in which Abiquo holds a task for review (docs/protocol.md §3.5: `QUEUEING`).
HELD_STATES = frozenset({"QUEUEING"})
#: Task states that show Abiquo went ahead with a task (after a continue), and that it dropped it (§3.5).
CONTINUED_STATES = frozenset({"PENDING", "STARTED", "FINISHED_SUCCESSFULLY", "FINISHED_UNSUCCESSFULLY"})
CANCELLED_STATES = frozenset({"CANCELLED", "ABORTED"})
#: Tasks being verified at once (the client's own bound, `abiquo.max_connections`, applies within).
_AT_ONCE = 50


@dataclass(frozen=True, slots=True)
class Rejection:
    """A task that Abiquo does not hold as the callback described it, and why (a sentence)."""

    task_id: str
    reason: str
    #: A short, fixed label for metrics and logs: bad_href, not_found, other_task, not_held, no_type, mixed.
    kind: str


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome for one request's pending tasks: Abiquo's view of those it holds, and the rest."""

    confirmed: tuple[HeldTask, ...]
    rejected: tuple[Rejection, ...]


class _Rejected(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def task_href_of(task: TaskRecord) -> str | None:
    """Where the callback says the task lives: its `self` href, or the task href of its action links."""
    if task.self_href:
        return task.self_href
    for action_href in (task.continue_href, task.cancel_href):
        head, sep, _ = action_href.strip().rstrip("/").rpartition("/action/")
        if sep and head:
            return head
    return None


def _path(url: str) -> str:
    return urlsplit(url).path.rstrip("/")


def _checked_url(client: AbiquoClient, task: TaskRecord) -> str:
    """The absolute URL to read `task` from, or `_Rejected` when the callback's href cannot be it."""
    href = task_href_of(task)
    if href is None:
        raise _Rejected("bad_href", "the callback gives no link to the task itself")
    url = client.resolve(href)
    if not client.is_api_url(url):
        raise _Rejected("bad_href", "the callback's link to the task points outside the Abiquo API")
    if not _path(url).endswith(f"/tasks/{task.task_id}"):
        raise _Rejected("bad_href", "the callback's link to the task names another task")
    return url


def _vm_of(task_url: str) -> str:
    """`…/virtualmachines/7` from `…/virtualmachines/7/tasks/{id}`: the VM a task href lives under."""
    return task_url.rstrip("/").rpartition("/tasks/")[0]


def confirmed_task(claimed: TaskRecord, url: str, shown: AbiquoTaskState) -> HeldTask:
    """The task as Abiquo shows it (steps 2 and 3 of the module docstring), or `_Rejected`."""
    if shown.task_id != claimed.task_id:
        raise _Rejected("other_task", f"Abiquo answers for task {shown.task_id} at the callback's link")
    if (shown.state or "").upper() not in HELD_STATES:
        raise _Rejected(
            "not_held", f"Abiquo does not hold the task for review (its state is {shown.state or 'unknown'})"
        )
    if not shown.task_type:
        raise _Rejected("no_type", "Abiquo's answer gives the task no type")
    user_href = shown.user_href or (f"admin/enterprises/_/users/{shown.user_id}" if shown.user_id else None)
    return HeldTask(
        task_id=claimed.task_id,
        task_type=shown.task_type,
        user_id=shown.user_id,
        owner_id=shown.owner_id,
        state=shown.state,
        continue_href=shown.continue_href or f"{url}/action/continue",
        cancel_href=shown.cancel_href or f"{url}/action/cancel",
        target_href=shown.target_href or _vm_of(url),
        user_href=user_href,
        self_href=url,
    )


async def _verify_one(client: AbiquoClient, task: TaskRecord) -> HeldTask | Rejection:
    try:
        url = _checked_url(client, task)
        try:
            shown = await client.get_task(url)
        except AbiquoNotFound:
            raise _Rejected("not_found", "Abiquo has no such task") from None
        return confirmed_task(task, url, shown)
    except _Rejected as rejected:
        return Rejection(task.task_id, rejected.reason, rejected.kind)


def request_key(client: AbiquoClient, task: HeldTask) -> tuple[str, str]:
    """Who asked and for which vApp (or VM), as Abiquo shows it: one of each per callback (and per
    request that reconciliation makes of held tasks it finds, reconcile.py)."""
    requester = client.resolve(task.user_href) if task.user_href else ""
    target = _path(client.resolve(task.target_href)) if task.target_href else ""
    vapp, sep, _ = target.partition("/virtualmachines/")
    return requester, vapp if sep else target


def _one_request(client: AbiquoClient, confirmed: list[HeldTask]) -> tuple[list[HeldTask], list[Rejection]]:
    if not confirmed:
        return [], []
    key = request_key(client, confirmed[0])
    kept = [task for task in confirmed if request_key(client, task) == key]
    mixed = [
        Rejection(
            task.task_id,
            "the callback mixes tasks of different requesters or virtual appliances; Abiquo sends one "
            "requester's virtual appliance or virtual machine per callback",
            "mixed",
        )
        for task in confirmed
        if request_key(client, task) != key
    ]
    return kept, mixed


async def verify(client: AbiquoClient, tasks: Sequence[TaskRecord]) -> Verification:
    """Read `tasks` (one request's pending tasks) back from Abiquo; see the module docstring.

    Raises `AbiquoUnavailable` (retry later) or another `AbiquoError` when Abiquo cannot be asked, never
    for a task that merely does not check out.
    """
    # The client bounds requests in flight; this bounds the coroutines started at once, so that a
    # request of hundreds of tasks does not spend one long turn of the event loop starting them all.
    slots = asyncio.Semaphore(_AT_ONCE)

    async def bounded(task: TaskRecord) -> HeldTask | Rejection:
        async with slots:
            return await _verify_one(client, task)

    outcomes = await asyncio.gather(*(bounded(task) for task in tasks))
    confirmed = [o for o in outcomes if isinstance(o, HeldTask)]
    rejected = [o for o in outcomes if isinstance(o, Rejection)]
    kept, mixed = _one_request(client, confirmed)
    return Verification(tuple(kept), tuple(rejected + mixed))
