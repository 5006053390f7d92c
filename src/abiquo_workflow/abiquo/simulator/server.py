"""Running the simulator: `SimulatorServer` (a background thread, for tests and the demo) and `run`
(blocking, for the `simulate` command)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn

from .app import create_app
from .simulator import Simulator

_STARTUP_TIMEOUT = 10.0


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket; binding it ourselves lets port 0 pick a free port we can report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it each
    # keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"Cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class SimulatorServer:
    """The simulator served by uvicorn in a background thread with its own event loop.

    Use as `with SimulatorServer(Simulator()) as server:` or `async with …`; `server.url`,
    `server.api_url` and `server.simulator` are then ready, and the port is bound (port 0 picks a
    free one). Leaving the block stops the server and joins its thread.
    """

    def __init__(self, simulator: Simulator | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator if simulator is not None else Simulator()
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("The simulator server is not running; start it first.")
        return self._port

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("The simulator server is already running.")
        sock = _bind(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.simulator),
            lifespan="off",
            log_config=None,  # leave the host application's logging alone
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name=f"abiquo-simulator-{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The simulator server did not start on {self.url}.")
            time.sleep(0.005)
        self.simulator.public_api_url = self.api_url + "/"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None
        self.simulator.public_api_url = None

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimulatorServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


def run(host: str, port: int, callback_url: str | None, style: str, mode: str) -> None:
    """Serve the simulator in the foreground until interrupted (the `abiquo-workflow simulate` command)."""
    simulator = Simulator(callback_url=callback_url, style=style, mode=mode)
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    simulator.public_api_url = f"{url}/api/"
    config = uvicorn.Config(create_app(simulator), lifespan="off", access_log=False)
    # uvicorn's own logging is configured by Config, so its logger is sure to print this line.
    logging.getLogger("uvicorn.error").info(
        "Abiquo simulator: page at %s/ , API at %s/api (admin / xabiquo), callbacks to %s",
        url,
        url,
        callback_url or "(none yet: PUT /_sim/settings)",
    )
    # uvicorn shuts down gracefully, then re-raises the captured Ctrl-C; that is a normal stop.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
