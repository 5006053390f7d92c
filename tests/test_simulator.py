"""The Abiquo simulator, spoken to over real HTTP: the API (docs/protocol.md §4, §6, §7, §8), the callback it
POSTs (§3, §11), its control surface and its page."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.etree.ElementTree import Element

import httpx2
import pytest
from defusedxml.ElementTree import fromstring

from abiquo_simulator import Simulator
from abiquo_workflow.simulation import SimulatorServer
from tests.conftest import CLIENT_TLS

ADMIN = ("admin", "xabiquo")
JSON_USERS = "application/vnd.abiquo.users+json; version=3.10"
VM_2 = "/cloud/virtualdatacenters/1/virtualappliances/1/virtualmachines/2"


# --- A tiny workflow endpoint that records what Abiquo POSTs ------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return httpx2.Response(200, content=self.body).json()

    def xml(self) -> Element:
        return fromstring(self.body)


class CallbackReceiver:
    """A stdlib HTTP server on 127.0.0.1 and a free port that answers every POST 200 and keeps it."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(Received(self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/callback"

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as r:
        yield r


@pytest.fixture
def api(simulator: SimulatorServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(verify=CLIENT_TLS, base_url=simulator.api_url, auth=ADMIN) as client:
        yield client


@pytest.fixture
def control(simulator: SimulatorServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(verify=CLIENT_TLS, base_url=simulator.url) as client:
        yield client


def hold(
    control: httpx2.Client, receiver: CallbackReceiver, **request: Any
) -> tuple[dict[str, Any], Received]:
    """Ask the simulator for a held operation; return its answer and the callback it POSTed."""
    answer = control.post("/_sim/requests", json={"callback_url": receiver.url, **request})
    assert answer.status_code == 201, answer.text
    return answer.json(), receiver.received[-1]


def links(item: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {link["rel"]: link for link in item["links"]}


def xml_links(element: Element) -> dict[str, str]:
    return {link.get("rel", ""): link.get("href", "") for link in element.findall("link")}


def continue_href(task: dict[str, Any]) -> str:
    return links(task)["continue"]["href"]


# --- Authentication -----------------------------------------------------------------------------------------


def test_api_answers_401_without_credentials(simulator: SimulatorServer) -> None:
    response = httpx2.get(simulator.api_url + "/login", verify=CLIENT_TLS)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert response.json()["collection"][0]["code"] == "401-UNAUTHORIZED"


def test_api_answers_401_for_a_wrong_password(simulator: SimulatorServer) -> None:
    response = httpx2.get(
        simulator.api_url + "/admin/enterprises", auth=("admin", "wrong"), verify=CLIENT_TLS
    )

    assert response.status_code == 401


def test_seeded_users_log_in_with_their_nick_as_password(simulator: SimulatorServer) -> None:
    response = httpx2.get(simulator.api_url + "/login", auth=("jdoe", "jdoe"), verify=CLIENT_TLS)

    assert response.status_code == 200
    assert response.json()["nick"] == "jdoe"
    assert response.json()["email"] == "john.doe@acme.example"


def test_version_is_plain_text(api: httpx2.Client) -> None:
    response = api.get("/version")

    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "3.10"


# --- Content negotiation ------------------------------------------------------------------------------------


def test_json_without_accept(api: httpx2.Client) -> None:
    response = api.get("/admin/enterprises/2")

    assert response.headers["content-type"] == "application/vnd.abiquo.enterprise+json"
    assert response.json()["workflow"] is True


def test_xml_when_accept_names_the_xml_media_type(api: httpx2.Client) -> None:
    response = api.get("/admin/enterprises/2", headers={"Accept": "application/vnd.abiquo.enterprise+xml"})

    root = fromstring(response.content)
    assert response.headers["content-type"] == "application/vnd.abiquo.enterprise+xml"
    assert root.tag == "enterprise"
    assert root.findtext("workflow") == "true"


def test_generic_xml_accept_gets_xml(api: httpx2.Client) -> None:
    response = api.get("/admin/roles/2", headers={"Accept": "application/xml"})

    assert fromstring(response.content).findtext("name") == "ENTERPRISE_ADMIN"


def test_requested_version_is_echoed(api: httpx2.Client) -> None:
    response = api.get("/login", headers={"Accept": "application/vnd.abiquo.user+json; version=4.7"})

    assert response.headers["content-type"] == "application/vnd.abiquo.user+json; version=4.7"


def test_malformed_version_answers_406(api: httpx2.Client) -> None:
    response = api.get("/login", headers={"Accept": "application/vnd.abiquo.user+json; version=latest"})

    assert response.status_code == 406
    assert response.json()["collection"][0]["message"] == "Invalid version parameter for 'Accept' header"


def test_media_type_of_another_resource_answers_406(api: httpx2.Client) -> None:
    response = api.get("/login", headers={"Accept": "application/vnd.abiquo.virtualmachine+json"})

    assert response.status_code == 406


def test_unknown_resource_answers_an_abiquo_404(api: httpx2.Client) -> None:
    response = api.get("/cloud/virtualdatacenters/1/virtualappliances/1/virtualmachines/999")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/vnd.abiquo.errors+json"
    assert response.json() == {
        "collection": [{"code": "VM-1", "message": "The requested virtual machine does not exist"}]
    }


def test_unknown_path_answers_404_with_an_errors_body(api: httpx2.Client) -> None:
    response = api.get("/no/such/thing", headers={"Accept": "application/xml"})

    assert response.status_code == 404
    assert fromstring(response.content).findtext("error/code") == "404-NOT FOUND"


def test_names_with_non_ascii_survive_json_and_xml(api: httpx2.Client) -> None:
    as_json = api.get("/admin/enterprises/2").json()
    as_xml = fromstring(api.get("/admin/enterprises/2", headers={"Accept": "application/xml"}).content)
    vm_xml = fromstring(
        api.get(
            "/cloud/virtualdatacenters/2/virtualappliances/3/virtualmachines/4",
            headers={"Accept": "application/xml"},
        ).content
    )

    assert as_json["name"] == "Acme & Söhne <Ltd>"
    assert as_xml.findtext("name") == "Acme & Söhne <Ltd>"
    assert vm_xml.findtext("name") == "wiki-ß-01"
    assert api.get("/cloud/locations/2").json()["name"] == "Zürich DC"


# --- Users, roles, enterprises ------------------------------------------------------------------------------


def test_users_list_spans_two_pages_with_a_next_link(api: httpx2.Client) -> None:
    first = api.get("/admin/enterprises/2/users", headers={"Accept": JSON_USERS}).json()

    assert first["totalSize"] == 40
    assert len(first["collection"]) == 25
    assert "next" in links(first)
    assert "previous" not in links(first)
    assert links(first)["next"]["href"].startswith(api.base_url.scheme + "://")


def test_following_next_reaches_zoe_on_the_last_page(api: httpx2.Client) -> None:
    first = api.get("/admin/enterprises/2/users", headers={"Accept": JSON_USERS}).json()
    second = api.get(links(first)["next"]["href"], headers={"Accept": JSON_USERS}).json()

    nicks = [u["nick"] for u in second["collection"]]
    assert "zzimmer" not in [u["nick"] for u in first["collection"]]
    assert nicks[-1] == "zzimmer"
    assert second["collection"][-1]["name"] == "Zoë"
    assert "next" not in links(second)
    assert "previous" in links(second)


def test_plain_users_carry_their_role_name_as_the_role_link_title(api: httpx2.Client) -> None:
    users = api.get("/admin/enterprises/3/users", headers={"Accept": JSON_USERS}).json()["collection"]

    roles = {u["nick"]: links(u)["role"]["title"] for u in users}
    assert roles == {"gadmin": "ENTERPRISE_ADMIN", "guser": "USER"}
    assert "role" not in users[0]


def test_userswithroles_embeds_role_names_and_privileges(api: httpx2.Client) -> None:
    response = api.get(
        "/admin/enterprises/2/users", headers={"Accept": "application/vnd.abiquo.userswithroles+json"}
    )

    users = {u["nick"]: u for u in response.json()["collection"]}
    assert response.headers["content-type"] == "application/vnd.abiquo.userswithroles+json"
    assert users["asmith"]["role"]["name"] == "ENTERPRISE_ADMIN"
    assert users["dcustom"]["role"]["name"] == "VDC_APPROVER"
    assert "WORKFLOW_OVERRIDE" in [p["name"] for p in users["dcustom"]["role"]["privileges"]["collection"]]
    assert users["emile"]["enterprise"]["name"] == "Acme & Söhne <Ltd>"


def test_userswithroles_xml_has_the_role_name_where_2_6_clients_read_it(api: httpx2.Client) -> None:
    response = api.get(
        "/admin/enterprises/4/users", headers={"Accept": "application/vnd.abiquo.userswithroles+xml"}
    )

    root = fromstring(response.content)
    assert root.tag == "usersWithRoles"
    roles = {u.findtext("nick"): u.findtext("role/name") for u in root.findall("userWithRole")}
    assert roles == {"puser": "USER", "mnomail": "ENTERPRISE_ADMIN"}


def test_a_user_without_email_has_no_email_field(api: httpx2.Client) -> None:
    user = api.get("/admin/enterprises/2/users/12").json()

    assert user["nick"] == "cnomail"
    assert "email" not in user


def test_any_enterprise_wildcard_finds_a_user(api: httpx2.Client) -> None:
    user = api.get("/admin/enterprises/_/users/101").json()

    assert links(user)["enterprise"]["title"] == "Globex"


def test_a_user_of_another_enterprise_is_not_found_under_this_one(api: httpx2.Client) -> None:
    response = api.get("/admin/enterprises/2/users/101")

    assert response.status_code == 404


def test_roles_list_and_workflow_override(api: httpx2.Client) -> None:
    roles = api.get("/admin/roles").json()
    privileges = api.get("/admin/roles/3/action/privileges").json()

    assert sorted(r["name"] for r in roles["collection"]) == [
        "CLOUD_ADMIN",
        "ENTERPRISE_ADMIN",
        "USER",
        "VDC_APPROVER",
    ]
    assert "WORKFLOW_OVERRIDE" not in [p["name"] for p in privileges["collection"]]


def test_enterprise_list_shows_the_workflow_flags(api: httpx2.Client) -> None:
    enterprises = api.get("/admin/enterprises").json()["collection"]

    assert {e["id"]: e["workflow"] for e in enterprises} == {1: False, 2: True, 3: True, 4: True}


def test_a_tenant_user_cannot_read_another_enterprise(simulator: SimulatorServer) -> None:
    response = httpx2.get(
        simulator.api_url + "/admin/enterprises/3", auth=("jdoe", "jdoe"), verify=CLIENT_TLS
    )

    assert response.status_code == 403


# --- Machines, disks, volumes, places -----------------------------------------------------------------------


def test_vm_links_lead_to_everything_a_notification_needs(api: httpx2.Client) -> None:
    vm = api.get(VM_2).json()

    rels = links(vm)
    assert vm["name"] == 'db <primary> & "co"'
    assert (vm["cpu"], vm["ram"]) == (4, 8192)
    assert rels["enterprise"]["title"] == "Acme & Söhne <Ltd>"
    assert rels["user"]["href"] == f"{api.base_url}admin/enterprises/2/users/20"
    assert rels["user"]["title"] == "John Doe"
    assert rels["virtualdatacenter"]["title"] == "Production <EU>"
    assert rels["virtualappliance"]["title"] == "Web tier & cache"
    assert {"edit", "harddisks", "volumes", "disk0", "disk1", "tasks"} <= rels.keys()
    assert rels["disk0"]["length"] == "20480"
    assert "hdInBytes" not in vm


def test_disks_report_size_in_mb_lower_case_b(api: httpx2.Client) -> None:
    disks = api.get(VM_2 + "/storage/disks").json()["collection"]

    assert [(d["sequence"], d["sizeInMb"]) for d in disks] == [(0, 20480), (1, 51200)]


def test_volumes_report_size_in_mb_capital_b(api: httpx2.Client) -> None:
    volumes = api.get(VM_2 + "/storage/volumes", headers={"Accept": "application/vnd.abiquo.volumes+xml"})

    volume = fromstring(volumes.content).find("volume")
    assert volume is not None
    assert volume.findtext("name") == "db-data"
    assert volume.findtext("sizeInMB") == "102400"


def test_vm_disk0_link_resolves_to_the_boot_disk(api: httpx2.Client) -> None:
    vm = api.get(VM_2).json()

    disk = api.get(links(vm)["disk0"]["href"]).json()
    assert (disk["sequence"], disk["sizeInMb"]) == (0, 20480)


def test_vdc_links_its_location_in_3x(api: httpx2.Client) -> None:
    vdc = api.get("/cloud/virtualdatacenters/2").json()

    location = links(vdc)["location"]
    assert location["title"] == "Zürich DC"
    assert "datacenter" not in links(vdc)
    assert api.get(location["href"]).json()["location"] == "Zürich, CH"


def test_vdc_links_an_admin_datacenter_in_2_6_mode(simulator: SimulatorServer, api: httpx2.Client) -> None:
    simulator.simulator.update_settings({"mode": "2.6"})

    vdc = fromstring(api.get("/cloud/virtualdatacenters/1", headers={"Accept": "application/xml"}).content)
    dc_href = xml_links(vdc)["datacenter"]
    dc = fromstring(api.get(dc_href, headers={"Accept": "application/vnd.abiquo.datacenter+xml"}).content)

    assert dc_href.endswith("/api/admin/datacenters/1")
    assert "location" not in xml_links(vdc)
    assert dc.findtext("name") == "Barcelona DC"


def test_vm_has_hd_in_bytes_in_2_6_mode(simulator: SimulatorServer, api: httpx2.Client) -> None:
    simulator.simulator.update_settings({"mode": "2.6"})

    vm = fromstring(api.get(VM_2).content)  # 2.6 answered XML when no Accept was sent

    assert vm.tag == "virtualMachine"
    assert vm.findtext("hdInBytes") == str(20480 * 1024 * 1024)


def test_vm_links_its_disks_as_disks_in_2_6_mode(simulator: SimulatorServer, api: httpx2.Client) -> None:
    simulator.simulator.update_settings({"mode": "2.6"})

    rels = xml_links(fromstring(api.get(VM_2).content))

    assert rels["disks"].endswith(VM_2 + "/storage/disks")
    assert "harddisks" not in rels


@pytest.mark.parametrize("path", ["/cloud/locations/2", "/admin/datacenters/2"])
def test_a_datacenter_links_itself_as_edit(api: httpx2.Client, path: str) -> None:
    datacenter = api.get(path, headers={"Accept": "application/vnd.abiquo.datacenter+json"}).json()

    assert links(datacenter)["edit"]["href"] == f"{api.base_url}{path.lstrip('/')}"


def test_vapp_lists_its_vms(api: httpx2.Client) -> None:
    vms = api.get(
        "/cloud/virtualdatacenters/1/virtualappliances/2/virtualmachines", params={"limit": 100}
    ).json()

    assert vms["totalSize"] == 100
    assert vms["collection"][0]["name"] == "batch-001"


# --- The callback -------------------------------------------------------------------------------------------


def test_json_style_posts_a_3x_task_collection(control: httpx2.Client, receiver: CallbackReceiver) -> None:
    answer, callback = hold(control, receiver, action="deploy", vm=1, style="json")

    body = callback.json()
    task = body["collection"][0]
    assert callback.content_type == "application/vnd.abiquo.tasks+json; version=3.10"
    assert answer["callback"]["content_type"] == callback.content_type
    assert task["taskId"] == answer["tasks"][0]["task_id"]
    assert (task["type"], task["state"], task["userId"], task["ownerId"]) == ("DEPLOY", "QUEUEING", "20", "1")
    assert "creationTimestamp" in task
    assert {"self", "parent", "target", "user", "continue", "cancel"} <= links(task).keys()


def test_xml_style_posts_a_2_6_tasks_document(control: httpx2.Client, receiver: CallbackReceiver) -> None:
    answer, callback = hold(control, receiver, action="undeploy", vm=5, style="xml")

    root = callback.xml()
    task = root.find("task")
    assert callback.content_type == "application/vnd.abiquo.tasks+xml"
    assert root.tag == "tasks"
    assert task is not None
    assert task.findtext("taskId") == answer["tasks"][0]["task_id"]
    assert (task.findtext("type"), task.findtext("userId"), task.findtext("ownerId")) == (
        "UNDEPLOY",
        "101",
        "5",
    )
    assert task.find("creationTimestamp") is None
    assert len(task.findall("jobs/job")) == 3
    assert {"self", "parent", "target", "user", "continue", "cancel"} <= xml_links(task).keys()


def test_callback_hrefs_are_relative_to_the_api_root(
    control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer, callback = hold(control, receiver, action="deploy", vm=1)

    task_id = answer["tasks"][0]["task_id"]
    assert continue_href(callback.json()["collection"][0]) == (
        f"cloud/virtualdatacenters/1/virtualappliances/1/virtualmachines/1/tasks/{task_id}/action/continue"
    )
    assert links(callback.json()["collection"][0])["user"]["href"] == "admin/enterprises/2/users/20"


def test_callback_hrefs_can_be_absolute(
    simulator: SimulatorServer, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="deploy", vm=1, hrefs="absolute")

    assert continue_href(callback.json()["collection"][0]).startswith(simulator.api_url + "/cloud/")


def test_vapp_request_holds_one_task_per_vm(control: httpx2.Client, receiver: CallbackReceiver) -> None:
    answer, callback = hold(control, receiver, action="deploy", vapp=1)

    tasks = callback.json()["collection"]
    assert [t["ownerId"] for t in tasks] == ["1", "2", "3"]
    assert len({continue_href(t) for t in tasks}) == 3
    assert [t["vm_name"] for t in answer["tasks"]] == ["web-01", 'db <primary> & "co"', "cache-03"]


def test_reconfigure_posts_a_single_task_object(control: httpx2.Client, receiver: CallbackReceiver) -> None:
    _, callback = hold(control, receiver, action="reconfigure", vm=3, style="json")

    task = callback.json()
    assert callback.content_type == "application/vnd.abiquo.task+json; version=3.10"
    assert "collection" not in task
    assert task["type"] == "RECONFIGURE"


def test_reconfigure_posts_a_single_task_root_in_xml(
    control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="reconfigure", vm=3, style="xml")

    assert callback.content_type == "application/vnd.abiquo.task+xml"
    assert callback.xml().tag == "task"
    assert callback.xml().find("jobs") is not None


def vm_sizes(api: httpx2.Client, vm_path: str) -> tuple[int, int, list[int]]:
    """A VM's CPU, RAM (MB) and disk sizes (MB) as the API shows them now."""
    vm = api.get(vm_path).json()
    disks = api.get(vm_path + "/storage/disks").json()["collection"]
    return vm["cpu"], vm["ram"], [d["sizeInMb"] for d in sorted(disks, key=lambda d: d["sequence"])]


def test_a_held_reconfigure_shows_the_requested_sizes_on_the_vm(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    hold(control, receiver, action="reconfigure", vm=2, cpu=8, ram=16384, disks=[20480, 102400, 10240])

    assert vm_sizes(api, VM_2) == (8, 16384, [20480, 102400, 10240])


def test_a_reconfigure_that_names_no_size_asks_for_twice_the_cpu_and_ram(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    hold(control, receiver, action="reconfigure", vm=2)

    assert vm_sizes(api, VM_2) == (8, 16384, [20480, 51200])


def test_a_reconfigure_from_the_page_form_reads_its_sizes_from_text(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    control.put("/_sim/settings", json={"callback_url": receiver.url})
    form = {"action": "reconfigure", "target": "vm:2", "cpu": "6", "ram": "", "disks": "20480, 61440"}

    assert control.post("/_sim/requests", data=form).status_code == 303
    assert vm_sizes(api, VM_2) == (6, 8192, [20480, 61440])


def test_a_cancelled_reconfigure_gives_the_vm_its_old_sizes_back(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="reconfigure", vm=2, cpu=8, disks=[20480])

    assert api.post(links(callback.json())["cancel"]["href"]).status_code == 204
    assert vm_sizes(api, VM_2) == (4, 8192, [20480, 51200])


def test_a_reconfigure_the_requester_withdraws_gives_the_vm_its_old_sizes_back(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer, _ = hold(control, receiver, action="reconfigure", vm=2, ram=2048)

    control.post(f"/_sim/tasks/{answer['tasks'][0]['task_id']}/cancel")

    assert vm_sizes(api, VM_2) == (4, 8192, [20480, 51200])


def test_a_continued_reconfigure_keeps_the_new_sizes(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="reconfigure", vm=2, cpu=8)

    assert api.post(continue_href(callback.json())).status_code == 204
    assert vm_sizes(api, VM_2) == (8, 8192, [20480, 51200])


def test_the_world_lists_each_vms_sizes(control: httpx2.Client) -> None:
    vms = {vm["id"]: vm for vm in control.get("/_sim/world").json()["vms"]}

    assert (vms[2]["cpu"], vms[2]["ram_mb"], vms[2]["disks_mb"]) == (4, 8192, [20480, 51200])


def test_request_names_the_requester_it_is_given(control: httpx2.Client, receiver: CallbackReceiver) -> None:
    _, callback = hold(control, receiver, action="deploy", vm=5, user=100)

    assert callback.json()["collection"][0]["userId"] == "100"


def test_request_answer_reports_the_endpoint_status(
    control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer, _ = hold(control, receiver, action="deploy", vm=7)

    assert answer["callback"]["status"] == 200
    assert answer["callback"]["error"] is None


def test_unreachable_endpoint_is_reported_and_the_task_stays_held(
    control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    with CallbackReceiver() as gone:
        dead_url = gone.url
    answer = control.post(
        "/_sim/requests", json={"action": "deploy", "vm": 1, "callback_url": dead_url}
    ).json()

    assert answer["callback"]["status"] is None
    assert "ConnectError" in answer["callback"]["error"]
    assert control.get("/_sim/tasks").json()[0]["state"] == "QUEUEING"


def test_a_lost_callback_holds_the_tasks_and_posts_nothing(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer = control.post(
        "/_sim/requests",
        json={"action": "deploy", "vapp": 1, "callback_url": receiver.url, "lost_callback": True},
    ).json()

    assert answer["callback"]["status"] is None and "lost" in answer["callback"]["error"]
    assert receiver.received == []
    pending = api.get("/admin/enterprises/2/action/pendingtasks").json()
    assert [t["taskId"] for t in pending["collection"]] == [t["task_id"] for t in answer["tasks"]]


def test_a_lost_callback_needs_no_callback_url(control: httpx2.Client) -> None:
    response = control.post("/_sim/requests", json={"action": "deploy", "vm": 1, "lost_callback": True})

    assert response.status_code == 201


def test_held_for_makes_the_tasks_that_old(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    before = time.time()
    hold(control, receiver, action="deploy", vm=1, held_for=3600)

    [task] = api.get("/admin/enterprises/2/action/pendingtasks").json()["collection"]

    assert before - 3600 - 2 <= task["creationTimestamp"] <= before - 3600 + 2


@pytest.mark.parametrize("action", ["continue", "cancel"])
def test_a_task_decided_in_abiquos_ui_leaves_the_listing_without_an_api_call(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver, action: str
) -> None:
    answer, _ = hold(control, receiver, action="deploy", vm=1)
    task_id = answer["tasks"][0]["task_id"]

    decided = control.post(f"/_sim/tasks/{task_id}/decide", json={"action": action})

    assert decided.status_code == 200
    assert decided.json()["decision"] == {**decided.json()["decision"], "by": action, "user": "admin"}
    assert decided.json()["state"] == ("FINISHED_SUCCESSFULLY" if action == "continue" else "CANCELLED")
    assert api.get("/admin/enterprises/2/action/pendingtasks").json()["totalSize"] == 0
    assert control.get("/_sim/calls").json() == []


@pytest.mark.parametrize(
    ("body", "status"), [({"action": "approve"}, 400), ({}, 400), ({"action": "continue"}, 409)]
)
def test_deciding_in_the_ui_what_cannot_be_is_refused_with_a_sentence(
    control: httpx2.Client, receiver: CallbackReceiver, body: dict[str, str], status: int
) -> None:
    answer, _ = hold(control, receiver, action="deploy", vm=1)
    task_id = answer["tasks"][0]["task_id"]
    control.post(f"/_sim/tasks/{task_id}/cancel")  # no longer held: a decision now is TASK-2

    response = control.post(f"/_sim/tasks/{task_id}/decide", json=body)

    assert response.status_code == status
    assert response.json()["error"].endswith(".")


def test_a_task_gone_from_abiquo_answers_task_1(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer, callback = hold(control, receiver, action="deploy", vm=1)
    task_href = links(callback.json()["collection"][0])["self"]["href"]

    gone = control.delete(f"/_sim/tasks/{answer['tasks'][0]['task_id']}")

    assert gone.status_code == 200
    response = api.get(task_href, headers={"Accept": "application/vnd.abiquo.task+json"})
    assert response.status_code == 404
    assert response.json()["collection"][0]["code"] == "TASK-1"
    assert control.delete(f"/_sim/tasks/{answer['tasks'][0]['task_id']}").status_code == 404


def test_request_without_any_callback_url_answers_409(control: httpx2.Client) -> None:
    response = control.post("/_sim/requests", json={"action": "deploy", "vm": 1})

    assert response.status_code == 409
    assert "callback" in response.json()["error"]


@pytest.mark.parametrize(
    ("request_body", "status"),
    [
        ({"action": "deploy", "vm": 999}, 404),  # no such VM
        ({"action": "deploy", "vapp": 99}, 404),  # no such vApp
        ({"action": "reconfigure", "vapp": 1}, 400),  # Abiquo reconfigures single VMs only
        ({"action": "explode", "vm": 1}, 400),  # not a workflow action
        ({"action": "deploy", "vm": 1, "vapp": 1}, 400),  # one target, not two
        ({"action": "deploy", "vm": "one"}, 400),  # ids are numbers
        ({"action": "deploy", "vm": 1, "user": 101}, 400),  # Globex's user cannot touch Acme's VM
        ({"action": "deploy", "vm": 1, "user": 999}, 404),  # no such user
        ({"action": "deploy", "vm": 1, "cpu": 4}, 400),  # sizes are what a reconfigure asks for
        ({"action": "reconfigure", "vm": 1, "cpu": 0}, 400),  # a VM has one CPU at least
        ({"action": "reconfigure", "vm": 1, "disks": []}, 400),  # and a boot disk
        ({"action": "reconfigure", "vm": 1, "disks": "big"}, 400),  # sizes are numbers
    ],
)
def test_bad_requests_are_refused_with_a_sentence(
    control: httpx2.Client, receiver: CallbackReceiver, request_body: dict[str, Any], status: int
) -> None:
    response = control.post("/_sim/requests", json={**request_body, "callback_url": receiver.url})

    assert response.status_code == status
    assert response.json()["error"].endswith(".")
    assert receiver.received == []


async def test_in_process_request_posts_the_callback(receiver: CallbackReceiver) -> None:
    simulator = Simulator(callback_url=receiver.url, style="xml")
    async with SimulatorServer(simulator):
        result = await simulator.request("deploy", vapp=3, hrefs="absolute")

    assert result.callback.status == 200
    assert [t.vm_name for t in result.tasks] == ["wiki-ß-01"]
    assert receiver.received[0].xml().findtext("task/taskId") == result.tasks[0].task_id


# --- Continue and cancel ------------------------------------------------------------------------------------


def test_continue_answers_204_and_finishes_the_task(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="deploy", vm=1)

    response = api.post(continue_href(callback.json()["collection"][0]), content=b"Approved by asmith")

    assert response.status_code == 204
    assert response.content == b""
    assert control.get("/_sim/tasks").json()[0]["state"] == "FINISHED_SUCCESSFULLY"


def test_repeated_continue_answers_task_2(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="deploy", vm=1)
    href = continue_href(callback.json()["collection"][0])
    api.post(href)

    response = api.post(href)

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/vnd.abiquo.errors+json"
    assert response.json() == {
        "collection": [{"code": "TASK-2", "message": "The task is not in the appropriate state"}]
    }


def test_task_2_comes_as_xml_when_xml_is_accepted(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="deploy", vm=1)
    cancel = links(callback.json()["collection"][0])["cancel"]["href"]
    api.post(cancel)

    response = api.post(cancel, headers={"Accept": "application/xml"})

    assert response.status_code == 409
    assert fromstring(response.content).findtext("error/code") == "TASK-2"


def test_unknown_task_answers_task_1(api: httpx2.Client) -> None:
    response = api.post(VM_2 + "/tasks/00000000-0000-4000-8000-000000000000/action/continue")

    assert response.status_code == 404
    assert response.json()["collection"][0] == {
        "code": "TASK-1",
        "message": "The requested task does not exist",
    }


def test_cancel_records_the_reason_and_cancels(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer, callback = hold(control, receiver, action="undeploy", vm=2)

    api.post(
        links(callback.json()["collection"][0])["cancel"]["href"],
        content=b"Declined by asmith: not this week",
        headers={"Content-Type": "text/plain"},
    )

    calls = control.get("/_sim/calls").json()
    task = control.get("/_sim/tasks").json()[0]
    assert [(c["task_id"], c["action"], c["status"]) for c in calls] == [
        (answer["tasks"][0]["task_id"], "cancel", 204)
    ]
    assert calls[0]["body"] == "Declined by asmith: not this week"
    assert calls[0]["content_type"] == "text/plain"
    assert task["state"] == "CANCELLED"
    assert task["decision"]["by"] == "cancel"


def test_requester_cancel_then_connector_continue_answers_task_2(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer, callback = hold(control, receiver, action="deploy", vm=4)
    task_id = answer["tasks"][0]["task_id"]

    withdrawn = control.post(f"/_sim/tasks/{task_id}/cancel")
    response = api.post(continue_href(callback.json()["collection"][0]))

    assert withdrawn.json()["decision"]["by"] == "requester-cancel"
    assert response.status_code == 409
    assert response.json()["collection"][0]["code"] == "TASK-2"


def test_a_user_without_workflow_override_cannot_continue(
    simulator: SimulatorServer, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="deploy", vm=1, hrefs="absolute")

    response = httpx2.post(
        continue_href(callback.json()["collection"][0]), auth=("jdoe", "jdoe"), verify=CLIENT_TLS
    )

    assert response.status_code == 403


def test_the_requester_may_cancel_their_own_task_through_the_api(
    simulator: SimulatorServer, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="deploy", vm=1, hrefs="absolute")

    response = httpx2.post(
        links(callback.json()["collection"][0])["cancel"]["href"], auth=("jdoe", "jdoe"), verify=CLIENT_TLS
    )

    assert response.status_code == 204
    assert control.get("/_sim/tasks").json()[0]["decision"]["by"] == "requester-cancel"


def test_get_task_shows_its_state(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="deploy", vm=2)
    task_href = links(callback.json()["collection"][0])["self"]["href"]
    api.post(task_href + "/action/continue")

    task = api.get(task_href, headers={"Accept": "application/vnd.abiquo.task+json; version=3.10"}).json()

    assert task["state"] == "FINISHED_SUCCESSFULLY"
    assert "continue" not in links(task)


# --- Pending tasks ------------------------------------------------------------------------------------------


def test_pending_tasks_list_only_held_tasks_with_absolute_hrefs(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer, callback = hold(control, receiver, action="deploy", vapp=1)
    api.post(continue_href(callback.json()["collection"][0]))
    hold(control, receiver, action="deploy", vm=5)  # another enterprise

    pending = api.get("/admin/enterprises/2/action/pendingtasks").json()

    assert pending["totalSize"] == 2
    assert [t["taskId"] for t in pending["collection"]] == [t["task_id"] for t in answer["tasks"][1:]]
    assert all(t["state"] == "QUEUEING" for t in pending["collection"])
    assert continue_href(pending["collection"][0]).startswith(str(api.base_url) + "cloud/")


@pytest.mark.parametrize(
    "path", ["/admin/enterprises/2/action/pendingtasks", "/admin/enterprises/2/users/20/action/pendingtasks"]
)
def test_pending_tasks_link_only_self_and_parent(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver, path: str
) -> None:
    hold(control, receiver, action="deploy", vapp=2)  # 100 tasks: pages before and after this one

    pending = api.get(path, params={"startwith": 25, "limit": 25}).json()

    assert [link["rel"] for link in pending["links"]] == ["self", "parent"]


def test_pending_tasks_page_by_startwith_and_limit_and_count_them_all(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    answer, _ = hold(control, receiver, action="deploy", vapp=2)

    pending = api.get(
        "/admin/enterprises/2/action/pendingtasks", params={"startwith": 90, "limit": 25}
    ).json()

    assert pending["totalSize"] == 100
    assert [t["taskId"] for t in pending["collection"]] == [t["task_id"] for t in answer["tasks"][90:]]


def test_user_pending_tasks_list_what_they_asked_for(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    hold(control, receiver, action="deploy", vm=5, user=100)
    hold(control, receiver, action="deploy", vm=6)

    pending = api.get("/admin/enterprises/3/users/100/action/pendingtasks").json()

    assert [t["ownerId"] for t in pending["collection"]] == ["5"]


# --- Faults, latency, settings, reset -----------------------------------------------------------------------


def test_status_fault_applies_n_times_then_the_api_answers_normally(
    api: httpx2.Client, control: httpx2.Client
) -> None:
    control.post("/_sim/faults", json={"count": 2, "status": 503})

    statuses = [api.get("/login").status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert control.get("/_sim/faults").json() == []


def test_fault_with_match_hits_only_matching_paths(api: httpx2.Client, control: httpx2.Client) -> None:
    control.post("/_sim/faults", json={"count": 1, "status": 500, "match": "/action/continue"})

    assert api.get("/login").status_code == 200
    assert api.post(VM_2 + "/tasks/x/action/continue").status_code == 500


def test_latency_fault_slows_one_call(simulator: SimulatorServer, control: httpx2.Client) -> None:
    control.post("/_sim/faults", json={"count": 1, "latency": 1.0})

    with httpx2.Client(verify=CLIENT_TLS, base_url=simulator.api_url, auth=ADMIN, timeout=0.25) as impatient:
        with pytest.raises(httpx2.ReadTimeout):
            impatient.get("/login")
        assert impatient.get("/login").status_code == 200

    # The slowed call is still being answered: let it end here, not in the next test's simulator.
    deadline = time.monotonic() + 5
    while len(simulator.simulator.api_calls()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)


def test_dropped_connection_is_a_transport_error_for_the_client(
    api: httpx2.Client, control: httpx2.Client
) -> None:
    control.post("/_sim/faults", json={"count": 1, "drop": True})

    with pytest.raises(httpx2.TransportError):
        api.get("/login")
    assert api.get("/login").status_code == 200
    assert [c["status"] for c in control.get("/_sim/api-calls").json()] == [None, 200]


def test_faults_can_be_cleared(api: httpx2.Client, control: httpx2.Client) -> None:
    control.post("/_sim/faults", json={"count": 5, "status": 502})

    control.delete("/_sim/faults")

    assert api.get("/login").status_code == 200


@pytest.mark.parametrize(
    "fault",
    [
        {"count": 1},  # no kind of fault
        {"count": 1, "status": 503, "drop": True},  # two kinds at once
        {"count": 0, "status": 503},  # nothing to do
        {"count": 1, "status": 200},  # not an error
        {"count": 1, "latency": -1},  # negative delay
        {"count": 1, "status": 503, "colour": "red"},  # unknown field
    ],
)
def test_bad_fault_is_refused_with_a_sentence(control: httpx2.Client, fault: dict[str, Any]) -> None:
    response = control.post("/_sim/faults", json=fault)

    assert response.status_code == 400
    assert response.json()["error"].endswith(".")


def test_settings_latency_slows_every_api_call_but_not_the_control_surface(
    simulator: SimulatorServer, control: httpx2.Client
) -> None:
    control.put("/_sim/settings", json={"latency": 1.0})

    with httpx2.Client(verify=CLIENT_TLS, base_url=simulator.url, auth=ADMIN, timeout=0.25) as impatient:
        assert impatient.get("/_sim/settings").json()["latency"] == 1.0
        with pytest.raises(httpx2.ReadTimeout):
            impatient.get("/api/login")


def test_bad_setting_is_refused(control: httpx2.Client) -> None:
    response = control.put("/_sim/settings", json={"mode": "4.0"})

    assert response.status_code == 400
    assert control.get("/_sim/settings").json()["mode"] == "3.x"


def test_settings_callback_url_and_style_are_the_request_defaults(
    control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    control.put("/_sim/settings", json={"callback_url": receiver.url, "style": "xml"})

    control.post("/_sim/requests", json={"action": "deploy", "vm": 7})

    assert receiver.received[0].content_type == "application/vnd.abiquo.tasks+xml"


def test_reset_restores_the_seeded_world_and_keeps_settings(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    control.put("/_sim/settings", json={"style": "xml"})
    _, callback = hold(control, receiver, action="deploy", vm=1, style="json")
    api.post(continue_href(callback.json()["collection"][0]))
    control.post("/_sim/faults", json={"count": 3, "status": 503, "match": "/never"})

    control.post("/_sim/reset")

    assert control.get("/_sim/tasks").json() == []
    assert control.get("/_sim/calls").json() == []
    assert control.get("/_sim/api-calls").json() == []
    assert control.get("/_sim/faults").json() == []
    assert control.get("/_sim/settings").json()["style"] == "xml"
    assert api.get("/cloud/virtualdatacenters/1/virtualappliances/1/virtualmachines/1").json()["state"] == (
        "NOT_ALLOCATED"
    )


def test_reset_gives_a_reconfigured_vm_its_seeded_sizes_back(
    api: httpx2.Client, control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    _, callback = hold(control, receiver, action="reconfigure", vm=2, cpu=8)
    assert api.post(continue_href(callback.json())).status_code == 204

    control.post("/_sim/reset")
    control.post("/_sim/reset")  # a second reset copies the seed again, which the first left untouched

    assert vm_sizes(api, VM_2) == (4, 8192, [20480, 51200])


def test_every_api_call_is_recorded(api: httpx2.Client, control: httpx2.Client) -> None:
    api.get("/login")
    api.get("/admin/enterprises/99")

    calls = control.get("/_sim/api-calls").json()

    assert [(c["method"], c["path"], c["status"]) for c in calls] == [
        ("GET", "/api/login", 200),
        ("GET", "/api/admin/enterprises/99", 404),
    ]


def test_world_lists_the_seeded_users(control: httpx2.Client) -> None:
    world = control.get("/_sim/world").json()

    users = {u["id"]: u for u in world["users"]}
    assert len([u for u in users.values() if u["enterprise_id"] == 2]) == 40
    assert users[55]["nick"] == "zzimmer"
    assert users[21]["email"] is None
    assert users[13]["role"] == "VDC_APPROVER"
    assert [v["id"] for v in world["vms"] if v["vapp_id"] == 2] == list(range(101, 201))


# --- The page, and the server itself ------------------------------------------------------------------------


def test_page_escapes_names(control: httpx2.Client) -> None:
    page = control.get("/")

    assert page.headers["content-type"].startswith("text/html")
    assert "db &lt;primary&gt; &amp; &#34;co&#34;" in page.text
    assert "<primary>" not in page.text
    assert "Acme &amp; Söhne &lt;Ltd&gt;" in page.text


def test_page_form_holds_a_task_and_redirects_home(
    control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    control.put("/_sim/settings", json={"callback_url": receiver.url})

    response = control.post(
        "/_sim/requests", data={"action": "deploy", "target": "vm:2", "user": "", "style": "xml"}
    )

    assert response.status_code == 303
    assert response.headers["location"] == "/"
    assert receiver.received[0].xml().findtext("task/ownerId") == "2"
    assert "QUEUEING" in control.get("/").text


def test_page_forms_lose_a_callback_and_decide_a_task_in_abiquo(
    control: httpx2.Client, receiver: CallbackReceiver
) -> None:
    control.put("/_sim/settings", json={"callback_url": receiver.url})

    held = control.post("/_sim/requests", data={"action": "deploy", "target": "vm:2", "lost_callback": "on"})
    [task] = control.get("/_sim/tasks").json()
    assert f'action="/_sim/tasks/{task["task_id"]}/decide"' in control.get("/").text
    decided = control.post(f"/_sim/tasks/{task['task_id']}/decide", data={"action": "cancel"})

    assert (held.status_code, decided.status_code) == (303, 303)
    assert receiver.received == []
    assert control.get("/_sim/tasks").json()[0]["state"] == "CANCELLED"


def test_server_reports_the_port_it_bound_and_stops_its_thread() -> None:
    before = set(threading.enumerate())
    with SimulatorServer(Simulator()) as server:
        port = server.port
        assert port != 0
        assert httpx2.get(server.url + "/_sim/settings", verify=CLIENT_TLS).status_code == 200

    assert set(threading.enumerate()) == before
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"http://127.0.0.1:{port}/_sim/settings", verify=CLIENT_TLS)


@pytest.mark.skipif(not socket.has_ipv6, reason="this Python was built without IPv6")
def test_server_listens_on_ipv6_and_writes_the_address_in_brackets() -> None:
    with SimulatorServer(Simulator(), host="::1") as server:
        assert server.url == f"http://[::1]:{server.port}"
        assert server.simulator.public_api_url == f"{server.api_url}/"
        assert httpx2.get(server.url + "/_sim/settings", verify=CLIENT_TLS).status_code == 200

    assert server.simulator.public_api_url is None


def test_basic_auth_header_is_parsed_strictly(simulator: SimulatorServer) -> None:
    garbage = {"Authorization": "Basic " + base64.b64encode(b"no-colon-here").decode()}

    assert httpx2.get(simulator.api_url + "/login", headers=garbage, verify=CLIENT_TLS).status_code == 401


def test_an_administrator_can_take_a_users_approver_role_away(
    control: httpx2.Client, api: httpx2.Client
) -> None:
    answer = control.put("/_sim/users/10", json={"role": "USER"})

    assert answer.status_code == 200, answer.text
    users = api.get(
        "/admin/enterprises/2/users", headers={"accept": "application/vnd.abiquo.userswithroles+json"}
    ).json()["collection"]
    alice = next(user for user in users if user["nick"] == "asmith")
    assert alice["role"]["name"] == "USER"


def test_changing_a_user_to_a_role_that_does_not_exist_is_404(control: httpx2.Client) -> None:
    answer = control.put("/_sim/users/10", json={"role": "NO_SUCH_ROLE"})

    assert answer.status_code == 404
    assert "NO_SUCH_ROLE" in answer.json()["error"]
