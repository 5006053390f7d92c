"""The loop when its neighbours misbehave: Abiquo failing for a while or for good, the mail relay down,
and Abiquo refusing a decision because the task was settled there first. Nothing is lost, nothing is
done twice, and what happened is recorded where people look."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from abiquo_workflow.approvals import retry_delivery
from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.store.records import JobStatus, NotificationStatus
from abiquo_workflow.task_commands import retry_task, show_task
from tests.conftest import CLIENT_TLS, Connector, ConnectorFactory
from tests.loop_support import (
    Link,
    confirm,
    open_store,
    page_text,
    recipients,
    task_link,
    to,
    wait_for_calls,
    wait_for_task,
    wait_until,
    wait_until_idle,
)

ALICE = "alice.smith@acme.example"
JOHN = "john.doe@acme.example"
ACME_APPROVERS = sorted([ALICE, "bob.jones@acme.example", "zoe.zimmermann@acme.example"])


async def control(connector: Connector, method: str, path: str, body: Any = None) -> httpx2.Response:
    """Call the simulator's control surface (`/_sim/…`)."""
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as client:
        return await client.request(method, f"{connector.simulator.url}{path}", json=body)


async def held_vm_1(connector: Connector) -> tuple[str, Link]:
    """Hold a deploy of VM 1 and wait for the approval emails: the task id and Alice's accept link.

    Once Alice decides, Bob and Zoë are each told it is settled: with the requester's email, three more.
    """
    held = await connector.request(action="deploy", vm=1)
    task_id: str = held["tasks"][0]["task_id"]
    approvals = await connector.inbox.wait_for(3)
    return task_id, task_link(to(approvals, ALICE)[0], "/accept", task_id)


def continue_posts(connector: Connector, task_id: str) -> list[int | None]:
    """The status of every POST …/{task_id}/action/continue that reached the simulated API."""
    return [
        call.status
        for call in connector.simulator.simulator.api_calls()
        if call.method == "POST" and call.path.endswith(f"/tasks/{task_id}/action/continue")
    ]


@pytest.mark.parametrize(
    ("faults", "runs"),
    [
        pytest.param(2, 1, id="absorbed-by-the-client-retries"),
        pytest.param(5, 2, id="delivery-job-retried"),
    ],
)
async def test_abiquo_answering_503_for_a_while_gets_the_decision_delivered_once(
    connector: Connector, faults: int, runs: int
) -> None:
    task_id, accept = await held_vm_1(connector)
    armed = await control(
        connector, "POST", "/_sim/faults", {"count": faults, "status": 503, "match": "/action/continue"}
    )
    assert armed.status_code == 201, armed.text

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        assert (await confirm(browser, accept)).status_code == 200
        [call] = await wait_for_calls(connector, 1)
        await connector.inbox.wait_for(6)
        await wait_until_idle(store)
        task = await store.get_task(task_id)

    assert (call["action"], call["status"]) == ("continue", 204)
    assert continue_posts(connector, task_id) == [503] * faults + [204]
    assert len(connector.decision_calls()) == 1
    assert task is not None and task.delivery is DeliveryState.DELIVERED
    assert task.delivery_attempts == runs
    [outcome] = to(connector.inbox.messages, JOHN)
    assert "Accepted by Alice Smith" in (outcome.text() or "")


@pytest.fixture
def impatient_connector(connector_factory: ConnectorFactory) -> Iterator[Connector]:
    """A connector that gives a delivery up after two runs of its job (three POSTs each)."""
    with connector_factory(worker={"max_attempts": 2}) as running:
        yield running


async def test_abiquo_down_for_good_shows_a_failed_delivery_that_a_retry_delivers(
    impatient_connector: Connector,
) -> None:
    connector = impatient_connector
    task_id, accept = await held_vm_1(connector)
    await control(
        connector, "POST", "/_sim/faults", {"count": 1000, "status": 503, "match": "/action/continue"}
    )
    max_attempts = connector.settings.worker.max_attempts

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        assert (await confirm(browser, accept)).status_code == 200
        failed = await wait_for_task(store, task_id, lambda t: t.delivery is DeliveryState.FAILED, "failed")
        told = await connector.inbox.wait_for(6)
        await wait_until_idle(store)
        [dead] = [j for j in await store.list_jobs() if j.kind == "deliver"]
        shown = "\n".join(await show_task(connector.settings, task_id))

        # Every attempt was made and refused; the decision itself stands, waiting to be delivered.
        assert continue_posts(connector, task_id) == [503] * (3 * max_attempts)
        assert connector.decision_calls() == []
        assert connector.simulator.simulator.task(task_id).state.value == "QUEUEING"
        assert failed.decision is DecisionState.ACCEPTED and failed.actor is not None
        assert failed.delivery_attempts == max_attempts
        assert failed.delivery_detail is not None and "503" in failed.delivery_detail
        assert dead.status is JobStatus.DEAD
        assert f"delivery   failed after {max_attempts} attempt(s)" in shown
        # The requester hears that the decision is stuck, not that it happened.
        [stuck] = to(told, JOHN)
        assert "could not be passed on to Abiquo" in (stuck.text() or "")

        assert (await control(connector, "DELETE", "/_sim/faults")).status_code == 200
        requeued = await retry_delivery(store, task_id, max_attempts=max_attempts)
        assert requeued is not None and requeued.delivery is DeliveryState.QUEUED

        [call] = await wait_for_calls(connector, 1)
        messages = await connector.inbox.wait_for(7)
        await wait_until_idle(store)
        delivered = await store.get_task(task_id)

    assert (call["task_id"], call["action"], call["status"]) == (task_id, "continue", 204)
    assert len(connector.decision_calls()) == 1
    assert connector.simulator.simulator.task(task_id).state.value == "FINISHED_SUCCESSFULLY"
    assert delivered is not None and delivered.delivery is DeliveryState.DELIVERED
    # Then the requester hears how it ended.
    [_, done] = to(messages, JOHN)
    assert "accepted" in done.subject
    assert "could not be passed on" not in (done.text() or "")
    assert len(connector.inbox.messages) == 7


async def test_approval_emails_wait_for_the_mail_relay_and_arrive_once(
    connector_factory: ConnectorFactory,
) -> None:
    # Enough attempts to outlast the relay's absence; the delays stay short.
    with connector_factory(worker={"max_attempts": 100}) as connector:
        connector.inbox.stop()
        held = await connector.request(action="deploy", vm=1)
        task_id = held["tasks"][0]["task_id"]
        async with open_store(connector) as store:

            async def every_email_failed() -> bool:
                sends = [j for j in await store.list_jobs() if j.kind == "send_approval"]
                return len(sends) == 3 and all(j.last_error for j in sends)

            await wait_until(every_email_failed, "each approval email to fail")
            assert connector.inbox.messages == []

            connector.inbox.start()
            arrived = await connector.inbox.wait_for(3)
            await wait_until_idle(store)
            task = await store.get_task(task_id)
            assert task is not None
            notifications = await store.notifications(task.request_id)

    assert recipients(arrived) == ACME_APPROVERS
    assert recipients(connector.inbox.messages) == ACME_APPROVERS
    assert [n.status for n in notifications] == [NotificationStatus.SENT] * 3
    assert task.decision is DecisionState.PENDING


async def test_a_task_the_requester_cancelled_in_abiquo_is_superseded_and_the_requester_told(
    connector: Connector,
) -> None:
    task_id, accept = await held_vm_1(connector)
    withdrawn = await control(connector, "POST", f"/_sim/tasks/{task_id}/cancel", {"reason": "not needed"})
    assert withdrawn.status_code == 200, withdrawn.text

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        answer = await confirm(browser, accept, reason="fine by me")
        assert answer.status_code == 200  # we only learn from Abiquo that it was too late
        [call] = await wait_for_calls(connector, 1)
        messages = await connector.inbox.wait_for(6)
        await wait_until_idle(store)
        task = await store.get_task(task_id)

    assert (call["action"], call["status"]) == ("continue", 409)  # TASK-2
    assert connector.simulator.simulator.task(task_id).state.value == "CANCELLED"
    assert task is not None and task.decision is DecisionState.ACCEPTED
    assert task.delivery is DeliveryState.SUPERSEDED and task.abiquo_state == "CANCELLED"
    assert task.delivery_detail is not None and "TASK-2" in task.delivery_detail
    [outcome] = to(messages, JOHN)
    text = outcome.text() or ""
    assert "already been decided elsewhere (Abiquo shows it as CANCELLED)" in text
    assert len(connector.inbox.messages) == 6


async def test_a_continue_that_already_got_through_is_recorded_as_delivered(connector: Connector) -> None:
    """Abiquo continued the task, but our POST's answer was lost: the repeat gets TASK-2, and the task
    shows our decision, so it counts as delivered (not superseded)."""
    task_id, accept = await held_vm_1(connector)
    async with open_store(connector) as store:
        stored = await store.get_task(task_id)
    assert stored is not None
    async with httpx2.AsyncClient(verify=CLIENT_TLS, auth=("admin", "xabiquo")) as client:
        # Verified by triage: the continue link is Abiquo's own, absolute.
        first = await client.post(
            stored.continue_href,
            content=b"Accepted by Alice Smith via abiquo-workflow",
            headers={"content-type": "text/plain"},
        )
    assert first.status_code == 204

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        assert (await confirm(browser, accept)).status_code == 200
        calls = await wait_for_calls(connector, 2)
        messages = await connector.inbox.wait_for(6)
        await wait_until_idle(store)
        task = await store.get_task(task_id)

    assert [(c["action"], c["status"]) for c in calls] == [("continue", 204), ("continue", 409)]
    assert task is not None and task.delivery is DeliveryState.DELIVERED
    assert task.abiquo_state == "FINISHED_SUCCESSFULLY"
    assert task.delivery_detail is not None and "already shows FINISHED_SUCCESSFULLY" in task.delivery_detail
    [outcome] = to(messages, JOHN)
    assert "Accepted by Alice Smith" in (outcome.text() or "")
    assert "decided elsewhere" not in page_text(outcome.html() or "")


async def test_abiquo_unreachable_during_triage_delays_the_approval_emails_without_doubling_them(
    connector: Connector,
) -> None:
    # Reading the VM fails for the whole first run of the triage job (three tries) and once more.
    await control(
        connector, "POST", "/_sim/faults", {"count": 4, "status": 503, "match": "/virtualmachines/1"}
    )
    held = await connector.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]

    async with open_store(connector) as store:
        arrived = await connector.inbox.wait_for(3)
        await wait_until_idle(store)
        [triage] = [j for j in await store.list_jobs() if j.kind == "triage"]
        task = await store.get_task(task_id)
        assert task is not None
        request = await store.get_request(task.request_id)

    assert triage.attempts == 2 and triage.status is JobStatus.DONE
    assert recipients(arrived) == ACME_APPROVERS
    assert recipients(connector.inbox.messages) == ACME_APPROVERS
    assert request is not None and request.triage_error is None
    assert sorted(request.approvers or ()) == ACME_APPROVERS
    assert "* web-01 (Deploy)" in (arrived[0].text() or "")


async def test_a_triage_that_failed_for_good_is_queued_again_by_tasks_retry(
    impatient_connector: Connector,
) -> None:
    connector = impatient_connector
    # Every read of VM 1 fails until the faults are cleared: triage runs out of attempts.
    await control(
        connector, "POST", "/_sim/faults", {"count": 1000, "status": 503, "match": "/virtualmachines/1"}
    )
    held = await connector.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]

    async with open_store(connector) as store:
        await wait_until_idle(store)
        [dead] = [j for j in await store.list_jobs() if j.kind == "triage"]
        assert dead.status is JobStatus.DEAD
        assert connector.inbox.messages == []

        assert (await control(connector, "DELETE", "/_sim/faults")).status_code == 200
        said = await retry_task(connector.settings, task_id)
        arrived = await connector.inbox.wait_for(3)
        await wait_until_idle(store)
        [triage] = [j for j in await store.list_jobs() if j.kind == "triage"]

    assert said == f"task {task_id}: queued again: reading the request's details from Abiquo (triage)"
    assert triage.status is JobStatus.DONE
    assert recipients(arrived) == ACME_APPROVERS
