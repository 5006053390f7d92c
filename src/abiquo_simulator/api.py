"""The simulated Abiquo API under /api: HTTP Basic auth, content negotiation, absolute hrefs, paging,
Abiquo's error bodies, and continue/cancel of held tasks (docs/protocol.md §4, §6, §7, §8).

Every resource endpoint is declared with the Abiquo media type names it offers and a builder that turns
the locked state into a representation; `_resource` does the rest (auth, negotiation, errors, rendering).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .errors import AbiquoApiError, bad_request, forbidden, not_found, unauthorized
from .media import Negotiated, NotAcceptable, error_format, negotiate
from .paging import Page, PagingError, paginate
from .rendering import Format, Link, Representation, render
from .representations import Representer, error_body
from .simulator import Simulator, State
from .tasks import Task
from .world import (
    Datacenter,
    Disk,
    Enterprise,
    Role,
    User,
    VirtualAppliance,
    VirtualDatacenter,
    VirtualMachine,
    Volume,
    World,
    collation_key,
)

API_PREFIX = "/api"
_ERRORS_KIND = "errors"


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a builder needs about the request."""

    user: User
    media: Negotiated
    rep: Representer
    params: Mapping[str, str]
    path: Mapping[str, Any]

    @property
    def is_cloud_admin(self) -> bool:
        return self.rep.world.roles[self.user.role_id].name == "CLOUD_ADMIN"

    def reach(self, enterprise_id: int) -> None:
        """Only a cloud admin sees other enterprises (GEN-4 otherwise)."""
        if not self.is_cloud_admin and enterprise_id != self.user.enterprise_id:
            raise forbidden()


Builder = Callable[[Ctx, State], Representation]


def api_base(request: Request) -> str:
    """The absolute API root as the client reached it, e.g. `http://127.0.0.1:8123/api/`."""
    return f"{str(request.base_url).rstrip('/')}{API_PREFIX}/"


def error_response(status: int, code: str, message: str, fmt: Format) -> Response:
    headers = {"WWW-Authenticate": 'Basic realm="Abiquo Api"'} if status == 401 else None
    return Response(
        error_body(code, message, fmt),
        status_code=status,
        media_type=f"application/vnd.abiquo.{_ERRORS_KIND}+{fmt}",
        headers=headers,
    )


def api_error_response(exc: AbiquoApiError, fmt: Format) -> Response:
    return error_response(exc.status, exc.code, exc.message, fmt)


def authenticate(world: World, authorization: str | None) -> User:
    """The user named by an HTTP Basic `Authorization` header, or 401."""
    if not authorization or authorization[:6].lower() != "basic ":
        raise unauthorized()
    try:
        nick, sep, password = (
            base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8").partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        raise unauthorized() from None
    user = world.user_by_nick(nick) if sep else None
    if user is None or not secrets.compare_digest(user.password.encode(), password.encode()):
        raise unauthorized()
    return user


# --- Lookups that answer Abiquo's 404s ---------------------------------------------------------

_Item = TypeVar("_Item")
_Storage = TypeVar("_Storage", Disk, Volume)
_NO_ENTERPRISE = "The requested enterprise does not exist"


def _found(
    items: Mapping[int, _Item],
    key: int,
    code: str,
    message: str,
    inside: Callable[[_Item], bool] = lambda _: True,
) -> _Item:
    """`items[key]`, when it exists and lies `inside` the parent its URL names; else Abiquo's 404 with
    `code`. Abiquo answers the same for an id that exists under another parent as for no such id."""
    item = items.get(key)
    if item is None or not inside(item):
        raise not_found(code, message)
    return item


def _enterprise(ctx: Ctx, w: World, enterprise_id: int) -> Enterprise:
    enterprise = _found(w.enterprises, enterprise_id, "EN-0", _NO_ENTERPRISE)
    ctx.reach(enterprise.id)
    return enterprise


def _enterprise_or_all(ctx: Ctx, w: World, raw: str) -> Enterprise | None:
    """`_` stands for every enterprise in user URLs (docs/protocol.md §7.1)."""
    if raw == "_":
        return None
    if not raw.isdigit():
        raise not_found("EN-0", _NO_ENTERPRISE)
    return _enterprise(ctx, w, int(raw))


def _user(ctx: Ctx, w: World) -> User:
    enterprise = _enterprise_or_all(ctx, w, ctx.path["ent"])
    user = _found(w.users, ctx.path["user_id"], "USER-3", "The requested user does not exist")
    if enterprise is not None and user.enterprise_id != enterprise.id:
        raise not_found("USER-0", "The user is not assigned to the enterprise")
    ctx.reach(user.enterprise_id)
    return user


def _role(w: World, role_id: int) -> Role:
    return _found(w.roles, role_id, "ROLE-0", "The requested role does not exist")


def _datacenter(w: World, datacenter_id: int) -> Datacenter:
    return _found(w.datacenters, datacenter_id, "DC-0", "The requested datacenter does not exist")


def _vdc(ctx: Ctx, w: World) -> VirtualDatacenter:
    vdc = _found(w.vdcs, ctx.path["vdc_id"], "VDC-0", "The requested virtual datacenter does not exist")
    ctx.reach(vdc.enterprise_id)
    return vdc


def _vapp(ctx: Ctx, w: World) -> VirtualAppliance:
    vdc = _vdc(ctx, w)
    message = "The requested virtual appliance does not exist"
    return _found(w.vapps, ctx.path["vapp_id"], "VAPP-0", message, lambda vapp: vapp.vdc_id == vdc.id)


def _vm(ctx: Ctx, w: World) -> VirtualMachine:
    vapp = _vapp(ctx, w)
    message = "The requested virtual machine does not exist"
    return _found(w.vms, ctx.path["vm_id"], "VM-1", message, lambda vm: vm.vapp_id == vapp.id)


def _user_matches(user: User, text: str) -> bool:
    return any(text in collation_key(v) for v in (user.nick, user.name, user.surname, user.email or ""))


def _task_matches(world: World) -> Callable[[Task, str], bool]:
    def matches(task: Task, text: str) -> bool:
        vm = world.vms[task.vm_id]
        return any(text in v.casefold() for v in (task.task_id, str(vm.id), vm.name, task.type.value))

    return matches


_USER_SORT: dict[str, Callable[[User], Any]] = {
    "name": lambda u: (collation_key(u.name), collation_key(u.surname), u.id),
    "surname": lambda u: (collation_key(u.surname), collation_key(u.name), u.id),
    "nick": lambda u: (u.nick, u.id),
    "email": lambda u: (u.email or "", u.id),
    "id": lambda u: u.id,
}
_NAME_SORT: dict[str, Callable[[Any], Any]] = {
    "name": lambda x: (collation_key(x.name), x.id),
    "id": lambda x: x.id,
}


# --- Builders ----------------------------------------------------------------------------------


def _login(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.user(ctx.user)


def _named_listing(
    ctx: Ctx,
    items: list[_Item],
    href: str,
    kind: str,
    represent: Callable[[list[_Item], tuple[Link, ...], int], Representation],
) -> Representation:
    """A page of named objects (roles, enterprises, vApps, VMs), which Abiquo sorts by name or id, as
    `represent(items, links, total)` writes it."""
    page = paginate(items, href, ctx.params, sort_keys=_NAME_SORT, kind=kind)
    return represent(page.items, page.links, page.total)


def _roles(ctx: Ctx, s: State) -> Representation:
    roles = list(s.world.roles.values())
    return _named_listing(ctx, roles, ctx.rep.hrefs.base + "admin/roles", "roles", ctx.rep.roles)


def _role_one(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.role(_role(s.world, ctx.path["role_id"]))


def _role_privileges(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.privileges(_role(s.world, ctx.path["role_id"]))


def _enterprises(ctx: Ctx, s: State) -> Representation:
    visible = [
        e for e in s.world.enterprises.values() if ctx.is_cloud_admin or e.id == ctx.user.enterprise_id
    ]
    href = ctx.rep.hrefs.base + "admin/enterprises"
    return _named_listing(ctx, visible, href, "enterprises", ctx.rep.enterprises)


def _enterprise_one(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.enterprise(_enterprise(ctx, s.world, ctx.path["ent_id"]))


def _users(ctx: Ctx, s: State) -> Representation:
    enterprise = _enterprise_or_all(ctx, s.world, ctx.path["ent"])
    if enterprise is None and not ctx.is_cloud_admin:
        enterprise = s.world.enterprises[ctx.user.enterprise_id]
    href = ctx.rep.hrefs.base + f"admin/enterprises/{ctx.path['ent']}/users"
    users = s.world.users_of(enterprise.id if enterprise else None)
    page = paginate(users, href, ctx.params, sort_keys=_USER_SORT, matches=_user_matches, kind=ctx.media.kind)
    return ctx.rep.users(page.items, page.links, page.total, with_roles=ctx.media.kind == "userswithroles")


def _user_one(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.user(_user(ctx, s.world))


def _pending_page(ctx: Ctx, s: State, tasks: list[Task], href: str, parent: str) -> Representation:
    """A page of held tasks. Real Abiquo pages these by `startwith`/`limit` and counts them in `totalSize`
    but links only `self` and `parent`, never `first`/`last`/`previous`/`next` (docs/protocol.md §6,
    §11.7)."""
    page: Page[Task] = paginate(tasks, href, ctx.params, matches=_task_matches(s.world), kind="tasks")
    links = (Link("self", href, "tasks"), Link("parent", parent))
    return ctx.rep.tasks(page.items, links, page.total, listing=True)


def _enterprise_pending(ctx: Ctx, s: State) -> Representation:
    enterprise = _enterprise(ctx, s.world, ctx.path["ent_id"])
    tasks = [t for t in s.tasks.queueing() if s.world.enterprise_of(s.world.vms[t.vm_id]).id == enterprise.id]
    h = ctx.rep.hrefs
    return _pending_page(ctx, s, tasks, h.enterprise_pending(enterprise.id), h.enterprise(enterprise.id))


def _user_pending(ctx: Ctx, s: State) -> Representation:
    user = _user(ctx, s.world)
    tasks = [t for t in s.tasks.queueing() if t.requester_id == user.id]
    h = ctx.rep.hrefs
    return _pending_page(ctx, s, tasks, h.user_pending(user), h.user(user))


def _location(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.location(_datacenter(s.world, ctx.path["dc_id"]))


def _admin_datacenter(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.datacenter(_datacenter(s.world, ctx.path["dc_id"]))


def _vdc_one(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.vdc(_vdc(ctx, s.world))


def _vapps(ctx: Ctx, s: State) -> Representation:
    vdc = _vdc(ctx, s.world)
    vapps, href = s.world.vapps_of(vdc.id), ctx.rep.hrefs.vapps(vdc.id)
    return _named_listing(ctx, vapps, href, "virtualappliances", ctx.rep.vapps)


def _vapp_one(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.vapp(_vapp(ctx, s.world))


def _vms(ctx: Ctx, s: State) -> Representation:
    vapp = _vapp(ctx, s.world)
    vms, href = s.world.vms_of(vapp.id), ctx.rep.hrefs.vms(vapp)
    return _named_listing(ctx, vms, href, "virtualmachines", ctx.rep.vms)


def _vm_one(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.vm(_vm(ctx, s.world))


def _disks(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.disks(_vm(ctx, s.world))


def _disk_one(ctx: Ctx, s: State) -> Representation:
    vm = _vm(ctx, s.world)
    disk = next((d for d in vm.disks if d.id == ctx.path["disk_id"]), None)
    if disk is None:
        raise not_found(message="The requested hard disk does not exist")
    return ctx.rep.disk(vm, disk)


def _volumes(ctx: Ctx, s: State) -> Representation:
    return ctx.rep.volumes(_vm(ctx, s.world))


def _attached_in_vdc(
    ctx: Ctx, w: World, attached: Callable[[VirtualMachine], Iterable[_Storage]], storage_id: int
) -> tuple[VirtualMachine, _Storage] | None:
    """The disk or volume `storage_id` among `attached(vm)` of the VDC's VMs, with its VM; None if no
    VM of the VDC has it. Abiquo links storage under the VDC too (docs/protocol.md §7.10, §11.10)."""
    vdc = _vdc(ctx, w)
    in_vdc = (vm for vm in w.vms.values() if w.vdc_of(vm).id == vdc.id)
    return next(((vm, item) for vm in in_vdc for item in attached(vm) if item.id == storage_id), None)


def _vdc_disk(ctx: Ctx, s: State) -> Representation:
    found = _attached_in_vdc(ctx, s.world, lambda vm: vm.disks, ctx.path["disk_id"])
    if found is None:
        raise not_found(message="The requested hard disk does not exist")
    return ctx.rep.disk(*found)


def _vdc_volume(ctx: Ctx, s: State) -> Representation:
    found = _attached_in_vdc(ctx, s.world, lambda vm: vm.volumes, ctx.path["volume_id"])
    if found is None:
        raise not_found("VOL-0", "The requested volume does not exist")
    return ctx.rep.volume(*found)


def _vm_tasks(ctx: Ctx, s: State) -> Representation:
    vm = _vm(ctx, s.world)
    href = ctx.rep.hrefs.tasks(vm)
    page: Page[Task] = paginate(s.tasks.of_vm(vm.id), href, ctx.params, kind="tasks")
    links = (Link("self", href, "tasks"), Link("parent", ctx.rep.hrefs.vm(vm), "virtualmachine"), *page.links)
    return ctx.rep.tasks(page.items, links, page.total, listing=False)


def _task_one(ctx: Ctx, s: State) -> Representation:
    vm = _vm(ctx, s.world)
    task = s.tasks.get(ctx.path["task_id"])
    if task.vm_id != vm.id:
        raise not_found("TASK-1", "The requested task does not exist")
    return ctx.rep.task(task, listing=False)


# --- The routes --------------------------------------------------------------------------------

_VDC = "/cloud/virtualdatacenters/{vdc_id:int}"
_VAPP = _VDC + "/virtualappliances/{vapp_id:int}"
_VM = _VAPP + "/virtualmachines/{vm_id:int}"

Endpoint = Callable[[Request], Awaitable[Response]]


def _route(path: str, endpoint: Endpoint, methods: list[str] | None = None) -> Route:
    return Route(API_PREFIX + path, endpoint, methods=methods)


class Api:
    """The /api routes over one simulator."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    def routes(self) -> list[BaseRoute]:
        """The routes, with their full paths (under /api)."""
        r = self._resource
        return [
            _route("/version", self._version),
            _route("/login", r(("user",), _login)),
            _route("/admin/roles", r(("roles",), _roles)),
            _route("/admin/roles/{role_id:int}", r(("role",), _role_one)),
            _route("/admin/roles/{role_id:int}/action/privileges", r(("privileges",), _role_privileges)),
            _route("/admin/enterprises", r(("enterprises",), _enterprises)),
            _route("/admin/enterprises/{ent_id:int}", r(("enterprise",), _enterprise_one)),
            _route("/admin/enterprises/{ent_id:int}/action/pendingtasks", r(("tasks",), _enterprise_pending)),
            # 2.6 clients sent no Accept and got users with roles as XML (docs/protocol.md §7.2).
            _route(
                "/admin/enterprises/{ent}/users",
                r(("users", "userswithroles"), _users, ("userswithroles", "users")),
            ),
            _route("/admin/enterprises/{ent}/users/{user_id:int}", r(("user",), _user_one)),
            _route(
                "/admin/enterprises/{ent}/users/{user_id:int}/action/pendingtasks",
                r(("tasks",), _user_pending),
            ),
            _route("/cloud/locations/{dc_id:int}", r(("datacenter",), _location)),
            _route("/admin/datacenters/{dc_id:int}", r(("datacenter",), _admin_datacenter)),
            _route(_VDC, r(("virtualdatacenter",), _vdc_one)),
            _route(_VDC + "/disks/{disk_id:int}", r(("harddisk",), _vdc_disk)),
            _route(_VDC + "/volumes/{volume_id:int}", r(("volume",), _vdc_volume)),
            _route(_VDC + "/virtualappliances", r(("virtualappliances",), _vapps)),
            _route(_VAPP, r(("virtualappliance",), _vapp_one)),
            _route(_VAPP + "/virtualmachines", r(("virtualmachines",), _vms)),
            _route(_VM, r(("virtualmachine",), _vm_one)),
            _route(_VM + "/storage/disks", r(("harddisks",), _disks)),
            _route(_VM + "/storage/disks/{disk_id:int}", r(("harddisk",), _disk_one)),
            _route(_VM + "/storage/volumes", r(("volumes",), _volumes)),
            _route(_VM + "/tasks", r(("tasks",), _vm_tasks)),
            _route(_VM + "/tasks/{task_id}", r(("task",), _task_one)),
            _route(_VM + "/tasks/{task_id}/action/continue", self._decision("continue"), methods=["POST"]),
            _route(_VM + "/tasks/{task_id}/action/cancel", self._decision("cancel"), methods=["POST"]),
        ]

    def _default_format(self) -> Format:
        return "xml" if self.simulator.settings.mode == "2.6" else "json"

    def _authenticate(self, request: Request) -> User:
        return self.simulator.locked(lambda s: authenticate(s.world, request.headers.get("authorization")))

    def _resource(
        self, kinds: tuple[str, ...], build: Builder, legacy_kinds: tuple[str, ...] | None = None
    ) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            accept = request.headers.get("accept")
            fmt = error_format(accept, self._default_format())
            try:
                user = self._authenticate(request)
                offered = legacy_kinds if legacy_kinds and self.simulator.settings.mode == "2.6" else kinds
                media = negotiate(accept, offered, self._default_format())
                fmt = media.fmt
                base, mode = api_base(request), self.simulator.settings.mode

                def build_locked(s: State) -> Representation:
                    rep = Representer(s.world, base, mode)
                    return build(Ctx(user, media, rep, request.query_params, request.path_params), s)

                representation = self.simulator.locked(build_locked)
            except NotAcceptable as exc:
                return error_response(406, exc.code, exc.message, "json")
            except PagingError as exc:
                return api_error_response(bad_request(str(exc)), fmt)
            except AbiquoApiError as exc:
                return api_error_response(exc, fmt)
            return Response(render(representation, media.fmt), media_type=media.content_type)

        return endpoint

    def _decision(self, action: str) -> Endpoint:
        """POST …/action/continue or …/action/cancel: 204 and an empty body, or an Abiquo error."""

        async def endpoint(request: Request) -> Response:
            fmt = error_format(request.headers.get("accept"), self._default_format())
            raw = await request.body()
            reason = raw.decode("utf-8", errors="replace").strip() or None
            content_type = request.headers.get("content-type")
            task_id = request.path_params["task_id"]
            try:
                user = self._authenticate(request)
            except AbiquoApiError as exc:
                return api_error_response(exc, fmt)

            def decide(s: State) -> None:
                status = 204
                try:
                    rep = Representer(s.world, "", self.simulator.settings.mode)
                    ctx = Ctx(user, Negotiated("task", fmt, None), rep, {}, request.path_params)
                    self.simulator.decide_via_api(user, task_id, _vm(ctx, s.world), action, reason)
                except AbiquoApiError as exc:
                    status = exc.status
                    raise
                finally:
                    self.simulator.record_decision_call(
                        task_id, action, reason, content_type, status, user.nick
                    )

            try:
                self.simulator.locked(decide)
            except AbiquoApiError as exc:
                return api_error_response(exc, fmt)
            return Response(status_code=204)

        return endpoint

    async def _version(self, request: Request) -> Response:
        try:
            self._authenticate(request)
        except AbiquoApiError as exc:
            return api_error_response(
                exc, error_format(request.headers.get("accept"), self._default_format())
            )
        return PlainTextResponse("2.6" if self.simulator.settings.mode == "2.6" else "3.10")

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        """Abiquo's answer for an /api path no route serves (404) or a method it does not allow (405)."""
        fmt = error_format(request.headers.get("accept"), self._default_format())
        try:
            self._authenticate(request)
        except AbiquoApiError as auth_error:
            return api_error_response(auth_error, fmt)
        if exc.status_code == 405:
            response = error_response(
                405, "405-METHOD NOT ALLOWED", "The resource does not expose this method", fmt
            )
            response.headers.update(exc.headers or {})
            return response
        return api_error_response(not_found(), fmt)
