"""The dashboard at `/` (web/dashboard.py): sign-in against the simulator's `/login`, who sees what,
deciding and retrying, sessions and CSRF.

The app runs in-process (`app_factory`: its real store, worker and Abiquo client) against the real
simulator, which holds the tasks and POSTs the callbacks; people sign in with the simulator's seeded
users (tests/dashboard_support.py).
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import pytest_asyncio

from abiquo_simulator.faults import Fault
from abiquo_workflow.domain import Channel, DecisionState, DeliveryState
from tests.conftest import App, AppFactory, MovableClock
from tests.dashboard_support import (
    ADMIN,
    ALICE,
    ALICE_ACTOR,
    FILLER,
    GRACE,
    JOHN,
    csrf,
    csrf_of,
    held,
    sign_in,
)
from tests.loop_support import open_store, wait_for_calls, wait_for_task, wait_until, wait_until_idle

TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")


def page_text(response: httpx2.Response, status: int) -> str:
    """An HTML page with this status and no traceback: its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert not any(marker in response.text for marker in TRACEBACK_MARKERS)
    return response.text


@pytest_asyncio.fixture
async def client(app: App) -> AsyncIterator[httpx2.AsyncClient]:
    async with app.client() as opened:
        yield opened


async def decide(
    client: httpx2.AsyncClient, request_id: str, choice: str, reason: str = "", **extra: str
) -> httpx2.Response:
    token = await csrf(client, f"/requests/{request_id}")
    return await client.post(
        f"/requests/{request_id}/decide", data={"csrf": token, "choice": choice, "reason": reason, **extra}
    )


# --- signing in ----------------------------------------------------------------------------------------


async def test_a_visitor_gets_the_sign_in_form(client: httpx2.AsyncClient) -> None:
    text = page_text(await client.get("/"), 200)

    assert '<html lang="en">' in text
    assert '<label for="username">' in text and '<label for="password">' in text
    assert 'autocomplete="current-password"' in text
    assert csrf_of(text)
    cookie = client.cookies.jar
    assert any(c.name == "awf_session" for c in cookie)


async def test_the_session_cookie_is_http_only_and_same_site_lax(client: httpx2.AsyncClient) -> None:
    response = await client.get("/")

    set_cookie = response.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "path=/" in set_cookie
    assert "secure" not in set_cookie  # the app's public URL is http


async def test_over_https_the_cookie_is_secure_under_the_host_prefix(app_factory: AppFactory) -> None:
    async with (
        app_factory(server={"public_url": "https://approvals.example"}) as running,
        running.client() as client,
    ):
        response = await client.get("/")

    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith("__Host-awf_session=")
    assert "secure" in set_cookie.lower()


async def test_an_approver_signs_in_with_abiquo_credentials(client: httpx2.AsyncClient) -> None:
    response = await sign_in(client, ALICE)

    assert response.status_code == 303 and response.headers["location"] == "/"
    text = page_text(await client.get("/"), 200)
    assert "Signed in as <strong>Alice Smith</strong> (approver)" in text
    assert "As an approver, you see and decide your enterprise&#39;s requests." in text
    assert "<h1>Requests</h1>" in text


async def test_a_wrong_password_gets_a_sentence_not_an_error(client: httpx2.AsyncClient) -> None:
    response = await sign_in(client, ("asmith", "not-her-password"))

    text = page_text(response, 401)
    assert "Abiquo did not accept that user name and password" in text
    assert 'value="asmith"' in text  # the name is kept; the password is not
    assert "not-her-password" not in text
    assert "Signed in as" not in page_text(await client.get("/"), 200)


async def test_an_unknown_user_gets_the_same_sentence(client: httpx2.AsyncClient) -> None:
    text = page_text(await sign_in(client, ("nobody", "nothing")), 401)

    assert "Abiquo did not accept that user name and password" in text


async def test_repeated_wrong_passwords_are_refused_for_a_while(app_factory: AppFactory) -> None:
    async with app_factory(dashboard={"max_failed_sign_ins": 2}) as running, running.client() as client:
        for _ in range(2):
            assert (await sign_in(client, ("asmith", "guess"))).status_code == 401
        calls = len(running.simulator.simulator.api_calls())

        refused = await sign_in(client, ALICE)  # even the right password, for now

        text = page_text(refused, 429)
        assert "Too many wrong passwords" in text and "minutes" in text
        assert len(running.simulator.simulator.api_calls()) == calls  # Abiquo was not asked
        # Another user name from the same address still may.
        assert (await sign_in(client, ADMIN)).status_code == 303


async def test_abiquo_unreachable_at_sign_in_gets_503_and_a_sentence(app_factory: AppFactory) -> None:
    async with (
        app_factory(abiquo={"api_url": "http://127.0.0.1:9/api", "retries": 0, "timeout": 1}) as running,
        running.client() as client,
    ):
        text = page_text(await sign_in(client, ALICE), 503)

    assert "Abiquo cannot be reached right now" in text


async def test_after_signing_in_a_request_page_link_leads_back_to_it(
    app: App, client: httpx2.AsyncClient
) -> None:
    request_id = (await held(app, vm=1))["request_id"]

    redirect = await client.get(f"/requests/{request_id}")
    assert redirect.status_code == 303
    signed = await client.get(redirect.headers["location"])
    token = csrf_of(signed.text)
    next_path = re.search(r'name="next" value="([^"]+)"', signed.text)
    assert next_path is not None and next_path.group(1) == f"/requests/{request_id}"
    response = await client.post(
        "/sign-in",
        data={"csrf": token, "username": "asmith", "password": "asmith", "next": next_path.group(1)},
    )

    assert response.headers["location"] == f"/requests/{request_id}"


async def test_a_wrong_password_keeps_where_sign_in_leads(client: httpx2.AsyncClient) -> None:
    text = page_text(await sign_in(client, ("asmith", "wrong"), next="/requests/abc"), 401)

    assert 'name="next" value="/requests/abc"' in text


async def test_sign_in_never_sends_anyone_to_another_site(client: httpx2.AsyncClient) -> None:
    response = await sign_in(client, ALICE, next="//evil.example/requests/x")

    assert response.headers["location"] == "/"


# --- who sees what --------------------------------------------------------------------------------------


async def list_text(client: httpx2.AsyncClient, **params: str) -> str:
    return page_text(await client.get("/", params=params), 200)


async def test_an_administrator_sees_every_enterprise(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    globex = await held(app, vm=5)
    await sign_in(client, ADMIN)

    text = await list_text(client)

    assert acme["request_id"] in text and globex["request_id"] in text
    assert '<label for="enterprise">' in text  # an administrator can narrow by enterprise
    assert "web-01" in text and "gx-app-01" in text


async def test_an_approver_sees_only_their_enterprise(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    globex = await held(app, vm=5)
    await sign_in(client, GRACE)

    text = await list_text(client)
    other = await client.get(f"/requests/{acme['request_id']}")

    assert globex["request_id"] in text and acme["request_id"] not in text
    assert "No such request" in page_text(other, 404)
    assert "web-01" not in other.text


async def test_a_requester_sees_their_own_request_without_buttons(
    app: App, client: httpx2.AsyncClient
) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, JOHN)

    listed = await list_text(client)
    text = page_text(await client.get(f"/requests/{acme['request_id']}"), 200)

    assert acme["request_id"] in listed
    assert "read-only" in listed
    assert "web-01" in text
    assert "<button" in text  # sign out…
    assert 'action="/requests/' not in text  # …but nothing to decide or retry
    assert "Its enterprise's approvers decide it" in text.replace("&#39;", "'")


async def test_someone_else_in_the_enterprise_sees_nothing_of_it(
    app: App, client: httpx2.AsyncClient
) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, FILLER)

    assert acme["request_id"] not in await list_text(client, state="all")
    assert (await client.get(f"/requests/{acme['request_id']}")).status_code == 404


async def test_a_requester_s_decision_is_refused_with_403(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, JOHN)

    response = await decide(client, acme["request_id"], "accept:all")

    assert "You cannot decide this request" in page_text(response, 403)
    async with open_store(app) as store:
        [task] = await store.tasks_of_request(acme["request_id"])
    assert task.decision is DecisionState.PENDING
    assert app.decision_calls() == []


async def test_a_requester_s_retry_is_refused_with_403(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, JOHN)
    token = await csrf(client)

    response = await client.post(f"/requests/{acme['request_id']}/retry", data={"csrf": token})

    assert "You cannot retry this request" in page_text(response, 403)


async def test_a_decision_without_signing_in_is_refused(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    token = await csrf(client)  # a visitor's token, for the sign-in form

    response = await client.post(
        f"/requests/{acme['request_id']}/decide", data={"csrf": token, "choice": "accept:all"}
    )

    assert "Not signed in" in page_text(response, 403)


# --- CSRF, origin, sessions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [pytest.param(None, id="missing"), pytest.param("0" * 64, id="wrong"), pytest.param("", id="empty")],
)
async def test_a_post_without_the_session_s_csrf_token_is_refused(
    app: App, client: httpx2.AsyncClient, token: str | None
) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, ALICE)
    form: dict[str, Any] = {"choice": "accept:all"} | ({} if token is None else {"csrf": token})

    response = await client.post(f"/requests/{acme['request_id']}/decide", data=form)

    assert "This form has expired" in page_text(response, 403)
    async with open_store(app) as store:
        [task] = await store.tasks_of_request(acme["request_id"])
    assert task.decision is DecisionState.PENDING


async def test_a_csrf_token_of_another_session_is_refused(app: App) -> None:
    acme = await held(app, vm=1)
    async with app.client() as mallory:
        await sign_in(mallory, ADMIN)
        stolen = await csrf(mallory)
    async with app.client() as alice:
        await sign_in(alice, ALICE)
        response = await alice.post(
            f"/requests/{acme['request_id']}/decide", data={"csrf": stolen, "choice": "accept:all"}
        )

    assert response.status_code == 403


async def test_a_post_from_another_site_is_refused(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, ALICE)
    token = await csrf(client)

    response = await client.post(
        f"/requests/{acme['request_id']}/decide",
        data={"csrf": token, "choice": "accept:all"},
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )

    assert "Not sent from this site" in page_text(response, 403)


async def test_the_sign_in_form_needs_its_csrf_token_too(client: httpx2.AsyncClient) -> None:
    await client.get("/")

    response = await client.post("/sign-in", data={"username": "asmith", "password": "asmith"})

    assert response.status_code == 403
    assert "Signed in as" not in (await client.get("/")).text


async def test_a_session_ends_after_its_lifetime(app_factory: AppFactory) -> None:
    async with app_factory(dashboard={"session_lifetime": 1}) as running, running.client() as client:
        await sign_in(client, ALICE)
        assert "Signed in as" in (await client.get("/")).text

        await asyncio.sleep(2.1)  # the signature's time counts whole seconds
        text = page_text(await client.get("/"), 200)

    assert "Your sign-in has ended" in text and "Signed in as" not in text


async def test_a_forged_session_cookie_signs_nobody_in(app: App, client: httpx2.AsyncClient) -> None:
    client.cookies.set("awf_session", "eyJzIjoieCIsImQiOnsiYWN0b3IiOiJtZSIsInJvbGUiOiJhZG1pbiJ9fQ.forged.sig")

    text = page_text(await client.get("/"), 200)

    assert "Signed in as" not in text and "<h1>Sign in</h1>" in text


async def test_an_emailed_link_s_token_is_not_a_session(app: App, client: httpx2.AsyncClient) -> None:
    from abiquo_workflow.domain import Action
    from abiquo_workflow.links import LinkSigner
    from tests.conftest import TEST_SECRET_KEY

    token = LinkSigner(TEST_SECRET_KEY, app.url, 3600).token(["t"], Action.ACCEPT, "admin")
    client.cookies.set("awf_session", token)

    assert "<h1>Sign in</h1>" in page_text(await client.get("/"), 200)


async def test_signing_out_ends_the_session(client: httpx2.AsyncClient) -> None:
    await sign_in(client, ALICE)
    token = await csrf(client)

    response = await client.post("/sign-out", data={"csrf": token})

    assert response.status_code == 303
    assert "max-age=0" in response.headers["set-cookie"].lower()
    assert "<h1>Sign in</h1>" in page_text(await client.get("/"), 200)


# --- lists, filters, search ---------------------------------------------------------------------------


async def test_the_lists_show_pending_decided_and_failed_requests(
    app: App, client: httpx2.AsyncClient
) -> None:
    first = await held(app, vm=1)
    second = await held(app, vm=3)
    await sign_in(client, ADMIN)
    assert (await decide(client, second["request_id"], "decline:all", "no")).status_code == 303

    pending = await list_text(client)
    decided = await list_text(client, state="decided")
    everything = await list_text(client, state="all")
    failed = await list_text(client, state="failed")

    assert first["request_id"] in pending and second["request_id"] not in pending
    assert second["request_id"] in decided and first["request_id"] not in decided
    assert first["request_id"] in everything and second["request_id"] in everything
    assert "No requests match" in failed


@pytest.mark.parametrize(
    ("params", "finds"),
    [
        pytest.param({"q": "WEB-0"}, "vm1", id="vm-name-ignoring-case"),
        pytest.param({"q": "jdoe"}, "both", id="requester-nick"),
        pytest.param({"q": "cache"}, "vm3", id="another-vm"),
        pytest.param({"type": "UNDEPLOY"}, "none", id="task-type"),
        pytest.param({"type": "deploy"}, "both", id="task-type-any-case"),
        pytest.param({"age": "over-1d"}, "none", id="older-than-a-day"),
        pytest.param({"age": "1h"}, "both", id="in-the-last-hour"),
        pytest.param({"enterprise": "3"}, "none", id="another-enterprise"),
        pytest.param({"enterprise": "2"}, "both", id="their-enterprise"),
    ],
)
async def test_filters_and_search_narrow_the_list(
    app: App, client: httpx2.AsyncClient, params: dict[str, str], finds: str
) -> None:
    vm1 = await held(app, vm=1)
    vm3 = await held(app, vm=3)
    await sign_in(client, ADMIN)

    text = await list_text(client, **params)

    expected = {
        "vm1": {vm1["request_id"]},
        "vm3": {vm3["request_id"]},
        "both": {vm1["request_id"], vm3["request_id"]},
    }
    shown = {r["request_id"] for r in (vm1, vm3) if r["request_id"] in text}
    assert shown == expected.get(finds, set())


async def test_a_task_id_finds_its_request(app: App, client: httpx2.AsyncClient) -> None:
    vm1 = await held(app, vm=1)
    vm3 = await held(app, vm=3)
    await sign_in(client, ALICE)

    text = await list_text(client, q=vm3["tasks"][0]["task_id"][:8])

    assert vm3["request_id"] in text and vm1["request_id"] not in text


async def test_the_list_pages_by_cursor(
    app: App, client: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from abiquo_workflow.web import dashboard

    monkeypatch.setattr(dashboard, "PAGE_SIZE", 1)
    older = await held(app, vm=1)
    newer = await held(app, vm=3)
    await sign_in(client, ADMIN)

    first = await list_text(client)
    link = re.search(r'href="(\?[^"]*cursor=[^"]+)" rel="next"', first)
    assert link is not None
    second = await list_text(client, **dict(httpx2.URL(html.unescape(link.group(1))).params))

    assert newer["request_id"] in first and older["request_id"] not in first
    assert older["request_id"] in second and newer["request_id"] not in second
    assert 'href="?state=pending">First page</a>' in second


async def test_a_cursor_we_did_not_make_gets_a_sentence(client: httpx2.AsyncClient) -> None:
    await sign_in(client, ADMIN)

    text = page_text(await client.get("/", params={"cursor": "not-a-cursor"}), 400)

    assert "not one we made" in text


# --- a request's page, deciding, retrying -----------------------------------------------------------


async def test_a_request_page_shows_its_vms_emails_and_timeline(app: App, client: httpx2.AsyncClient) -> None:
    vapp = await held(app, vapp=1)
    await app.inbox.wait_for(3)
    async with open_store(app) as store:
        await wait_until_idle(store)
    await sign_in(client, ALICE)

    text = page_text(await client.get(f"/requests/{vapp['request_id']}"), 200)

    assert "<h1>Deploy of Web tier &amp; cache</h1>" in text
    assert "db &lt;primary&gt; &amp; &#34;co&#34;" in text  # escaped, never markup
    assert text.count('class="decide-row"') == 3  # a button pair per VM
    assert "Accept all 3 pending" in text
    assert text.count("Approval request") == 3 and "Sent " in text
    for step in ("Received from Abiquo", "Checked with Abiquo", "Triaged", "Email sent"):
        assert step in text


async def test_a_decision_from_the_dashboard_reaches_abiquo_as_continue(
    app: App, client: httpx2.AsyncClient
) -> None:
    acme = await held(app, vm=1)
    task_id = acme["tasks"][0]["task_id"]
    await sign_in(client, ALICE)

    response = await decide(client, acme["request_id"], "accept:all", "Sized right")

    assert response.status_code == 303
    assert response.headers["location"].startswith(f"/requests/{acme['request_id']}?done=accepted")
    [call] = await wait_for_calls(app, 1)
    assert (call["task_id"], call["action"], call["status"]) == (task_id, "continue", 204)
    assert "Sized right" in call["body"]
    async with open_store(app) as store:
        task = await store.get_task(task_id)
        trail = await store.audit_log(task_id=task_id)
    assert task is not None and task.decision is DecisionState.ACCEPTED
    assert (task.actor, task.channel) == (ALICE_ACTOR, Channel.DASHBOARD)
    [decided] = [line for line in trail if line.action == "decided"]
    assert (decided.actor, decided.channel) == (ALICE_ACTOR, Channel.DASHBOARD)
    shown = page_text(await client.get(response.headers["location"]), 200)
    assert "Accepted 1 task. Abiquo is being told now" in shown
    assert "Accepted by Alice Smith" in shown


async def test_one_vm_of_a_vapp_is_declined_alone(app: App, client: httpx2.AsyncClient) -> None:
    vapp = await held(app, vapp=1)
    first, *others = [task["task_id"] for task in vapp["tasks"]]
    await sign_in(client, ADMIN)

    assert (await decide(client, vapp["request_id"], f"decline:{first}", "not this one")).status_code == 303

    [call] = await wait_for_calls(app, 1)
    assert (call["task_id"], call["action"]) == (first, "cancel")
    async with open_store(app) as store:
        assert [t.decision for t in await store.get_tasks(others)] == [DecisionState.PENDING] * 2
        admin = await store.get_task(first)
    assert admin is not None and admin.actor == "Cloud Admin <admin@abiquo.example>"


async def test_a_decided_request_is_not_decided_twice(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, ALICE)
    token = await csrf(client, f"/requests/{acme['request_id']}")

    first = await client.post(
        f"/requests/{acme['request_id']}/decide", data={"csrf": token, "choice": "accept:all"}
    )
    again = await client.post(
        f"/requests/{acme['request_id']}/decide", data={"csrf": token, "choice": "decline:all"}
    )

    assert "done=accepted" in first.headers["location"]
    assert "done=already" in again.headers["location"]
    await wait_for_calls(app, 1)
    async with open_store(app) as store:
        await wait_until_idle(store)
    assert len(app.decision_calls()) == 1


async def test_an_approver_who_lost_the_role_cannot_decide(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, ALICE)
    app.simulator.simulator.change_role(10, "USER")  # Alice is no longer an approver in Abiquo

    response = await decide(client, acme["request_id"], "accept:all")

    assert "You can no longer decide this" in page_text(response, 403)
    assert app.decision_calls() == []


async def test_a_reason_longer_than_the_form_allows_is_refused(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, ALICE)

    response = await decide(client, acme["request_id"], "accept:all", "x" * 1001)

    assert "Reason too long" in page_text(response, 400)


async def test_a_failed_delivery_is_retried_from_the_dashboard(app_factory: AppFactory) -> None:
    async with app_factory(worker={"max_attempts": 1}) as running, running.client() as client:
        acme = await held(running, vm=1)
        task_id = acme["tasks"][0]["task_id"]
        sim = running.simulator.simulator
        sim.add_fault(Fault(count=1000, status=503, match="/action/continue"))
        await sign_in(client, ADMIN)
        await decide(client, acme["request_id"], "accept:all")
        async with open_store(running) as store:
            await wait_for_task(store, task_id, lambda t: t.delivery is DeliveryState.FAILED, "failed")
        shown = page_text(await client.get(f"/requests/{acme['request_id']}"), 200)
        assert "Something failed" in shown and "1 decision could not be delivered" in shown
        assert "Delivery failed" in shown
        sim.clear_faults()

        token = csrf_of(shown)
        response = await client.post(f"/requests/{acme['request_id']}/retry", data={"csrf": token})

        assert response.status_code == 303 and "done=retried" in response.headers["location"]
        [call] = await wait_for_calls(running, 1)
        assert (call["task_id"], call["action"], call["status"]) == (task_id, "continue", 204)
        async with open_store(running) as store:
            delivered = await wait_for_task(
                store, task_id, lambda t: t.delivery is DeliveryState.DELIVERED, "delivered"
            )
            trail = await store.audit_log(task_id=task_id)
        [retried] = [line for line in trail if line.action == "retried"]
        assert (retried.actor, retried.channel) == ("Cloud Admin <admin@abiquo.example>", Channel.DASHBOARD)
        assert delivered.delivery is DeliveryState.DELIVERED


async def test_a_retry_with_nothing_failed_says_so(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, ADMIN)
    token = await csrf(client)

    response = await client.post(f"/requests/{acme['request_id']}/retry", data={"csrf": token})

    assert "done=nothing" in response.headers["location"]
    assert "Nothing had failed" in page_text(await client.get(response.headers["location"]), 200)


async def test_bad_posts_get_a_page_and_a_sentence(app: App, client: httpx2.AsyncClient) -> None:
    acme = await held(app, vm=1)
    await sign_in(client, ALICE)
    token = await csrf(client)
    path = f"/requests/{acme['request_id']}/decide"

    unknown_choice = await client.post(path, data={"csrf": token, "choice": "maybe:all"})
    unknown_task = await client.post(path, data={"csrf": token, "choice": "accept:no-such-task"})
    not_a_form = await client.post(
        path, content=b'{"choice": "accept:all"}', headers={"content-type": "application/json"}
    )
    get_only = await client.get(path)

    assert "did not say whether to accept or decline" in page_text(unknown_choice, 400)
    assert "not one of this request&#39;s" in page_text(unknown_task, 404)
    assert page_text(not_a_form, 400)
    assert page_text(get_only, 405)


async def test_an_approver_decides_from_the_dashboard_on_each_database(
    app_factory: AppFactory, migrated_database_url: str
) -> None:
    async with app_factory(database_url=migrated_database_url) as running, running.client() as client:
        acme = await held(running, vm=1)
        await sign_in(client, ALICE)
        listed = await list_text(client, q="web-01")
        assert acme["request_id"] in listed

        assert (await decide(client, acme["request_id"], "decline:all", "not now")).status_code == 303

        [call] = await wait_for_calls(running, 1)
    assert (call["action"], call["status"]) == ("cancel", 204)


async def test_an_approver_s_own_request_is_left_to_the_other_approvers(
    app: App, client: httpx2.AsyncClient
) -> None:
    own = await held(app, vm=1, user=10)  # Alice asks for it herself
    await sign_in(client, ALICE)

    shown = page_text(await client.get(f"/requests/{own['request_id']}"), 200)
    refused = await client.post(
        f"/requests/{own['request_id']}/decide", data={"csrf": csrf_of(shown), "choice": "accept:all"}
    )

    assert "You asked for this request yourself" in shown
    assert 'action="/requests/' not in shown
    assert "its enterprise&#39;s other approvers decide it" in page_text(refused, 403)
    assert app.decision_calls() == []


async def test_a_failed_email_is_retried_from_the_dashboard(app_factory: AppFactory) -> None:
    async with app_factory(worker={"max_attempts": 1}) as running, running.client() as client:
        running.inbox.refuse = True  # the relay answers 451 to everything
        acme = await held(running, vm=1)
        async with open_store(running) as store:

            async def all_failed() -> bool:
                sent = await store.notifications(acme["request_id"])
                return len(sent) == 3 and all(n.status.value == "failed" for n in sent)

            await wait_until(all_failed, "the three approval emails to fail")
        await sign_in(client, ADMIN)
        shown = page_text(await client.get(f"/requests/{acme['request_id']}"), 200)
        assert "3 emails could not be sent" in shown
        assert shown.count('<span class="status failed">Failed') == 3
        running.inbox.refuse = False

        response = await client.post(f"/requests/{acme['request_id']}/retry", data={"csrf": csrf_of(shown)})

        assert "done=retried" in response.headers["location"]
        assert "Queued again: 3 jobs" in page_text(await client.get(response.headers["location"]), 200)
        messages = await running.inbox.wait_for(3)
    assert sorted(address for m in messages for address in m.rcpt_tos) == [
        "alice.smith@acme.example",
        "bob.jones@acme.example",
        "zoe.zimmermann@acme.example",
    ]


# --- quorums, deadlines, reminders and escalation ------------------------------------------------------

BOB = ("bjones", "bjones")  # another approver of Acme
HOUR = 3600


async def test_a_request_page_says_how_many_approvals_are_needed_and_the_deadline(
    app_factory: AppFactory,
) -> None:
    policy = {"approvals_needed": 2, "deadline": "3d", "at_deadline": "cancel"}
    async with app_factory(policy=policy) as running, running.client() as client:
        acme = await held(running, vm=1)
        await sign_in(client, ALICE)

        text = html.unescape(page_text(await client.get(f"/requests/{acme['request_id']}"), 200))
        listed = page_text(await client.get("/?state=pending"), 200)

    assert "0 of 2 approvals; still waiting for Alice Smith, Bob Jones or Zoë Zimmermann." in text
    assert "One decline cancels it." in text
    assert re.search(r"If nobody decides by [^<]+ UTC, it will be cancelled\.", text)
    assert re.search(r'<span class="progress due">If undecided, cancelled on [^<]+ UTC</span>', listed)


async def test_an_approval_short_of_the_quorum_is_counted_and_the_second_approver_decides(
    app_factory: AppFactory,
) -> None:
    async with app_factory(policy={"approvals_needed": 2}) as running:
        acme = await held(running, vm=1)
        async with running.client() as alice:
            await sign_in(alice, ALICE)
            counted = await decide(alice, acme["request_id"], "accept:all")
            assert "done=counted" in counted.headers["location"]
            shown = html.unescape(page_text(await alice.get(counted.headers["location"]), 200))
        async with open_store(running) as store:
            await wait_until_idle(store)
        assert running.decision_calls() == []
        async with running.client() as bob:
            await sign_in(bob, BOB)
            decided = await decide(bob, acme["request_id"], "accept:all")
        [call] = await wait_for_calls(running, 1)

    assert "Your approval of 1 task is recorded. More approvals are needed" in shown
    assert "1 of 2 approvals, from Alice Smith; still waiting for Bob Jones or Zoë Zimmermann." in shown
    assert "Approval counted" in shown  # on the timeline
    assert "You have approved this; it now waits for the other approvals." in shown
    assert 'value="accept:all"' not in shown and 'value="decline:all"' in shown  # a veto is still hers
    assert "done=accepted" in decided.headers["location"]
    assert call["action"] == "continue"


async def test_reminders_and_escalation_are_on_the_request_page(app_factory: AppFactory) -> None:
    clock = MovableClock()
    policy = {
        "deadline": "3d",
        "reminders": ["1d"],
        "escalate_after": "2d",
        "escalate_to": ["The Boss <boss@acme.example>"],
    }
    async with app_factory(clock=clock, policy=policy) as running, running.client() as client:
        acme = await held(running, vm=1)
        await running.inbox.wait_for(3)
        clock.advance(24 * HOUR + 1)
        await running.inbox.wait_for(6)  # a reminder to each of the three
        clock.advance(24 * HOUR)
        await running.inbox.wait_for(7)  # and the boss asked
        async with open_store(running) as store:
            await wait_until_idle(store, clock)
        await sign_in(client, ADMIN)

        text = html.unescape(page_text(await client.get(f"/requests/{acme['request_id']}"), 200))

    assert text.count("Reminder sent") == 1  # one timeline line for the round of reminders
    assert text.count(">Reminder<") == 3  # the three emails, each listed
    assert "Escalated" in text and "boss@acme.example" in text
    assert text.count(">Approval request<") == 4  # the three approvers and the boss


async def test_a_task_cancelled_at_its_deadline_says_why_on_the_page(app_factory: AppFactory) -> None:
    clock = MovableClock()
    async with app_factory(clock=clock, policy={"deadline": "1h"}) as running, running.client() as client:
        acme = await held(running, vm=1)
        clock.advance(HOUR + 1)
        [call] = await wait_for_calls(running, 1)
        async with open_store(running) as store:
            await wait_until_idle(store, clock)
        await sign_in(client, ALICE)

        text = html.unescape(page_text(await client.get(f"/requests/{acme['request_id']}"), 200))

    assert call["action"] == "cancel"
    assert "Cancelled at its deadline on" in text
    assert "nobody decided by" in text  # the reason, on the row
    assert "If nobody decides by" not in text  # nothing is pending: no deadline line
