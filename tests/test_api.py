"""The JSON API (`/api/v1`, web/api.py) on the in-process app with the simulator as Abiquo: who may
see and decide what, cursor pages, a request's timeline, decisions through the emailed links' path,
retries, errors as JSON sentences, and the OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx2
import pytest_asyncio

from abiquo_simulator.faults import Fault
from abiquo_workflow.access import token_digest
from abiquo_workflow.domain import Channel, DecisionState, DeliveryState
from tests.conftest import App, AppFactory
from tests.loop_support import open_store, wait_for_calls, wait_for_task, wait_until_idle

READ_TOKEN = "awf_read-token-for-tests"
DECIDE_TOKEN = "awf_decide-token-for-tests"
TOKENS = {
    "tokens": [
        {"name": "monitor", "scope": "read", "sha256": token_digest(READ_TOKEN)},
        {"name": "robot", "scope": "decide", "sha256": token_digest(DECIDE_TOKEN)},
    ]
}
ALICE = ("asmith", "asmith")  # an approver of Acme (ENTERPRISE_ADMIN)
GRACE = ("gadmin", "gadmin")  # an approver of Globex
JOHN = ("jdoe", "jdoe")  # the requester of the simulator's default requests (Acme, USER)
ADMIN = ("admin", "xabiquo")  # CLOUD_ADMIN


@pytest_asyncio.fixture
async def api(app_factory: AppFactory) -> AsyncIterator[App]:
    """The app with two API tokens and one held deploy of VM 1 (Acme, asked by John), triaged."""
    async with app_factory(api=TOKENS) as app:
        await app.request(vm=1)
        await app.inbox.wait_for(3)  # the approval emails: triage is done
        yield app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(
    app: App, path: str, *, auth: Any = None, headers: dict[str, str] | None = None
) -> httpx2.Response:
    async with app.client() as client:
        return await client.get(f"/api/v1{path}", auth=auth, headers=headers)


async def post(
    app: App, path: str, body: Any = None, *, auth: Any = None, headers: Any = None
) -> httpx2.Response:
    async with app.client() as client:
        return await client.post(f"/api/v1{path}", json=body, auth=auth, headers=headers)


async def only_request(app: App) -> dict[str, Any]:
    [item] = (await get(app, "/requests", auth=ADMIN)).json()["items"]
    return dict(item)


# --- who may look -------------------------------------------------------------------------------------


async def test_no_credentials_is_401_with_a_challenge_and_a_sentence(api: App) -> None:
    answer = await get(api, "/requests")

    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic ")
    assert "Abiquo user name and password" in answer.json()["error"]


async def test_a_wrong_password_is_401(api: App) -> None:
    answer = await get(api, "/requests", auth=("asmith", "nope"))

    assert answer.status_code == 401 and "refused" in answer.json()["error"]


async def test_wrong_passwords_past_the_sign_in_brake_are_429_even_with_the_right_one(
    app_factory: AppFactory,
) -> None:
    async with app_factory(api=TOKENS, dashboard={"max_failed_sign_ins": 2}) as app:
        wrong = [(await get(app, "/me", auth=("asmith", "nope"))).status_code for _ in range(2)]
        braked = await get(app, "/me", auth=ALICE)

    assert wrong == [401, 401]
    assert braked.status_code == 429 and int(braked.headers["retry-after"]) > 0
    assert "Too many wrong passwords" in braked.json()["error"]


async def test_an_unknown_token_is_401(api: App) -> None:
    assert (await get(api, "/requests", headers=bearer("awf_guess"))).status_code == 401


async def test_an_approver_lists_their_enterprises_pending_request(api: App) -> None:
    answer = await get(api, "/requests?state=pending", auth=ALICE)

    [item] = answer.json()["items"]
    assert answer.status_code == 200
    assert (item["enterprise_id"], item["state"], item["pending"], item["may_decide"]) == (
        "2",
        "pending",
        1,
        True,
    )


async def test_an_approver_of_another_enterprise_sees_nothing_of_it(api: App) -> None:
    request_id = (await only_request(api))["id"]

    listed = await get(api, "/requests", auth=GRACE)
    read = await get(api, f"/requests/{request_id}", auth=GRACE)

    assert listed.json()["items"] == []
    assert read.status_code == 404 and "you may see" in read.json()["error"]


async def test_the_requester_sees_their_request_but_may_not_decide_it(api: App) -> None:
    request_id = (await only_request(api))["id"]

    [item] = (await get(api, "/requests", auth=JOHN)).json()["items"]
    refused = await post(api, f"/requests/{request_id}/decision", {"action": "accept"}, auth=JOHN)

    assert item["may_decide"] is False
    assert refused.status_code == 403 and "not decide" in refused.json()["error"]
    assert api.decision_calls() == []


async def test_a_read_token_reads_but_may_not_decide(api: App) -> None:
    request_id = (await only_request(api))["id"]

    listed = await get(api, "/tasks", headers=bearer(READ_TOKEN))
    refused = await post(
        api, f"/requests/{request_id}/decision", {"action": "accept"}, headers=bearer(READ_TOKEN)
    )

    assert len(listed.json()["items"]) == 1
    assert refused.status_code == 403


# --- reading ------------------------------------------------------------------------------------------


async def test_a_request_is_read_with_its_tasks_notifications_and_timeline(api: App) -> None:
    request_id = (await only_request(api))["id"]

    detail = (await get(api, f"/requests/{request_id}", auth=ALICE)).json()

    assert [t["decision"] for t in detail["task_list"]] == ["pending"]
    assert {n["kind"] for n in detail["notifications"]} == {"approval"}
    assert {"received", "triaged"} <= {line["action"] for line in detail["timeline"]}


async def test_a_request_one_approval_decides_has_no_quorum_and_no_deadline(api: App) -> None:
    request_id = (await only_request(api))["id"]

    detail = (await get(api, f"/requests/{request_id}", auth=ALICE)).json()

    assert (detail["approvals_needed"], detail["quorum"]) == (1, None)
    assert (detail["deadline_at"], detail["at_deadline"]) == (None, None)


# --- quorums and deadlines -----------------------------------------------------------------------------

BOB = ("bjones", "bjones")  # another approver of Acme
QUORUM_AND_DEADLINE = {"approvals_needed": 2, "deadline": "3d", "at_deadline": "cancel"}


@pytest_asyncio.fixture
async def quorum(app_factory: AppFactory) -> AsyncIterator[App]:
    """The app under a rule of 2 approvals and a 3-day deadline, with one held deploy of VM 1, triaged."""
    async with app_factory(api=TOKENS, policy=QUORUM_AND_DEADLINE) as app:
        await app.request(vm=1)
        await app.inbox.wait_for(3)
        yield app


async def test_a_request_says_how_many_approvals_it_needs_who_was_asked_and_its_deadline(
    quorum: App,
) -> None:
    request = await only_request(quorum)

    detail = (await get(quorum, f"/requests/{request['id']}", auth=ALICE)).json()

    assert detail["approvals_needed"] == 2
    assert detail["quorum"] == {
        "needed": 2,
        "accepted": 0,
        "approved_by": [],
        "waiting_for": [
            "Alice Smith <alice.smith@acme.example>",
            "Bob Jones <bob.jones@acme.example>",
            "Zoë Zimmermann <zoe.zimmermann@acme.example>",
        ],
    }
    received = datetime.fromisoformat(request["received_at"])
    deadline = datetime.fromisoformat(detail["deadline_at"])
    assert timedelta(days=3) <= deadline - received < timedelta(days=3, minutes=1)
    assert detail["at_deadline"] == "cancel"


async def test_an_approval_short_of_the_quorum_is_202_counted_and_sends_nothing(quorum: App) -> None:
    [task] = (await get(quorum, "/tasks", auth=ALICE)).json()["items"]

    answer = await post(quorum, f"/tasks/{task['task_id']}/decision", {"action": "accept"}, auth=ALICE)

    assert answer.status_code == 202, answer.text
    assert answer.json() == {"decided": [], "already_decided": [], "counted": [task["task_id"]]}
    detail = (await get(quorum, f"/requests/{task['request_id']}", auth=ALICE)).json()
    assert detail["quorum"]["accepted"] == 1
    assert detail["quorum"]["approved_by"] == ["Alice Smith <alice.smith@acme.example>"]
    assert "Alice Smith <alice.smith@acme.example>" not in detail["quorum"]["waiting_for"]
    assert [t["decision"] for t in detail["task_list"]] == ["pending"]
    assert "approved" in [line["action"] for line in detail["timeline"]]
    async with open_store(quorum) as store:
        await wait_until_idle(store)
    assert quorum.decision_calls() == []


async def test_the_second_distinct_approval_decides_and_abiquo_is_told(quorum: App) -> None:
    [task] = (await get(quorum, "/tasks", auth=ALICE)).json()["items"]
    path = f"/tasks/{task['task_id']}/decision"
    assert (await post(quorum, path, {"action": "accept"}, auth=ALICE)).status_code == 202

    again = await post(quorum, path, {"action": "accept"}, auth=ALICE)
    second = await post(quorum, path, {"action": "accept"}, auth=BOB)

    assert again.status_code == 202 and again.json()["counted"] == [task["task_id"]]  # not a 2nd vote
    assert second.status_code == 200, second.text
    [decided] = second.json()["decided"]
    assert (decided["decision"], decided["actor"]) == ("accepted", "Bob Jones <bob.jones@acme.example>")
    [call] = await wait_for_calls(quorum, 1)
    assert (call["task_id"], call["action"]) == (task["task_id"], "continue")


async def test_a_decided_request_no_longer_shows_a_quorum(quorum: App) -> None:
    request_id = (await only_request(quorum))["id"]
    await post(quorum, f"/requests/{request_id}/decision", {"action": "decline"}, auth=ALICE)

    detail = (await get(quorum, f"/requests/{request_id}", auth=ALICE)).json()

    assert [t["decision"] for t in detail["task_list"]] == ["declined"]  # one decline vetoes
    assert detail["quorum"] is None and detail["approvals_needed"] == 2


async def test_task_pages_follow_next_cursor(app_factory: AppFactory) -> None:
    async with app_factory(api=TOKENS) as app:
        await app.request(vm=1)
        await app.request(vm=2)
        await app.request(vm=3)
        first = (await get(app, "/tasks?limit=2", auth=ADMIN)).json()
        rest = (await get(app, f"/tasks?limit=2&cursor={first['next_cursor']}", auth=ADMIN)).json()

    assert len(first["items"]) == 2 and first["next_cursor"]
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert {t["task_id"] for t in first["items"]}.isdisjoint(t["task_id"] for t in rest["items"])


async def test_a_mangled_cursor_is_422_with_a_sentence(api: App) -> None:
    answer = await get(api, "/tasks?cursor=bm9wZQ", auth=ADMIN)

    assert answer.status_code == 422 and answer.json()["error"].startswith("cursor:")


async def test_a_bad_filter_is_422_naming_the_parameter(api: App) -> None:
    answer = await get(api, "/requests?state=lost", auth=ADMIN)

    assert answer.status_code == 422 and answer.json()["error"].startswith("query.state:")


async def test_a_time_must_be_iso_8601_not_a_bare_number(api: App) -> None:
    refused = await get(api, "/requests?before=1700000000", auth=ADMIN)
    taken = await get(api, "/requests?before=2099-01-01T00:00:00Z", auth=ADMIN)

    assert refused.status_code == 422
    assert refused.json()["error"].startswith("query.before: ")
    assert "ISO 8601, such as 2026-12-03T14:00:00Z" in refused.json()["error"]
    assert taken.status_code == 200 and len(taken.json()["items"]) == 1


async def test_an_unknown_task_is_404_as_json(api: App) -> None:
    answer = await get(api, "/tasks/no-such-task", auth=ADMIN)

    assert answer.status_code == 404 and answer.json() == {
        "error": "There is no task no-such-task that you may see."
    }


# --- deciding -----------------------------------------------------------------------------------------


async def test_an_approver_accepts_a_task_on_the_api_channel_and_abiquo_is_told(api: App) -> None:
    [task] = (await get(api, "/tasks", auth=ALICE)).json()["items"]

    answer = await post(
        api, f"/tasks/{task['task_id']}/decision", {"action": "accept", "reason": "ok"}, auth=ALICE
    )
    [call] = await wait_for_calls(api, 1)

    [decided] = answer.json()["decided"]
    assert answer.status_code == 200
    assert (decided["decision"], decided["channel"], decided["actor"], decided["reason"]) == (
        "accepted",
        "api",
        "Alice Smith <alice.smith@acme.example>",
        "ok",
    )
    assert (call["task_id"], call["action"]) == (task["task_id"], "continue")


async def test_a_second_decision_is_409_naming_who_decided(api: App) -> None:
    request_id = (await only_request(api))["id"]
    await post(api, f"/requests/{request_id}/decision", {"action": "decline"}, headers=bearer(DECIDE_TOKEN))

    again = await post(api, f"/requests/{request_id}/decision", {"action": "accept"}, auth=ALICE)

    assert again.status_code == 409 and "token:robot" in again.json()["error"]


async def test_a_token_decision_is_audited_with_the_tokens_name(api: App) -> None:
    request_id = (await only_request(api))["id"]

    await post(api, f"/requests/{request_id}/decision", {"action": "decline"}, headers=bearer(DECIDE_TOKEN))
    detail = (await get(api, f"/requests/{request_id}", auth=ADMIN)).json()

    [line] = [line for line in detail["timeline"] if line["action"] == "decided"]
    assert (line["actor"], line["channel"]) == ("token:robot", Channel.API.value)


async def test_an_approver_who_lost_the_role_in_abiquo_is_refused_at_decision_time(api: App) -> None:
    request_id = (await only_request(api))["id"]
    await get(api, "/me", auth=ALICE)  # signed in (and cached) while still an approver
    api.simulator.simulator.change_role(10, "USER")

    refused = await post(api, f"/requests/{request_id}/decision", {"action": "accept"}, auth=ALICE)

    assert refused.status_code == 403 and "no longer an approver" in refused.json()["error"]


async def test_a_reason_longer_than_the_forms_is_422(api: App) -> None:
    request_id = (await only_request(api))["id"]

    answer = await post(
        api, f"/requests/{request_id}/decision", {"action": "accept", "reason": "x" * 1001}, auth=ADMIN
    )

    assert answer.status_code == 422 and answer.json()["error"].startswith("reason:")


# --- retrying -----------------------------------------------------------------------------------------


async def test_a_failed_delivery_is_retried_and_then_delivered(app_factory: AppFactory) -> None:
    async with app_factory(api=TOKENS) as app:
        held = await app.request(vm=1)
        task_id = held["tasks"][0]["task_id"]
        await app.inbox.wait_for(3)
        app.simulator.simulator.add_fault(Fault(count=1000, status=503, match="/action/continue"))
        await post(app, f"/tasks/{task_id}/decision", {"action": "accept"}, auth=ADMIN)
        async with open_store(app) as store:
            await wait_for_task(store, task_id, lambda t: t.delivery is DeliveryState.FAILED, "failed")
            app.simulator.simulator.clear_faults()

            answer = await post(app, f"/tasks/{task_id}/retry", headers=bearer(DECIDE_TOKEN))
            delivered = await wait_for_task(
                store, task_id, lambda t: t.delivery is DeliveryState.DELIVERED, "delivered"
            )

    assert answer.status_code == 200 and answer.json()["deliveries"] == [task_id]
    assert delivered.decision is DecisionState.ACCEPTED


async def test_retrying_what_has_not_failed_is_409(api: App) -> None:
    request_id = (await only_request(api))["id"]

    answer = await post(api, f"/requests/{request_id}/retry", auth=ADMIN)

    assert answer.status_code == 409 and "nothing to retry" in answer.json()["error"]


# --- the OpenAPI document -----------------------------------------------------------------------------


async def test_the_openapi_document_describes_the_api_and_its_security(api: App) -> None:
    document = (await get(api, "/openapi.json")).json()

    assert document["servers"] == [{"url": "/api/v1"}]
    assert {
        "/requests",
        "/requests/{request_id}",
        "/tasks/{task_id}/decision",
        "/tasks/{task_id}/retry",
    } <= set(document["paths"])
    assert set(document["components"]["securitySchemes"]) == {"HTTPBasic", "HTTPBearer"}
    decision = document["paths"]["/tasks/{task_id}/decision"]["post"]
    assert {"200", "401", "403", "404", "409", "410", "422", "503"} <= set(decision["responses"])


async def test_the_api_lists_and_decides_on_each_database(
    app_factory: AppFactory, migrated_database_url: str
) -> None:
    async with app_factory(migrated_database_url, api=TOKENS) as app:
        await app.request(vm=1)
        await app.inbox.wait_for(3)
        [item] = (await get(app, "/requests?state=pending", auth=ALICE)).json()["items"]
        decided = await post(app, f"/requests/{item['id']}/decision", {"action": "accept"}, auth=ALICE)
        [call] = await wait_for_calls(app, 1)
        pending = (await get(app, "/requests?state=pending", auth=ALICE)).json()["items"]

    assert decided.status_code == 200 and call["action"] == "continue"
    assert pending == []
