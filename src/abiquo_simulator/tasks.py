"""Held tasks and how they are decided, with Abiquo's errors for the awkward cases (docs/protocol.md §4).

A workflow task is created QUEUEING. `continue` moves it through PENDING to FINISHED_SUCCESSFULLY at once
(the simulator has no hypervisor to wait for); `cancel` makes it CANCELLED. Anything asked of a task that
is no longer QUEUEING gets TASK-2, as Abiquo does: continue/cancel are not idempotent.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from .errors import AbiquoApiError


class TaskType(enum.StrEnum):
    DEPLOY = "DEPLOY"
    UNDEPLOY = "UNDEPLOY"
    RECONFIGURE = "RECONFIGURE"


class TaskState(enum.StrEnum):
    QUEUEING = "QUEUEING"
    FINISHED_SUCCESSFULLY = "FINISHED_SUCCESSFULLY"
    CANCELLED = "CANCELLED"


class DecidedBy(enum.StrEnum):
    """Who took a held task out of QUEUEING."""

    CONTINUE = "continue"  # a continue call on the API (normally the connector)
    CANCEL = "cancel"  # a cancel call on the API by someone other than the requester
    REQUESTER_CANCEL = "requester-cancel"  # the requester withdrew their own request


#: The jobs Abiquo plans for each held task type (docs/protocol.md §3.3; the undeploy list is inferred there).
_JOBS: dict[TaskType, tuple[str, ...]] = {
    TaskType.DEPLOY: ("SCHEDULE", "CONFIGURE", "POWER_ON"),
    TaskType.UNDEPLOY: ("POWER_OFF", "DECONFIGURE", "FREE_RESOURCES"),
    TaskType.RECONFIGURE: ("UPDATE_RESOURCES", "RECONFIGURE", "REGISTER_VM"),
}


@dataclass(slots=True)
class Job:
    id: str
    type: str
    description: str
    state: str = "PENDING"
    rollback_state: str = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Decision:
    by: DecidedBy
    user_id: int | None
    reason: str | None
    at: float


@dataclass(slots=True)
class Task:
    task_id: str
    type: TaskType
    vm_id: int
    requester_id: int
    created_at: int  # seconds since the epoch, like Abiquo's creationTimestamp
    timestamp: int  # last change, seconds
    state: TaskState = TaskState.QUEUEING
    jobs: list[Job] = field(default_factory=list)
    decision: Decision | None = None


def task_not_found() -> AbiquoApiError:
    return AbiquoApiError(404, "TASK-1", "The requested task does not exist")


def task_invalid_state() -> AbiquoApiError:
    # The status is inferred (docs/protocol.md §4, §12.3); the code and message are Abiquo's.
    return AbiquoApiError(409, "TASK-2", "The task is not in the appropriate state")


def new_task(task_type: TaskType, vm_id: int, requester_id: int, now: float) -> Task:
    task_id = str(uuid.uuid4())
    words = task_type.value.capitalize()
    jobs = [
        Job(
            id=f"{task_id}.{uuid.uuid4()}",
            type=job_type,
            description=(
                f"{words} task's {job_type.lower().replace('_', ' ')} on virtual machine with id {vm_id}"
            ),
        )
        for job_type in _JOBS[task_type]
    ]
    return Task(task_id, task_type, vm_id, requester_id, int(now), int(now), jobs=jobs)


class TaskBook:
    """Every task the simulator created, in creation order."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def add(self, task: Task) -> None:
        self._tasks[task.task_id] = task

    def get(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise task_not_found() from None

    def remove(self, task_id: str) -> None:
        """Forget a task: from now on it does not exist (TASK-1)."""
        self.get(task_id)
        del self._tasks[task_id]

    def all(self) -> list[Task]:
        return list(self._tasks.values())

    def of_vm(self, vm_id: int) -> list[Task]:
        return [t for t in self._tasks.values() if t.vm_id == vm_id]

    def queueing(self) -> list[Task]:
        return [t for t in self._tasks.values() if t.state is TaskState.QUEUEING]

    def decide(
        self, task_id: str, by: DecidedBy, user_id: int | None, reason: str | None, now: float
    ) -> Task:
        """Continue or cancel a held task; TASK-1 if unknown, TASK-2 if it is not QUEUEING."""
        task = self.get(task_id)
        if task.state is not TaskState.QUEUEING:
            raise task_invalid_state()
        task.decision = Decision(by, user_id, reason, now)
        task.timestamp = int(now)
        if by is DecidedBy.CONTINUE:
            # Abiquo would go PENDING -> STARTED -> FINISHED_*; with no hypervisor behind the simulator the
            # jobs are done the moment the task is released.
            for job in task.jobs:
                job.state = "DONE"
            task.state = TaskState.FINISHED_SUCCESSFULLY
        else:
            for job in task.jobs:
                job.state = "SKIPPED"
            task.state = TaskState.CANCELLED
        return task
