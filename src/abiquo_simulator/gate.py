"""The ASGI layer in front of /api: the configured latency, injected faults, and the record of every call.

It sits outside Starlette so that it sees the server's own `send`, which it needs to drop a connection.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import API_PREFIX, error_response
from .media import error_format
from .simulator import Simulator

#: Abiquo's own codes for the statuses a fault is most likely to use (APIError.java, docs/protocol.md S5).
_ABIQUO_STATUS_ERRORS = {
    500: ("500-INTERNAL SERVER ERROR", "Unexpected exception"),
    503: ("503- Service Unavailable", "Service unavailable: try again in a few moments"),
}


class ConnectionDropUnsupported(RuntimeError):
    """The server running the app does not let the app reach the connection, so it cannot drop it."""


async def drop_connection(receive: Receive, send: Send) -> None:
    """Close the client's connection without sending a byte of response.

    ASGI has no "abort" message, and raising before the response starts makes uvicorn answer 500, which is
    a response. uvicorn's `send` is a bound method of its per-request cycle object, which holds the
    connection's transport; aborting that transport is what a crashed or unplugged Abiquo looks like to a
    client ("server disconnected without sending a response"). We then wait for uvicorn to notice the
    disconnect, so it does not try to answer for us.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if not callable(abort):
        raise ConnectionDropUnsupported(
            "Dropping a connection needs uvicorn's HTTP/1.1 server (h11 or httptools)."
        )
    abort()
    while (await receive())["type"] != "http.disconnect":
        pass


def _status_error(status: int) -> tuple[str, str]:
    if status in _ABIQUO_STATUS_ERRORS:
        return _ABIQUO_STATUS_ERRORS[status]
    try:
        phrase = HTTPStatus(status).phrase.upper()
    except ValueError:
        phrase = "ERROR"
    return f"{status}-{phrase}", "Injected fault"


def _is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


class ApiGate:
    def __init__(self, app: ASGIApp, simulator: Simulator) -> None:
        self.app = app
        self.simulator = simulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        with self.simulator.answering():
            await self._gate(scope, receive, send)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        sim = self.simulator
        method, path = scope["method"], scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        if sim.settings.latency:
            await asyncio.sleep(sim.settings.latency)

        fault = sim.take_fault(path)
        if fault is not None and fault.drop:
            sim.record_api_call(method, path, query, None)
            await drop_connection(receive, send)
            return
        if fault is not None and fault.status is not None:
            code, message = _status_error(fault.status)
            fmt = error_format(Headers(scope=scope).get("accept"), "json")
            sim.record_api_call(method, path, query, fault.status)
            await error_response(fault.status, code, message, fmt)(scope, receive, send)
            return
        if fault is not None and fault.latency is not None:
            await asyncio.sleep(fault.latency)

        recorded = False

        async def recording_send(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                # Before the answer leaves: a client that has its answer finds the call in the log.
                sim.record_api_call(method, path, query, message["status"])
                recorded = True
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if not recorded:
                sim.record_api_call(method, path, query, None)
