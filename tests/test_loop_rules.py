"""`[[policy.rules]]` end to end, against the simulator and the SMTP inbox: `decide` rules reach
Abiquo and the requester's email with the rule's name, the first rule that matches wins, the default
rule applies when none does, explicit approvers get the email and can decide (and nobody else can, as
an attacker would try), each `when_requester_is_approver` mode of a rule, and the decision-time check
reading the request's rule."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.approvals import details_from_json
from abiquo_workflow.config import AbiquoSettings, PolicySettings
from abiquo_workflow.directory import ApproverDirectory
from abiquo_workflow.domain import Action, Channel, DecidedBy, DecisionState, DeliveryState, RequestDetails
from abiquo_workflow.links import LinkSigner
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store.records import TaskRecord
from tests.conftest import TEST_SECRET_KEY, App, AppFactory, Connector, ConnectorFactory
from tests.loop_support import (
    confirm,
    open_store,
    page_text,
    recipients,
    task_link,
    wait_for_calls,
    wait_until,
    wait_until_idle,
)

ACME = "Acme & Söhne <Ltd>"
ACME_HREF = "admin/enterprises/2"
ACME_APPROVERS = ["alice.smith@acme.example", "bob.jones@acme.example", "zoe.zimmermann@acme.example"]
JOHN = "john.doe@acme.example"  # the usual requester: USER of Acme
DAN = "Dan Custom <dan.custom@acme.example>"  # VDC_APPROVER of Acme
GRACE = "grace.admin@globex.example"  # ENTERPRISE_ADMIN of Globex, and its only approver
GUS = "gus.user@globex.example"  # USER of Globex
CARLA = "carla@finance.example"  # no Abiquo user at all
CARLA_CONFIGURED = f"Carla Finance <{CARLA}>"

#: Only Carla approves Acme's requests; the default rule for everything else.
CARLA_ONLY: dict[str, Any] = {
    "rules": [{"name": "finance", "enterprise": ACME, "approver_roles": [], "approvers": [CARLA_CONFIGURED]}]
}


async def stored(running: Connector | App, task_ids: list[str]) -> tuple[list[TaskRecord], Any]:
    """Once the connector has done all it was going to: the tasks, and the request's triage snapshot."""
    async with open_store(running) as store:
        await wait_until_idle(store)
        tasks = await store.get_tasks(task_ids)
        request = await store.get_request(tasks[0].request_id)
        audit = await store.audit_log(request_id=tasks[0].request_id)
    assert request is not None
    triaged = [entry.detail for entry in audit if entry.action == "triaged"]
    return tasks, (details_from_json(request.details), request.approvers, triaged)


# --- decide rules ----------------------------------------------------------------------------------


async def test_a_decide_rule_accepts_at_once_and_the_audit_and_the_requester_name_the_rule(
    connector_factory: ConnectorFactory,
) -> None:
    policy = {"rules": [{"name": "small", "max_vms": 1, "max_cpu": 2, "max_ram": "4GB", "decide": "accept"}]}
    with connector_factory(policy=policy) as connector:
        held = await connector.request(action="deploy", vm=1)  # web-01: 2 CPUs, 4 GB
        task_id = held["tasks"][0]["task_id"]

        [call] = await wait_for_calls(connector, 1)
        [message] = await connector.inbox.wait_for(1)
        [task], (details, approvers, triaged) = await stored(connector, [task_id])

    assert (call["task_id"], call["action"], call["status"]) == (task_id, "continue", 204)
    assert (task.decision, task.decided_by, task.actor, task.channel) == (
        DecisionState.ACCEPTED,
        DecidedBy.POLICY,
        "policy: small",
        Channel.POLICY,
    )
    assert task.reason == "the request matches policy rule 'small'"
    assert task.delivery is DeliveryState.DELIVERED
    assert "policy rule 'small'" in call["body"]
    assert details.policy_rule == "small" and approvers == ()
    assert triaged == ["rule 'small': accept by policy: small: the request matches policy rule 'small'"]
    # Nobody was asked: the only email is the requester's, and it says which rule decided.
    assert message.rcpt_tos == (JOHN,)
    assert "Accepted automatically because the request matches policy rule 'small'" in (message.text() or "")


async def test_the_first_rule_that_matches_wins(connector_factory: ConnectorFactory) -> None:
    policy = {
        "rules": [
            {"name": "globex", "enterprise": "Globex", "decide": "accept"},
            {"name": "big", "enterprise": 2, "min_vms": 3, "decide": "cancel"},
            {"name": "acme", "enterprise": 2, "decide": "accept"},
        ]
    }
    with connector_factory(policy=policy) as connector:
        held = await connector.request(action="deploy", vapp=1)  # three VMs of Acme
        task_ids = [task["task_id"] for task in held["tasks"]]

        calls = await wait_for_calls(connector, 3)
        await connector.inbox.wait_for(1)
        tasks, (details, _, triaged) = await stored(connector, task_ids)

    assert sorted((c["task_id"], c["action"]) for c in calls) == sorted((t, "cancel") for t in task_ids)
    assert {(t.decision, t.actor) for t in tasks} == {(DecisionState.DECLINED, "policy: big")}
    assert details.policy_rule == "big"
    assert triaged[0].startswith("rule 'big': decline by policy: big")
    assert recipients(connector.inbox.messages) == [JOHN]


async def test_when_no_rule_matches_the_default_rule_asks_the_enterprises_approvers(
    app_factory: AppFactory,
) -> None:
    policy = {"rules": [{"name": "globex", "enterprise": "Globex", "decide": "accept"}]}
    async with app_factory(policy=policy) as app:
        held = await app.request(vm=1)
        messages = await app.inbox.wait_for(3)
        tasks, (details, approvers, triaged) = await stored(app, [held["tasks"][0]["task_id"]])

    assert recipients(messages) == ACME_APPROVERS
    assert tasks[0].decision is DecisionState.PENDING and app.decision_calls() == []
    assert details.policy_rule is None and sorted(approvers) == ACME_APPROVERS
    assert triaged[0].startswith("the default rule: asked ")


# --- who approves under a rule ---------------------------------------------------------------------


async def test_an_address_the_rule_names_gets_the_email_and_decides_with_it(app_factory: AppFactory) -> None:
    async with app_factory(policy=CARLA_ONLY) as app:
        held = await app.request(vm=1)
        task_id = held["tasks"][0]["task_id"]
        [email] = await app.inbox.wait_for(1)
        assert email.rcpt_tos == (CARLA,)
        assert "Carla" in (email.text() or "")

        async with app.client() as client:
            decided = await confirm(client, task_link(email, "/accept", task_id), reason="budget ok")
        assert decided.status_code == 200, decided.text

        [call] = await wait_for_calls(app, 1)
        [task], (details, approvers, triaged) = await stored(app, [task_id])

    assert (call["task_id"], call["action"]) == (task_id, "continue")
    assert (task.decision, task.decided_by, task.actor) == (
        DecisionState.ACCEPTED,
        DecidedBy.APPROVER,
        CARLA_CONFIGURED,
    )
    assert details.policy_rule == "finance" and approvers == (CARLA,)
    assert triaged == [f"rule 'finance': asked {CARLA}"]


async def test_a_rule_asks_its_roles_and_the_addresses_it_names(app_factory: AppFactory) -> None:
    policy = {"rules": [{"name": "acme", "enterprise": ACME, "approvers": [CARLA]}]}
    async with app_factory(policy=policy) as app:
        await app.request(vm=1)
        messages = await app.inbox.wait_for(4)

    assert recipients(messages) == sorted([*ACME_APPROVERS, CARLA])


def signed(app: App, task_id: str, approver: str) -> str:
    """A link to accept `task_id` signed for `approver` with the connector's key, as an email would
    carry: what an attacker who somehow got a valid signature for themselves would hold."""
    url = LinkSigner(TEST_SECRET_KEY, app.settings.server.base_url, ttl=3600).task_url(
        task_id, Action.ACCEPT, approver
    )
    return url.removeprefix(app.settings.server.base_url)


async def test_nobody_the_rule_does_not_name_and_without_its_role_can_decide(app_factory: AppFactory) -> None:
    async with app_factory(policy=CARLA_ONLY) as app:
        held = await app.request(vm=1)
        task_id = held["tasks"][0]["task_id"]
        await app.inbox.wait_for(1)
        async with app.client() as client:
            # An outsider; Dan, an Acme user with another role; Alice, an approver of the default rule,
            # whom this request's rule does not ask.
            for approver in ("Eve <eve@evil.example>", DAN, "Alice Smith <alice.smith@acme.example>"):
                refused = await client.post(signed(app, task_id, approver))
                assert refused.status_code == 403, (approver, refused.text)
                assert "no longer an approver" in page_text(refused.text)
            allowed = await client.post(signed(app, task_id, CARLA_CONFIGURED))
        assert allowed.status_code == 200, allowed.text
        [task], _ = await stored(app, [task_id])

    assert (task.decision, task.actor) == (DecisionState.ACCEPTED, CARLA_CONFIGURED)


async def test_a_role_of_the_rule_is_checked_at_decision_time_not_the_default_one(
    app_factory: AppFactory,
) -> None:
    policy = {"rules": [{"name": "vdc", "enterprise": 2, "approver_roles": ["VDC_APPROVER"]}]}
    async with app_factory(policy=policy) as app:
        held = await app.request(vm=1)
        task_id = held["tasks"][0]["task_id"]
        [email] = await app.inbox.wait_for(1)
        assert email.rcpt_tos == ("dan.custom@acme.example",)
        app.simulator.simulator.change_role(13, "USER")  # then Dan stops approving, in Abiquo
        async with app.client() as client:
            alice = await client.post(signed(app, task_id, "Alice Smith <alice.smith@acme.example>"))
            dan = await client.post(signed(app, task_id, DAN))

    # Alice holds the default rule's role, not this rule's; Dan held this rule's role, and lost it.
    for refused in (alice, dan):
        assert refused.status_code == 403
        assert "ask an Abiquo administrator to give you the VDC_APPROVER role again" in page_text(
            refused.text
        )
    assert app.decision_calls() == []


@pytest.mark.parametrize("mode", ["accept", "cancel", "ask"])
async def test_each_when_requester_is_approver_mode_of_a_rule(app_factory: AppFactory, mode: str) -> None:
    # Grace is Globex's ENTERPRISE_ADMIN; the rule's mode wins over the default rule's.
    policy = {
        "when_requester_is_approver": "cancel" if mode == "accept" else "accept",
        "rules": [
            {"name": "globex", "enterprise": "Globex", "approvers": [GUS], "when_requester_is_approver": mode}
        ],
    }
    async with app_factory(policy=policy) as app:
        held = await app.request(vm=5, user=100)
        task_id = held["tasks"][0]["task_id"]
        [message] = await app.inbox.wait_for(1)
        [task], (details, approvers, _) = await stored(app, [task_id])

    assert details.policy_rule == "globex"
    if mode == "ask":
        # Nobody approves their own request: Gus, whom the rule names, is asked instead of Grace.
        assert message.rcpt_tos == (GUS,) and approvers == (GUS,)
        assert task.decision is DecisionState.PENDING
        return
    assert (task.decision, task.decided_by, task.actor) == (
        DecisionState.ACCEPTED if mode == "accept" else DecisionState.DECLINED,
        DecidedBy.POLICY,
        "policy: globex",
    )
    assert task.reason == "the requester holds the ENTERPRISE_ADMIN role (policy rule 'globex')"
    assert message.rcpt_tos == (GRACE,)
    assert "policy rule 'globex'" in (message.text() or "")


async def test_a_rule_without_approvers_left_falls_to_its_when_no_approver(app_factory: AppFactory) -> None:
    policy = {
        "rules": [{"name": "initech", "enterprise": "Initech", "when_no_approver": "accept"}],
        "when_no_approver": "cancel",
    }
    async with app_factory(policy=policy) as app:
        held = await app.request(vm=7)  # Initech: no approver with an email
        task_id = held["tasks"][0]["task_id"]
        await wait_until(lambda: app.decision_calls(), "the continue")
        [task], _ = await stored(app, [task_id])

    assert app.decision_calls()[0]["action"] == "continue"
    assert (task.decided_by, task.actor) == (DecidedBy.NO_APPROVER, "policy: initech")


# --- the decision-time check, on its own ------------------------------------------------------------


async def test_the_approver_check_follows_the_rule_as_configured_now(simulator: SimulatorServer) -> None:
    named = PolicySettings.model_validate(CARLA_ONLY)
    renamed = PolicySettings.model_validate(
        {"rules": [{"name": "finance-2", "approver_roles": [], "approvers": [CARLA]}]}
    )
    async with AbiquoClient(AbiquoSettings(api_url=simulator.api_url)) as client:
        now = ApproverDirectory(client, named)
        later = ApproverDirectory(client, renamed)

        assert await now.is_approver(ACME_HREF, CARLA_CONFIGURED, "finance")
        assert await now.is_approver(ACME_HREF, "CARLA@finance.example", "finance")
        assert not await now.is_approver(ACME_HREF, "eve@evil.example", "finance")
        # A role-holder of the default rule is not an approver of a rule that asks only Carla...
        assert not await now.is_approver(ACME_HREF, "alice.smith@acme.example", "finance")
        # ...but is of a request of the default rule, which Carla is not.
        assert await now.is_approver(ACME_HREF, "alice.smith@acme.example", None)
        assert not await now.is_approver(ACME_HREF, CARLA, None)
        # The rule is gone (renamed): its request counts as the default rule's, and Carla is out.
        assert not await later.is_approver(ACME_HREF, CARLA, "finance")
        assert await later.is_approver(ACME_HREF, "bob.jones@acme.example", "finance")


def test_the_rule_travels_in_the_triage_snapshot_which_older_versions_read_without_it() -> None:
    details = RequestDetails(None, None, None, None, None, policy_rule="finance")

    dumped = TypeAdapter(RequestDetails).dump_python(details, mode="json")

    assert dumped["policy_rule"] == "finance"
    assert details_from_json(dumped) == details
    without = {key: value for key, value in dumped.items() if key != "policy_rule"}
    assert details_from_json(without) == RequestDetails(None, None, None, None, None)
