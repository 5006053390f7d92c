"""Reconciliation through the real connector (`serve`'s composition in a real server, its worker
running, the simulator over HTTP, real SMTP, SQLite and PostgreSQL): a callback lost while the connector
was down is found at start and its approvers emailed; a task cancelled in Abiquo is closed as decided
there, its links answer 410 with that story, its approvers and requester are told, and nothing is
POSTed to Abiquo; a listing longer than a page is read whole; two runs find a task once; and
`reconcile.interval = 0` turns it all off. The unit-level cases are in test_reconcile.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from abiquo_workflow.domain import DecidedBy, DecisionState, DeliveryState
from abiquo_workflow.jobs import Reconcile
from abiquo_workflow.store.records import JobStatus
from tests.conftest import CLIENT_TLS, Connector, ConnectorFactory
from tests.loop_support import open_store, page_text, task_link, to, wait_for_task, wait_until

ALICE = "alice.smith@acme.example"
BOB = "bob.jones@acme.example"
ZOE = "zoe.zimmermann@acme.example"
JOHN = "john.doe@acme.example"
APPROVERS = sorted([ALICE, BOB, ZOE])


async def hold_lost(simulator_url: str, **target: Any) -> list[str]:
    """Tasks Abiquo held two minutes ago whose callback never arrived (`lost_callback`): their ids."""
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as client:
        response = await client.post(
            f"{simulator_url}/_sim/requests",
            json={"action": "deploy", **target, "lost_callback": True, "held_for": 120},
            timeout=30,
        )
    assert response.status_code == 201, response.text
    return [task["task_id"] for task in response.json()["tasks"]]


async def in_abiquo(
    connector: Connector, task_id: str, path: str, body: dict[str, str] | None = None
) -> None:
    """Act on a task in Abiquo itself, behind the connector's back (`/_sim/tasks/{id}/…`)."""
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as client:
        response = await client.post(
            f"{connector.simulator.url}/_sim/tasks/{task_id}/{path}", json=body or {}
        )
    assert response.status_code == 200, response.text


def recipients_of(messages: list[Any]) -> list[str]:
    return sorted(address for m in messages for address in m.rcpt_tos)


@pytest.fixture
def reconciling(connector_factory: ConnectorFactory, migrated_database_url: str) -> Iterator[Connector]:
    """A connector reconciling every second, on each database (SQLite, and PostgreSQL when set)."""
    with connector_factory(database_url=migrated_database_url, reconcile={"interval": "1s"}) as running:
        yield running


async def test_a_callback_lost_while_the_connector_was_down_is_found_at_start_and_emailed(
    connector_factory: ConnectorFactory, migrated_database_url: str, simulator: Any
) -> None:
    [task_id] = await hold_lost(simulator.url, vm=1)

    with connector_factory(database_url=migrated_database_url, reconcile={"interval": "5m"}) as connector:
        emails = await connector.inbox.wait_for(3)

        assert recipients_of(emails) == APPROVERS
        task_link(to(emails, ALICE)[0], "/accept", task_id)  # each with its working links
        async with open_store(connector) as store:
            task = await store.get_task(task_id)
            assert task is not None and task.decision is DecisionState.PENDING
            request = await store.get_request(task.request_id)
            assert request is not None and request.source == "reconciliation"


async def test_a_task_cancelled_in_abiquo_is_closed_as_decided_there_and_nothing_is_posted(
    reconciling: Connector,
) -> None:
    held = await reconciling.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]
    await reconciling.inbox.wait_for(3)

    await in_abiquo(reconciling, task_id, "decide", {"action": "cancel"})  # the Workflow tasks tab

    async with open_store(reconciling) as store:
        closed = await wait_for_task(
            store, task_id, lambda t: t.decision is not DecisionState.PENDING, "closed by reconciliation"
        )
    assert (closed.decision, closed.decided_by, closed.delivery) == (
        DecisionState.DECLINED,
        DecidedBy.EXTERNAL,
        DeliveryState.SUPERSEDED,
    )
    assert reconciling.decision_calls() == []


async def test_the_link_of_a_task_cancelled_in_abiquo_answers_410_with_that_story(
    reconciling: Connector,
) -> None:
    held = await reconciling.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]
    alice = to(await reconciling.inbox.wait_for(3), ALICE)[0]
    await in_abiquo(reconciling, task_id, "cancel")  # the requester withdraws it
    async with open_store(reconciling) as store:
        await wait_for_task(store, task_id, lambda t: t.decided_by is DecidedBy.EXTERNAL, "closed")

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser:
        page = await browser.get(task_link(alice, "/accept", task_id).url)

    assert page.status_code == 410
    text = page_text(page.text)
    assert "Cancelled in Abiquo on" in text
    assert "cancelled in Abiquo, by its requester or in Abiquo's Workflow tasks tab" in text


async def test_the_approvers_are_told_a_task_cancelled_in_abiquo_is_settled_and_the_requester_told(
    reconciling: Connector,
) -> None:
    held = await reconciling.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]
    await reconciling.inbox.wait_for(3)

    await in_abiquo(reconciling, task_id, "cancel")

    emails = await reconciling.inbox.wait_for(7, timeout=20)
    settled = [m for m in emails if m.subject.startswith("Settled: ")]
    assert recipients_of(settled) == APPROVERS
    [outcome] = to(emails, JOHN)
    assert "Cancelled in Abiquo" in (outcome.text() or "")
    assert reconciling.decision_calls() == []


async def test_a_lost_vapp_of_more_tasks_than_one_page_is_found_whole(
    connector_factory: ConnectorFactory, simulator: Any
) -> None:
    task_ids = await hold_lost(simulator.url, vapp=2)  # 100 VMs: Abiquo lists 25 a page
    assert len(task_ids) == 100

    with connector_factory(reconcile={"interval": "5m"}) as connector:
        emails = await connector.inbox.wait_for(3, timeout=30)

        assert recipients_of(emails) == APPROVERS
        async with open_store(connector) as store:
            first = await store.get_task(task_ids[0])
            assert first is not None
            stored = await store.tasks_of_request(first.request_id)
    assert sorted(t.task_id for t in stored) == sorted(task_ids)


async def test_two_runs_find_a_lost_callback_once(
    connector_factory: ConnectorFactory, migrated_database_url: str, simulator: Any
) -> None:
    await hold_lost(simulator.url, vm=1)

    with connector_factory(database_url=migrated_database_url, reconcile={"interval": "1s"}) as connector:
        async with open_store(connector) as store:

            async def runs_done() -> bool:
                jobs = await store.list_jobs(limit=1000)
                return len([j for j in jobs if j.kind == Reconcile.kind and j.status is JobStatus.DONE]) >= 3

            await wait_until(runs_done, "three reconciliation runs")
            assert len(await store.list_tasks(limit=10)) == 1
        assert recipients_of(connector.inbox.messages) == APPROVERS


async def test_interval_zero_turns_reconciliation_off(
    connector_factory: ConnectorFactory, simulator: Any
) -> None:
    await hold_lost(simulator.url, vm=1)

    with connector_factory(reconcile={"interval": "0"}) as connector:
        await connector.request(action="deploy", vm=2)  # a callback as usual: its three emails
        await connector.inbox.wait_for(3)

        async with open_store(connector) as store:
            assert await store.latest_job(Reconcile.kind) is None
            assert len(await store.list_tasks(limit=10)) == 1  # the callback's task, not the lost one
    listings = [c for c in simulator.simulator.api_calls() if c.path.endswith("/pendingtasks")]
    assert listings == []
