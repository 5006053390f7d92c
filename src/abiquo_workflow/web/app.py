"""The ASGI application: routes, templates, static files, security headers and error pages.

`create_app(settings, lifespan=…)` does no I/O and builds nothing: the store, the Abiquo client, the
mailer and the worker are opened by the lifespan it is handed (`runtime.web_lifespan` for `serve` and
the demo, a test's own over a real store) and closed when the server stops. `settings` is what the app
itself is built from: which proxies to believe and where people reach it.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from abiquo_workflow import __version__
from abiquo_workflow.config import Settings
from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.web import api, callback, dashboard, decisions, health
from abiquo_workflow.web.state import Lifespan
from abiquo_workflow.web.templating import error_page
from abiquo_workflow.web.throttle import SignInThrottle

log = structlog.stdlib.get_logger(__name__)

#: Pages hold signed links: never cache them, never leak them in a Referer, never frame them.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

_PAGE_PATHS = ("/accept", "/decline", "/multiple", "/", "/sign-in", "/sign-out")
#: Pages under these prefixes too (the dashboard's requests).
_PAGE_PREFIXES = ("/requests/",)

#: An `X-Request-ID` we take as the request's id (a proxy's or a client's): short, and no character
#: that could forge a log line or a header. Anything else is replaced by an id of our own.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: A task id as Abiquo writes them (the callback parser's rule), bound to the log lines of its pages.
_TASK_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Pages about one task, named by `?task=` (the log lines of the request carry it as `task_id`).
_TASK_PAGES = ("/accept", "/decline")


class RequestContext:
    """Gives each HTTP request an id, `http_request_id` on every log line logged while it is handled
    and `X-Request-ID` on its answer: the caller's `X-Request-ID` if it looks sane, else a new one. On
    the pages of one task, the lines carry its `task_id` too.

    The structlog context is put back as it was when the request ends, except after an unhandled
    error, whose 500 answer is logged outside every middleware (it should carry the id too).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        context: dict[str, object] = {"http_request_id": request_id}
        if scope["path"] in _TASK_PAGES:
            task = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("task")
            if task and _TASK_ID.fullmatch(task):
                context["task_id"] = task

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        before = structlog.contextvars.get_contextvars()
        structlog.contextvars.bind_contextvars(**context)
        await self.app(scope, receive, with_id)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**before)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given = bytes(value).decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response (static files keep their own cache headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present and not (static and name == "cache-control"):
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _wants_page(request: Request) -> bool:
    path = request.url.path
    return path in _PAGE_PATHS or path.startswith(_PAGE_PREFIXES)


def _http_message(request: Request, exc: HTTPException) -> str:
    """The exception's own detail, or a sentence in place of the router's bare "Not Found" and the like."""
    detail = str(exc.detail)
    if detail != HTTPStatus(exc.status_code).phrase:
        return detail
    path = request.url.path
    if exc.status_code == 404:
        return f"There is nothing at {path}."
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow")
        return f"{request.method} is not allowed on {path}" + (f"; use {allowed}." if allowed else ".")
    return f"The request could not be handled: {exc.status_code} {detail}."


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = _http_message(request, exc)
    if _wants_page(request):
        response = error_page(request, exc.status_code, "Not available", message)
        response.headers.update(exc.headers or {})
        return response
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "The request is not in the expected form."}, status_code=400)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.error("web.database_unavailable", path=request.url.path, error=str(exc))
    message = (
        "The database is not available right now, so nothing was shown or changed. "
        "Try again in a few minutes."
    )
    if _wants_page(request):
        return error_page(request, 503, "Try again later", message)
    return JSONResponse({"error": message}, status_code=503)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("web.unexpected_error", path=request.url.path)
    message = "Something went wrong on our side. The error was logged; please try again in a moment."
    if _wants_page(request):
        response: Response = error_page(request, 500, "Something went wrong", message)
    else:
        response = JSONResponse({"error": message}, status_code=500)
    # Starlette answers unhandled exceptions outside every middleware, SecurityHeaders included.
    response.headers.update(SECURITY_HEADERS)
    return response


def create_app(settings: Settings, *, lifespan: Lifespan) -> FastAPI:
    """The connector's web application, serving the `Services` that `lifespan` opens (web/state.py)."""

    @contextlib.asynccontextmanager
    async def open_services(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan() as services:
            app.state.services = services
            app.state.sessions = dashboard.session_keeper(services.settings)
            log.info("web.started", public_url=settings.server.base_url, database=repr(services.store))
            yield

    app = FastAPI(
        title="abiquo-workflow",
        version=__version__,
        lifespan=open_services,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(callback.router)
    app.include_router(decisions.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.mount(api.PREFIX, api.create_api(app.state))
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.state.abiquo_check = health.AbiquoCheck()
    app.state.sign_in_throttle = SignInThrottle(settings.dashboard.max_failed_sign_ins)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestContext)
    if settings.server.trusted_proxies:
        # Only a peer in server.trusted_proxies may say, in X-Forwarded-For, whom it forwards for.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.server.trusted_proxies))
    return app
