"""The world around the connector during the benchmark: the Abiquo simulator and an SMTP inbox, in a process
of their own, plus a few `/_bench` routes that let `loop.py` time what arrives here.

    python bench/world.py            prints one JSON line {"url": ..., "smtp_port": ...} once it serves

Why a process of its own: the connector under test is a real `abiquo-workflow serve`, and in production
Abiquo and the mail relay live elsewhere. Keeping them out of the load generator's process means their
work (answering the triage's API reads, parsing hundreds of emails) does not steal the load generator's
interpreter lock, and the load generator does not delay their answers.

Timestamps are `time.perf_counter()`, which on Linux reads CLOCK_MONOTONIC, one clock for every process
of the machine; `loop.py` checks that against `/_bench/clock` before it trusts any difference.

Routes added beside the simulator's own (`/api`, `/_sim`):

    GET  /_bench/clock              {"perf_counter": now}
    POST /_bench/capture            keeps the body and Content-Type (a callback_url for /_sim/requests)
    GET  /_bench/captured           {"body": ..., "content_type": ...} of the last capture
    GET  /_bench/continue?task=ID   waits until a continue for task ID arrived; {"at": when it arrived}
    POST /_bench/hold               {"vm": 1, "count": N, "bodies": true}: holds N deploys of the VM as
                                    /_sim/requests does, but hands their callbacks back instead of POSTing
                                    them: {"callbacks": [{"task_ids", "body", "content_type"}]} (the
                                    bodies left out when "bodies" is false), for the bench to send itself
    GET  /_bench/inbox?count=N      waits until the inbox holds N messages (with &subject=PREFIX, N whose
                                    subject starts so; with &to=ADDRESS, N sent to ADDRESS); {"count", "at"}:
                                    "at" is when the Nth of them arrived
    POST /_bench/inbox/clear        forgets every message received so far
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from abiquo_simulator import Simulator, create_app
from abiquo_workflow.mail.inbox import Inbox, ReceivedMessage

_CONTINUE_SUFFIX = "/action/continue"
#: Where `/_bench/hold` tells the simulator to POST its callbacks: an in-process ASGI app, no network.
_HOLD_URL = "http://bench.invalid/hold"


class CallbackKeeper:
    """An ASGI app that answers every request 200 and keeps its body and Content-Type, in order."""

    def __init__(self) -> None:
        self.kept: list[tuple[bytes, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        content_type = Headers(scope=scope).get("content-type", "")
        self.kept.append((body, content_type))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class ContinueClock:
    """When each task's first continue reached the simulator, and a way to wait for one."""

    def __init__(self) -> None:
        self._arrived: dict[str, float] = {}
        self._waiting: dict[str, asyncio.Event] = {}

    def record(self, path: str) -> None:
        # …/tasks/{task_id}/action/continue
        task_id = path.rsplit("/", 3)[-3]
        self._arrived.setdefault(task_id, time.perf_counter())
        if task_id in self._waiting:
            self._waiting[task_id].set()

    async def wait(self, task_id: str, within: float) -> float | None:
        if task_id not in self._arrived:
            event = self._waiting.setdefault(task_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), within)
            except TimeoutError:
                return None
            finally:
                self._waiting.pop(task_id, None)
        return self._arrived[task_id]


class World:
    """The simulator's ASGI app, with continue arrivals timed at the door and `/_bench` routes."""

    def __init__(self, simulator: Simulator, inbox: Inbox) -> None:
        self.simulator = simulator
        self.inbox = inbox
        self.continues = ContinueClock()
        self.captured: tuple[bytes, str] = (b"", "")
        self._simulator_app = create_app(simulator)
        self._bench_app = Starlette(
            routes=[
                Route("/_bench/clock", self.clock),
                Route("/_bench/capture", self.capture, methods=["POST"]),
                Route("/_bench/captured", self.last_capture),
                Route("/_bench/continue", self.continue_arrival),
                Route("/_bench/hold", self.hold, methods=["POST"]),
                Route("/_bench/inbox", self.inbox_count),
                Route("/_bench/inbox/clear", self.inbox_clear, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if scope["method"] == "POST" and path.endswith(_CONTINUE_SUFFIX):
                self.continues.record(path)
            elif path.startswith("/_bench/"):
                await self._bench_app(scope, receive, send)
                return
        await self._simulator_app(scope, receive, send)

    async def clock(self, request: Request) -> Response:
        return JSONResponse({"perf_counter": time.perf_counter()})

    async def capture(self, request: Request) -> Response:
        self.captured = (await request.body(), request.headers.get("content-type", ""))
        return JSONResponse({})

    async def last_capture(self, request: Request) -> Response:
        body, content_type = self.captured
        return JSONResponse({"body": body.decode("utf-8"), "content_type": content_type})

    async def continue_arrival(self, request: Request) -> Response:
        timeout = float(request.query_params.get("timeout", "10"))
        at = await self.continues.wait(request.query_params["task"], timeout)
        if at is None:
            return JSONResponse({"error": "no continue arrived in time"}, status_code=504)
        return JSONResponse({"at": at})

    async def hold(self, request: Request) -> Response:
        data = await request.json()
        keeper = CallbackKeeper()
        transport = httpx2.ASGITransport(app=keeper)
        callbacks: list[dict[str, Any]] = []
        for _ in range(int(data["count"])):
            result = await self.simulator.request(
                "deploy", vm=int(data["vm"]), callback_url=_HOLD_URL, transport=transport
            )
            if result.callback.status != 200:
                return JSONResponse({"error": f"the simulator could not hold a task: {result.callback}"}, 500)
            callbacks.append({"task_ids": [t.task_id for t in result.tasks]})
        if data.get("bodies", True):
            for callback, (body, content_type) in zip(callbacks, keeper.kept, strict=True):
                callback.update(body=body.decode("utf-8"), content_type=content_type)
        return JSONResponse({"callbacks": callbacks})

    async def inbox_count(self, request: Request) -> Response:
        count = int(request.query_params.get("count", "0"))
        timeout = float(request.query_params.get("timeout", "10"))
        subject = request.query_params.get("subject", "")
        to = request.query_params.get("to", "").lower()

        def counts(message: ReceivedMessage) -> bool:
            if to and to not in (address.lower() for address in message.rcpt_tos):
                return False
            return message.subject.startswith(subject)

        deadline = time.perf_counter() + timeout
        matching: list[ReceivedMessage] = []
        seen = 0
        while True:
            messages = self.inbox.messages
            matching.extend(m for m in messages[seen:] if counts(m))
            seen = len(messages)
            if len(matching) >= count:
                at = _arrival(matching[count - 1]) if count else time.perf_counter()
                return JSONResponse({"count": len(matching), "at": at})
            try:
                await self.inbox.wait_for(len(messages) + 1, max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                return JSONResponse({"count": len(matching)}, status_code=504)

    async def inbox_clear(self, request: Request) -> Response:
        self.inbox.clear()
        return JSONResponse({})


def _arrival(message: ReceivedMessage) -> float:
    """When `message` was received, on the perf_counter clock (the inbox stamps it with the wall clock)."""
    return time.perf_counter() - (datetime.now(UTC) - message.received_at).total_seconds()


def _listening_socket(host: str) -> socket.socket:
    # IPPROTO_TCP so that asyncio sets TCP_NODELAY (see abiquo_workflow.servers).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


async def serve(host: str) -> None:
    inbox = Inbox(host, 0)
    inbox.start()
    sock = _listening_socket(host)
    url = f"http://{host}:{sock.getsockname()[1]}"
    simulator = Simulator(style="json")
    simulator.public_api_url = f"{url}/api/"
    config = uvicorn.Config(
        World(simulator, inbox), lifespan="off", log_config=None, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            await serving  # raises what stopped it
        await asyncio.sleep(0.01)
    print(json.dumps({"url": url, "smtp_port": inbox.port}), flush=True)
    try:
        await serving
    finally:
        inbox.stop()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # the event loop `serve` uses too (uvicorn[standard])
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    _run(serve(parser.parse_args().host))
