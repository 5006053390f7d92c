"""`POST /callback`: where Abiquo sends held tasks. Store them and answer at once.

Abiquo waits at most `workflow.read.timeout` (10 s by default) for this answer, and a failed POST reaches
the requesting user as WKF-01. So this route only parses and stores (one transaction: request, tasks
and the triage job) and answers 200; Abiquo and SMTP are never called here.

Refusals, each with a JSON body `{"error": "<a sentence>"}` and nothing stored: 403 source not in
`server.callback_allow`, or the `server.callback_token` missing or wrong · 413 body over
`server.max_body`, or more than `server.max_tasks` tasks · 415 a media type that is neither XML nor JSON ·
400 anything else unreadable · 503 the database could not store it (Abiquo reports WKF-01; nothing is
half-stored).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress

import structlog
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from abiquo_workflow import metrics
from abiquo_workflow.abiquo.payload import parse_callback
from abiquo_workflow.config import ServerSettings
from abiquo_workflow.domain import Callback
from abiquo_workflow.exceptions import PayloadError, StoreError
from abiquo_workflow.web.bodies import BodyTooLarge, read_limited
from abiquo_workflow.web.state import services

log = structlog.stdlib.get_logger(__name__)

router = APIRouter()

#: What the caller is told when the store fails; the cause (which names the database) goes to the log only.
STORE_UNAVAILABLE = (
    "The callback could not be stored because the database is not available. Nothing was stored; "
    "the cause is in the connector's log."
)


def _clause(text: str) -> str:
    """The parser speaks in clauses (`the body is empty`); end one with a full stop after our lead-in."""
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _check_source(request: Request, settings: ServerSettings) -> None:
    """The peer's address must be in `server.callback_allow`. It is the TCP peer's, or, only when that
    peer is in `server.trusted_proxies`, the client its X-Forwarded-For names (app.py)."""
    if not settings.callback_allow:
        return
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise Refused(403, "This callback endpoint only accepts known sources.") from None
    if not any(address in ipaddress.ip_network(cidr, strict=False) for cidr in settings.callback_allow):
        raise Refused(403, f"The address {host} may not post callbacks here (see server.callback_allow).")


def _presented_token(request: Request, path_token: str | None) -> str | None:
    if path_token is not None:
        return path_token
    if "token" in request.query_params:
        return request.query_params["token"]
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _check_token(request: Request, settings: ServerSettings, path_token: str | None) -> None:
    if settings.callback_token is None:
        if path_token is not None:
            raise Refused(404, "No callback token is configured here: post to /callback.")
        return
    presented = _presented_token(request, path_token)
    expected = settings.callback_token.get_secret_value()
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Refused(403, "This callback endpoint needs the token configured in server.callback_token.")


async def _read_body(request: Request, limit: int) -> bytes:
    try:
        return await read_limited(request, limit)
    except BodyTooLarge as exc:
        if exc.declared is not None:
            message = f"The body is {exc.declared:,} bytes; the limit is {limit:,} (server.max_body)."
        else:
            message = f"The body is over the limit of {limit:,} bytes (server.max_body)."
        raise Refused(413, message) from None


#: Bodies larger than this are parsed on a worker thread, so the event loop keeps answering meanwhile
#: (a callback of a thousand tasks takes a few hundred milliseconds to read).
_PARSE_ON_THREAD_ABOVE = 64 * 1024


async def _parse(body: bytes, content_type: str | None, server: ServerSettings) -> Callback:
    parse = functools.partial(
        parse_callback, body, content_type, max_bytes=server.max_body, max_tasks=server.max_tasks
    )
    if len(body) > _PARSE_ON_THREAD_ABOVE:
        return await asyncio.to_thread(parse)
    return parse()


def _refuse(request: Request, status: int, message: str) -> JSONResponse:
    metrics.CALLBACKS.labels("refused").inc()
    log.warning("callback.refused", status=status, reason=message, source=_source(request))
    return JSONResponse({"error": message}, status_code=status)


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _receive(request: Request, path_token: str | None) -> JSONResponse:
    service = services(request)
    server = service.settings.server
    try:
        _check_source(request, server)
        _check_token(request, server, path_token)
        body = await _read_body(request, server.max_body)
        content_type = request.headers.get("content-type")
        callback = await _parse(body, content_type, server)
        received = await service.approvals.receive(
            callback,
            body=body,
            content_type=content_type,
            source=_source(request),
        )
    except Refused as refused:
        return _refuse(request, refused.status, refused.message)
    except PayloadError as exc:
        hint = " (server.max_tasks)" if exc.status == 413 else ""
        return _refuse(request, exc.status, f"The callback was refused: {_clause(str(exc) + hint)}")
    except StoreError as exc:
        log.error("callback.not_stored", error=str(exc))
        return _refuse(request, 503, STORE_UNAVAILABLE)
    metrics.CALLBACKS.labels("stored" if received.request_id else "known").inc()
    return JSONResponse(
        {
            "request_id": received.request_id,
            "tasks": list(received.new_task_ids),
            "already_known": list(received.known_task_ids),
        }
    )


@router.post("/callback")
async def callback(request: Request) -> JSONResponse:
    return await _receive(request, None)


@router.post("/callback/{token}")
async def callback_with_token(request: Request, token: str) -> JSONResponse:
    return await _receive(request, token)
