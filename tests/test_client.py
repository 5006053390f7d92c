"""The Abiquo client, against the simulator over loopback (the seeded world of the brief)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
import stamina
from pydantic import AnyHttpUrl

from abiquo_workflow.abiquo import _readers, _representation
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.abiquo.payload import parse_callback
from abiquo_workflow.config import AbiquoSettings
from abiquo_workflow.domain import DeliveryResult, HeldTask, PayloadFormat
from abiquo_workflow.exceptions import (
    AbiquoAuthError,
    AbiquoNotFound,
    AbiquoProtocolError,
    AbiquoUnavailable,
)
from abiquo_workflow.simulation import SimulatorServer
from tests.conftest import CLIENT_TLS

ACME = "admin/enterprises/2"
VAPP_1 = "cloud/virtualdatacenters/1/virtualappliances/1"
VM_1 = f"{VAPP_1}/virtualmachines/1"
VM_2 = f"{VAPP_1}/virtualmachines/2"
VAPP_2 = "cloud/virtualdatacenters/1/virtualappliances/2"
RETRIES = 2


@pytest.fixture(autouse=True)
def retries_without_sleeping() -> Iterator[None]:
    """No backoff sleeps; `cap=True` keeps the client's own number of attempts, so retries really happen."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


class RecordingTransport(httpx2.AsyncBaseTransport):
    """The real network transport, wrapped to keep every exchange and count requests in flight."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport(verify=CLIENT_TLS)
        self.exchanges: list[tuple[httpx2.Request, httpx2.Response]] = []
        self.in_flight = 0
        self.peak = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            response = await self._inner.handle_async_request(request)
            await response.aread()  # the body is part of the request's time in flight
        finally:
            self.in_flight -= 1
        self.exchanges.append((request, response))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class CallbackInbox:
    """Where the simulator POSTs its callbacks: the connector's /callback, reduced to a list of bodies."""

    url: str = ""
    received: list[tuple[bytes, str | None]] = field(default_factory=list)


@pytest.fixture
async def callback_inbox() -> AsyncIterator[CallbackInbox]:
    inbox = CallbackInbox()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        inbox.received.append((body, headers.get("content-type")))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    inbox.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/callback"
    async with server:
        yield inbox


async def hold(
    simulator: SimulatorServer,
    inbox: CallbackInbox,
    action: str,
    *,
    vm: int | None = None,
    vapp: int | None = None,
) -> list[HeldTask]:
    """Let the simulator hold tasks as Abiquo does, and return them as the connector's callback reads them."""
    await simulator.simulator.request(action, vm=vm, vapp=vapp, callback_url=inbox.url)
    body, content_type = inbox.received[-1]
    return list(parse_callback(body, content_type).tasks)


def settings_for(simulator: SimulatorServer, **changes: object) -> AbiquoSettings:
    return AbiquoSettings.model_validate({"api_url": simulator.api_url, "retries": RETRIES, **changes})


@pytest.fixture(params=[PayloadFormat.JSON, PayloadFormat.XML], ids=["json", "xml"])
async def client(request: pytest.FixtureRequest, simulator: SimulatorServer) -> AsyncIterator[AbiquoClient]:
    """A client of the simulator, once asking for JSON (3.x) and once for XML (2.x)."""
    async with AbiquoClient(settings_for(simulator), wire_format=request.param) as opened:
        yield opened


@pytest.fixture
async def json_client(simulator: SimulatorServer) -> AsyncIterator[AbiquoClient]:
    async with AbiquoClient(settings_for(simulator)) as opened:
        yield opened


async def arm_fault(simulator: SimulatorServer, **fault: object) -> None:
    """Arm a fault through the control surface (`POST /_sim/faults`): the next matching calls fail."""
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as control:
        response = await control.post(f"{simulator.url}/_sim/faults", json=fault)
    assert response.status_code == 201, response.text


def api_calls(simulator: SimulatorServer, path_end: str) -> list[int | None]:
    """The statuses of the /api calls whose path ends with `path_end` (None: connection dropped)."""
    return [call.status for call in simulator.simulator.api_calls() if call.path.endswith(path_end)]


# --- Resolving hrefs (docs/protocol.md §3.7) -------------------------------------------------------------


API = "https://abq.example/api"


@pytest.mark.parametrize(
    ("api_url", "href", "expected"),
    [
        # the callback's style: relative to the API root, no leading slash, no api/
        (API, "cloud/virtualdatacenters/3", f"{API}/cloud/virtualdatacenters/3"),
        # a leading slash is dropped
        (API, "/cloud/virtualdatacenters/3", f"{API}/cloud/virtualdatacenters/3"),
        # a leading copy of the API path is dropped, with or without a slash before it
        (API, "api/admin/enterprises/7", f"{API}/admin/enterprises/7"),
        (API, "/api/admin/enterprises/7", f"{API}/admin/enterprises/7"),
        # an href with a scheme is kept as it is
        (API, "https://abq.example:443/api/admin/roles/2", "https://abq.example:443/api/admin/roles/2"),
        # an API URL with a trailing slash gives the same URLs
        (f"{API}/", "cloud/locations/2", f"{API}/cloud/locations/2"),
        (f"{API}/", "/api/cloud/locations/2", f"{API}/cloud/locations/2"),
        # the API path is whatever the configured URL says, not always api/
        ("https://abq.example/abiquo/api", "abiquo/api/login", "https://abq.example/abiquo/api/login"),
        # only a whole leading segment is the API path
        (API, "apis/x", f"{API}/apis/x"),
        # an API at the root of its host: nothing to drop
        ("http://abq.example:8081", "/api/version", "http://abq.example:8081/api/version"),
        # the query string of a next-page link survives
        (API, "admin/roles?startwith=25&limit=25", f"{API}/admin/roles?startwith=25&limit=25"),
    ],
)
def test_resolve(api_url: str, href: str, expected: str) -> None:
    client = AbiquoClient(AbiquoSettings.model_validate({"api_url": api_url}))
    assert client.resolve(href) == expected


# --- Reading people and places ----------------------------------------------------------------------


async def test_user_has_role_and_enterprise(client: AbiquoClient) -> None:
    user = await client.get_user(f"{ACME}/users/10")
    assert (user.id, user.nick, user.display_name) == ("10", "asmith", "Alice Smith (asmith)")
    assert user.email == "alice.smith@acme.example"
    assert user.role == "ENTERPRISE_ADMIN"
    assert (user.enterprise_id, user.enterprise_name) == ("2", "Acme & Söhne <Ltd>")


async def test_user_without_email_has_none(client: AbiquoClient) -> None:
    user = await client.get_user(f"{ACME}/users/21")
    assert (user.nick, user.name, user.surname, user.email) == ("emile", "Émile", "Zoëga", None)


async def test_enterprise_users_are_read_to_the_last_page(client: AbiquoClient) -> None:
    users = await client.enterprise_users(ACME)
    assert len(users) == 40
    assert len({user.id for user in users}) == 40
    assert all(user.role and user.enterprise_id == "2" for user in users)


async def test_approvers_include_one_on_page_two_and_skip_no_email_and_other_roles(
    client: AbiquoClient,
) -> None:
    approvers = await client.approvers(ACME, "ENTERPRISE_ADMIN")
    assert sorted(user.nick for user in approvers) == ["asmith", "bjones", "zzimmer"]


async def test_approvers_of_a_custom_role(client: AbiquoClient) -> None:
    approvers = await client.approvers(ACME, "VDC_APPROVER")
    assert [(user.nick, user.email) for user in approvers] == [("dcustom", "dan.custom@acme.example")]


async def test_enterprise_with_no_approver_with_email_has_none(client: AbiquoClient) -> None:
    assert await client.approvers("admin/enterprises/4", "ENTERPRISE_ADMIN") == []


async def test_enterprise(client: AbiquoClient) -> None:
    enterprise = await client.get_enterprise(ACME)
    assert (enterprise.id, enterprise.name, enterprise.workflow) == ("2", "Acme & Söhne <Ltd>", True)
    assert enterprise.pendingtasks_href is not None
    assert enterprise.pendingtasks_href.endswith("/api/admin/enterprises/2/action/pendingtasks")


async def test_enterprises_list_every_enterprise_with_its_workflow_flag(client: AbiquoClient) -> None:
    enterprises = await client.enterprises()
    assert {(e.id, e.workflow) for e in enterprises} == {("1", False), ("2", True), ("3", True), ("4", True)}


async def test_role_exists(client: AbiquoClient) -> None:
    assert await client.role_exists("VDC_APPROVER")
    assert not await client.role_exists("VDC_APPROVERS")


async def test_vm_has_sizes_of_disks_and_volumes(client: AbiquoClient) -> None:
    vm = await client.get_vm(VM_2)
    assert (vm.id, vm.name, vm.cpu, vm.ram_mb) == ("2", 'db <primary> & "co"', 4, 8192)
    assert [(disk.sequence, disk.size_mb) for disk in vm.disks] == [(0, 20480), (1, 51200)]
    assert [(volume.name, volume.size_mb) for volume in vm.volumes] == [("db-data", 102400)]
    assert (vm.enterprise_name, vm.vdc_name, vm.vapp_name) == (
        "Acme & Söhne <Ltd>",
        "Production <EU>",
        "Web tier & cache",
    )


async def test_vm_without_storage_reads_only_the_vm(client: AbiquoClient, simulator: SimulatorServer) -> None:
    vm = await client.get_vm(VM_1, with_storage=False)
    assert (vm.name, vm.disks, vm.volumes) == ("web-01", (), ())
    assert [call.path for call in simulator.simulator.api_calls()] == [f"/api/{VM_1}"]


async def test_vdc_names_its_datacenter(client: AbiquoClient) -> None:
    vdc = await client.get_vdc("cloud/virtualdatacenters/2")
    assert (vdc.name, vdc.datacenter_name) == ("Staging", "Zürich DC")
    assert vdc.datacenter_href is not None
    datacenter = await client.get_datacenter(vdc.datacenter_href)
    assert (datacenter.id, datacenter.name, datacenter.location) == ("2", "Zürich DC", "Zürich, CH")


async def test_vdc_of_abiquo_2_6_links_the_admin_datacenter(
    client: AbiquoClient, simulator: SimulatorServer
) -> None:
    simulator.simulator.update_settings({"mode": "2.6"})
    vdc = await client.get_vdc("cloud/virtualdatacenters/1")
    assert vdc.datacenter_href is not None
    assert vdc.datacenter_href.endswith("/api/admin/datacenters/1")
    assert (await client.get_datacenter(vdc.datacenter_href)).name == "Barcelona DC"


async def test_vm_of_abiquo_2_6_has_the_disks_it_links_as_disks(
    client: AbiquoClient, simulator: SimulatorServer
) -> None:
    simulator.simulator.update_settings({"mode": "2.6"})
    vm = await client.get_vm(VM_2)
    # Both disks: the boot disk alone would be all that `hdInBytes` could tell.
    assert [(disk.sequence, disk.size_mb) for disk in vm.disks] == [(0, 20480), (1, 51200)]


def test_single_disk_links_are_not_taken_for_the_disks_collection() -> None:
    vm = _representation.JsonRepresentation(
        {
            "id": 7,
            "name": "web-01",
            "links": [
                {"rel": "disk0", "href": "https://abq.example/api/cloud/virtualdatacenters/3/disks/901"},
                {"rel": "disk1", "href": "https://abq.example/api/cloud/virtualdatacenters/3/disks/902"},
            ],
        }
    )
    assert _readers.vm_from(vm).harddisks_href is None


async def test_vapp(client: AbiquoClient) -> None:
    vapp = await client.get_vapp(VAPP_1)
    assert (vapp.id, vapp.name, vapp.state) == ("1", "Web tier & cache", "NOT_DEPLOYED")


async def test_version(client: AbiquoClient) -> None:
    assert await client.version() == "3.10"


async def test_missing_resource_is_not_found(client: AbiquoClient) -> None:
    with pytest.raises(AbiquoNotFound, match=r"GET \S+/virtualmachines/999 with 404 \(VM-1: "):
        await client.get_vm(f"{VAPP_1}/virtualmachines/999")


# --- Media types ------------------------------------------------------------------------------------


async def test_xml_mode_asks_for_and_reads_xml(simulator: SimulatorServer) -> None:
    transport = RecordingTransport()
    async with AbiquoClient(settings_for(simulator), transport=transport, wire_format=PayloadFormat.XML) as c:
        assert (await c.get_user(f"{ACME}/users/55")).nick == "zzimmer"
    [(request, response)] = transport.exchanges
    assert request.headers["accept"] == "application/vnd.abiquo.user+xml"
    assert response.headers["content-type"] == "application/vnd.abiquo.user+xml"
    assert response.content.lstrip().startswith(b"<")


async def test_api_version_is_sent_on_accept(simulator: SimulatorServer) -> None:
    transport = RecordingTransport()
    async with AbiquoClient(settings_for(simulator, api_version="3.10"), transport=transport) as c:
        await c.get_vdc("cloud/virtualdatacenters/1")
    [(request, response)] = transport.exchanges
    assert request.headers["accept"] == "application/vnd.abiquo.virtualdatacenter+json; version=3.10"
    # The simulator names the version it was asked for in its answer's media type.
    assert response.headers["content-type"] == "application/vnd.abiquo.virtualdatacenter+json; version=3.10"


async def test_version_abiquo_refuses_is_a_protocol_error_with_its_message(
    simulator: SimulatorServer,
) -> None:
    async with AbiquoClient(settings_for(simulator, api_version="three")) as c:
        with pytest.raises(AbiquoProtocolError, match=r"406.*Invalid version parameter") as caught:
            await c.get_vdc("cloud/virtualdatacenters/1")
    assert caught.value.status == 406


# --- Reading answers the simulator cannot send -------------------------------------------------------


def test_xml_answer_with_a_dtd_is_refused() -> None:
    body = b'<?xml version="1.0"?><!DOCTYPE user [<!ENTITY x "boom">]><user><nick>&x;</nick></user>'
    with pytest.raises(ValueError, match="DTD"):
        _representation.parse(body, "application/vnd.abiquo.user+xml")


def test_answer_that_is_neither_json_nor_xml_is_refused() -> None:
    with pytest.raises(ValueError, match="neither JSON nor XML"):
        _representation.parse(b"Service Unavailable", "text/html")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"collection": [{"code": "TASK-2", "message": "Not now"}]}', "application/vnd.abiquo.errors+json"),
        (b"<errors><error><code>TASK-2</code><message>Not now</message></error></errors>", "application/xml"),
        # a single error object, without the list around it
        (b'{"code": "TASK-2", "message": "Not now"}', "application/json"),
    ],
)
def test_error_code_and_message_are_read(body: bytes, content_type: str) -> None:
    assert _representation.error_of(body, content_type) == ("TASK-2", "Not now")


def test_unreadable_error_body_gives_no_code() -> None:
    assert _representation.error_of(b"Service Unavailable", "text/plain") == (None, None)


@pytest.mark.parametrize(
    ("body", "content_type", "total"),
    [
        (b'{"totalSize": 30, "links": [], "collection": []}', "application/vnd.abiquo.tasks+json", 30),
        (b"<tasks><totalSize>30</totalSize></tasks>", "application/vnd.abiquo.tasks+xml", 30),
        (b'{"links": [], "collection": []}', "application/vnd.abiquo.harddisks+json", None),
        (b"<disks><disk><id>901</id></disk></disks>", "application/vnd.abiquo.harddisks+xml", None),
    ],
)
def test_total_size_of_a_list_is_read_from_json_and_xml(
    body: bytes, content_type: str, total: int | None
) -> None:
    assert _representation.parse(body, content_type).total() == total


# --- Credentials ------------------------------------------------------------------------------------


async def test_wrong_password_is_an_auth_error_that_does_not_show_it(simulator: SimulatorServer) -> None:
    async with AbiquoClient(settings_for(simulator, password="not-xabiquo")) as c:
        with pytest.raises(AbiquoAuthError, match="401") as caught:
            await c.get_user(f"{ACME}/users/10")
    assert caught.value.status == 401
    assert "not-xabiquo" not in str(caught.value)


async def test_login_with_a_persons_own_credentials(client: AbiquoClient) -> None:
    user = await client.login("jdoe", "jdoe")
    assert (user.id, user.nick, user.role, user.enterprise_id) == ("20", "jdoe", "USER", "2")


async def test_login_with_a_wrong_password_is_an_auth_error(client: AbiquoClient) -> None:
    with pytest.raises(AbiquoAuthError, match="'jdoe'") as caught:
        await client.login("jdoe", "wrong")
    assert "wrong" not in str(caught.value)


async def test_login_does_not_change_who_the_connector_is(client: AbiquoClient) -> None:
    await client.login("jdoe", "jdoe")
    # jdoe could not read another enterprise; the connector's cloud admin still can.
    assert (await client.get_enterprise("admin/enterprises/3")).name == "Globex"


async def test_credentials_go_only_to_the_configured_api(
    json_client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=1)
    elsewhere = dataclasses.replace(task, continue_href="http://127.0.0.2:9/api/steal/action/continue")
    with pytest.raises(AbiquoProtocolError, match="outside the configured Abiquo API"):
        await json_client.continue_task(elsewhere)
    assert simulator.simulator.decision_calls() == []


# --- Pending tasks ----------------------------------------------------------------------------------


async def test_pending_tasks_after_a_vapp_request(
    client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    held = await hold(simulator, callback_inbox, "deploy", vapp=1)
    pending = await client.pending_tasks(ACME)
    assert sorted(task.task_id for task in pending) == sorted(task.task_id for task in held)
    assert {(task.task_type, task.state, task.user_id) for task in pending} == {("DEPLOY", "QUEUEING", "20")}
    assert all(task.continue_href.endswith(f"/tasks/{task.task_id}/action/continue") for task in pending)


async def test_pending_tasks_are_read_to_the_last_page(
    client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    held = await hold(simulator, callback_inbox, "deploy", vapp=2)  # 100 VMs: four pages
    pending = await client.pending_tasks(ACME)
    assert len(pending) == 100
    assert {task.task_id for task in pending} == {task.task_id for task in held}


async def test_no_pending_tasks(client: AbiquoClient) -> None:
    assert await client.pending_tasks("admin/enterprises/3") == []


@pytest.mark.parametrize("wire_format", [PayloadFormat.JSON, PayloadFormat.XML], ids=["json", "xml"])
async def test_pending_tasks_without_next_links_are_read_page_by_page_to_their_total_size(
    simulator: SimulatorServer, callback_inbox: CallbackInbox, wire_format: PayloadFormat
) -> None:
    await hold(simulator, callback_inbox, "deploy", vapp=2)  # 100 tasks, four pages of 25
    transport = RecordingTransport()
    async with AbiquoClient(settings_for(simulator), transport=transport, wire_format=wire_format) as c:
        pending = await c.pending_tasks(ACME)
    assert len({task.task_id for task in pending}) == 100
    assert [request.url.params.get("startwith") for request, _ in transport.exchanges] == [
        None,
        "25",
        "50",
        "75",
    ]
    assert not any(b'"next"' in response.content for _, response in transport.exchanges)


# --- Pending tasks as real Abiquo lists them (docs/protocol.md §6, §11.7) ---------------------------------


@dataclass
class CapturedAbiquo:
    """A tiny HTTP server that lists held tasks the way real Abiquo 3.10 does: pages by `startwith` and
    `limit` (default 25), counts them in `totalSize`, and links only `self` and `parent`."""

    api_url: str = ""
    tasks: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    targets: list[str] = field(default_factory=list)

    def listing(self, target: str) -> bytes:
        query = dict(parse_qsl(urlsplit(target).query))
        start, limit = int(query.get("startwith", "0")), int(query.get("limit", "25"))
        here = f"{self.api_url}/admin/enterprises/7"
        return json.dumps(
            {
                "totalSize": self.total,
                "links": [
                    {"rel": "self", "href": f"{here}/action/pendingtasks"},
                    {"rel": "parent", "href": here},
                ],
                "collection": self.tasks[start : start + limit],
            }
        ).encode()


def captured_task(n: int) -> dict[str, Any]:
    """The n-th held task of a listing, shaped as docs/protocol.md §11.7 shows one."""
    task_id = f"0b6c1f2e-5d1a-4c1e-9a8e-{n:012d}"
    vm = f"https://abiquo.example.com/api/cloud/virtualdatacenters/3/virtualappliances/5/virtualmachines/{n}"
    task = f"{vm}/tasks/{task_id}"
    return {
        "taskId": task_id,
        "userId": "42",
        "ownerId": str(n),
        "type": "DEPLOY",
        "state": "QUEUEING",
        "creationTimestamp": 1479997659,
        "timestamp": 1479997659,
        "jobs": {"links": [], "collection": []},
        "links": [
            {"rel": "self", "href": task},
            {"rel": "parent", "href": vm},
            {"rel": "cancel", "href": f"{task}/action/cancel"},
            {"rel": "continue", "href": f"{task}/action/continue"},
            {"rel": "target", "href": vm},
            {
                "rel": "user",
                "href": "https://abiquo.example.com/api/admin/enterprises/7/users/42",
                "type": "application/vnd.abiquo.user+json",
                "title": "jdoe",
            },
        ],
    }


@pytest.fixture
async def captured_abiquo() -> AsyncIterator[CapturedAbiquo]:
    captured = CapturedAbiquo()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        target = head.split(" ", 2)[1]
        captured.targets.append(target)
        body = captured.listing(target)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.abiquo.tasks+json; version=3.10\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    captured.api_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api"
    async with server:
        yield captured


async def read_captured_pending(captured: CapturedAbiquo) -> list[HeldTask]:
    settings = AbiquoSettings.model_validate({"api_url": captured.api_url, "retries": RETRIES})
    async with AbiquoClient(settings) as c:
        return await c.pending_tasks("admin/enterprises/7")


async def test_a_pending_tasks_listing_captured_from_real_abiquo_is_read_completely(
    captured_abiquo: CapturedAbiquo,
) -> None:
    captured_abiquo.tasks, captured_abiquo.total = [captured_task(n) for n in range(1, 31)], 30
    pending = await read_captured_pending(captured_abiquo)
    assert [task.task_id for task in pending] == [task["taskId"] for task in captured_abiquo.tasks]


async def test_the_next_page_starts_after_the_members_read_and_is_as_long_as_the_page_read(
    captured_abiquo: CapturedAbiquo,
) -> None:
    captured_abiquo.tasks, captured_abiquo.total = [captured_task(n) for n in range(1, 31)], 30
    await read_captured_pending(captured_abiquo)
    assert captured_abiquo.targets == [
        "/api/admin/enterprises/7/action/pendingtasks",
        "/api/admin/enterprises/7/action/pendingtasks?startwith=25&limit=25",
    ]


async def test_a_listing_that_overstates_its_total_size_ends_at_its_first_empty_page(
    captured_abiquo: CapturedAbiquo,
) -> None:
    captured_abiquo.tasks, captured_abiquo.total = [captured_task(n) for n in range(1, 26)], 30
    pending = await read_captured_pending(captured_abiquo)
    assert len(pending) == 25
    assert len(captured_abiquo.targets) == 2


# --- Continue and cancel ----------------------------------------------------------------------------


async def test_continue_is_done_and_carries_the_reason(
    client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=1)
    outcome = await client.continue_task(task, "Approved by Zoë Zimmermann")
    assert outcome.result is DeliveryResult.DONE
    [call] = simulator.simulator.decision_calls()
    assert (call.task_id, call.action, call.status, call.user) == (task.task_id, "continue", 204, "admin")
    assert call.body == "Approved by Zoë Zimmermann"
    assert call.content_type == "text/plain; charset=utf-8"


async def test_continue_without_reason_sends_no_body(
    client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=1)
    assert (await client.continue_task(task)).result is DeliveryResult.DONE
    [call] = simulator.simulator.decision_calls()
    assert (call.body, call.content_type) == (None, None)


async def test_cancel_is_done_and_the_task_is_cancelled(
    client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "undeploy", vm=3)
    assert (await client.cancel_task(task, "Not now")).result is DeliveryResult.DONE
    assert task.self_href is not None
    assert (await client.get_task(task.self_href)).state == "CANCELLED"


async def test_repeated_continue_answers_task_2_with_the_state_now(
    client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=1)
    await client.continue_task(task)
    outcome = await client.continue_task(task)
    assert outcome.result is DeliveryResult.ALREADY_DECIDED_OR_GONE
    assert outcome.error_code == "TASK-2"
    assert outcome.message
    assert outcome.now is not None
    assert (outcome.now.task_id, outcome.now.state, outcome.now.gone) == (
        task.task_id,
        "FINISHED_SUCCESSFULLY",
        False,
    )


async def test_continue_of_a_task_the_requester_cancelled_is_already_decided(
    client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=2)
    simulator.simulator.cancel_as_requester(task.task_id, "changed my mind")
    outcome = await client.continue_task(task)
    assert (outcome.result, outcome.error_code) == (DeliveryResult.ALREADY_DECIDED_OR_GONE, "TASK-2")
    assert outcome.now is not None
    assert outcome.now.state == "CANCELLED"


async def test_continue_of_an_unknown_task_says_it_is_gone(client: AbiquoClient) -> None:
    tasks = f"{VM_1}/tasks/00000000-0000-4000-8000-000000000000"
    unknown = HeldTask(
        task_id="00000000-0000-4000-8000-000000000000",
        task_type="DEPLOY",
        user_id="20",
        owner_id="1",
        state="QUEUEING",
        continue_href=f"{tasks}/action/continue",
        cancel_href=f"{tasks}/action/cancel",
    )
    outcome = await client.continue_task(unknown)
    assert (outcome.result, outcome.error_code) == (DeliveryResult.ALREADY_DECIDED_OR_GONE, "TASK-1")
    assert outcome.now is not None
    assert (outcome.now.state, outcome.now.gone) == (None, True)


async def test_refusal_of_a_task_still_held_is_an_error_not_a_decision(
    client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=1)
    await arm_fault(simulator, count=1, status=409, match="/action/continue")
    with pytest.raises(AbiquoProtocolError, match=r"with 409 .*still waiting for review"):
        await client.continue_task(task)
    assert simulator.simulator.task(task.task_id).state == "QUEUEING"


async def test_connector_without_workflow_override_gets_an_auth_error(
    simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=1)
    async with AbiquoClient(settings_for(simulator, username="guser", password="guser")) as c:
        with pytest.raises(AbiquoAuthError, match=r"with 403 \(GEN-4: .*'guser' lacks the privilege"):
            await c.continue_task(task)


# --- Retries ----------------------------------------------------------------------------------------


async def test_continue_succeeds_after_two_503s(
    json_client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=1)
    await arm_fault(simulator, count=2, status=503, match="/action/continue")
    assert (await json_client.continue_task(task, "ok")).result is DeliveryResult.DONE
    assert api_calls(simulator, "/action/continue") == [503, 503, 204]


async def test_503_on_every_attempt_is_unavailable(
    json_client: AbiquoClient, simulator: SimulatorServer
) -> None:
    await arm_fault(simulator, count=10, status=503)
    with pytest.raises(AbiquoUnavailable, match=rf"503.*after {RETRIES + 1} attempts") as caught:
        await json_client.get_vm(VM_1)
    assert caught.value.status == 503
    assert api_calls(simulator, "/virtualmachines/1") == [503] * (RETRIES + 1)


async def test_continue_succeeds_after_a_dropped_connection(
    json_client: AbiquoClient, simulator: SimulatorServer, callback_inbox: CallbackInbox
) -> None:
    [task] = await hold(simulator, callback_inbox, "deploy", vm=1)
    await arm_fault(simulator, count=1, drop=True, match="/action/continue")
    assert (await json_client.continue_task(task)).result is DeliveryResult.DONE
    assert api_calls(simulator, "/action/continue") == [None, 204]


async def test_a_4xx_is_never_retried(json_client: AbiquoClient, simulator: SimulatorServer) -> None:
    await arm_fault(simulator, count=1, status=404)
    with pytest.raises(AbiquoNotFound):
        await json_client.get_vapp(VAPP_1)
    assert api_calls(simulator, "/virtualappliances/1") == [404]


async def test_unreachable_abiquo_is_unavailable() -> None:
    settings = AbiquoSettings.model_validate({"api_url": "http://127.0.0.1:9/api", "retries": 1})
    async with AbiquoClient(settings) as c:
        with pytest.raises(AbiquoUnavailable, match=r"could not be reached.*127\.0\.0\.1:9/api/version"):
            await c.version()


async def test_a_client_must_be_opened_before_use() -> None:
    with pytest.raises(RuntimeError, match="async with AbiquoClient"):
        await AbiquoClient(AbiquoSettings()).version()


# --- Concurrency ------------------------------------------------------------------------------------


async def test_concurrent_reads_never_exceed_max_connections(simulator: SimulatorServer) -> None:
    simulator.simulator.update_settings({"latency": 0.02})
    transport = RecordingTransport()
    async with AbiquoClient(settings_for(simulator, max_connections=3), transport=transport) as c:
        vms = await asyncio.gather(*(c.get_vm(f"{VAPP_2}/virtualmachines/{n}") for n in range(101, 131)))
    assert [vm.name for vm in vms] == [f"batch-{n:03d}" for n in range(1, 31)]
    assert len(transport.exchanges) == 90  # each VM, its disks and its volumes
    assert transport.peak == 3


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("https://abiquo.example.com/api/cloud/tasks/1", True),  # under the API path
        ("https://abiquo.example.com/api", True),  # the API root itself
        ("https://abiquo.example.com/apiary/x", False),  # a longer path that only starts alike
        ("https://abiquo.example.com/api/../admin/x", False),  # a dot segment climbs out of the API
        ("https://abiquo.example.com/api/%2e%2e/admin/x", False),  # the same, percent-encoded
        ("https://abiquo.example.com:8443/api/x", False),  # another port is another origin
        ("http://abiquo.example.com/api/x", False),  # another scheme is another origin
        ("https://evil.example/api/x", False),  # another host
    ],
)
def test_only_urls_under_the_configured_api_count_as_the_apis(url: str, inside: bool) -> None:
    client = AbiquoClient(AbiquoSettings(api_url=AnyHttpUrl("https://abiquo.example.com/api")))

    assert client.is_api_url(url) is inside
