"""What the dashboard's tests share: the simulator's people, signing in over HTTP, and a request held and
triaged (so its enterprise is known and its approvers emailed)."""

from __future__ import annotations

import re
from typing import Any

import httpx2

from tests.conftest import Running
from tests.loop_support import open_store, wait_until

#: The simulator's seeded people (world.py): (user name, password).
ADMIN = ("admin", "xabiquo")  # CLOUD_ADMIN: sees and decides everything
ALICE = ("asmith", "asmith")  # ENTERPRISE_ADMIN of Acme: an approver there
GRACE = ("gadmin", "gadmin")  # ENTERPRISE_ADMIN of Globex: an approver, of another enterprise
JOHN = ("jdoe", "jdoe")  # USER of Acme: the requester of VMs 1-3 and the vApps 1 and 2
FILLER = ("user22", "user22")  # USER of Acme who asked for nothing

ALICE_ACTOR = "Alice Smith <alice.smith@acme.example>"

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: str) -> str:
    """The CSRF token of a dashboard page's forms."""
    match = _CSRF.search(page)
    assert match is not None, "the page has no form with a CSRF token"
    return match.group(1)


async def csrf(client: httpx2.AsyncClient, path: str = "/") -> str:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    return csrf_of(response.text)


async def sign_in(client: httpx2.AsyncClient, person: tuple[str, str], **extra: str) -> httpx2.Response:
    """Open the sign-in page and send its form as `person`; the client keeps the session cookie."""
    token = await csrf(client)
    username, password = person
    form = {"csrf": token, "username": username, "password": password, **extra}
    return await client.post("/sign-in", data=form)


async def held(running: Running, **target: Any) -> dict[str, Any]:
    """The simulator holds a deploy (`vm=1`, `vapp=1`…) and the connector triages it: returns the
    simulator's answer once the request's enterprise is known (what the dashboard scopes by)."""
    result = await running.request(action="deploy", **target)
    task_id = result["tasks"][0]["task_id"]
    async with open_store(running) as store:

        async def triaged() -> bool:
            task = await store.get_task(task_id)
            request = await store.get_request(task.request_id) if task else None
            return request is not None and request.triaged_at is not None

        await wait_until(triaged, f"the request of task {task_id} to be triaged")
        task = await store.get_task(task_id)
    assert task is not None
    result["request_id"] = task.request_id
    return result
