"""A reconfigure shows what it changes: the VM as Abiquo shows it now against the VM as we last saw it.

docs/protocol.md §7.11: Abiquo's held reconfigure exposes only its target, the VM, which already carries
the requested sizes; what it had before is the latest earlier triage's reading of it. The wording
(mail/changes.py) in the approval email and on the confirmation page, then how enrichment finds that
earlier reading in the store (on SQLite and PostgreSQL). The whole loop is in test_loop_reconfigure.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
import pytest_asyncio
from pydantic import TypeAdapter

from abiquo_workflow.config import MailSettings
from abiquo_workflow.domain import (
    Callback,
    Channel,
    DecidedBy,
    DecisionState,
    DeliveryState,
    Disk,
    HeldTask,
    PayloadFormat,
    RequestDetails,
    User,
    VirtualAppliance,
    VirtualMachine,
    VmDetails,
    Volume,
)
from abiquo_workflow.enrichment import last_seen
from abiquo_workflow.mail import changes
from abiquo_workflow.mail.model import ActionLinks, ApprovalRequest
from abiquo_workflow.mail.render import render_approval
from abiquo_workflow.store import Store, TaskRecord
from abiquo_workflow.web.views import task_rows
from tests.loop_support import page_text

JDOE = User("20", "jdoe", "John", "Doe", "john.doe@acme.example", "USER", "2", "Acme")
ASMITH = User("10", "asmith", "Alice", "Smith", "alice.smith@acme.example", "ENTERPRISE_ADMIN", "2")
SETTINGS = MailSettings(sender="Approvals <approvals@acme.example>")

WAS = VirtualMachine(
    "2",
    "db-02",
    cpu=2,
    ram_mb=4096,
    disks=(Disk("21", 0, 20480), Disk("22", 1, 51200)),
    volumes=(Volume("7", "db-data", 102400),),
)
NOW = dataclasses.replace(WAS, cpu=4, ram_mb=8192, disks=(Disk("21", 0, 20480), Disk("22", 1, 102400)))
SEEN_AT = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
NOT_SAID = "Abiquo does not say what this reconfigure changes; the sizes below are the VM's current ones."


def reconfigure(vm: VirtualMachine, was: VirtualMachine | None = None) -> VmDetails:
    return VmDetails("task-r", "RECONFIGURE", vm, last_seen=was, last_seen_at=SEEN_AT if was else None)


def email(vm: VmDetails) -> EmailMessage:
    details = RequestDetails(JDOE, None, None, None, VirtualAppliance("1", "Databases"), (vm,))
    links = {vm.task_id: ActionLinks("https://awf.example/accept", "https://awf.example/decline")}
    return render_approval(ApprovalRequest(details, ASMITH, links), SETTINGS)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    """The HTML part, its no-break spaces (written `&nbsp;`) as the character."""
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content()).replace("&nbsp;", "\u00a0")


def shown(message: EmailMessage) -> str:
    """The HTML part's visible text, no-break spaces as spaces."""
    return page_text(html_of(message)).replace("\u00a0", " ")


# --- the approval email -----------------------------------------------------------------------------------


def test_a_change_since_we_last_saw_the_vm_is_shown_as_was_and_now_in_the_text_part() -> None:
    text = text_of(email(reconfigure(NOW, was=WAS)))

    assert "Changed since we last saw this VM, on 30 Nov 2026, 09:15 UTC:" in text
    assert "CPU: 2 → 4   RAM: 4 → 8 GB" in text
    assert "Disks: 20 GB, 50 → 100 GB" in text
    assert "Volumes: db-data (100 GB)" in text


def test_a_change_since_we_last_saw_the_vm_is_shown_as_was_and_now_in_the_html_part() -> None:
    body = shown(email(reconfigure(NOW, was=WAS)))

    assert "Changed since we last saw this VM, on 30 Nov 2026, 09:15 UTC:" in body
    # One size per line, each whole: page_text joins the lines with a space.
    assert "2 → 4 CPUs 4 → 8 GB RAM disks 20 GB + 50 → 100 GB volume db-data (100 GB)" in body


def test_only_the_sizes_that_changed_are_bold_in_the_html_part() -> None:
    html = html_of(email(reconfigure(dataclasses.replace(WAS, cpu=4), was=WAS)))

    assert '<strong class="changed"' in html and "2\u00a0→\u00a04\u00a0CPUs</strong>" in html
    assert html.count('<strong class="changed"') == 1  # RAM, disks and volume are as they were


def test_a_was_and_now_stays_on_one_line_in_the_html_part() -> None:
    html = html_of(email(reconfigure(NOW, was=WAS)))

    assert "4\u00a0→\u00a08\u00a0GB\u00a0RAM" in html
    assert "50\u00a0→\u00a0100\u00a0GB" in html


@pytest.mark.parametrize("part", [text_of, shown], ids=["text", "html"])
def test_a_reconfigure_of_a_vm_never_seen_says_so_in_one_line_and_shows_no_change(part: object) -> None:
    body = part(email(reconfigure(NOW)))  # type: ignore[operator]

    assert body.count(NOT_SAID) == 1
    assert "→" not in body


@pytest.mark.parametrize("part", [text_of, shown], ids=["text", "html"])
def test_a_reconfigure_whose_sizes_are_as_we_last_saw_them_says_they_are_not_new_ones(part: object) -> None:
    body = part(email(reconfigure(WAS, was=WAS)))  # type: ignore[operator]

    assert (
        "CPU, RAM, disks and volumes are as we last saw them, on 30 Nov 2026, 09:15 UTC. " + NOT_SAID
    ) in body
    assert "→" not in body


def test_the_current_sizes_of_a_vm_never_seen_are_still_listed_after_the_sentence() -> None:
    text = text_of(email(reconfigure(NOW)))

    assert text.index(NOT_SAID) < text.index("CPU: 4   RAM: 8 GB")
    assert "Disks: 20 GB, 100 GB" in text


def test_a_deploy_shows_its_sizes_without_a_change_sentence() -> None:
    deploy = VmDetails("task-d", "DEPLOY", NOW, last_seen=WAS, last_seen_at=SEEN_AT)

    text = text_of(email(deploy))

    assert "CPU: 4   RAM: 8 GB" in text
    assert "→" not in text and "last saw" not in text and NOT_SAID not in text


# --- the wording of a change ------------------------------------------------------------------------------


def test_a_size_that_changes_unit_names_both_units() -> None:
    assert changes.from_to(512, 1024) == "512 MB → 1 GB"
    assert changes.from_to(4096, 8192) == "4 → 8 GB"


def test_a_disk_added_is_said_to_be_new() -> None:
    more = dataclasses.replace(WAS, disks=(*WAS.disks, Disk("23", 2, 10240)))

    change = changes.reconfigure(reconfigure(more, was=WAS))

    assert change is not None and change.disks == ("20 GB", "50 GB", "10 GB (new)")
    assert "disks 20 GB + 50 GB + 10 GB (new)" in change.spec


def test_a_disk_removed_is_said_to_be_removed() -> None:
    fewer = dataclasses.replace(WAS, disks=WAS.disks[:1])

    change = changes.reconfigure(reconfigure(fewer, was=WAS))

    assert change is not None and change.disks == ("20 GB", "50 GB (removed)")


def test_volumes_attached_detached_and_resized_are_said_so() -> None:
    was = dataclasses.replace(WAS, volumes=(Volume("7", "db-data", 102400), Volume("8", "old-logs", 10240)))
    now = dataclasses.replace(WAS, volumes=(Volume("7", "db-data", 204800), Volume("9", "logs", 51200)))

    change = changes.reconfigure(reconfigure(now, was=was))

    assert change is not None
    assert change.volumes == (
        "db-data (100 → 200 GB)",
        "logs (50 GB, attached)",
        "old-logs (10 GB, detached)",
    )


def test_a_vm_that_could_not_be_read_gets_no_change() -> None:
    unread = VmDetails("task-r", "RECONFIGURE", None, "the virtual machine was not found in Abiquo")

    assert changes.reconfigure(unread) is None


# --- the confirmation page --------------------------------------------------------------------------------


def page_row(vm: VmDetails) -> object:
    held = HeldTask(vm.task_id, "RECONFIGURE", "20", "2", "QUEUEING", continue_href="c", cancel_href="x")
    task = TaskRecord.arrived(
        held, request_id="req-1", position=0, created_at=SEEN_AT, vm_name="db-02", verified_at=SEEN_AT
    )
    details = RequestDetails(JDOE, None, None, None, None, (vm,))
    [row] = task_rows([task], details)
    return row


def test_the_confirmation_page_shows_a_reconfigures_sizes_as_was_and_now() -> None:
    row = page_row(reconfigure(NOW, was=WAS))

    assert (row.cpu, row.ram) == ("2\u00a0→\u00a04", "4\u00a0→\u00a08\u00a0GB")  # type: ignore[attr-defined]
    assert row.storage == "20\u00a0GB, 50\u00a0→\u00a0100\u00a0GB, db-data (100\u00a0GB)"  # type: ignore[attr-defined]
    assert row.note == "Changed since we last saw this VM, on 30 Nov 2026, 09:15 UTC."  # type: ignore[attr-defined]


def test_the_confirmation_page_says_a_reconfigures_sizes_are_current_when_the_change_is_unknown() -> None:
    row = page_row(reconfigure(NOW))

    assert (row.cpu, row.note, row.change_unknown) == ("4", NOT_SAID, True)  # type: ignore[attr-defined]


# --- the VM as we last saw it, from the store ---------------------------------------------------------------

TARGET = "http://abiquo.example/api/cloud/virtualdatacenters/1/virtualappliances/1/virtualmachines/2"
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
_SNAPSHOT = TypeAdapter(RequestDetails)


@dataclass
class SetClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class History:
    store: Store
    clock: SetClock

    async def request(
        self,
        task_id: str,
        vm: VirtualMachine | None,
        *,
        task_type: str = "DEPLOY",
        at: datetime,
        verified: bool = True,
        triaged: bool = True,
    ) -> TaskRecord:
        """One request of one task on the VM at TARGET, received (and verified, triaged) at `at`."""
        task_href = f"{TARGET}/tasks/{task_id}"
        held = HeldTask(
            task_id=task_id,
            task_type=task_type,
            user_id="20",
            owner_id="2",
            state="QUEUEING",
            continue_href=f"{task_href}/action/continue",
            cancel_href=f"{task_href}/action/cancel",
            target_href=TARGET,
            user_href="http://abiquo.example/api/admin/enterprises/2/users/20",
            self_href=task_href,
        )
        self.clock.now = at
        async with self.store.transaction() as tx:
            request_id = await tx.insert_request(
                Callback((held,), PayloadFormat.JSON), body="{}", content_type=None, source=None
            )
            await tx.insert_tasks(request_id, [held])
            if verified:
                await tx.confirm_tasks([held])
            if triaged:
                details = RequestDetails(JDOE, None, None, None, None, (VmDetails(task_id, task_type, vm),))
                await tx.save_triage(request_id, _SNAPSHOT.dump_python(details, mode="json"), [], {})
        task = await self.store.get_task(task_id)
        assert task is not None
        return task

    async def decide(self, task: TaskRecord, decision: DecisionState, delivery: DeliveryState) -> None:
        async with self.store.transaction() as tx:
            await tx.decide(
                [task.task_id],
                decision,
                decided_by=DecidedBy.APPROVER,
                actor="Alice Smith <alice.smith@acme.example>",
                reason=None,
                channel=Channel.WEB,
                delivery=delivery,
            )


@pytest_asyncio.fixture
async def history(migrated_database_url: str) -> AsyncIterator[History]:
    clock = SetClock()
    async with await Store.open(migrated_database_url, clock=clock) as store:
        yield History(store, clock)


async def test_a_reconfigure_is_compared_with_the_latest_earlier_reading_of_its_vm(history: History) -> None:
    await history.request("deploy-1", dataclasses.replace(WAS, cpu=1), at=T0)
    await history.request("undeploy-2", WAS, task_type="UNDEPLOY", at=T0 + timedelta(days=1))
    now = await history.request(
        "reconf-3", None, task_type="RECONFIGURE", at=T0 + timedelta(days=2), triaged=False
    )

    assert await last_seen(history.store, now, NOW) == (WAS, T0 + timedelta(days=1))


async def test_a_vm_never_seen_before_has_nothing_to_be_compared_with(history: History) -> None:
    now = await history.request("reconf-1", None, task_type="RECONFIGURE", at=T0, triaged=False)

    assert await last_seen(history.store, now, NOW) is None


async def test_an_earlier_reconfigure_counts_once_it_was_accepted_and_delivered(history: History) -> None:
    await history.request("deploy-1", WAS, at=T0)
    earlier = await history.request("reconf-2", NOW, task_type="RECONFIGURE", at=T0 + timedelta(days=1))
    await history.decide(earlier, DecisionState.ACCEPTED, DeliveryState.DELIVERED)
    now = await history.request(
        "reconf-3", None, task_type="RECONFIGURE", at=T0 + timedelta(days=2), triaged=False
    )

    assert await last_seen(history.store, now, NOW) == (NOW, T0 + timedelta(days=1))


@pytest.mark.parametrize(
    ("decision", "delivery"),
    [
        (DecisionState.DECLINED, DeliveryState.DELIVERED),  # cancelled: Abiquo put the old sizes back
        (DecisionState.ACCEPTED, DeliveryState.QUEUED),  # not yet continued
        (DecisionState.ACCEPTED, DeliveryState.SUPERSEDED),  # decided otherwise in Abiquo
    ],
    ids=["declined", "not-delivered", "superseded"],
)
async def test_an_earlier_reconfigure_that_did_not_go_through_is_passed_over(
    history: History, decision: DecisionState, delivery: DeliveryState
) -> None:
    await history.request("deploy-1", WAS, at=T0)
    earlier = await history.request("reconf-2", NOW, task_type="RECONFIGURE", at=T0 + timedelta(days=1))
    await history.decide(earlier, decision, delivery)
    now = await history.request(
        "reconf-3", None, task_type="RECONFIGURE", at=T0 + timedelta(days=2), triaged=False
    )

    assert await last_seen(history.store, now, NOW) == (WAS, T0)


async def test_a_task_abiquo_never_confirmed_is_not_a_reading_of_the_vm(history: History) -> None:
    await history.request("forged-1", dataclasses.replace(WAS, cpu=64), at=T0, verified=False)
    now = await history.request(
        "reconf-2", None, task_type="RECONFIGURE", at=T0 + timedelta(days=1), triaged=False
    )

    assert await last_seen(history.store, now, NOW) is None


async def test_the_request_being_triaged_is_not_compared_with_itself(history: History) -> None:
    now = await history.request("reconf-1", NOW, task_type="RECONFIGURE", at=T0)  # a triage run again

    assert await last_seen(history.store, now, NOW) is None
