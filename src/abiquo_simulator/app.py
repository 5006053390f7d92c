"""`create_app`: the simulator's ASGI app, /api behind the gate, plus the control surface and page."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp

from .api import API_PREFIX, Api
from .control import Control
from .gate import ApiGate
from .simulator import Simulator


def create_app(simulator: Simulator) -> ASGIApp:
    """The whole simulator as one ASGI app, for whichever ASGI server runs it (uvicorn, for the product)."""
    api = Api(simulator)
    control = Control(simulator)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path == API_PREFIX or request.url.path.startswith(API_PREFIX + "/"):
            return await api.http_error(request, exc)
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)

    app = Starlette(
        routes=[*api.routes(), *control.routes()],
        exception_handlers={404: http_error, 405: http_error},
    )
    return ApiGate(app, simulator)
