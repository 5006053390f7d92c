"""The simulator's state and behaviour, independent of HTTP routing: the world, the tasks, what was
called, the armed faults and the settings, plus the two things that act: creating held tasks (and
POSTing the callback) and deciding them.

One `Simulator` is served by one event loop; a lock keeps the state consistent when a test thread reads
it while the server thread writes it.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx2

from .callback import CallbackOutcome, callback_body, post_callback
from .errors import AbiquoApiError, forbidden
from .faults import Fault, FaultQueue
from .representations import Representer
from .tasks import DecidedBy, Task, TaskBook, TaskType, new_task, task_not_found
from .world import User, VirtualMachine, World, resized, seed_world

STYLES = ("json", "xml")
MODES = ("3.x", "2.6")
ACTIONS = ("deploy", "undeploy", "reconfigure")
HREF_STYLES = ("relative", "absolute")

_T = TypeVar("_T")


class SimulatorError(Exception):
    """Bad use of the control surface; `status` is the HTTP status to answer, the message a sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Settings:
    callback_url: str | None = None
    style: str = "json"  # "json" (3.x callback) or "xml" (2.6 callback)
    mode: str = "3.x"  # "3.x" or "2.6": which API generation the /api routes imitate
    latency: float = 0.0  # seconds added to every /api call

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check_style(style: object) -> str:
    if style not in STYLES:
        raise SimulatorError(
            400, f'\'style\' must be "json" (Abiquo 3.x) or "xml" (Abiquo 2.6), not {style!r}.'
        )
    return str(style)


def _check_mode(mode: object) -> str:
    if mode not in MODES:
        raise SimulatorError(400, f'\'mode\' must be "3.x" or "2.6", not {mode!r}.')
    return str(mode)


def _check_latency(latency: object) -> float:
    if (
        isinstance(latency, bool)
        or not isinstance(latency, int | float)
        or not math.isfinite(latency)
        or latency < 0
    ):
        raise SimulatorError(400, f"'latency' must be a number of seconds, 0 or more, not {latency!r}.")
    return float(latency)


def _check_sizes(cpu: int | None, ram: int | None, disks: tuple[int, ...] | None) -> None:
    for name, value in (("cpu", cpu), ("ram", ram)):
        if value is not None and value < 1:
            raise SimulatorError(400, f"'{name}' must be 1 or more, not {value}.")
    if disks is not None and (not disks or any(size < 1 for size in disks)):
        raise SimulatorError(400, "'disks' must list one size in MB (1 or more) per disk, boot disk first.")


def _check_url(url: object) -> str | None:
    if url is None or url == "":
        return None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise SimulatorError(400, f"'callback_url' must be an http:// or https:// URL, not {url!r}.")
    return url


@dataclass(frozen=True, slots=True)
class DecisionCall:
    """A continue or cancel call that reached a task (after authentication), and the answer given."""

    task_id: str
    action: str
    body: str | None
    content_type: str | None
    status: int
    user: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "at": _iso(self.at)}


@dataclass(frozen=True, slots=True)
class ApiCall:
    method: str
    path: str
    query: str
    status: int | None  # None when the connection was dropped on purpose
    at: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "at": _iso(self.at)}


@dataclass(frozen=True, slots=True)
class CreatedTask:
    task_id: str
    vm_id: int
    vm_name: str
    type: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RequestResult:
    tasks: list[CreatedTask]
    callback: CallbackOutcome

    def to_json(self) -> dict[str, Any]:
        return {"tasks": [t.to_json() for t in self.tasks], "callback": self.callback.to_json()}


@dataclass(slots=True)
class State:
    """Everything that changes, replaced whole by a reset."""

    world: World = field(default_factory=seed_world)
    tasks: TaskBook = field(default_factory=TaskBook)
    faults: FaultQueue = field(default_factory=FaultQueue)
    decision_calls: list[DecisionCall] = field(default_factory=list)
    api_calls: list[ApiCall] = field(default_factory=list)
    #: Each held reconfigure's VM as it was before (task id → VM): Abiquo keeps the old values out of
    #: its API and puts them back if the task is cancelled (docs/protocol.md §7.11).
    before_reconfigure: dict[str, VirtualMachine] = field(default_factory=dict)


class Simulator:
    """A stand-in Abiquo: the seeded world, held tasks, call logs, faults and settings.

    Parameters:
        callback_url: where held tasks are POSTed (Abiquo's `client.main.workflowEndPoint`); a request
            may name another.
        style: the callback dialect, "json" (3.x) or "xml" (2.6).
        mode: the API generation imitated, "3.x" or "2.6" (2.6 adds `hdInBytes` on VMs, links their disks
            as `disks` instead of `harddisks`, gives VDCs a `datacenter` link instead of `location`, and
            answers XML when no Accept header is sent).
        latency: seconds added to every /api call.
    """

    def __init__(
        self, callback_url: str | None = None, style: str = "json", mode: str = "3.x", latency: float = 0.0
    ) -> None:
        self.settings = Settings(
            _check_url(callback_url), _check_style(style), _check_mode(mode), _check_latency(latency)
        )
        #: The absolute API root (`http://host:port/api/`) once a server runs this simulator; used for
        #: absolute callback hrefs when a request is made in-process.
        self.public_api_url: str | None = None
        self._lock = threading.RLock()
        self._state = State()
        #: API calls being answered right now (`answering`).
        self._in_flight = 0
        self._tls: ssl.SSLContext | None = None

    # --- Reading and resetting state --------------------------------------------------------------------

    def locked(self, read: Callable[[State], _T]) -> _T:
        """Run `read` on the state under the lock (for the HTTP layers)."""
        with self._lock:
            return read(self._state)

    @property
    def world(self) -> World:
        return self._state.world

    def reset(self) -> None:
        """Back to the seeded world: no tasks, no calls, no faults. Settings are kept."""
        with self._lock:
            self._state = State()

    def update_settings(self, changes: dict[str, object]) -> Settings:
        unknown = set(changes) - {"callback_url", "style", "mode", "latency"}
        if unknown:
            raise SimulatorError(400, f"Unknown setting(s): {', '.join(sorted(unknown))}.")
        with self._lock:
            s = self.settings
            updated = Settings(
                _check_url(changes["callback_url"]) if "callback_url" in changes else s.callback_url,
                _check_style(changes["style"]) if "style" in changes else s.style,
                _check_mode(changes["mode"]) if "mode" in changes else s.mode,
                _check_latency(changes["latency"]) if "latency" in changes else s.latency,
            )
            self.settings = updated
            return updated

    def tasks(self) -> list[Task]:
        with self._lock:
            return self._state.tasks.all()

    def task(self, task_id: str) -> Task:
        with self._lock:
            return self._state.tasks.get(task_id)

    def change_role(self, user_id: int, role_name: str) -> User:
        """Give a user another role (an administrator's change in Abiquo): the connector must notice
        that an approver no longer approves. Raises SimulatorError (404) for an unknown user or role."""
        with self._lock:
            world = self._state.world
            user = world.users.get(user_id)
            role = next((r for r in world.roles.values() if r.name == role_name), None)
            if user is None:
                raise SimulatorError(404, f"There is no user {user_id}.")
            if role is None:
                raise SimulatorError(404, f"There is no role named {role_name!r}.")
            changed = replace(user, role_id=role.id)
            world.users[user_id] = changed
            return changed

    def decision_calls(self) -> list[DecisionCall]:
        with self._lock:
            return list(self._state.decision_calls)

    def api_calls(self) -> list[ApiCall]:
        with self._lock:
            return list(self._state.api_calls)

    # --- Faults and the call log (used by the /api gate) --------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._state.faults.add(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._state.faults.clear()

    def faults(self) -> list[Fault]:
        with self._lock:
            return self._state.faults.pending()

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            return self._state.faults.take(path)

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Count an API call as in flight for as long as the block runs (see `wait_until_quiet`)."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def wait_until_quiet(self, timeout: float = 5.0) -> bool:
        """Wait until no API call is being answered (a slowed call outlives its impatient client);
        False if one still is after `timeout` seconds. Tests call it before a reset."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._in_flight == 0:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def record_api_call(self, method: str, path: str, query: str, status: int | None) -> None:
        with self._lock:
            self._state.api_calls.append(ApiCall(method, path, query, status, time.time()))

    # --- Acting ---------------------------------------------------------------------------------------------

    async def request(
        self,
        action: str,
        *,
        vm: int | None = None,
        vapp: int | None = None,
        user: int | None = None,
        style: str | None = None,
        hrefs: str = "relative",
        callback_url: str | None = None,
        api_url: str | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        cpu: int | None = None,
        ram: int | None = None,
        disks: tuple[int, ...] | None = None,
        lost_callback: bool = False,
        held_for: float = 0.0,
    ) -> RequestResult:
        """Hold a deploy, undeploy or reconfigure of a VM (or deploy/undeploy of every VM of a vApp) and
        POST the callback, as Abiquo does when a user asks for one with workflow on.

        `lost_callback` holds the tasks but never POSTs them, as when the endpoint was down: Abiquo does
        not retry (the user sees WKF-01) and the tasks stay QUEUEING, in its pending-task listings only.
        `held_for` makes the tasks that many seconds old already (their `creationTimestamp`).

        A reconfigure asks for `cpu`, `ram` (MB) and `disks` (sizes in MB by sequence; a disk more is
        added, one fewer removed); each left out stays as it is, and with none given the VM asks for
        twice its CPU and RAM. As Abiquo does (docs/protocol.md §7.11), the VM shows the requested sizes
        as soon as the task is held, its old ones are kept out of the API, and a cancel puts them back.

        `transport` (in-process callers only) carries the callback instead of the network, for example
        to an app a test drives through httpx2's ASGI transport.

        Raises SimulatorError (400/404/409) for a request Abiquo could not have made. The callback's
        failure is reported in the result, not raised; the tasks then stay QUEUEING.
        """
        if action not in ACTIONS:
            raise SimulatorError(400, f"Unknown action {action!r}: use deploy, undeploy or reconfigure.")
        if (vm is None) == (vapp is None):
            raise SimulatorError(400, "Name exactly one of 'vm' or 'vapp'.")
        if action == "reconfigure" and vapp is not None:
            raise SimulatorError(400, "Abiquo reconfigures single VMs only; name a 'vm' to reconfigure.")
        sizes = (cpu, ram, disks)
        if action != "reconfigure" and any(size is not None for size in sizes):
            raise SimulatorError(
                400, "'cpu', 'ram' and 'disks' are what a reconfigure asks for; only it takes them."
            )
        _check_sizes(cpu, ram, disks)
        style = self.settings.style if style is None else _check_style(style)
        if hrefs not in HREF_STYLES:
            raise SimulatorError(400, f'\'hrefs\' must be "relative" or "absolute", not {hrefs!r}.')
        base = ""
        if hrefs == "absolute":
            base = api_url or self.public_api_url or ""
            if not base:
                raise SimulatorError(400, "Absolute hrefs need the simulator's own URL; run it in a server.")
        if not math.isfinite(held_for) or held_for < 0:
            raise SimulatorError(400, f"'held_for' must be a number of seconds, 0 or more, not {held_for!r}.")
        url = _check_url(callback_url) or self.settings.callback_url
        if url is None and lost_callback:
            url = ""
        if url is None:
            raise SimulatorError(
                409, "No callback URL is set: pass 'callback_url' or set one with PUT /_sim/settings."
            )

        with self._lock:
            world = self._state.world
            vms = self._target_vms(world, vm, vapp)
            requester = self._requester(world, user, vms[0])
            now = time.time() - held_for
            held = [new_task(TaskType(action.upper()), m.id, requester.id, now) for m in vms]
            for task in held:
                self._state.tasks.add(task)
            if action == "reconfigure":
                self._reconfigure(held[0], vms[0], cpu, ram, disks)
            body, content_type = callback_body(
                Representer(world, base, self.settings.mode), held, style, single=action == "reconfigure"
            )

        if lost_callback:
            outcome = CallbackOutcome(url, content_type, None, "not sent: the callback was lost", 0.0)
        else:
            outcome = await post_callback(url, body, content_type, self._tls_context(), transport)
        created = [CreatedTask(t.task_id, t.vm_id, world.vms[t.vm_id].name, t.type.value) for t in held]
        return RequestResult(created, outcome)

    def _reconfigure(
        self, task: Task, vm: VirtualMachine, cpu: int | None, ram: int | None, disks: tuple[int, ...] | None
    ) -> None:
        """Give the VM the sizes a held reconfigure asks for, keeping the old VM to restore on cancel."""
        doubled = cpu is None and ram is None and disks is None
        self._state.before_reconfigure[task.task_id] = vm
        self._state.world.vms[vm.id] = resized(
            vm,
            cpu=vm.cpu * 2 if doubled else cpu or vm.cpu,
            ram_mb=vm.ram_mb * 2 if doubled else ram or vm.ram_mb,
            disks_mb=disks if disks is not None else tuple(disk.size_mb for disk in vm.disks),
        )

    def _settle_reconfigure(self, task: Task) -> None:
        """After a reconfigure is decided: cancelled, the VM gets its old sizes back (whatever else
        changed meanwhile, such as its name, stays); continued, it keeps the new ones."""
        before = self._state.before_reconfigure.pop(task.task_id, None)
        if before is None or task.decision is None or task.decision.by is DecidedBy.CONTINUE:
            return
        world = self._state.world
        now = world.vms.get(task.vm_id)
        if now is not None:
            world.vms[task.vm_id] = replace(now, cpu=before.cpu, ram_mb=before.ram_mb, disks=before.disks)

    @staticmethod
    def _target_vms(world: World, vm: int | None, vapp: int | None) -> list[VirtualMachine]:
        if vm is not None:
            if vm not in world.vms:
                raise SimulatorError(404, f"There is no VM {vm} in the seeded world; see GET /_sim/world.")
            return [world.vms[vm]]
        assert vapp is not None
        if vapp not in world.vapps:
            raise SimulatorError(
                404, f"There is no virtual appliance {vapp} in the seeded world; see GET /_sim/world."
            )
        return world.vms_of(vapp)

    @staticmethod
    def _requester(world: World, user: int | None, vm: VirtualMachine) -> User:
        if user is None:
            return world.users[vm.owner_id]
        if user not in world.users:
            raise SimulatorError(404, f"There is no user {user} in the seeded world; see GET /_sim/world.")
        requester = world.users[user]
        enterprise = world.enterprise_of(vm)
        if requester.enterprise_id != enterprise.id and world.roles[requester.role_id].name != "CLOUD_ADMIN":
            raise SimulatorError(
                400,
                f"User {requester.id} ({requester.nick}) belongs to another enterprise and cannot ask for "
                f"VM {vm.id} of enterprise {enterprise.id}.",
            )
        return requester

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def decide_via_api(
        self, user: User, task_id: str, vm: VirtualMachine, action: str, reason: str | None
    ) -> None:
        """POST …/tasks/{id}/action/continue|cancel from an authenticated API user.

        Needs WORKFLOW_OVERRIDE within reach (a cloud admin, or the task's own enterprise), except that
        the requester may cancel their own task. Raises AbiquoApiError TASK-1 (404), GEN-4 (403) or
        TASK-2 (409).
        """
        with self._lock:
            state = self._state
            task = state.tasks.get(task_id)
            if task.vm_id != vm.id:
                raise task_not_found()  # another VM's task does not exist under this VM's URL
            by = self._decider(state.world, user, task, vm, action)
            state.tasks.decide(task_id, by, user.id, reason, time.time())
            self._apply_vm_state(state.world, task)
            self._settle_reconfigure(task)

    def record_decision_call(
        self, task_id: str, action: str, body: str | None, content_type: str | None, status: int, user: str
    ) -> None:
        with self._lock:
            self._state.decision_calls.append(
                DecisionCall(task_id, action, body, content_type, status, user, time.time())
            )

    @staticmethod
    def _decider(world: World, user: User, task: Task, vm: VirtualMachine, action: str) -> DecidedBy:
        role = world.roles[user.role_id]
        in_reach = role.name == "CLOUD_ADMIN" or world.enterprise_of(vm).id == user.enterprise_id
        if in_reach and role.has("WORKFLOW_OVERRIDE"):
            return DecidedBy.CONTINUE if action == "continue" else DecidedBy.CANCEL
        if action == "cancel" and task.requester_id == user.id:
            return DecidedBy.REQUESTER_CANCEL
        raise forbidden()

    @staticmethod
    def _apply_vm_state(world: World, task: Task) -> None:
        if task.decision is not None and task.decision.by is DecidedBy.CONTINUE:
            if task.type is TaskType.DEPLOY:
                world.vm_states[task.vm_id] = "ON"
            elif task.type is TaskType.UNDEPLOY:
                world.vm_states[task.vm_id] = "NOT_ALLOCATED"

    def cancel_as_requester(self, task_id: str, reason: str | None = None) -> Task:
        """The requester withdraws their own held task (Abiquo allows it, docs/protocol.md §1).

        Raises SimulatorError 404 for an unknown task and 409 when it is no longer QUEUEING.
        """
        with self._lock:
            try:
                task = self._state.tasks.get(task_id)
                decided = self._state.tasks.decide(
                    task_id, DecidedBy.REQUESTER_CANCEL, task.requester_id, reason, time.time()
                )
                self._settle_reconfigure(decided)
                return decided
            except AbiquoApiError as exc:
                raise SimulatorError(exc.status, f"Task {task_id}: {exc.message}.") from None

    def decide_in_ui(self, task_id: str, action: str, reason: str | None = None) -> Task:
        """An administrator continues or cancels a held task in Abiquo's own "Workflow tasks" tab
        (docs/protocol.md §5): the task leaves QUEUEING and no continue/cancel call is logged, as none
        came through the API the connector uses.

        Raises SimulatorError 400 for another action, 404 for an unknown task, 409 when it is no longer
        QUEUEING.
        """
        if action not in ("continue", "cancel"):
            raise SimulatorError(400, f"'action' must be continue or cancel, not {action!r}.")
        by = DecidedBy.CONTINUE if action == "continue" else DecidedBy.CANCEL
        with self._lock:
            world = self._state.world
            admin = next(u for u in world.users.values() if world.roles[u.role_id].name == "CLOUD_ADMIN")
            try:
                task = self._state.tasks.decide(task_id, by, admin.id, reason, time.time())
            except AbiquoApiError as exc:
                raise SimulatorError(exc.status, f"Task {task_id}: {exc.message}.") from None
            self._apply_vm_state(world, task)
            self._settle_reconfigure(task)
            return task

    def forget_task(self, task_id: str) -> None:
        """The task is gone from Abiquo (its VM deleted with it, say): reading it answers TASK-1.

        Raises SimulatorError 404 for an unknown task."""
        with self._lock:
            try:
                self._state.tasks.remove(task_id)
            except AbiquoApiError as exc:
                raise SimulatorError(exc.status, f"Task {task_id}: {exc.message}.") from None
            self._state.before_reconfigure.pop(task_id, None)

    # --- Summaries for the control surface ---------------------------------------------------------------

    def world_summary(self) -> dict[str, Any]:
        with self._lock:
            w = self._state.world
            return {
                "datacenters": [
                    {"id": d.id, "name": d.name, "location": d.location} for d in w.datacenters.values()
                ],
                "roles": [
                    {"id": r.id, "name": r.name, "privileges": [p.name for p in r.privileges]}
                    for r in w.roles.values()
                ],
                "enterprises": [
                    {"id": e.id, "name": e.name, "workflow": e.workflow} for e in w.enterprises.values()
                ],
                "users": [
                    {
                        "id": u.id,
                        "nick": u.nick,
                        "name": u.name,
                        "surname": u.surname,
                        "email": u.email,
                        "role": w.roles[u.role_id].name,
                        "enterprise_id": u.enterprise_id,
                    }
                    for u in w.users.values()
                ],
                "vdcs": [
                    {
                        "id": v.id,
                        "name": v.name,
                        "enterprise_id": v.enterprise_id,
                        "datacenter_id": v.datacenter_id,
                    }
                    for v in w.vdcs.values()
                ],
                "vapps": [
                    {"id": a.id, "name": a.name, "vdc_id": a.vdc_id, "vm_ids": [m.id for m in w.vms_of(a.id)]}
                    for a in w.vapps.values()
                ],
                "vms": [
                    {
                        "id": m.id,
                        "name": m.name,
                        "vapp_id": m.vapp_id,
                        "vdc_id": w.vdc_of(m).id,
                        "enterprise_id": w.enterprise_of(m).id,
                        "owner_id": m.owner_id,
                        "state": w.vm_states[m.id],
                        "cpu": m.cpu,
                        "ram_mb": m.ram_mb,
                        "disks_mb": [d.size_mb for d in m.disks],
                    }
                    for m in w.vms.values()
                ],
            }

    def task_summary(self, task: Task) -> dict[str, Any]:
        with self._lock:
            w = self._state.world
            vm = w.vms[task.vm_id]
            requester = w.users[task.requester_id]
            decision = task.decision
            decided = None
            if decision is not None:
                by_user = w.users.get(decision.user_id) if decision.user_id is not None else None
                decided = {
                    "by": decision.by.value,
                    "reason": decision.reason,
                    "user": by_user.nick if by_user else None,
                    "at": _iso(decision.at),
                }
            return {
                "task_id": task.task_id,
                "type": task.type.value,
                "state": task.state.value,
                "vm_id": vm.id,
                "vm_name": vm.name,
                "vapp_id": vm.vapp_id,
                "vdc_id": w.vdc_of(vm).id,
                "enterprise_id": w.enterprise_of(vm).id,
                "requester": {"id": requester.id, "nick": requester.nick},
                "created_at": _iso(task.created_at),
                "decision": decided,
            }
