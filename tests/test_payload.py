"""The callback parser: Abiquo's XML and JSON task payloads → `Callback` / `HeldTask` (docs/protocol.md §3,
§11).

Sample bodies live in `tests/payloads/`: docs/protocol.md §11.1 to 11.5 and §11.7 verbatim, and the XML
sample of
the seed article (with the blog's curly quotes made straight).
"""

from __future__ import annotations

import html
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as safe_xml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abiquo_workflow.abiquo.payload import is_task_id, parse_callback, parse_task_json, parse_task_xml
from abiquo_workflow.domain import Callback, HeldTask, Link, PayloadFormat, TaskJob
from abiquo_workflow.exceptions import PayloadError
from tests.conftest import FAST


def examples(full: int) -> int:
    """How many examples a property tries: `full` normally, a tenth in the fast subset."""
    return max(full // 10, 10) if FAST else full


PAYLOADS = Path(__file__).parent / "payloads"
API = "https://abiquo.example.com/api/"
VM7 = "cloud/virtualdatacenters/3/virtualappliances/5/virtualmachines/7"
DEPLOY_ID = "0b6c1f2e-5d1a-4c1e-9a8e-2f1d3c4b5a60"
RECONFIGURE_ID = "6c2a4c7d-21ed-40f3-b4ab-80f39a295070"
XML_TYPE = "application/vnd.abiquo.tasks+xml"
JSON_TYPE = "application/vnd.abiquo.tasks+json; version=3.10"


def sample(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def minimal_task(task_id: str = "t-1", **overrides: Any) -> dict[str, Any]:
    """The smallest task the parser accepts, as a JSON object."""
    task: dict[str, Any] = {
        "taskId": task_id,
        "type": "DEPLOY",
        "links": [
            {"rel": "continue", "href": f"tasks/{task_id}/action/continue"},
            {"rel": "cancel", "href": f"tasks/{task_id}/action/cancel"},
        ],
    }
    task.update(overrides)
    return {key: value for key, value in task.items() if value is not None}


def json_body(root: object) -> bytes:
    return json.dumps(root).encode()


def collection(*tasks: dict[str, Any]) -> bytes:
    return json_body({"links": [], "collection": list(tasks)})


def minimal_xml_task(task_id: str = "t-1", extra: str = "") -> str:
    return (
        f'<task><link rel="continue" href="tasks/{task_id}/action/continue"/>'
        f'<link rel="cancel" href="tasks/{task_id}/action/cancel"/>'
        f"<taskId>{task_id}</taskId><type>DEPLOY</type>{extra}</task>"
    )


def refusal(body: bytes, content_type: str | None = None, **kwargs: Any) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse_callback(body, content_type, **kwargs)
    return caught.value


# --- The samples of docs/protocol.md §11 and the seed article -----------------------------------------------


def test_protocol_11_1_xml_vm_deploy_reads_every_field():
    callback = parse_callback(sample("protocol_11_1_vm_deploy.xml"), XML_TYPE)

    assert callback.format is PayloadFormat.XML
    assert callback.single_root is False
    [task] = callback.tasks
    assert task == HeldTask(
        task_id=DEPLOY_ID,
        task_type="DEPLOY",
        user_id="42",
        owner_id="7",
        state="QUEUEING",
        continue_href=f"{VM7}/tasks/{DEPLOY_ID}/action/continue",
        cancel_href=f"{VM7}/tasks/{DEPLOY_ID}/action/cancel",
        target_href=VM7,
        user_href="admin/enterprises/7/users/42",
        self_href=f"{VM7}/tasks/{DEPLOY_ID}",
        timestamp=1372838400,
        creation_timestamp=None,
        jobs=(
            TaskJob(
                id=f"{DEPLOY_ID}.11111111-1111-4111-8111-111111111111",
                type="CONFIGURE",
                description="Deploy task's configure on virtual machine with id 7",
                state="PENDING",
            ),
            TaskJob(
                id=f"{DEPLOY_ID}.22222222-2222-4222-8222-222222222222",
                type="POWER_ON",
                description="Deploy task's power on on virtual machine with id 7",
                state="PENDING",
            ),
        ),
        links=(
            Link("self", f"{VM7}/tasks/{DEPLOY_ID}"),
            Link("parent", VM7),
            Link("target", VM7),
            Link("user", "admin/enterprises/7/users/42"),
            Link("continue", f"{VM7}/tasks/{DEPLOY_ID}/action/continue"),
            Link("cancel", f"{VM7}/tasks/{DEPLOY_ID}/action/cancel"),
        ),
    )


def test_protocol_11_2_json_vm_deploy_reads_every_field():
    callback = parse_callback(sample("protocol_11_2_vm_deploy.json"), JSON_TYPE)

    assert callback.format is PayloadFormat.JSON
    assert callback.single_root is False
    [task] = callback.tasks
    assert (task.task_id, task.task_type, task.user_id, task.owner_id, task.state) == (
        DEPLOY_ID,
        "DEPLOY",
        "42",
        "7",
        "QUEUEING",
    )
    assert (task.timestamp, task.creation_timestamp) == (1479997659, 1479997659)
    assert task.continue_href == f"{VM7}/tasks/{DEPLOY_ID}/action/continue"
    assert task.cancel_href == f"{VM7}/tasks/{DEPLOY_ID}/action/cancel"
    assert (task.target_href, task.user_href, task.self_href) == (
        VM7,
        "admin/enterprises/7/users/42",
        f"{VM7}/tasks/{DEPLOY_ID}",
    )
    assert [job.type for job in task.jobs] == ["SCHEDULE", "CONFIGURE", "POWER_ON"]
    assert task.links[-1] == Link(
        "user", "admin/enterprises/7/users/42", type="application/vnd.abiquo.user+json", title="jdoe"
    )


def test_protocol_11_3_xml_reconfigure_is_a_single_task_root():
    callback = parse_callback(sample("protocol_11_3_vm_reconfigure.xml"), "application/vnd.abiquo.task+xml")

    assert callback.single_root is True
    [task] = callback.tasks
    assert (task.task_id, task.task_type, task.timestamp) == (RECONFIGURE_ID, "RECONFIGURE", 1372838500)
    assert task.continue_href == f"{VM7}/tasks/{RECONFIGURE_ID}/action/continue"
    assert [job.type for job in task.jobs] == ["RECONFIGURE"]


def test_protocol_11_3_json_reconfigure_is_a_single_task_root():
    callback = parse_callback(sample("protocol_11_3_vm_reconfigure.json"), "application/vnd.abiquo.task+json")

    assert callback.single_root is True
    [task] = callback.tasks
    assert (task.task_id, task.task_type, task.creation_timestamp) == (
        RECONFIGURE_ID,
        "RECONFIGURE",
        1479997033,
    )
    assert task.cancel_href == f"{VM7}/tasks/{RECONFIGURE_ID}/action/cancel"
    assert [job.type for job in task.jobs] == ["UPDATE_RESOURCES", "RECONFIGURE", "REGISTER_VM"]


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("protocol_11_4_vapp_deploy.xml", XML_TYPE),
        ("protocol_11_5_vapp_deploy.json", JSON_TYPE),
    ],
)
def test_protocol_vapp_deploy_gives_one_task_per_vm(name: str, content_type: str):
    callback = parse_callback(sample(name), content_type)

    assert [task.owner_id for task in callback.tasks] == ["7", "8", "9"]
    assert [task.task_id for task in callback.tasks] == [
        "aaaaaaaa-0000-4000-8000-000000000007",
        "aaaaaaaa-0000-4000-8000-000000000008",
        "aaaaaaaa-0000-4000-8000-000000000009",
    ]
    assert all(task.jobs == () for task in callback.tasks)
    assert callback.tasks[2].target_href == "cloud/virtualdatacenters/3/virtualappliances/5/virtualmachines/9"


def test_protocol_11_7_pending_tasks_listing_keeps_absolute_hrefs():
    listing = json.loads(sample("protocol_11_7_pending_tasks.json"))

    [task] = [parse_task_json(item, index=i) for i, item in enumerate(listing["collection"], 1)]

    assert task.task_id == DEPLOY_ID
    assert task.continue_href == f"{API}{VM7}/tasks/{DEPLOY_ID}/action/continue"
    assert task.user_href == f"{API}admin/enterprises/7/users/42"


def test_protocol_11_7_pending_tasks_listing_also_parses_as_a_callback():
    callback = parse_callback(sample("protocol_11_7_pending_tasks.json"), JSON_TYPE)

    assert [task.cancel_href for task in callback.tasks] == [f"{API}{VM7}/tasks/{DEPLOY_ID}/action/cancel"]


def test_seed_article_xml_sample_reads_every_field():
    callback = parse_callback(sample("seed_article_vm_deploy.xml"), "application/xml")

    [task] = callback.tasks
    vm59 = "cloud/virtualdatacenters/3/virtualappliances/9/virtualmachines/59"
    task_id = "d8113ffd-c3d9-4834-8b3c-1b51736c9b8b"
    assert (task.task_id, task.task_type, task.user_id, task.owner_id, task.state) == (
        task_id,
        "DEPLOY",
        "1",
        "59",
        "QUEUEING",
    )
    assert (task.creation_timestamp, task.timestamp) == (1372234045, 0)
    assert task.continue_href == f"{vm59}/tasks/{task_id}/action/continue"
    assert task.cancel_href == f"{vm59}/tasks/{task_id}/action/cancel"
    assert (task.target_href, task.user_href) == (vm59, "admin/enterprises/1/users/1")
    assert [job.type for job in task.jobs] == ["SCHEDULE", "CONFIGURE", "POWER_ON"]
    assert task.jobs[0].description == "Deploy task's schedule on virtual machine with id 59"


def test_parse_task_xml_reads_one_task_element():
    element = safe_xml.fromstring(sample("protocol_11_3_vm_reconfigure.xml"), forbid_dtd=True)

    task = parse_task_xml(element)

    assert (task.task_id, task.task_type, task.owner_id) == (RECONFIGURE_ID, "RECONFIGURE", "7")


def test_parse_task_json_names_the_position_while_the_task_id_is_unknown():
    with pytest.raises(PayloadError, match=r"^task 3 has no taskId$"):
        parse_task_json({"type": "DEPLOY"}, index=3)


# --- Hrefs --------------------------------------------------------------------------------------------


def test_absolute_hrefs_are_kept_as_received():
    body = sample("protocol_11_2_vm_deploy.json").replace(b'"href": "', f'"href": "{API}'.encode())

    [task] = parse_callback(body, JSON_TYPE).tasks

    assert task.continue_href == f"{API}{VM7}/tasks/{DEPLOY_ID}/action/continue"
    assert task.target_href == f"{API}{VM7}"


def test_root_relative_hrefs_are_kept_as_received():
    body = sample("protocol_11_1_vm_deploy.xml").replace(b'href="', b'href="/api/')

    [task] = parse_callback(body, XML_TYPE).tasks

    assert task.cancel_href == f"/api/{VM7}/tasks/{DEPLOY_ID}/action/cancel"


# --- Content-Type and sniffing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "name"),
    [
        ("application/vnd.abiquo.tasks+xml", "protocol_11_1_vm_deploy.xml"),
        ("application/vnd.abiquo.tasks+xml; version=2.6", "protocol_11_1_vm_deploy.xml"),
        ("application/vnd.abiquo.task+xml", "protocol_11_3_vm_reconfigure.xml"),
        ("Application/VND.Abiquo.Tasks+XML;Version=2.6", "protocol_11_1_vm_deploy.xml"),
        ("application/vnd.abiquo.tasks+json", "protocol_11_2_vm_deploy.json"),
        ("application/vnd.abiquo.tasks+json; version=3.10", "protocol_11_2_vm_deploy.json"),
        ("application/vnd.abiquo.task+json; version=3.10", "protocol_11_3_vm_reconfigure.json"),
        ("APPLICATION/VND.ABIQUO.TASK+JSON", "protocol_11_3_vm_reconfigure.json"),
        ("application/xml", "protocol_11_1_vm_deploy.xml"),
        ("text/xml; charset=utf-8", "protocol_11_1_vm_deploy.xml"),
        ("application/json", "protocol_11_2_vm_deploy.json"),
        ("application/json; charset=UTF-8", "protocol_11_2_vm_deploy.json"),
    ],
)
def test_declared_media_types_are_read_without_parameters_and_case(content_type: str, name: str):
    callback = parse_callback(sample(name), content_type)

    assert callback.format is (PayloadFormat.XML if name.endswith(".xml") else PayloadFormat.JSON)
    assert len(callback.tasks) == 1


@pytest.mark.parametrize(
    "content_type",
    [
        None,  # no header at all
        "",
        "text/plain",
        "application/octet-stream",
        "*/*",
        "application/x-www-form-urlencoded",  # what `curl -d @payload` sends
        "nonsense",  # not a media type at all
    ],
)
@pytest.mark.parametrize("name", ["protocol_11_1_vm_deploy.xml", "protocol_11_2_vm_deploy.json"])
def test_types_that_say_nothing_about_the_dialect_sniff_the_body(content_type: str | None, name: str):
    callback = parse_callback(sample(name), content_type)

    assert callback.format is (PayloadFormat.XML if name.endswith(".xml") else PayloadFormat.JSON)


def test_a_generic_type_loses_to_the_sniffed_body():
    callback = parse_callback(sample("protocol_11_2_vm_deploy.json"), "application/xml")

    assert callback.format is PayloadFormat.JSON


def test_a_generic_json_type_reads_a_body_that_sniffing_cannot_place_as_json():
    error = refusal(b'"a string"', "application/json")

    assert error.status == 400
    assert str(error) == "the JSON root must be an object"


def test_an_abiquo_type_that_disagrees_with_the_body_is_refused():
    error = refusal(sample("protocol_11_1_vm_deploy.xml"), JSON_TYPE)

    assert error.status == 400
    assert "application/vnd.abiquo.tasks+json says JSON, but the body looks like XML" in str(error)


def test_leading_whitespace_and_a_byte_order_mark_are_tolerated():
    xml = b"\xef\xbb\xbf\r\n  " + sample("seed_article_vm_deploy.xml")
    json_ = b"\xef\xbb\xbf\n\t" + sample("protocol_11_2_vm_deploy.json")

    assert parse_callback(xml, None).format is PayloadFormat.XML
    assert parse_callback(json_, None).format is PayloadFormat.JSON


@pytest.mark.parametrize(
    "content_type",
    ["image/png", "multipart/form-data; boundary=xyz", "text/html", "application/pdf"],
)
def test_a_content_type_that_is_neither_xml_nor_json_is_415(content_type: str):
    error = refusal(sample("protocol_11_2_vm_deploy.json"), content_type)

    assert error.status == 415
    assert "is neither XML nor JSON" in str(error)


# --- Shapes ---------------------------------------------------------------------------------------------


def test_the_root_decides_the_shape_not_the_task_or_tasks_media_type():
    callback = parse_callback(collection(minimal_task()), "application/vnd.abiquo.task+json")

    assert callback.single_root is False


def test_a_default_xml_namespace_is_tolerated():
    body = sample("protocol_11_1_vm_deploy.xml").replace(
        b"<tasks>", b'<tasks xmlns="http://www.abiquo.com/xml/ns">', 1
    )

    [task] = parse_callback(body, XML_TYPE).tasks

    assert task.task_id == DEPLOY_ID
    assert len(task.jobs) == 2


def test_a_repeated_task_id_keeps_the_first_task():
    first = minimal_task("t-1", ownerId="7")
    again = minimal_task("t-1", ownerId="8")

    callback = parse_callback(collection(first, minimal_task("t-2"), again), None)

    assert [(task.task_id, task.owner_id) for task in callback.tasks] == [("t-1", "7"), ("t-2", None)]


def test_a_repeated_xml_field_keeps_the_first_value():
    repeated = "<taskId>t-2</taskId><ownerId>7</ownerId><ownerId>8</ownerId>"
    body = f"<tasks>{minimal_xml_task(extra=repeated)}</tasks>".encode()

    [task] = parse_callback(body, XML_TYPE).tasks

    assert (task.task_id, task.owner_id) == ("t-1", "7")


# --- Optional, liberal and unknown fields ---------------------------------------------------------------


def test_a_json_task_with_only_the_required_fields_is_accepted():
    [task] = parse_callback(collection(minimal_task()), None).tasks

    assert task == HeldTask(
        task_id="t-1",
        task_type="DEPLOY",
        user_id=None,
        owner_id=None,
        state=None,
        continue_href="tasks/t-1/action/continue",
        cancel_href="tasks/t-1/action/cancel",
        links=(
            Link("continue", "tasks/t-1/action/continue"),
            Link("cancel", "tasks/t-1/action/cancel"),
        ),
    )


def test_an_xml_task_with_only_the_required_fields_is_accepted():
    [task] = parse_callback(f"<tasks>{minimal_xml_task()}</tasks>".encode(), None).tasks

    assert (task.user_id, task.owner_id, task.state, task.timestamp, task.creation_timestamp) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert (task.target_href, task.user_href, task.self_href, task.jobs) == (None, None, None, ())


@pytest.mark.parametrize(
    "jobs",
    [
        {"links": [], "collection": []},
        {"links": []},  # no collection inside
        [],
        None,  # no jobs key
        "not jobs",
    ],
)
def test_empty_or_absent_json_jobs_are_accepted(jobs: object):
    [task] = parse_callback(collection(minimal_task(jobs=jobs)), None).tasks

    assert task.jobs == ()


@pytest.mark.parametrize("jobs", ["<jobs/>", "<jobs></jobs>", "<jobs>\n  </jobs>", ""])
def test_empty_or_absent_xml_jobs_are_accepted(jobs: str):
    [task] = parse_callback(f"<tasks>{minimal_xml_task(extra=jobs)}</tasks>".encode(), None).tasks

    assert task.jobs == ()


def test_jobs_without_an_id_or_a_type_are_skipped():
    jobs = {"collection": [{"id": "j1", "type": "SCHEDULE"}, {"type": "CONFIGURE"}, {"id": "j3"}, "junk"]}

    [task] = parse_callback(collection(minimal_task(jobs=jobs)), None).tasks

    assert task.jobs == (TaskJob(id="j1", type="SCHEDULE"),)


def test_numeric_user_and_owner_ids_are_kept_as_text():
    [task] = parse_callback(collection(minimal_task(userId=42, ownerId=1653)), None).tasks

    assert (task.user_id, task.owner_id) == ("42", "1653")


def test_timestamps_may_be_numeric_strings():
    task_json = minimal_task(timestamp="1479997659", creationTimestamp=" 1479997033 ")

    [task] = parse_callback(collection(task_json), None).tasks

    assert (task.timestamp, task.creation_timestamp) == (1479997659, 1479997033)


@pytest.mark.parametrize(
    "value",
    ["yesterday", "", True, {"seconds": 1}, [1], 2**70, "99999999999999999999"],
)
def test_a_timestamp_that_is_not_a_number_counts_as_missing(value: object):
    [task] = parse_callback(collection(minimal_task(timestamp=value)), None).tasks

    assert task.timestamp is None


def test_an_infinite_timestamp_counts_as_missing():
    body = collection(minimal_task()).replace(b'"taskId"', b'"timestamp": Infinity, "taskId"')

    [task] = parse_callback(body, None).tasks

    assert task.timestamp is None


def test_the_task_type_is_upper_cased():
    [task] = parse_callback(collection(minimal_task(type=" reconfigure ")), None).tasks

    assert task.task_type == "RECONFIGURE"


def test_unknown_json_keys_are_ignored():
    task_json = minimal_task(futureField={"nested": [1, 2]}, diskController=None)

    callback = parse_callback(json_body({"totalSize": 1, "whatever": True, "collection": [task_json]}), None)

    assert callback.tasks[0].task_id == "t-1"


def test_unknown_xml_elements_are_ignored():
    extra = "<futureField><nested>1</nested></futureField><totalSize>3</totalSize>"
    body = (
        f"<tasks><link rel='self' href='x'/><totalSize>1</totalSize>{minimal_xml_task(extra=extra)}</tasks>"
    )

    [task] = parse_callback(body.encode(), None).tasks

    assert task.task_id == "t-1"


def test_every_link_is_kept_and_the_first_of_a_relation_wins():
    links = [
        {"rel": "continue", "href": "first/continue", "title": "yes"},
        {"rel": "cancel", "href": "first/cancel", "diskController": None},
        {"rel": "continue", "href": "second/continue"},
        {"rel": "virtualmachine", "href": "vm/7", "type": "application/vnd.abiquo.virtualmachine+json"},
    ]

    [task] = parse_callback(collection(minimal_task(links=links)), None).tasks

    assert task.continue_href == "first/continue"
    assert task.links == (
        Link("continue", "first/continue", title="yes"),
        Link("cancel", "first/cancel"),
        Link("continue", "second/continue"),
        Link("virtualmachine", "vm/7", type="application/vnd.abiquo.virtualmachine+json"),
    )


def test_links_without_a_rel_or_an_href_are_dropped():
    links = [
        {"rel": "continue", "href": "c"},
        {"rel": "cancel", "href": "k"},
        {"rel": "target"},
        {"href": "nowhere"},
        {"rel": "user", "href": "   "},
        "junk",
    ]

    [task] = parse_callback(collection(minimal_task(links=links)), None).tasks

    assert [link.rel for link in task.links] == ["continue", "cancel"]
    assert task.target_href is None


# --- Refusals, one per kind -------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_any_parsing():
    error = refusal(b"\xff" * 2_000_000, "image/png")

    assert error.status == 413
    assert str(error) == "the body is 2,000,000 bytes; the limit is 1,048,576"


def test_the_size_limit_can_be_lowered():
    body = sample("protocol_11_2_vm_deploy.json")

    error = refusal(body, JSON_TYPE, max_bytes=len(body) - 1)

    assert error.status == 413
    assert parse_callback(body, JSON_TYPE, max_bytes=len(body)).tasks


@pytest.mark.parametrize("body", [b"", b"   \r\n\t"])
def test_an_empty_body_is_refused(body: bytes):
    error = refusal(body, XML_TYPE)

    assert (error.status, str(error)) == (400, "the body is empty")


def test_a_body_that_is_neither_xml_nor_json_is_refused():
    error = refusal(b"taskId=1&type=DEPLOY", "text/plain")

    assert (error.status, str(error)) == (400, "the body is neither XML nor JSON")


def test_a_body_that_is_not_utf8_is_refused():
    error = refusal(b"<tasks>\xe9</tasks>", XML_TYPE)

    assert error.status == 400
    assert str(error) == "the body is not UTF-8 text (byte 0xe9 at offset 7)"


def test_xml_that_is_not_well_formed_is_refused_with_its_position():
    error = refusal(b"<tasks>\n  <task>\n    </x>\n", XML_TYPE)

    assert error.status == 400
    assert str(error) == "the XML is not well-formed (line 3, column 7: mismatched tag)"


def test_an_xml_root_other_than_tasks_or_task_is_refused():
    error = refusal(b"<errors><error/></errors>", XML_TYPE)

    assert error.status == 400
    assert str(error) == "the XML root is <errors>; expected <tasks> or <task>"


def test_an_empty_xml_collection_is_refused():
    error = refusal(b"<tasks><totalSize>0</totalSize></tasks>", XML_TYPE)

    assert error.status == 400
    assert "the collection is empty" in str(error)


def test_a_json_root_that_is_not_an_object_is_refused():
    error = refusal(b"[1, 2]", JSON_TYPE)

    assert (error.status, str(error)) == (400, "the JSON root must be an object")


def test_invalid_json_is_refused_with_its_position():
    error = refusal(b'{\n  "collection": [,]\n}', JSON_TYPE)

    assert error.status == 400
    assert str(error) == "the JSON is not valid (Expecting value at line 2, column 18)"


def test_deeply_nested_json_is_refused():
    error = refusal(b'{"collection": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", JSON_TYPE)

    assert (error.status, str(error)) == (400, "the JSON is nested too deeply")


def test_a_json_number_with_too_many_digits_is_refused():
    error = refusal(b'{"taskId": ' + b"9" * 5000 + b"}", JSON_TYPE)

    assert (error.status, str(error)) == (400, "the JSON holds a number longer than 100 digits")


def test_a_json_object_that_is_neither_collection_nor_task_is_refused():
    error = refusal(b'{"code": "TASK-2"}', JSON_TYPE)

    assert error.status == 400
    assert "neither a task collection (no collection) nor a task (no taskId)" in str(error)


def test_a_json_collection_that_is_not_an_array_is_refused():
    error = refusal(json_body({"collection": {"taskId": "t-1"}}), JSON_TYPE)

    assert (error.status, str(error)) == (400, "the collection must be a JSON array of tasks")


def test_an_empty_json_collection_is_refused():
    error = refusal(json_body({"links": [], "totalSize": 0, "collection": []}), JSON_TYPE)

    assert (error.status, str(error)) == (400, "the collection is empty")


def test_a_collection_item_that_is_not_an_object_is_refused():
    error = refusal(json_body({"collection": [minimal_task(), "t-2"]}), JSON_TYPE)

    assert (error.status, str(error)) == (400, "task 2 of the collection is not a JSON object")


def test_a_task_without_task_id_is_named_by_its_position():
    error = refusal(collection(minimal_task("t-1"), minimal_task(" ")), JSON_TYPE)

    assert (error.status, str(error)) == (400, "task 2 has no taskId")


def test_a_single_task_root_without_task_id_is_refused():
    body = minimal_xml_task().replace("<taskId>t-1</taskId>", "").encode()

    error = refusal(body, XML_TYPE)

    assert (error.status, str(error)) == (400, "the task has no taskId")


def test_a_task_without_type_is_refused():
    error = refusal(collection(minimal_task(DEPLOY_ID, type=None)), JSON_TYPE)

    assert error.status == 400
    assert str(error) == f"task {DEPLOY_ID} has no type (DEPLOY, UNDEPLOY or RECONFIGURE)"


@pytest.mark.parametrize("rel", ["continue", "cancel"])
def test_a_task_without_its_continue_or_cancel_link_is_refused(rel: str):
    body = sample("protocol_11_1_vm_deploy.xml").replace(f'rel="{rel}"'.encode(), b'rel="other"')

    error = refusal(body, XML_TYPE)

    assert (error.status, str(error)) == (400, f"task {DEPLOY_ID} has no {rel} link")


def test_an_over_long_task_id_is_refused_and_shortened_in_the_message():
    error = refusal(collection(minimal_task("x" * 5000)), JSON_TYPE)

    assert (error.status, str(error)) == (
        400,
        f"task 1 has the taskId '{'x' * 59}…', which is not an Abiquo task id: "
        "task ids are letters, digits, '.', '_' and '-', at most 64 characters",
    )


@pytest.mark.parametrize(
    ("task_id", "quoted"),
    [
        ("a,b", "'a,b'"),  # a comma would blur the list of ids a link binds
        ("a b", "'a b'"),  # whitespace inside an id
        ("a\u0007b", "'a\\u0007b'"),  # a control character, escaped in the message
        ("a/../b", "'a/../b'"),  # a path: ids end up in hrefs
        ("x" * 65, f"'{'x' * 59}…'"),  # one character too long
        ("-leading", "'-leading'"),  # must start with a letter or digit
    ],
)
def test_a_task_id_not_shaped_like_abiquos_is_refused(task_id: str, quoted: str):
    error = refusal(collection(minimal_task("t-1"), minimal_task(task_id)), JSON_TYPE)

    assert error.status == 400
    assert str(error).startswith(f"task 2 has the taskId {quoted}, which is not an Abiquo task id")


def test_an_abiquo_uuid_and_a_64_character_id_are_task_ids():
    assert is_task_id("0b6c1f2e-5d1a-4c1e-9a8e-2f1d3c4b5a60")
    assert is_task_id("a" * 64)
    assert not is_task_id("")


def test_an_unpaired_surrogate_anywhere_in_json_is_refused_at_once():
    body = b'{"comment": "\\ud800", ' + collection(minimal_task()).lstrip(b"{")

    error = refusal(body, JSON_TYPE)

    assert (error.status, str(error)) == (
        400,
        "the JSON holds an unpaired surrogate (a \\uD800\u2013\\uDFFF escape), which is not text",
    )


def test_an_escaped_surrogate_pair_is_text():
    body = collection(minimal_task(state="SMILE")).replace(b"SMILE", b"\\ud83d\\ude00")

    [task] = parse_callback(body, JSON_TYPE).tasks

    assert task.state == "\U0001f600"


def test_a_callback_with_more_tasks_than_the_limit_is_refused_before_they_are_read():
    body = collection(*(minimal_task(f"t-{i}") for i in range(4)))

    error = refusal(body, JSON_TYPE, max_tasks=3)

    assert (error.status, str(error)) == (
        413,
        "the callback holds 4 tasks; at most 3 are accepted in one callback",
    )


def test_an_xml_callback_with_more_tasks_than_the_limit_is_refused():
    body = f"<tasks>{''.join(minimal_xml_task(f't-{i}') for i in range(4))}</tasks>".encode()

    error = refusal(body, XML_TYPE, max_tasks=3)

    assert error.status == 413


def test_a_nul_character_that_no_database_can_store_is_refused():
    body = collection(minimal_task(state="QUEUE")).replace(b"QUEUE", b"\\u0000")

    error = refusal(body, JSON_TYPE)

    assert error.status == 400
    assert str(error) == "task t-1 holds a NUL character or an unpaired surrogate, which cannot be stored"


# --- Hostile XML -----------------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE tasks [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<tasks><task><taskId>&lol9;</taskId></task></tasks>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE task [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<task><taskId>&xxe;</taskId></task>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE tasks SYSTEM "http://127.0.0.1:9/evil.dtd">
<tasks/>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE tasks [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/x.dtd"> %remote;]>
<tasks/>"""


@pytest.mark.parametrize(
    "body",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY],
    ids=["billion-laughs", "external-entity", "external-dtd", "parameter-entity"],
)
def test_dtds_and_entities_are_refused(body: bytes):
    error = refusal(body, XML_TYPE)

    assert (error.status, str(error)) == (400, "DTDs and entity declarations are refused")


def test_an_undeclared_entity_reference_is_not_well_formed():
    error = refusal(b"<tasks><task><taskId>&xxe;</taskId></task></tasks>", XML_TYPE)

    assert error.status == 400
    assert "undefined entity" in str(error)


def test_deeply_nested_unknown_xml_is_ignored():
    nested = "<x>" * 100_000 + "</x>" * 100_000

    [task] = parse_callback(f"<tasks>{minimal_xml_task(extra=nested)}</tasks>".encode(), XML_TYPE).tasks

    assert task.task_id == "t-1"


# --- Properties -----------------------------------------------------------------------------------------

#: Characters XML 1.0 can carry as they are (no control characters, surrogates or non-characters).
XML_CHARACTERS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn"))
KNOWN_RELS = ("continue", "cancel", "target", "user", "self")
KNOWN_FIELDS = {
    "taskId",
    "type",
    "userId",
    "ownerId",
    "state",
    "timestamp",
    "creationTimestamp",
    "links",
    "jobs",
}


def non_blank(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(XML_CHARACTERS, min_size=1, max_size=max_size).filter(lambda text: text.strip() != "")


def optional_text() -> st.SearchStrategy[str | None]:
    return st.none() | st.text(XML_CHARACTERS, max_size=20)


@dataclass(frozen=True)
class TaskSpec:
    """A task as generated: the values written into the body, before the parser's normalising."""

    task_id: str
    task_type: str
    user_id: str | int | None
    owner_id: str | int | None
    state: str | None
    timestamp: str | int | None
    creation_timestamp: str | int | None
    links: tuple[tuple[str, str, str | None, str | None], ...]
    jobs: tuple[tuple[str, str, str | None, str | None], ...]
    unknown: dict[str, str] = field(default_factory=dict)

    def expected(self) -> HeldTask:
        links = tuple(
            Link(rel.strip(), href.strip(), _text(kind), _text(title))
            for rel, href, kind, title in self.links
        )
        hrefs = {link.rel: link.href for link in reversed(links)}
        return HeldTask(
            task_id=self.task_id.strip(),
            task_type=self.task_type.strip().upper(),
            user_id=_id(self.user_id),
            owner_id=_id(self.owner_id),
            state=_text(self.state),
            continue_href=hrefs["continue"],
            cancel_href=hrefs["cancel"],
            target_href=hrefs.get("target"),
            user_href=hrefs.get("user"),
            self_href=hrefs.get("self"),
            timestamp=_timestamp(self.timestamp),
            creation_timestamp=_timestamp(self.creation_timestamp),
            jobs=tuple(TaskJob(i.strip(), t.strip(), _text(d), _text(s)) for i, t, d, s in self.jobs),
            links=links,
        )


def _text(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _id(value: str | int | None) -> str | None:
    return str(value) if isinstance(value, int) else _text(value)


def _timestamp(value: str | int | None) -> int | None:
    # The generator only writes digits or letters, so "numeric" needs no cleverness here.
    return int(value) if isinstance(value, int) or (value is not None and value.strip().isdigit()) else None


def hrefs() -> st.SearchStrategy[str]:
    path = st.text(string.ascii_letters + string.digits + "/-._~", min_size=1, max_size=30)
    return st.builds(lambda base, tail: base + tail, st.sampled_from(["", "/", "/api/", API]), path)


def links_strategy() -> st.SearchStrategy[tuple[tuple[str, str, str | None, str | None], ...]]:
    known = st.tuples(st.sampled_from(KNOWN_RELS[2:]), hrefs(), optional_text(), optional_text())
    extra_rel = non_blank(15).filter(lambda rel: rel.strip().lower() not in KNOWN_RELS)
    extra = st.tuples(extra_rel, hrefs(), optional_text(), optional_text())
    required = st.tuples(
        st.tuples(st.just("continue"), hrefs(), optional_text(), optional_text()),
        st.tuples(st.just("cancel"), hrefs(), optional_text(), optional_text()),
    )
    others = st.lists(known | extra, max_size=5)
    return st.builds(lambda req, more: tuple(more[:2]) + req + tuple(more[2:]), required, others)


def ids() -> st.SearchStrategy[str | int | None]:
    return st.none() | st.integers(0, 10**12) | st.text(XML_CHARACTERS, max_size=12)


def timestamps() -> st.SearchStrategy[str | int | None]:
    return (
        st.none()
        | st.integers(0, 2**40)
        | st.integers(0, 2**40).map(str)
        | st.text(string.ascii_letters, max_size=8)
    )


task_specs = st.builds(
    TaskSpec,
    # Abiquo-shaped ids, with the blanks around them that the parser strips.
    task_id=st.builds(
        lambda pad, core, tail: pad + core + tail,
        st.sampled_from(["", " ", "\n  "]),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
        st.sampled_from(["", " "]),
    ),
    task_type=st.sampled_from(["DEPLOY", "undeploy", " Reconfigure "]) | non_blank(20),
    user_id=ids(),
    owner_id=ids(),
    state=optional_text(),
    timestamp=timestamps(),
    creation_timestamp=timestamps(),
    links=links_strategy(),
    jobs=st.lists(st.tuples(non_blank(), non_blank(12), optional_text(), optional_text()), max_size=3).map(
        tuple
    ),
    unknown=st.dictionaries(
        st.from_regex(r"[a-z][A-Za-z0-9]{0,10}", fullmatch=True).filter(lambda key: key not in KNOWN_FIELDS),
        st.text(XML_CHARACTERS, max_size=10),
        max_size=3,
    ),
)
task_lists = st.lists(task_specs, min_size=1, max_size=4, unique_by=lambda spec: spec.task_id.strip())


def as_json(spec: TaskSpec) -> dict[str, Any]:
    task: dict[str, Any] = dict(spec.unknown)
    task.update(taskId=spec.task_id, type=spec.task_type)
    for key, value in [
        ("userId", spec.user_id),
        ("ownerId", spec.owner_id),
        ("state", spec.state),
        ("timestamp", spec.timestamp),
        ("creationTimestamp", spec.creation_timestamp),
    ]:
        if value is not None:
            task[key] = value
    task["links"] = [
        {"rel": rel, "href": href}
        | ({"type": kind} if kind is not None else {})
        | ({"title": title} if title else {})
        for rel, href, kind, title in spec.links
    ]
    task["jobs"] = {
        "links": [],
        "collection": [{"id": i, "type": t, "description": d, "state": s} for i, t, d, s in spec.jobs],
    }
    return task


def as_xml(spec: TaskSpec) -> str:
    def element(name: str, value: object) -> str:
        return "" if value is None else f"<{name}>{html.escape(str(value))}</{name}>"

    def attribute(name: str, value: str | None) -> str:
        return "" if value is None else f' {name}="{html.escape(value)}"'

    links = "".join(
        "<link"
        + "".join(attribute(*pair) for pair in zip(("rel", "href", "type", "title"), link, strict=True))
        + "/>"
        for link in spec.links
    )
    jobs = "".join(
        f"<job>{element('id', i)}{element('type', t)}{element('description', d)}{element('state', s)}</job>"
        for i, t, d, s in spec.jobs
    )
    fields = "".join(
        element(name, value)
        for name, value in [
            ("taskId", spec.task_id),
            ("userId", spec.user_id),
            ("ownerId", spec.owner_id),
            ("type", spec.task_type),
            ("state", spec.state),
            ("creationTimestamp", spec.creation_timestamp),
            ("timestamp", spec.timestamp),
        ]
    )
    unknown = "".join(element(name, value) for name, value in spec.unknown.items())
    return f"<task>{links}{fields}{unknown}<jobs>{jobs}</jobs></task>"


@settings(max_examples=examples(100), deadline=None)
@given(
    specs=task_lists,
    single=st.booleans(),
    ascii_only=st.booleans(),
    content_type=st.sampled_from(
        [
            None,
            "application/vnd.abiquo.tasks+json; version=3.10",
            "application/vnd.abiquo.task+json",
            "application/json",
        ]
    ),
)
def test_valid_tasks_round_trip_through_json(
    specs: list[TaskSpec], single: bool, ascii_only: bool, content_type: str | None
):
    root = as_json(specs[0]) if single else {"links": [], "collection": [as_json(spec) for spec in specs]}
    body = json.dumps(root, ensure_ascii=ascii_only).encode()

    callback = parse_callback(body, content_type)

    expected = [specs[0]] if single else specs
    assert callback == Callback(
        tuple(spec.expected() for spec in expected), PayloadFormat.JSON, single_root=single
    )


@settings(max_examples=examples(100), deadline=None)
@given(
    specs=task_lists,
    single=st.booleans(),
    content_type=st.sampled_from(
        [None, "application/vnd.abiquo.tasks+xml", "application/vnd.abiquo.task+xml; version=2.6", "text/xml"]
    ),
)
def test_valid_tasks_round_trip_through_xml(specs: list[TaskSpec], single: bool, content_type: str | None):
    root = as_xml(specs[0]) if single else "<tasks>" + "".join(as_xml(spec) for spec in specs) + "</tasks>"
    body = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + root).encode()

    callback = parse_callback(body, content_type)

    expected = [specs[0]] if single else specs
    assert callback == Callback(
        tuple(spec.expected() for spec in expected), PayloadFormat.XML, single_root=single
    )


def test_the_same_task_in_xml_and_json_parses_to_the_same_value():
    spec = TaskSpec(
        task_id=DEPLOY_ID,
        task_type="deploy",
        user_id=42,
        owner_id="7",
        state="QUEUEING",
        timestamp="1479997659",
        creation_timestamp=1479997659,
        links=(("continue", "c", None, None), ("cancel", "k", "text/plain", "no")),
        jobs=(("j1", "SCHEDULE", "Deploy task's schedule", "PENDING"),),
    )

    from_xml = parse_callback(as_xml(spec).encode(), None).tasks
    from_json = parse_callback(json_body(as_json(spec)), None).tasks

    assert from_xml == from_json == (spec.expected(),)


CONTENT_TYPES = (
    st.none()
    | st.sampled_from(
        [
            "application/vnd.abiquo.tasks+xml",
            "application/vnd.abiquo.task+json; version=3.10",
            "application/json",
            "text/xml",
            "text/plain",
            "image/png",
        ]
    )
    | st.text(max_size=40)
)


def parses_or_refuses(body: bytes, content_type: str | None) -> None:
    """The garbage property: a `Callback` with tasks, or a `PayloadError` with a status and a sentence."""
    try:
        result = parse_callback(body, content_type, max_bytes=4096)
    except PayloadError as error:
        assert error.status in (400, 413, 415)
        assert str(error)
    else:
        assert isinstance(result, Callback)
        assert result.tasks


def json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    json_containers,
    max_leaves=20,
)
task_shaped = st.fixed_dictionaries(
    {},
    optional={
        "taskId": json_values | st.text(max_size=10),
        "type": json_values | st.sampled_from(["DEPLOY", ""]),
        "userId": json_values,
        "timestamp": json_values,
        "links": json_values
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "rel": json_values | st.sampled_from(KNOWN_RELS),
                    "href": json_values,
                    "title": json_values,
                },
            ),
            max_size=4,
        ),
        "jobs": json_values | st.fixed_dictionaries({"collection": st.lists(json_values, max_size=3)}),
    },
)
xml_fragments = st.sampled_from(
    [
        "<tasks>",
        "</tasks>",
        "<task>",
        "</task>",
        "<taskId>",
        "</taskId>",
        "<type>DEPLOY</type>",
        '<link rel="continue" href="c"/>',
        '<link rel="cancel" href="k"/>',
        "<jobs><job><id>1</id><type>X</type></job></jobs>",
        "<timestamp>12</timestamp>",
        "<!DOCTYPE x>",
        '<!ENTITY e "e">',
        "&e;",
        "&amp;",
        "<![CDATA[x]]>",
        "<?pi x?>",
        "<!-- c -->",
        '<?xml version="1.0"?>',
        ' xmlns="urn:x"',
        "\u0000",
        "\ud800",
        "é",
    ]
)


@settings(max_examples=examples(200), deadline=None)
@given(body=st.binary(max_size=5000), content_type=CONTENT_TYPES)
def test_arbitrary_bytes_parse_or_raise_payload_error(body: bytes, content_type: str | None):
    parses_or_refuses(body, content_type)


@settings(max_examples=examples(200), deadline=None)
@given(value=json_values, content_type=CONTENT_TYPES)
def test_arbitrary_json_values_parse_or_raise_payload_error(value: object, content_type: str | None):
    parses_or_refuses(json.dumps(value).encode(), content_type)


@settings(max_examples=examples(200), deadline=None)
@given(
    tasks=st.lists(task_shaped | json_values, max_size=3),
    single=st.booleans(),
    content_type=CONTENT_TYPES,
)
def test_task_shaped_json_with_arbitrary_values_parses_or_raises_payload_error(
    tasks: list[object], single: bool, content_type: str | None
):
    root = (tasks[0] if tasks else {}) if single else {"collection": tasks}
    parses_or_refuses(json.dumps(root).encode(), content_type)


@settings(max_examples=examples(200), deadline=None)
@given(
    pieces=st.lists(xml_fragments | st.text(max_size=8), max_size=25),
    content_type=CONTENT_TYPES,
)
def test_xml_like_text_parses_or_raises_payload_error(pieces: list[str], content_type: str | None):
    parses_or_refuses("".join(pieces).encode("utf-8", "surrogatepass"), content_type)


@settings(max_examples=examples(300), deadline=None)
@given(task_id=st.text(min_size=1, max_size=80).filter(lambda text: not is_task_id(text.strip())))
def test_any_other_task_id_is_refused_with_a_sentence_that_can_be_sent_back(task_id: str):
    body = json.dumps({"collection": [minimal_task(task_id)]}).encode()

    error = refusal(body, JSON_TYPE)

    assert error.status == 400
    # The message goes back to the sender as JSON and into logs: it must be encodable text.
    str(error).encode("utf-8")
