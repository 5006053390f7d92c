"""The dashboard in a real browser (Debian's Chromium): signing in, deciding, retrying a failed
delivery, a requester's read-only view; and its pages drawn at 390 px and 1280 px, 100-VM vApps and
very long names included, saved in `test-screenshots/` and measured as tests/test_phone.py measures
the decision pages (nothing wider than the window, buttons a thumb's size and apart)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from abiquo_simulator.faults import Fault
from abiquo_workflow.domain import DeliveryState
from tests.conftest import Connector, ConnectorFactory
from tests.dashboard_support import ADMIN, ALICE, JOHN, held
from tests.loop_support import open_store, wait_for_calls, wait_for_task
from tests.test_phone import HEIGHT, LONG_NAMES, LONG_VAPP, PAGE_WIDTHS, PHONE, check, rename

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page


async def signed_in(
    browser: Browser, connector: Connector, person: tuple[str, str]
) -> tuple[BrowserContext, Page]:
    """A new browser context whose page has signed in to the dashboard as `person` through its form."""
    context = await browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    page = await context.new_page()
    await page.goto(f"{connector.url}/")
    await page.get_by_label("Abiquo user name").fill(person[0])
    await page.get_by_label("Password").fill(person[1])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_selector("h1:has-text('Requests')")
    return context, page


async def draw(page: Page, name: str, expect_buttons: int | None = None) -> None:
    for width in PAGE_WIDTHS:
        await check(page, name, width, "button", expect_buttons)


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_an_approver_signs_in_and_accepts_a_vapp_from_the_dashboard(
    connector: Connector, chromium_browser: Browser
) -> None:
    from playwright.async_api import expect

    vapp = await held(connector, vapp=1)
    context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()
        await page.goto(f"{connector.url}/")
        await draw(page, "dashboard-sign-in", expect_buttons=1)
        await page.get_by_label("Abiquo user name").fill("asmith")
        await page.get_by_label("Password").fill("wrong")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_contain_text("did not accept that user name and password")
        await draw(page, "dashboard-sign-in-refused", expect_buttons=1)
        # By keyboard alone: the password field has the focus, visibly, and Enter sends the form.
        password = page.get_by_label("Password")
        await expect(password).to_be_focused()
        outline = await password.evaluate("(el) => getComputedStyle(el).outlineStyle")
        assert outline not in ("", "none")
        await page.keyboard.type(ALICE[1])
        await page.keyboard.press("Enter")

        await expect(page.get_by_role("heading", level=1)).to_have_text("Requests")
        await expect(page.get_by_text("Signed in as Alice Smith")).to_be_visible()
        await draw(page, "dashboard-list")
        await page.get_by_role("link", name="Deploy of Web tier & cache").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Deploy of Web tier & cache")
        await draw(page, "dashboard-request-pending")
        await page.get_by_label("Reason").fill("Capacity checked")
        await page.get_by_role("button", name="Accept all 3 pending").click()

        await expect(page.get_by_role("status")).to_contain_text("Accepted 3 tasks")
        calls = await wait_for_calls(connector, 3)
        await page.reload()
        await expect(page.get_by_text("Accepted by Alice Smith").first).to_be_visible()
        await draw(page, "dashboard-request-decided", expect_buttons=1)  # only Sign out is left
    finally:
        await context.close()

    assert sorted(call["task_id"] for call in calls) == sorted(t["task_id"] for t in vapp["tasks"])
    assert {call["action"] for call in calls} == {"continue"}
    assert all("Capacity checked" in call["body"] for call in calls)


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_a_failed_delivery_is_retried_from_the_dashboard_in_chromium(
    connector_factory: ConnectorFactory, chromium_browser: Browser
) -> None:
    from playwright.async_api import expect

    with connector_factory(worker={"max_attempts": 1}) as connector:
        acme = await held(connector, vm=1)
        task_id = acme["tasks"][0]["task_id"]
        simulator = connector.simulator.simulator
        simulator.add_fault(Fault(count=1000, status=503, match="/action/cancel"))
        context, page = await signed_in(chromium_browser, connector, ADMIN)
        try:
            await page.goto(f"{connector.url}/requests/{acme['request_id']}")
            await page.get_by_role("button", name="Decline", exact=True).first.click()
            async with open_store(connector) as store:
                await wait_for_task(store, task_id, lambda t: t.delivery is DeliveryState.FAILED, "failed")
            await page.goto(f"{connector.url}/?state=failed")
            await page.get_by_role("link", name="Deploy of web-01").click()
            await expect(page.get_by_role("heading", name="Something failed")).to_be_visible()
            await draw(page, "dashboard-request-failed")
            simulator.clear_faults()

            await page.get_by_role("button", name="Retry").click()

            await expect(page.get_by_role("status")).to_contain_text("Queued again")
            [call] = await wait_for_calls(connector, 1)
            async with open_store(connector) as store:
                await wait_for_task(
                    store, task_id, lambda t: t.delivery is DeliveryState.DELIVERED, "delivered"
                )
        finally:
            await context.close()

    assert (call["task_id"], call["action"], call["status"]) == (task_id, "cancel", 204)


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_a_requester_sees_their_own_request_and_cannot_decide_it_in_chromium(
    connector: Connector, chromium_browser: Browser
) -> None:
    from playwright.async_api import expect

    acme = await held(connector, vm=1)
    context, page = await signed_in(chromium_browser, connector, JOHN)
    try:
        await expect(page.get_by_text("read-only")).to_be_visible()
        await page.get_by_role("link", name="Deploy of web-01").click()
        await expect(page.get_by_text("Its enterprise's approvers decide it")).to_be_visible()
        assert await page.get_by_role("button", name="Accept").count() == 0
        await draw(page, "dashboard-request-requester", expect_buttons=1)  # Sign out alone
        token = await page.locator("input[name=csrf]").first.get_attribute("value")

        # The form he does not have, sent from his own signed-in browser anyway.
        refused = await page.request.post(
            f"{connector.url}/requests/{acme['request_id']}/decide",
            form={"csrf": token or "", "choice": "accept:all"},
        )
        said = await refused.text()
    finally:
        await context.close()

    assert refused.status == 403
    assert "You cannot decide this request" in said
    assert connector.decision_calls() == []


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_dashboard_with_a_100_vm_vapp_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    big = await held(connector, vapp=2)
    await held(connector, vm=1)
    context, page = await signed_in(chromium_browser, connector, ADMIN)
    try:
        await draw(page, "dashboard-list-admin")
        await page.goto(f"{connector.url}/requests/{big['request_id']}")
        assert await page.locator("table.tasks tbody tr").count() == 100
        # Beyond 20 VMs only Accept all / Decline all (and Sign out): no pair of buttons per VM.
        await draw(page, "dashboard-request-100-vms", expect_buttons=3)
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_dashboard_with_very_long_names_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    rename(connector, LONG_NAMES, LONG_VAPP)
    vapp = await held(connector, vapp=1)
    await held(connector, vm=2)
    context, page = await signed_in(chromium_browser, connector, ALICE)
    try:
        await draw(page, "dashboard-list-long-names")
        await page.goto(f"{connector.url}/requests/{vapp['request_id']}")
        # Sign out, Accept all and Decline all, and a pair for each of the three VMs.
        await draw(page, "dashboard-request-long-names", expect_buttons=9)
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_a_quorum_and_a_deadline_show_on_the_request_page_before_and_after_an_approval(
    connector_factory: ConnectorFactory, chromium_browser: Browser
) -> None:
    from playwright.async_api import expect

    policy = {"approvals_needed": 2, "deadline": "3d"}
    with connector_factory(policy=policy) as connector:
        acme = await held(connector, vm=1)
        context, page = await signed_in(chromium_browser, connector, ALICE)
        try:
            await expect(page.locator(".due")).to_contain_text("If undecided, cancelled on")
            await draw(page, "dashboard-list-deadline")
            await page.goto(f"{connector.url}/requests/{acme['request_id']}")
            await expect(page.locator(".quorum")).to_contain_text("0 of 2 approvals")
            await expect(page.locator(".deadline")).to_contain_text("it will be cancelled")
            await draw(page, "dashboard-request-quorum", expect_buttons=3)

            await page.get_by_role("button", name="Accept", exact=True).click()

            await expect(page.get_by_role("status")).to_contain_text("Your approval of 1 task is recorded")
            await expect(page.locator(".quorum")).to_contain_text("1 of 2 approvals, from Alice Smith")
            # Sign out and Decline: a second accept of hers would not count again.
            await draw(page, "dashboard-request-quorum-counted", expect_buttons=2)
        finally:
            await context.close()

    assert connector.decision_calls() == []
