"""`POST /callback`: where Abiquo sends held tasks. Store them and answer at once.

Abiquo waits at most `workflow.read.timeout` (10 s by default) for this answer, and a failed POST reaches
the requesting user as WKF-01. So this route only parses and stores (one transaction: request, tasks
and the triage job) and answers 200; Abiquo and SMTP are never called here.

Refusals, each with a JSON body `{"error": "<a sentence>"}` and nothing stored:
403 source not in `server.callback_allow`, or the `server.callback_token` missing or wrong ·
413 body over `server.max_body` · 415 a media type that is neither XML nor JSON · 400 anything else
unreadable · 503 the database could not store it (Abiquo reports WKF-01; nothing is half-stored).
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from abiquo_workflow import metrics
from abiquo_workflow.abiquo.payload import parse_callback
from abiquo_workflow.config import ServerSettings
from abiquo_workflow.exceptions import PayloadError, StoreError
from abiquo_workflow.service import Service

router = APIRouter()


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _check_source(request: Request, settings: ServerSettings) -> None:
    if not settings.callback_allow:
        return
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise Refused(403, "This callback endpoint only accepts known sources.") from None
    if not any(address in ipaddress.ip_network(cidr, strict=False) for cidr in settings.callback_allow):
        raise Refused(403, f"{host} is not allowed to post callbacks (see server.callback_allow).")


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
    """The body, refused as soon as it passes `limit` bytes (never read whole into memory first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"The body is {int(declared):,} bytes; the limit is {limit:,} (server.max_body).")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"The body is over the limit of {limit:,} bytes (server.max_body).")
        chunks.append(chunk)
    return b"".join(chunks)


async def _receive(request: Request, path_token: str | None) -> JSONResponse:
    service: Service = request.app.state.service
    server = service.settings.server
    try:
        _check_source(request, server)
        _check_token(request, server, path_token)
        body = await _read_body(request, server.max_body)
        content_type = request.headers.get("content-type")
        callback = parse_callback(body, content_type, max_bytes=server.max_body)
        received = await service.approvals.receive(
            callback,
            body=body,
            content_type=content_type,
            source=request.client.host if request.client else None,
        )
    except Refused as refused:
        metrics.CALLBACKS.labels("refused").inc()
        return JSONResponse({"error": refused.message}, status_code=refused.status)
    except PayloadError as exc:
        metrics.CALLBACKS.labels("refused").inc()
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    except StoreError as exc:
        metrics.CALLBACKS.labels("refused").inc()
        return JSONResponse({"error": f"The callback could not be stored: {exc}"}, status_code=503)
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
