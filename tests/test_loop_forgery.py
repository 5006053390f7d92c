"""A callback is a hint, not a command: forged callbacks, tried as an attacker on the network would.

Abiquo sends no credentials with its callback, so anyone who reaches `/callback` can post one (the
default configuration has no `server.callback_token`). Each test here holds a real task in the simulated
Abiquo without its callback reaching the connector, then posts a forged callback that names that task's
links, or misstates the task, and checks that nothing Abiquo does not say is acted on: no continue or
cancel reaches Abiquo, nobody is asked, and the forged task is recorded as rejected with the reason.
Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from abiquo_workflow.domain import DecidedBy, DecisionState
from abiquo_workflow.store.records import TaskRecord
from tests.conftest import CLIENT_TLS, Connector, ConnectorFactory
from tests.loop_support import open_store, wait_until, wait_until_idle

#: A port nothing listens on: the simulator's own callback for the real task goes nowhere.
NOWHERE = "http://127.0.0.1:9/callback"
JSON_TYPE = "application/vnd.abiquo.tasks+json"
#: John Doe (a USER of Acme) and Grace (Globex's ENTERPRISE_ADMIN), as Abiquo's user hrefs.
JOHN = "admin/enterprises/2/users/20"
GRACE = "admin/enterprises/3/users/100"
ACME_APPROVERS = {"alice.smith@acme.example", "bob.jones@acme.example", "zoe.zimmermann@acme.example"}


def vm_href(vm: int) -> str:
    """The relative href of a seeded VM: VMs 1–3 are in Acme's vApp 1, VMs 5–6 in Globex's vApp 4."""
    vdc, vapp = (1, 1) if vm in (1, 2, 3) else (3, 4)
    return f"cloud/virtualdatacenters/{vdc}/virtualappliances/{vapp}/virtualmachines/{vm}"


def task_json(task_id: str, task_type: str, *, links: dict[str, str]) -> dict[str, Any]:
    return {
        "taskId": task_id,
        "userId": "20",
        "type": task_type,
        "state": "QUEUEING",
        "links": [{"rel": rel, "href": href} for rel, href in links.items()],
    }


def links_of(vm: int, task_id: str, *, user: str = JOHN, self_id: str | None = None) -> dict[str, str]:
    """Links as Abiquo would write them for `task_id` on `vm` (`self_id` names another task's self)."""
    task = f"{vm_href(vm)}/tasks/{task_id}"
    links = {
        "continue": f"{task}/action/continue",
        "cancel": f"{task}/action/cancel",
        "target": vm_href(vm),
        "user": user,
    }
    if self_id is not None:
        links["self"] = f"{vm_href(vm)}/tasks/{self_id}"
    return links


@pytest.fixture
def connector(connector_factory: ConnectorFactory, migrated_database_url: str) -> Iterator[Connector]:
    """A connector in the default security configuration (no callback token), on each database."""
    with connector_factory(database_url=migrated_database_url) as running:
        yield running


async def hold_quietly(connector: Connector, vm: int, action: str = "deploy") -> str:
    """A task really held by Abiquo whose callback never reached the connector; its id."""
    held = await connector.simulator.simulator.request(action, vm=vm, callback_url=NOWHERE)
    [task] = held.tasks
    return task.task_id


async def post_callback(connector: Connector, *tasks: dict[str, Any]) -> httpx2.Response:
    body = json.dumps({"links": [], "collection": list(tasks)}).encode()
    async with httpx2.AsyncClient(verify=CLIENT_TLS, timeout=30) as client:
        return await client.post(
            f"{connector.url}/callback", content=body, headers={"content-type": JSON_TYPE}
        )


async def triaged(connector: Connector, response: httpx2.Response) -> list[TaskRecord]:
    """Wait for the posted callback's triage and every job after it; its tasks as stored."""
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    async with open_store(connector) as store:

        async def done() -> bool:
            request = await store.get_request(request_id)
            return request is not None and request.triaged_at is not None

        await wait_until(done, f"request {request_id} to be triaged")
        await wait_until_idle(store)
        return await store.tasks_of_request(request_id)


async def audit_actions(connector: Connector, task_id: str) -> list[str]:
    async with open_store(connector) as store:
        return [line.action for line in await store.audit_log(task_id=task_id)]


def assert_untouched(connector: Connector, real_task: str) -> None:
    """Abiquo got no continue or cancel, still holds the real task, and nobody was emailed."""
    assert connector.decision_calls() == []
    assert connector.simulator.simulator.task(real_task).state.value == "QUEUEING"
    assert connector.inbox.messages == []


# --- a made-up task with a real task's links ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("self_of", "says"),
    [
        ("made-up", "Abiquo has no such task"),  # self names the made-up id: Abiquo answers 404
        ("real", "names another task"),  # self names the real task: not this task's link
        (None, "names another task"),  # no self: the continue link's task is the real one
    ],
    ids=["self-of-the-made-up-id", "self-of-the-real-task", "no-self"],
)
async def test_a_made_up_ungated_task_with_a_real_tasks_links_continues_nothing(
    connector: Connector, self_of: str | None, says: str
) -> None:
    real = await hold_quietly(connector, vm=1)
    forged_id = "f0f0f0f0-0000-4000-8000-000000000001"
    self_id = {"made-up": forged_id, "real": real, None: None}[self_of]
    # SNAPSHOT is not gated: taken at its word, it would be continued at once.
    forged = task_json(forged_id, "SNAPSHOT", links=links_of(1, real, self_id=self_id))

    [task] = await triaged(connector, await post_callback(connector, forged))

    assert_untouched(connector, real)
    assert task.decision is DecisionState.REJECTED and task.decided_by is DecidedBy.VERIFICATION
    assert task.delivery is None
    assert task.reason is not None and says in task.reason
    assert "rejected" in await audit_actions(connector, forged_id)


async def test_a_made_up_deploy_naming_an_approver_as_requester_is_not_accepted(connector: Connector) -> None:
    real = await hold_quietly(connector, vm=5)
    forged_id = "f0f0f0f0-0000-4000-8000-000000000002"
    # Grace approves Globex; with when_requester_is_approver = "accept" her own request would go through.
    forged = task_json(forged_id, "DEPLOY", links=links_of(5, real, user=GRACE, self_id=forged_id))

    [task] = await triaged(connector, await post_callback(connector, forged))

    assert_untouched(connector, real)
    assert task.decision is DecisionState.REJECTED
    assert task.reason == "Abiquo has no such task"


async def test_a_callback_link_outside_the_api_is_not_followed(connector: Connector) -> None:
    real = await hold_quietly(connector, vm=1)
    links = links_of(1, real)
    links["self"] = f"http://127.0.0.1:9/api/{vm_href(1)}/tasks/{real}"

    [task] = await triaged(connector, await post_callback(connector, task_json(real, "DEPLOY", links=links)))

    assert_untouched(connector, real)
    assert task.decision is DecisionState.REJECTED
    assert task.reason == "the callback's link to the task points outside the Abiquo API"


# --- a real task, misstated ---------------------------------------------------------------------------------


async def test_a_real_deploy_called_a_snapshot_is_asked_for_as_the_deploy_abiquo_holds(
    connector: Connector,
) -> None:
    real = await hold_quietly(connector, vm=1)
    misstated = task_json(real, "SNAPSHOT", links=links_of(1, real, self_id=real))

    [task] = await triaged(connector, await post_callback(connector, misstated))

    assert connector.decision_calls() == []  # not continued as an ungated type
    assert task.task_type == "DEPLOY" and task.decision is DecisionState.PENDING
    assert task.verified_at is not None
    assert {address for m in connector.inbox.messages for address in m.rcpt_tos} == ACME_APPROVERS


async def test_a_real_task_with_an_approver_named_as_requester_is_asked_for_its_real_requester(
    connector: Connector,
) -> None:
    real = await hold_quietly(connector, vm=1)
    misstated = task_json(real, "DEPLOY", links=links_of(1, real, user=GRACE, self_id=real))

    [task] = await triaged(connector, await post_callback(connector, misstated))

    assert connector.decision_calls() == []  # Grace's role would have accepted it at once
    assert task.decision is DecisionState.PENDING
    assert task.user_href is not None and task.user_href.endswith("/admin/enterprises/2/users/20")
    assert {address for m in connector.inbox.messages for address in m.rcpt_tos} == ACME_APPROVERS


async def test_a_real_task_is_continued_only_through_the_link_abiquo_gives(connector: Connector) -> None:
    real = await hold_quietly(connector, vm=1)
    other = await hold_quietly(connector, vm=2)
    # The real task, but its continue link is another held task's: accepting it must not continue that one.
    links = links_of(1, real, self_id=real)
    links["continue"] = f"{vm_href(2)}/tasks/{other}/action/continue"

    [task] = await triaged(connector, await post_callback(connector, task_json(real, "DEPLOY", links=links)))

    assert task.continue_href.endswith(f"/virtualmachines/1/tasks/{real}/action/continue")


async def test_a_callback_mixing_two_enterprises_tasks_keeps_only_the_first_requesters(
    connector: Connector,
) -> None:
    acme = await hold_quietly(connector, vm=1)
    globex = await hold_quietly(connector, vm=5)
    mixed = [
        task_json(acme, "DEPLOY", links=links_of(1, acme, self_id=acme)),
        task_json(globex, "DEPLOY", links=links_of(5, globex, user=JOHN, self_id=globex)),
    ]

    first, second = await triaged(connector, await post_callback(connector, *mixed))

    # Acme's approvers are asked about Acme's VM only; Globex's task is never shown to them.
    assert first.decision is DecisionState.PENDING
    assert second.decision is DecisionState.REJECTED
    assert second.reason is not None and "mixes tasks of different requesters" in second.reason
    assert {address for m in connector.inbox.messages for address in m.rcpt_tos} == ACME_APPROVERS
    assert all(globex not in (m.html() or "") for m in connector.inbox.messages)


async def rejected_count(connector: Connector, reason: str) -> float:
    """`awf_tasks_rejected_total{reason=…}` as `/metrics` shows it (0 before the first)."""
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as client:
        metrics = (await client.get(f"{connector.url}/metrics")).text
    prefix = f'awf_tasks_rejected_total{{reason="{reason}"}} '
    return next(
        (float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix)), 0.0
    )


async def test_a_rejected_task_is_counted_in_the_metrics(connector: Connector) -> None:
    real = await hold_quietly(connector, vm=1)
    forged = task_json("f0f0f0f0-0000-4000-8000-000000000003", "DEPLOY", links=links_of(1, real))
    before = await rejected_count(connector, "bad_href")

    await triaged(connector, await post_callback(connector, forged))

    assert await rejected_count(connector, "bad_href") == before + 1


async def test_a_task_abiquo_no_longer_holds_is_rejected_saying_its_state(connector: Connector) -> None:
    real = await hold_quietly(connector, vm=1)
    connector.simulator.simulator.cancel_as_requester(real, "changed my mind")
    callback = task_json(real, "DEPLOY", links=links_of(1, real, self_id=real))

    [task] = await triaged(connector, await post_callback(connector, callback))

    assert connector.decision_calls() == []  # the requester's own cancel is not a call of ours
    assert task.decision is DecisionState.REJECTED
    assert task.reason == "Abiquo does not hold the task for review (its state is CANCELLED)"
    assert connector.inbox.messages == []
