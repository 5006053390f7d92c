"""On a phone and on a desktop: the emails and pages an approver sees, drawn by Debian's Chromium.

Each email and page is loaded at 390 px (a phone; the emails at 320 px too) and at 1280 px, saved as a
screenshot in `test-screenshots/` at the repository's root (for a person to look at: the folder is
ignored by git), and measured: nothing may be wider than the window (no sideways scrolling), every
button must be at least 44 px tall (a thumb's size) and no two buttons may touch.

The emails come out of the real loop (the simulator holds the tasks, the connector's triage writes
the emails, the inbox receives them); the pages are the connector's own, served for real.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
import uvicorn

from abiquo_workflow.mail.inbox import Inbox, ReceivedMessage, inbox_app
from tests.conftest import CLIENT_TLS, Connector, ConnectorFactory, MovableClock
from tests.loop_support import all_link, confirm, task_link, to, wait_for_calls

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

SCREENSHOTS = Path(__file__).parent.parent / "test-screenshots"
PHONE, DESKTOP = 390, 1280
#: The widths emails are drawn at: the narrowest phone in use, a common phone, a desktop.
EMAIL_WIDTHS = (320, PHONE, DESKTOP)
PAGE_WIDTHS = (PHONE, DESKTOP)
HEIGHT = 844  # an iPhone 12-15 screen, CSS pixels
THUMB = 44  # px: Apple's and Google's smallest comfortable touch target
BUTTON_GAP = 8  # px between two buttons, at least

ALICE = "alice.smith@acme.example"
BOB = "bob.jones@acme.example"
JOHN = "john.doe@acme.example"

#: Names as long as display.py lets them be (120 characters), each hard in its own way.
LONG_NAMES = {
    1: "web-frontend-for-the-customer-portal-of-the-european-union-region-in-production-"
    "with-blue-green-rollout-01",
    2: "db" + "x" * 200,  # one "word", far wider than a phone: only a break inside it can make it fit
    3: "Cache server for the shop's product catalogue and the session store of the checkout, "
    "sized for Black Friday",
}
LONG_VAPP = (
    "Customer portal, European Union region, production environment, blue-green rollout of the spring release"
)

# Every element of the page, measured in the page: what sticks out of the window, and each button's box.
MEASURE = """
(buttons) => {
  const width = window.innerWidth;
  const name = (el) => {
    const classes = typeof el.className === "string" ? el.className.trim().split(/\\s+/) : [];
    const cls = classes.filter(Boolean).map((c) => "." + c).join("");
    return el.tagName.toLowerCase() + cls + " " + JSON.stringify((el.textContent || "").trim().slice(0, 40));
  };
  const outside = [];
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;
    if (box.right > width + 1 || box.left < -1) {
      outside.push(`${name(el)}: ${Math.round(box.left)} to ${Math.round(box.right)} px`);
    }
  }
  const boxes = [...document.querySelectorAll(buttons)].map((el) => {
    const box = el.getBoundingClientRect();
    return {name: name(el), left: box.left, right: box.right, top: box.top, bottom: box.bottom};
  });
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width, outside, buttons: boxes};
}
"""


def _gap(a: dict[str, Any], b: dict[str, Any]) -> float:
    """How far apart two boxes are: the larger of their horizontal and vertical gaps (< 0: they overlap)."""
    across = max(b["left"] - a["right"], a["left"] - b["right"])
    down = max(b["top"] - a["bottom"], a["top"] - b["bottom"])
    return max(across, down)


async def check(page: Page, name: str, width: int, buttons: str, expect_buttons: int | None = None) -> dict:
    """Draw `page` `width` px wide, save its screenshot, and assert it fits and its buttons can be hit."""
    await page.set_viewport_size({"width": width, "height": HEIGHT})
    await page.evaluate("document.fonts.ready")
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}-{width}.png"
    screens = await page.evaluate("document.documentElement.scrollHeight") / HEIGHT
    if screens <= 4:
        await page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
    # A very long page (a hundred VMs) is saved as its first screen, what a reader sees before
    # scrolling, and its last, where it ends, instead of whole: the middle repeats one row, and drawing
    # it all (15,000 px tall on a phone) cost more than the rest of the test. What is measured below is
    # the whole page all the same.
    ends = {"top": 0, "bottom": 10**9} if screens > 4 else {}
    for end, scroll in ends.items():
        await page.evaluate(f"window.scrollTo(0, {scroll})")
        shot = path.with_name(f"{name}-{width}-{end}.png")
        await page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
    await page.evaluate("window.scrollTo(0, 0)")
    measured: dict[str, Any] = await page.evaluate(MEASURE, buttons)

    assert measured["innerWidth"] == width
    assert measured["scrollWidth"] <= width, (
        f"{name} at {width} px scrolls sideways: {measured['outside'][:5]}"
    )
    assert measured["outside"] == [], (
        f"{name} at {width} px: wider than the window: {measured['outside'][:5]}"
    )
    boxes = measured["buttons"]
    if expect_buttons is not None:
        assert len(boxes) == expect_buttons, (name, [box["name"] for box in boxes])
    for box in boxes:
        height = box["bottom"] - box["top"]
        assert height >= THUMB, f"{name} at {width} px: {box['name']} is {height:.0f} px tall"
    for a, b in itertools.combinations(boxes, 2):
        gap = _gap(a, b)
        assert gap >= BUTTON_GAP, f"{name} at {width} px: {a['name']} and {b['name']} are {gap:.0f} px apart"
    return measured


async def check_email(browser: Browser, message: ReceivedMessage, name: str, buttons: int | None) -> None:
    html = message.html()
    assert html is not None
    context = await browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()
        await page.set_content(html)
        for width in EMAIL_WIDTHS:
            await check(page, name, width, "a.button", buttons)
    finally:
        await context.close()


def rename(connector: Connector, vms: dict[int, str], vapp: str | None = None) -> None:
    world = connector.simulator.simulator.world
    for vm_id, name in vms.items():
        world.vms[vm_id] = dataclasses.replace(world.vms[vm_id], name=name)
    if vapp is not None:
        world.vapps[1] = dataclasses.replace(world.vapps[1], name=vapp)


async def approval_to(connector: Connector, address: str, **target: Any) -> ReceivedMessage:
    before = len(connector.inbox.messages)
    await connector.request(action="deploy", **target)
    messages = await connector.inbox.wait_for(before + 3, timeout=30)  # Alice, Bob and Zoë
    [message] = to(messages[before:], address)
    return message


# --- the approval emails ------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_approval_email_of_one_vm_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    message = await approval_to(connector, ALICE, vm=2)  # 'db <primary> & "co"': two disks and a volume

    await check_email(chromium_browser, message, "email-approval-1-vm", buttons=2)


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_approval_email_of_a_3_vm_vapp_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    message = await approval_to(connector, ALICE, vapp=1)

    # Accept and Decline for each of the three VMs, and Accept all and Decline all.
    await check_email(chromium_browser, message, "email-approval-3-vms", buttons=8)


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_approval_email_of_100_vms_is_small_and_leads_with_its_buttons(
    connector: Connector, chromium_browser: Browser
) -> None:
    message = await approval_to(connector, ALICE, vapp=2)

    assert len(message.raw) < 100_000, f"the 100-VM email is {len(message.raw):,} bytes"
    text = message.text() or ""
    assert "In total: 100 VMs · 100 CPUs · 100 GB RAM · 2 TB disk" in text
    assert "100 \u00d7 1 CPU · 1 GB RAM · 20 GB disk" in text
    # Only the two buttons that decide all: no pair per VM beyond 20 VMs.
    await check_email(chromium_browser, message, "email-approval-100-vms", buttons=2)
    context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()
        await page.set_content(message.html() or "")
        accept_all = page.get_by_role("link", name="Accept all", exact=True)
        box = await accept_all.bounding_box()
        assert box is not None and box["y"] + box["height"] <= HEIGHT, (
            "Accept all is below a phone's first screen"
        )
        assert await page.get_by_text("batch-100", exact=True).count() == 1  # every VM is still listed
        href = await accept_all.get_attribute("href") or ""
        assert "/multiple?" in href and len(href) < 300, f"Accept all of 100 VMs is {len(href)} characters"
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_an_approval_email_with_very_long_names_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    rename(connector, LONG_NAMES, LONG_VAPP)

    message = await approval_to(connector, ALICE, vapp=1)

    await check_email(chromium_browser, message, "email-approval-long-names", buttons=8)


async def reconfigure_after_deploy(connector: Connector, address: str) -> ReceivedMessage:
    """The approval email of a reconfigure of VM 2 (two disks and a volume), which the connector saw
    when its deploy was asked for: every size of it changes, a disk is added."""
    await approval_to(connector, address, vm=2)
    before = len(connector.inbox.messages)
    await connector.request(action="reconfigure", vm=2, cpu=8, ram=16384, disks=[20480, 102400, 10240])
    messages = await connector.inbox.wait_for(before + 3, timeout=30)
    [message] = to(messages[before:], address)
    return message


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_approval_email_of_a_reconfigure_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    message = await reconfigure_after_deploy(connector, ALICE)
    assert "CPU: 4 \u2192 8   RAM: 8 \u2192 16 GB" in (message.text() or "")

    await check_email(chromium_browser, message, "email-approval-reconfigure", buttons=2)


# --- the decision pages, and the outcome email ----------------------------------------------------------


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_decision_pages_fit_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    alice = await approval_to(connector, ALICE, vapp=1)
    decline = task_link(alice, "/decline", html_first_task(alice))
    accept_all = all_link(alice, "accept")
    context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()

        await page.goto(decline.url)
        for width in PAGE_WIDTHS:
            await check(page, "page-confirm-decline", width, "button", expect_buttons=1)
        await page.get_by_label("Reason").fill("Not this quarter: the budget for new web servers is spent")
        await page.get_by_role("button", name="Decline").click()
        await page.wait_for_selector("main.tone-declined")
        assert await page.locator("h1").inner_text() == "Declined"
        assert "Not this quarter" in await page.locator(".notice").inner_text()
        for width in PAGE_WIDTHS:
            await check(page, "page-done-declined", width, "button", expect_buttons=0)

        await page.goto(accept_all.url)
        assert "1 of these tasks was already decided" in await page.locator("main").inner_text()
        for width in PAGE_WIDTHS:
            await check(page, "page-confirm-accept-all", width, "button", expect_buttons=1)
        await page.get_by_label("Reason").fill("Capacity checked with the network team")
        await page.get_by_role("button", name="Accept all 2 tasks").click()
        await page.wait_for_selector("main.tone-accepted")
        said = await page.locator("main").inner_text()
        assert "Accepted 2 tasks." in said and "1 other task had already been decided" in said
        assert "Capacity checked" in said and "Not this quarter" in said  # both reasons are shown
        for width in PAGE_WIDTHS:
            await check(page, "page-done-accepted", width, "button", expect_buttons=0)

        gone = await page.goto(accept_all.url)
        assert gone is not None and gone.status == 410
        said = await page.locator("main").inner_text()
        assert "Nothing is left for you to decide here" in said
        assert "Settled by Alice Smith on " in said and "accepted 2 of 3, declined 1" in said
        for width in PAGE_WIDTHS:
            await check(page, "page-410", width, "button", expect_buttons=0)

        forged = await page.goto(re.sub(r"token=[^&]+", "token=forged", decline.url))
        assert forged is not None and forged.status == 403
        assert "What you can do:" in await page.locator("main").inner_text()
        for width in PAGE_WIDTHS:
            await check(page, "page-403", width, "button", expect_buttons=0)

        await wait_for_calls(connector, 3)
        messages = await connector.inbox.wait_for(6, timeout=30)  # the outcome; Bob's and Zoë's settled
        [outcome] = to(messages, JOHN)
        # A fresh tab: one left on the connector's page would keep that page's CSP (no inline styles).
        mail = await context.new_page()
        await mail.set_content(outcome.html() or "")
        assert "Not this quarter" in await mail.locator("body").inner_text()
        for width in EMAIL_WIDTHS:
            await check(mail, "email-outcome", width, "a.button", expect_buttons=0)

        [settled] = [m for m in to(messages, BOB) if m.subject.startswith("Settled: ")]
        await check_settled_email(mail, settled, "email-settled")

        await page.goto(f"{connector.simulator.url}/")
        for width in PAGE_WIDTHS:
            await check(page, "simulator-control", width, "button")
    finally:
        await context.close()


async def check_settled_email(page: Page, message: ReceivedMessage, name: str) -> None:
    """The short "settled" email: small, with nothing to press, fitting each width, and on a phone
    all of it on the first screen."""
    assert len(message.raw) < 20_000, f"the settled email is {len(message.raw):,} bytes"
    await page.set_content(message.html() or "")
    assert "Settled by " in await page.locator("body").inner_text()
    for width in EMAIL_WIDTHS:
        await check(page, name, width, "a", expect_buttons=0)
        if width == PHONE:
            height = await page.evaluate("document.documentElement.scrollHeight")
            assert height <= HEIGHT, f"{name} at {width} px is {height} px tall: more than one screen"


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_settled_email_with_very_long_names_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    rename(connector, LONG_NAMES, LONG_VAPP)
    bob = await approval_to(connector, BOB, vapp=1)
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser:
        assert (await confirm(browser, all_link(bob, "accept"), reason="x" * 300)).status_code == 200
    messages = await connector.inbox.wait_for(6, timeout=30)
    [settled] = [m for m in to(messages, ALICE) if m.subject.startswith("Settled: ")]
    context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()
        assert len(settled.raw) < 20_000
        await page.set_content(settled.html() or "")
        for width in EMAIL_WIDTHS:
            await check(page, "email-settled-long-names", width, "a", expect_buttons=0)
    finally:
        await context.close()


def html_first_task(message: ReceivedMessage) -> str:
    """The task id of the first VM the email lists."""
    match = re.search(r"/decline\?task=([^&\"]+)", message.html() or "")
    assert match is not None
    return match.group(1)


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_confirmation_page_of_100_vms_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    bob = await approval_to(connector, BOB, vapp=2)
    context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()
        await page.goto(all_link(bob, "accept").url)
        assert await page.locator("tbody tr").count() == 100
        for width in PAGE_WIDTHS:
            await check(page, "page-confirm-100-vms", width, "button", expect_buttons=1)
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_a_confirmation_page_with_very_long_names_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    rename(connector, LONG_NAMES, LONG_VAPP)
    alice = await approval_to(connector, ALICE, vapp=1)
    context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()
        await page.goto(all_link(alice, "accept").url)
        for width in PAGE_WIDTHS:
            await check(page, "page-confirm-long-names", width, "button", expect_buttons=1)
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_confirmation_page_of_a_reconfigure_fits_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser
) -> None:
    alice = await reconfigure_after_deploy(connector, ALICE)
    context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()
        await page.goto(task_link(alice, "/accept", html_first_task(alice)).url)
        assert "Changed since we last saw this VM" in await page.locator("main").inner_text()
        for width in PAGE_WIDTHS:
            await check(page, "page-confirm-reconfigure", width, "button", expect_buttons=1)
    finally:
        await context.close()


# --- the demo's inbox ------------------------------------------------------------------------------------


@pytest.fixture
def inbox_site(smtp_inbox: Inbox) -> Iterator[str]:
    """The inbox's pages (`inbox_app`) served by uvicorn on a free port; yields their base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(inbox_app(smtp_inbox), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started and thread.is_alive():
        started.wait(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_the_inbox_pages_fit_a_phone_and_a_desktop(
    connector: Connector, chromium_browser: Browser, inbox_site: str
) -> None:
    rename(connector, LONG_NAMES, LONG_VAPP)
    await approval_to(connector, ALICE, vapp=1)
    context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
    try:
        page = await context.new_page()
        await page.goto(f"{inbox_site}/")
        for width in PAGE_WIDTHS:
            await check(page, "inbox-index", width, "button")
        await page.goto(f"{inbox_site}/messages/1")
        for width in PAGE_WIDTHS:
            await check(page, "inbox-message", width, "button")
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_a_quorum_with_a_deadline_and_its_reminder_fit_a_phone_and_a_desktop(
    connector_factory: ConnectorFactory, chromium_browser: Browser
) -> None:
    """The approval email and the confirmation page say "0 of 2 approvals" and the deadline; the page of
    an approval that does not decide says who is still awaited; the reminder is marked as one."""
    clock = MovableClock()
    policy = {"approvals_needed": 2, "deadline": "3d", "reminders": ["1d"]}
    with connector_factory(clock=clock, policy=policy) as connector:
        alice = await approval_to(connector, ALICE, vm=1)
        await check_email(chromium_browser, alice, "email-approval-quorum", buttons=2)
        context = await chromium_browser.new_context(viewport={"width": PHONE, "height": HEIGHT})
        try:
            page = await context.new_page()
            await page.goto(task_link(alice, "/accept", html_first_task(alice)).url)
            said = await page.locator("main").inner_text()
            assert "0 of 2 approvals" in said and "it will be cancelled" in said
            for width in PAGE_WIDTHS:
                await check(page, "page-confirm-quorum", width, "button", expect_buttons=1)
            await page.get_by_role("button", name="Accept").click()
            await page.wait_for_selector("main.tone-waiting")
            said = await page.locator("main").inner_text()
            assert "1 of 2 approvals, from Alice Smith; still waiting for Bob Jones or Zoë Zimmermann" in said
            for width in PAGE_WIDTHS:
                await check(page, "page-approval-recorded", width, "button", expect_buttons=0)
        finally:
            await context.close()

        clock.advance(24 * 3600 + 1)
        messages = await connector.inbox.wait_for(5, timeout=30)
        [reminder] = to(messages[3:], BOB)
        assert reminder.subject.startswith("Reminder: ")
        await check_email(chromium_browser, reminder, "email-reminder", buttons=2)
