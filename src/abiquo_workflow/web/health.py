"""`/healthz` (the process answers), `/readyz` (it can reach its database), `/metrics` (Prometheus)."""

from __future__ import annotations

import structlog
from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.web.state import services

log = structlog.stdlib.get_logger(__name__)

router = APIRouter()


@router.get("/healthz", name="healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", name="readyz")
async def readyz(request: Request) -> JSONResponse:
    try:
        await services(request).store.ping()
    except StoreError as exc:
        # Where the database lives is for the log: this route is public (the index page links to it).
        log.error("web.not_ready", error=str(exc))
        return JSONResponse(
            {
                "status": "unavailable",
                "database": "unavailable",
                "error": "The database is not answering; the cause is in the connector's log.",
            },
            status_code=503,
        )
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
