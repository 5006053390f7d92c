"""What the web app's routes use, and how they reach it: handed in by whoever runs the app.

`create_app` builds no store, client or mailer. It is given a lifespan: a function returning an async
context manager that opens `Services` when the server starts and closes them when it stops. `serve`
and the demo pass `runtime.web_lifespan(settings)`; tests pass their own, over a real store.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, cast

from starlette.requests import Request

from abiquo_workflow.access import Authenticator
from abiquo_workflow.approvals import Approvals
from abiquo_workflow.config import Settings
from abiquo_workflow.links import LinkSigner
from abiquo_workflow.store import Store
from abiquo_workflow.worker import Worker


class Services(Protocol):
    """The parts of a running connector the routes need (`runtime.Runtime` is one)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> Store: ...

    @property
    def approvals(self) -> Approvals: ...

    @property
    def signer(self) -> LinkSigner: ...

    @property
    def authenticator(self) -> Authenticator:
        """Signs people in against Abiquo (`/login`) and knows the API tokens (access.py)."""
        ...

    @property
    def worker(self) -> Worker:
        """This process's worker: running unless `serve --no-worker` (then `started` is False)."""
        ...


#: Opens the Services for as long as the app runs.
Lifespan = Callable[[], AbstractAsyncContextManager[Services]]


def services(request: Request) -> Services:
    """The Services of the app serving `request` (set by its lifespan)."""
    return cast(Services, request.app.state.services)
