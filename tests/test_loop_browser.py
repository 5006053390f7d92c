"""An approver in a real browser (Debian's Chromium): from the approval email, drawn as HTML, through its
Accept link and the confirmation page, to the decision in Abiquo."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from abiquo_workflow.domain import DecisionState
from tests.conftest import Connector
from tests.loop_support import open_store, to, wait_for_calls, wait_until_idle

if TYPE_CHECKING:
    from playwright.async_api import Browser

ALICE = "alice.smith@acme.example"
VM_2 = 'db <primary> & "co"'  # a VM name is user input: it must show as text, never as markup


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_an_approver_accepts_from_the_email_link_in_chromium(
    connector: Connector, chromium_browser: Browser
) -> None:
    from playwright.async_api import expect

    held = await connector.request(action="deploy", vm=2)
    task_id = held["tasks"][0]["task_id"]
    approvals = await connector.inbox.wait_for(3)
    email = to(approvals, ALICE)[0].html()
    assert email is not None

    context = await chromium_browser.new_context()
    try:
        mail = await context.new_page()
        await mail.set_content(email)  # the email as her mail program shows it
        # Its links open a new tab (target="_blank"); the tab's first answer is the confirmation page.
        async with context.expect_page() as opening, context.expect_event("response") as answer:
            await mail.get_by_role("link", name="Accept", exact=True).click()
        page = await opening.value
        opened = await answer.value
        assert opened.status == 200
        assert opened.url.startswith(f"{connector.url}/accept?") and f"task={task_id}" in opened.url
        await expect(page.get_by_role("heading", level=1)).to_have_text(f"Accept the deploy of {VM_2}?")
        await expect(page.get_by_role("cell", name=VM_2, exact=True)).to_be_visible()
        assert await page.locator("primary").count() == 0  # the name did not become an element
        await expect(page.get_by_text("Waiting for a decision")).to_be_visible()
        async with open_store(connector) as store:
            task = await store.get_task(task_id)
            assert task is not None and task.decision is DecisionState.PENDING
        assert connector.decision_calls() == []

        await page.get_by_label("Reason").fill("Reviewed the sizing: fine")
        await page.get_by_role("button", name="Accept").click()

        await expect(page.get_by_role("heading", level=1)).to_have_text("Accepted")
        await expect(page.get_by_text("Accepted by Alice Smith <alice.smith@acme.example>")).to_be_visible()
    finally:
        await context.close()

    [call] = await wait_for_calls(connector, 1)
    assert (call["task_id"], call["action"], call["status"]) == (task_id, "continue", 204)
    assert "Reviewed the sizing: fine" in call["body"]
    async with open_store(connector) as store:
        await wait_until_idle(store)
    assert len(connector.decision_calls()) == 1
