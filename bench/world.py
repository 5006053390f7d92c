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
    GET  /_bench/inbox?count=N      waits until the inbox holds N messages; {"count", "at"}
    POST /_bench/inbox/clear        forgets every message received so far
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Coroutine
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from abiquo_simulator import Simulator, create_app
from abiquo_workflow.mail.inbox import Inbox

_CONTINUE_SUFFIX = "/action/continue"


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

    async def inbox_count(self, request: Request) -> Response:
        count = int(request.query_params.get("count", "0"))
        timeout = float(request.query_params.get("timeout", "10"))
        try:
            messages = await self.inbox.wait_for(count, timeout)
        except TimeoutError:
            return JSONResponse({"count": len(self.inbox.messages)}, status_code=504)
        return JSONResponse({"count": len(messages), "at": time.perf_counter()})

    async def inbox_clear(self, request: Request) -> Response:
        self.inbox.clear()
        return JSONResponse({})


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
