"""The control surface (/_sim/..., JSON in and out, no auth) and the HTML page at / for people.

The page's forms post form-encoded bodies to the same routes; those answer with a redirect back to /
(or the page with the error, for a bad form) instead of JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .api import api_base
from .faults import FaultError, parse_fault
from .simulator import Simulator, SimulatorError

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_PAGE_TASKS = 200
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() in _FORM_TYPES


async def _read(request: Request) -> dict[str, Any]:
    """The body as a dict: form fields (strings) or a JSON object; an empty body is {}."""
    if _is_form(request):
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SimulatorError(400, "The body must be a JSON object.") from None
    if not isinstance(data, dict):
        raise SimulatorError(400, "The body must be a JSON object.")
    return data


def _whole(data: dict[str, Any], name: str) -> int | None:
    """An id field: absent or "" is None; JSON gives ints, forms give digit strings."""
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise SimulatorError(400, f"'{name}' must be a whole number (an id), not {value!r}.")


def _sizes(data: dict[str, Any], name: str) -> tuple[int, ...] | None:
    """A list of sizes: a JSON list of whole numbers, or (from the page's form) "20480, 51200"."""
    value = data.get(name)
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, list):
        sizes = [_whole({name: item.strip() if isinstance(item, str) else item}, name) for item in items]
        if all(size is not None for size in sizes):
            return tuple(size for size in sizes if size is not None)
    raise SimulatorError(
        400, f"'{name}' must list whole numbers (MB), such as [20480, 51200], not {value!r}."
    )


def _flag(data: dict[str, Any], name: str) -> bool:
    """A yes/no field: JSON true/false, or a form's checkbox ("on", "true", "1"); absent is False."""
    value = data.get(name)
    if value is None or value == "" or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("on", "true", "1", "false", "0"):
        return value.strip().lower() in ("on", "true", "1")
    raise SimulatorError(400, f"'{name}' must be true or false, not {value!r}.")


def _seconds(data: dict[str, Any], name: str) -> float:
    """A number of seconds, 0 or more; absent is 0."""
    value = data.get(name)
    if value is None or value == "":
        return 0.0
    try:
        seconds = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise SimulatorError(400, f"'{name}' must be a number of seconds, 0 or more, not {value!r}.")
    return seconds


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SimulatorError(400, f"'{name}' must be a string, not {value!r}.")
    return value


class Control:
    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.page),
            Route("/_sim/world", self.world),
            Route("/_sim/requests", self.create_request, methods=["POST"]),
            Route("/_sim/tasks", self.tasks),
            Route("/_sim/tasks/{task_id}", self.forget_task, methods=["DELETE"]),
            Route("/_sim/tasks/{task_id}/cancel", self.requester_cancel, methods=["POST"]),
            Route("/_sim/tasks/{task_id}/decide", self.decide_in_ui, methods=["POST"]),
            Route("/_sim/users/{user_id:int}", self.change_user, methods=["PUT", "POST"]),
            Route("/_sim/calls", self.calls),
            Route("/_sim/api-calls", self.api_calls),
            Route("/_sim/faults", self.faults, methods=["GET", "POST", "DELETE"]),
            Route("/_sim/settings", self.settings, methods=["GET", "PUT", "POST"]),
            Route("/_sim/reset", self.reset, methods=["POST"]),
        ]

    # --- Answering ---------------------------------------------------------------------------------

    def _failed(self, request: Request, error: SimulatorError) -> Response:
        if _is_form(request):
            return self._render_page(request, error.message, error.status)
        return JSONResponse({"error": error.message}, status_code=error.status)

    @staticmethod
    def _done(request: Request, payload: Any, status: int = 200) -> Response:
        if _is_form(request):
            return RedirectResponse("/", status_code=303)
        return JSONResponse(payload, status_code=status)

    # --- Routes ------------------------------------------------------------------------------------

    async def world(self, request: Request) -> Response:
        return JSONResponse(self.simulator.world_summary())

    async def create_request(self, request: Request) -> Response:
        try:
            data = await _read(request)
            vm, vapp = _whole(data, "vm"), _whole(data, "vapp")
            target = _text(data, "target")  # the page's "vm:1" / "vapp:2" select
            if target is not None:
                kind, _, ident = target.partition(":")
                if kind not in ("vm", "vapp") or not ident.isdigit():
                    raise SimulatorError(400, f"'target' must look like vm:1 or vapp:2, not {target!r}.")
                vm, vapp = (int(ident), None) if kind == "vm" else (None, int(ident))
            result = await self.simulator.request(
                _text(data, "action") or "",
                vm=vm,
                vapp=vapp,
                user=_whole(data, "user"),
                style=_text(data, "style"),
                hrefs=_text(data, "hrefs") or "relative",
                callback_url=_text(data, "callback_url"),
                api_url=api_base(request),
                cpu=_whole(data, "cpu"),
                ram=_whole(data, "ram"),
                disks=_sizes(data, "disks"),
                lost_callback=_flag(data, "lost_callback"),
                held_for=_seconds(data, "held_for"),
            )
        except SimulatorError as exc:
            return self._failed(request, exc)
        return self._done(request, result.to_json(), 201)

    async def tasks(self, request: Request) -> Response:
        return JSONResponse([self.simulator.task_summary(t) for t in self.simulator.tasks()])

    async def requester_cancel(self, request: Request) -> Response:
        try:
            data = await _read(request)
            task = self.simulator.cancel_as_requester(request.path_params["task_id"], _text(data, "reason"))
        except SimulatorError as exc:
            return self._failed(request, exc)
        return self._done(request, self.simulator.task_summary(task))

    async def decide_in_ui(self, request: Request) -> Response:
        try:
            data = await _read(request)
            task = self.simulator.decide_in_ui(
                request.path_params["task_id"], _text(data, "action") or "", _text(data, "reason")
            )
        except SimulatorError as exc:
            return self._failed(request, exc)
        return self._done(request, self.simulator.task_summary(task))

    async def forget_task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        try:
            self.simulator.forget_task(task_id)
        except SimulatorError as exc:
            return self._failed(request, exc)
        return self._done(request, {"task_id": task_id, "gone": True})

    async def change_user(self, request: Request) -> Response:
        try:
            data = await _read(request)
            role = _text(data, "role")
            if role is None:
                raise SimulatorError(400, "Say the user's new 'role' by name, for example USER.")
            user = self.simulator.change_role(request.path_params["user_id"], role)
        except SimulatorError as exc:
            return self._failed(request, exc)
        return self._done(request, {"id": user.id, "nick": user.nick, "role": role})

    async def calls(self, request: Request) -> Response:
        return JSONResponse([c.to_json() for c in self.simulator.decision_calls()])

    async def api_calls(self, request: Request) -> Response:
        return JSONResponse([c.to_json() for c in self.simulator.api_calls()])

    async def faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.simulator.clear_faults()
        elif request.method == "POST":
            try:
                fault = parse_fault(await _read(request))
            except FaultError as exc:
                return self._failed(request, SimulatorError(400, str(exc)))
            except SimulatorError as exc:
                return self._failed(request, exc)
            self.simulator.add_fault(fault)
            return self._done(request, fault.to_json(), 201)
        return JSONResponse([f.to_json() for f in self.simulator.faults()])

    async def settings(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.simulator.settings.to_json())
        try:
            data = await _read(request)
            if _is_form(request) and "latency" in data:
                data["latency"] = _form_number(data["latency"])
            settings = self.simulator.update_settings(data)
        except SimulatorError as exc:
            return self._failed(request, exc)
        return self._done(request, settings.to_json())

    async def reset(self, request: Request) -> Response:
        self.simulator.reset()
        return self._done(request, {"reset": True})

    # --- The page ----------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return self._render_page(request, None, 200)

    def _render_page(self, request: Request, message: str | None, status: int) -> HTMLResponse:
        sim = self.simulator
        world = sim.world_summary()
        enterprises = {e["id"]: e["name"] for e in world["enterprises"]}
        vms_by_vapp: dict[int, list[dict[str, Any]]] = {}
        for vm in world["vms"]:
            vms_by_vapp.setdefault(vm["vapp_id"], []).append(vm)
        vdcs = [
            {
                "name": vdc["name"],
                "enterprise": enterprises[vdc["enterprise_id"]],
                "vapps": [
                    {**vapp, "vms": vms_by_vapp.get(vapp["id"], [])}
                    for vapp in world["vapps"]
                    if vapp["vdc_id"] == vdc["id"]
                ],
            }
            for vdc in world["vdcs"]
        ]
        all_tasks = sim.tasks()
        calls = sim.decision_calls()
        html = _TEMPLATES.get_template("index.html").render(
            api_url=api_base(request),
            message=message,
            settings=sim.settings,
            vdcs=vdcs,
            users=[u for u in world["users"] if u["nick"] != "admin"],
            tasks=[sim.task_summary(t) for t in reversed(all_tasks[-_PAGE_TASKS:])],
            task_count=len(all_tasks),
            calls=[c.to_json() for c in reversed(calls[-_PAGE_TASKS:])],
            call_count=len(calls),
            faults=[f.to_json() for f in sim.faults()],
        )
        return HTMLResponse(html, status_code=status)


def _form_number(value: object) -> object:
    """Forms send numbers as text; a bad one is passed on for the settings check to refuse."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
