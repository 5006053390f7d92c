"""Serving ASGI apps with uvicorn: `BackgroundServer` in a thread (the demo's side servers, the tests'
servers) and `serve_in_foreground` on the main thread (`serve`, `demo` and `simulate`).

These are the project's only server runners: the Abiquo simulator (`abiquo_simulator`) is served by them
too (see `simulation.py`), so start-up, shutdown and address handling cannot drift apart.

A background server's thread has its own event loop, so a test (or the demo's main loop) can block
without stalling it. Port 0 picks a free port; `url` reports the real one once started. An IPv6 host
(one with a colon, such as `::1`) is listened on as IPv6 and written in brackets in `url`.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from types import FrameType
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from abiquo_workflow.lifecycle import Startable

_STARTUP_TIMEOUT = 30.0


def http_url(host: str, port: int) -> str:
    """`http://host:port`, with an IPv6 address in brackets as URLs need it."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    """A bound socket for uvicorn: binding it ourselves lets port 0 pick a free port we can report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without
    # it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"Cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


class BackgroundServer(Startable):
    """`with BackgroundServer(app) as server:` serves `app` at `server.url` until the block ends."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lifespan: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._lifespan = lifespan
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    def start(self) -> None:
        sock = _bind(self.host, self._requested_port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan=self._lifespan,
            log_config=None,
            log_level="warning",
            access_log=False,
            # Which proxies to believe is the app's decision (`server.trusted_proxies`), not the runner's.
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)  # off the main thread, uvicorn leaves signals alone
        self._server = server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name=f"server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server for {self.url} did not start; see the log above")
            time.sleep(0.005)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None


class _Terminated(Exception):
    """Raised by the SIGTERM handler `serve_in_foreground` installs while uvicorn runs."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def serve_in_foreground(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    timeout_graceful_shutdown: int,
    lifespan: Literal["auto", "on", "off"] = "auto",
) -> None:
    """Serve `app` on the main thread until SIGINT or SIGTERM, shut down gracefully, and return.

    uvicorn handles both signals itself and, once it has shut down, raises the one it stopped on again
    with the handler that was there before. For SIGTERM that is normally the default action, which
    kills the process (exit status 143) after a clean stop; here the handler before is ours, so a
    SIGTERM ends like Ctrl-C does: `serve` exits 0 and the demo can say it stopped. A SIGTERM that
    arrives before uvicorn has taken over the signals ends the same way, with nothing started.
    """
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            lifespan=lifespan,
            log_config=None,
            access_log=False,  # access lines would carry the tokens of decision links
            # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, which let any local process
            # pass for another source; the app decides whom to believe (`server.trusted_proxies`).
            proxy_headers=False,
            timeout_graceful_shutdown=timeout_graceful_shutdown,
        )
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
