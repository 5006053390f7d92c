"""A reconfigure end to end: the simulator holds it as Abiquo does (the VM shows the requested sizes at
once, docs/protocol.md §7.11), the connector triages it, and the approvers' email and confirmation page
say what it changes, compared with the VM as the connector last saw it.

Real servers throughout: the connector (uvicorn + its worker), the simulator as Abiquo, aiosmtpd as the
mail relay.
"""

from __future__ import annotations

import httpx2

from abiquo_workflow.mail.inbox import ReceivedMessage
from tests.conftest import CLIENT_TLS, Connector
from tests.loop_support import (
    confirm,
    open_confirmation,
    page_text,
    task_link,
    to,
    wait_for_calls,
    wait_until,
)

ALICE = "alice.smith@acme.example"
NOT_SAID = "Abiquo does not say what this reconfigure changes; the sizes below are the VM's current ones."


async def approval_to(connector: Connector, address: str, action: str) -> ReceivedMessage:
    """The approval email of an `action` ("deploy", "reconfigure") to `address`, once it arrived."""

    def arrived() -> ReceivedMessage | None:
        found = [m for m in to(connector.inbox.messages, address) if f"Approve {action} of" in m.subject]
        return found[-1] if found else None

    message: ReceivedMessage = await wait_until(arrived, f"the {action} email to {address}", 30)
    return message


async def test_a_reconfigure_email_shows_what_changed_since_the_vm_was_deployed(connector: Connector) -> None:
    deploy = await connector.request(action="deploy", vm=1)  # web-01: 2 CPUs, 4 GB RAM, one 20 GB disk
    deployed = await approval_to(connector, ALICE, "deploy")
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser:
        await confirm(browser, task_link(deployed, "/accept", deploy["tasks"][0]["task_id"]))
        await wait_for_calls(connector, 1)

        held = await connector.request(action="reconfigure", vm=1, cpu=4, ram=8192, disks=[20480, 51200])
        message = await approval_to(connector, ALICE, "reconfigure")
        page, _ = await open_confirmation(browser, task_link(message, "/accept", held["tasks"][0]["task_id"]))

    text = message.text() or ""
    assert "* web-01 (Reconfigure)\n  Changed since we last saw this VM, on " in text
    assert "CPU: 2 → 4   RAM: 4 → 8 GB" in text
    assert "Disks: 20 GB, 50 GB (new)" in text
    shown = page_text(message.html() or "").replace("\u00a0", " ")
    assert "2 → 4 CPUs 4 → 8 GB RAM disks 20 GB + 50 GB (new)" in shown
    on_the_page = page_text(page.text).replace("\u00a0", " ")
    assert "Changed since we last saw this VM" in on_the_page
    assert "2 → 4" in on_the_page and "4 → 8 GB" in on_the_page and "50 GB (new)" in on_the_page


async def test_a_reconfigure_of_a_vm_never_seen_says_abiquo_does_not_say_what_changes(
    connector: Connector,
) -> None:
    await connector.request(action="reconfigure", vm=3)  # cache-03 asks for twice its 2 CPUs and 2 GB

    message = await approval_to(connector, ALICE, "reconfigure")

    text = message.text() or ""
    assert f"* cache-03 (Reconfigure)\n  {NOT_SAID}\n  CPU: 4   RAM: 4 GB" in text
    assert "→" not in text
    assert NOT_SAID in page_text(message.html() or "")
