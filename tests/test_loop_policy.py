"""Requests the policy decides without asking anyone, end to end: the decision still reaches Abiquo,
no approval email goes out, and the requester is told why."""

from __future__ import annotations

from typing import Any

import pytest

from abiquo_workflow.domain import Channel, DecidedBy, DecisionState, DeliveryState
from abiquo_workflow.mail.inbox import ReceivedMessage
from abiquo_workflow.store.records import TaskRecord
from tests.conftest import Connector, ConnectorFactory
from tests.loop_support import open_store, wait_for_calls, wait_until_idle

GRACE = "grace.admin@globex.example"  # ENTERPRISE_ADMIN of Globex, the enterprise's only approver
PETER = "peter.user@initech.example"  # Initech has no approver with an email
JOHN = "john.doe@acme.example"


async def settle(connector: Connector, task_id: str) -> tuple[dict[str, Any], TaskRecord, ReceivedMessage]:
    """Wait for the one continue/cancel call and the connector to finish; return the call, the stored
    task and the one email sent, checking that nothing else was called or sent."""
    [call] = await wait_for_calls(connector, 1)
    [message] = await connector.inbox.wait_for(1)
    async with open_store(connector) as store:
        await wait_until_idle(store)
        task = await store.get_task(task_id)
    assert task is not None
    assert connector.decision_calls() == [call]
    assert connector.inbox.messages == [message]
    return call, task, message


async def test_a_requester_who_is_an_approver_is_accepted_at_once_when_so_configured(
    connector_factory: ConnectorFactory,
) -> None:
    with connector_factory(policy={"when_requester_is_approver": "accept"}) as connector:
        held = await connector.request(action="deploy", vm=5, user=100)
        task_id = held["tasks"][0]["task_id"]

        call, task, message = await settle(connector, task_id)

    assert (call["task_id"], call["action"], call["status"]) == (task_id, "continue", 204)
    assert task.decision is DecisionState.ACCEPTED and task.decided_by is DecidedBy.POLICY
    assert task.actor == "policy.when_requester_is_approver" and task.channel is Channel.POLICY
    assert task.delivery is DeliveryState.DELIVERED
    # The only email is the requester's own, and it says why nobody was asked.
    assert message.rcpt_tos == (GRACE,)
    text = message.text() or ""
    assert (
        "* gx-app-01 (Deploy): Accepted automatically because the requester holds the ENTERPRISE_ADMIN"
        in text
    )


async def test_a_requester_who_is_an_approver_and_must_ask_falls_to_the_no_approver_rule(
    connector_factory: ConnectorFactory,
) -> None:
    with connector_factory(policy={"when_requester_is_approver": "ask"}) as connector:
        held = await connector.request(action="deploy", vm=5, user=100)
        task_id = held["tasks"][0]["task_id"]

        # Grace may not approve her own request, and nobody else in Globex approves: cancelled.
        call, task, message = await settle(connector, task_id)

    assert (call["task_id"], call["action"], call["status"]) == (task_id, "cancel", 204)
    assert connector.simulator.simulator.task(task_id).state.value == "CANCELLED"
    assert task.decision is DecisionState.DECLINED and task.decided_by is DecidedBy.NO_APPROVER
    assert task.actor == "policy.when_no_approver"
    assert task.delivery is DeliveryState.DELIVERED
    assert message.rcpt_tos == (GRACE,)
    assert "Cancelled because nobody in the enterprise holds the ENTERPRISE_ADMIN role" in (
        message.text() or ""
    )


async def test_an_enterprise_without_approvers_has_its_request_cancelled_with_the_reason(
    connector: Connector,
) -> None:
    held = await connector.request(action="deploy", vm=7)
    task_id = held["tasks"][0]["task_id"]

    call, task, message = await settle(connector, task_id)

    assert (call["task_id"], call["action"], call["status"]) == (task_id, "cancel", 204)
    reason = "nobody in the enterprise holds the ENTERPRISE_ADMIN role with an email address"
    assert reason in call["body"]
    assert connector.simulator.simulator.task(task_id).state.value == "CANCELLED"
    assert task.decision is DecisionState.DECLINED and task.decided_by is DecidedBy.NO_APPROVER
    assert task.reason == reason and task.delivery is DeliveryState.DELIVERED
    assert message.rcpt_tos == (PETER,)
    assert "declined" in message.subject
    assert f"* tps-01 (Deploy): Cancelled because {reason}" in (message.text() or "")


@pytest.mark.parametrize("action", ["undeploy", "reconfigure"])
async def test_a_task_type_that_is_not_gated_is_continued_at_once(
    connector_factory: ConnectorFactory, action: str
) -> None:
    with connector_factory(policy={"task_types": ["DEPLOY"]}) as connector:
        held = await connector.request(action=action, vm=1)
        task_id = held["tasks"][0]["task_id"]

        call, task, message = await settle(connector, task_id)

    assert (call["task_id"], call["action"], call["status"]) == (task_id, "continue", 204)
    assert task.decision is DecisionState.ACCEPTED and task.decided_by is DecidedBy.POLICY
    assert task.actor == "policy.task_types" and task.delivery is DeliveryState.DELIVERED
    # No approver was asked: the only email is the requester's.
    assert message.rcpt_tos == (JOHN,)
    assert f"because {action.upper()} tasks do not need approval" in (message.text() or "")
