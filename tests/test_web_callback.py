"""`POST /callback`: what Abiquo's callback gets back, what is stored, and every refusal (web/callback.py).

Each test runs a real connector (uvicorn, worker, SQLite or PostgreSQL) and posts to it over loopback.
Refusals answer JSON `{"error": "<a sentence>"}` and store nothing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from abiquo_workflow.store import Store
from tests.conftest import CLIENT_TLS, App, AppFactory, Connector, ConnectorFactory, Running, drop_database

PAYLOADS = Path(__file__).parent / "payloads"
XML_TYPE = "application/vnd.abiquo.tasks+xml"
JSON_TYPE = "application/vnd.abiquo.tasks+json"
DEPLOY_ID = "0b6c1f2e-5d1a-4c1e-9a8e-2f1d3c4b5a60"
RECONFIGURE_ID = "6c2a4c7d-21ed-40f3-b4ab-80f39a295070"
VAPP_IDS = [f"aaaaaaaa-0000-4000-8000-00000000000{n}" for n in (7, 8, 9)]
SEED_ID = "d8113ffd-c3d9-4834-8b3c-1b51736c9b8b"

#: Words that only a traceback or a framework's debug page would put in a body.
TRACEBACK_MARKERS = ("Traceback", 'File "', "raise ", "site-packages")


def sample(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


async def post(
    target: Running, path: str, body: bytes = b"", content_type: str | None = XML_TYPE, **kw: Any
) -> httpx2.Response:
    """POST `body` to `path` of the app (or a connector) as Abiquo would."""
    headers = dict(kw.pop("headers", {}))
    if content_type is not None:
        headers["content-type"] = content_type
    async with target.client() as client:
        return await client.post(path, content=body, headers=headers, **kw)


async def stored_tasks(connector: Running) -> list[str]:
    """Every task id in the connector's database, newest first."""
    async with await Store.open(connector.settings.database.url, migrate=False) as store:
        return [task.task_id for task in await store.list_tasks()]


def assert_refusal(response: httpx2.Response, status: int) -> str:
    """A refusal: the status, a JSON sentence, and nothing that looks like a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str)
    assert message[:1].isupper() and message.rstrip().endswith((".", ")")), message
    assert not any(marker in response.text for marker in TRACEBACK_MARKERS), response.text
    return message


@pytest.fixture
def connector(app: App) -> App:
    """The connector's web app in-process (conftest `app`); the tests that time /healthz while the
    server works start a real server instead (`attacked`)."""
    return app


# --- what a good callback gets -------------------------------------------------------------------------

SAMPLES = [
    pytest.param("protocol_11_1_vm_deploy.xml", XML_TYPE, [DEPLOY_ID], id="xml-collection"),
    pytest.param("protocol_11_2_vm_deploy.json", JSON_TYPE, [DEPLOY_ID], id="json-collection"),
    pytest.param("protocol_11_3_vm_reconfigure.xml", XML_TYPE, [RECONFIGURE_ID], id="xml-single-root"),
    pytest.param("protocol_11_3_vm_reconfigure.json", JSON_TYPE, [RECONFIGURE_ID], id="json-single-root"),
    pytest.param("protocol_11_4_vapp_deploy.xml", XML_TYPE, VAPP_IDS, id="xml-vapp"),
    pytest.param("protocol_11_5_vapp_deploy.json", JSON_TYPE, VAPP_IDS, id="json-vapp"),
    pytest.param("seed_article_vm_deploy.xml", "application/xml", [SEED_ID], id="xml-seed-article"),
]


@pytest.mark.parametrize(("name", "content_type", "task_ids"), SAMPLES)
async def test_a_sample_callback_is_answered_with_its_request_and_tasks(
    connector: Running, name: str, content_type: str, task_ids: list[str]
) -> None:
    response = await post(connector, "/callback", sample(name), content_type)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["tasks"] == task_ids
    assert answer["already_known"] == []
    assert isinstance(answer["request_id"], str) and answer["request_id"]


@pytest.mark.parametrize(("name", "content_type", "task_ids"), SAMPLES)
async def test_a_sample_callback_is_stored_under_its_request(
    connector: Running, name: str, content_type: str, task_ids: list[str]
) -> None:
    response = await post(connector, "/callback", sample(name), content_type)

    async with await Store.open(connector.settings.database.url, migrate=False) as store:
        tasks = await store.tasks_of_request(response.json()["request_id"])
    assert [task.task_id for task in tasks] == task_ids


async def test_the_same_callback_twice_is_answered_both_times_and_stored_once(connector: Running) -> None:
    body = sample("protocol_11_4_vapp_deploy.xml")

    first = await post(connector, "/callback", body)
    second = await post(connector, "/callback", body)

    assert first.status_code == second.status_code == 200
    assert second.json() == {"request_id": None, "tasks": [], "already_known": VAPP_IDS}
    assert sorted(await stored_tasks(connector)) == VAPP_IDS


async def test_a_simulated_abiquo_callback_is_stored(connector: Running) -> None:
    result = await connector.request(action="deploy", vm=1)

    assert await stored_tasks(connector) == [result["tasks"][0]["task_id"]]


# --- refusals ------------------------------------------------------------------------------------------

DOCTYPE = b'<?xml version="1.0"?>\n<!DOCTYPE tasks [<!ENTITY x "boom">]>\n<tasks><task>&x;</task></tasks>'
EXTERNAL = (
    b'<?xml version="1.0"?>\n<!DOCTYPE tasks [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    b"<tasks><task><taskId>&x;</taskId></task></tasks>"
)
NO_CONTINUE = sample("protocol_11_3_vm_reconfigure.xml").replace(b'rel="continue"', b'rel="something-else"')

BAD_BODIES = [
    pytest.param(b"this is not a payload", "text/plain", id="garbage-text"),
    pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00", XML_TYPE, id="binary-as-xml"),
    pytest.param(b"<tasks><task>", XML_TYPE, id="truncated-xml"),
    pytest.param(b'{"collection": [', JSON_TYPE, id="truncated-json"),
    pytest.param(b"<users><user/></users>", XML_TYPE, id="xml-of-another-shape"),
    pytest.param(b'{"name": "not a task"}', JSON_TYPE, id="json-of-another-shape"),
    pytest.param(b"[1, 2, 3]", JSON_TYPE, id="json-list"),
    pytest.param(NO_CONTINUE, XML_TYPE, id="task-without-continue-link"),
    pytest.param(DOCTYPE, XML_TYPE, id="xml-with-dtd-and-entity"),
    pytest.param(EXTERNAL, "application/xml", id="xml-with-external-entity"),
    pytest.param(b"", XML_TYPE, id="empty"),
    pytest.param(b"", None, id="empty-without-content-type"),
]


@pytest.mark.parametrize(("body", "content_type"), BAD_BODIES)
async def test_an_unreadable_body_is_refused_with_400_and_a_sentence(
    connector: Running, body: bytes, content_type: str | None
) -> None:
    response = await post(connector, "/callback", body, content_type)

    assert_refusal(response, 400)
    assert await stored_tasks(connector) == []


async def test_an_image_is_refused_with_415(connector: Running) -> None:
    response = await post(connector, "/callback", b"\x89PNG\r\n\x1a\n", "image/png")

    assert "image/png" in assert_refusal(response, 415)
    assert await stored_tasks(connector) == []


@pytest_asyncio.fixture
async def small_body_connector(app_factory: AppFactory) -> AsyncIterator[App]:
    """The app with a `server.max_body` of 2,000 bytes: the vApp sample (several KB) is over it."""
    async with app_factory(server={"max_body": 2000}) as running:
        yield running


async def test_a_body_over_max_body_with_its_length_declared_is_refused_with_413(
    small_body_connector: Running,
) -> None:
    body = sample("protocol_11_4_vapp_deploy.xml")
    assert len(body) > 2000

    response = await post(small_body_connector, "/callback", body)

    assert "2,000" in assert_refusal(response, 413)
    assert await stored_tasks(small_body_connector) == []


async def test_a_chunked_body_over_max_body_is_refused_with_413_while_streaming(
    small_body_connector: Running,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"<!-- padding padding padding padding padding padding padding padding -->\n"

    async with small_body_connector.client() as client:
        response = await client.post("/callback", content=chunks(), headers={"content-type": XML_TYPE})

    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert "2,000" in assert_refusal(response, 413)
    assert await stored_tasks(small_body_connector) == []


async def test_a_chunked_body_under_max_body_is_stored(small_body_connector: App) -> None:
    body = sample("protocol_11_3_vm_reconfigure.json")
    assert len(body) < 2000

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    async with small_body_connector.client() as client:
        response = await client.post("/callback", content=chunks(), headers={"content-type": JSON_TYPE})

    assert response.status_code == 200, response.text
    assert response.json()["tasks"] == [RECONFIGURE_ID]


async def test_get_on_the_callback_is_405(connector: Running) -> None:
    async with connector.client() as client:
        response = await client.get("/callback")

    assert "POST" in assert_refusal(response, 405)
    assert response.headers["allow"] == "POST"


# --- server.callback_token -----------------------------------------------------------------------------

TOKEN = "s3cret-callback-token"


@pytest_asyncio.fixture
async def token_connector(app_factory: AppFactory) -> AsyncIterator[App]:
    async with app_factory(server={"callback_token": TOKEN}) as running:
        yield running


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        pytest.param(f"/callback/{TOKEN}", {}, id="path-segment"),
        pytest.param("/callback", {"params": {"token": TOKEN}}, id="query-parameter"),
        pytest.param("/callback", {"headers": {"authorization": f"Bearer {TOKEN}"}}, id="bearer-header"),
    ],
)
async def test_the_callback_token_is_accepted_in_each_place(
    token_connector: Running, path: str, extra: dict[str, Any]
) -> None:
    response = await post(token_connector, path, sample("protocol_11_1_vm_deploy.xml"), **extra)

    assert response.status_code == 200, response.text
    assert await stored_tasks(token_connector) == [DEPLOY_ID]


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        pytest.param("/callback", {}, id="missing"),
        pytest.param("/callback/wrong-token", {}, id="wrong-path-segment"),
        pytest.param("/callback", {"params": {"token": "wrong"}}, id="wrong-query-parameter"),
        pytest.param("/callback", {"headers": {"authorization": "Bearer wrong"}}, id="wrong-bearer"),
        pytest.param("/callback", {"headers": {"authorization": f"Basic {TOKEN}"}}, id="not-a-bearer"),
        pytest.param("/callback", {"params": {"token": ""}}, id="empty-query-parameter"),
    ],
)
async def test_a_missing_or_wrong_callback_token_is_refused_with_403(
    token_connector: Running, path: str, extra: dict[str, Any]
) -> None:
    response = await post(token_connector, path, sample("protocol_11_1_vm_deploy.xml"), **extra)

    message = assert_refusal(response, 403)
    assert TOKEN not in message
    assert await stored_tasks(token_connector) == []


async def test_a_token_path_without_a_configured_token_is_404(connector: Running) -> None:
    response = await post(connector, "/callback/anything", sample("protocol_11_1_vm_deploy.xml"))

    assert "/callback" in assert_refusal(response, 404)
    assert await stored_tasks(connector) == []


# --- server.callback_allow -----------------------------------------------------------------------------


async def test_a_source_inside_callback_allow_is_accepted(app_factory: AppFactory) -> None:
    async with app_factory(server={"callback_allow": ["127.0.0.0/8"]}) as connector:
        response = await post(connector, "/callback", sample("protocol_11_1_vm_deploy.xml"))

        assert response.status_code == 200, response.text


async def test_a_source_outside_callback_allow_is_refused_with_403(
    app_factory: AppFactory,
) -> None:
    async with app_factory(server={"callback_allow": ["10.0.0.0/8"]}) as connector:
        response = await post(connector, "/callback", sample("protocol_11_1_vm_deploy.xml"))

        assert "127.0.0.1" in assert_refusal(response, 403)
        assert await stored_tasks(connector) == []


async def stored_sources(connector: Running) -> list[str | None]:
    async with await Store.open(connector.settings.database.url, migrate=False) as store:
        tasks = await store.list_tasks()
        requests = [await store.get_request(task.request_id) for task in tasks]
        return [request.source for request in requests if request is not None]


SPOOFED = {"x-forwarded-for": "10.1.2.3", "x-forwarded-proto": "https"}


@pytest.fixture
def attacked(connector_factory: ConnectorFactory, migrated_database_url: str) -> Iterator[Connector]:
    """A connector in the default configuration on each database: every attack is tried on both."""
    with connector_factory(database_url=migrated_database_url) as running:
        yield running


async def test_a_forwarded_for_header_does_not_get_a_callback_past_callback_allow(
    connector_factory: ConnectorFactory, migrated_database_url: str
) -> None:
    # The attack: from 127.0.0.1, claim to be forwarding for an allowed Abiquo address.
    with connector_factory(
        database_url=migrated_database_url, server={"callback_allow": ["10.0.0.0/8"]}
    ) as connector:
        response = await post(connector, "/callback", sample("protocol_11_1_vm_deploy.xml"), headers=SPOOFED)

        assert "127.0.0.1" in assert_refusal(response, 403)
        assert await stored_tasks(connector) == []


async def test_a_forwarded_for_header_is_not_stored_as_the_callbacks_source(attacked: Connector) -> None:
    response = await post(attacked, "/callback", sample("protocol_11_1_vm_deploy.xml"), headers=SPOOFED)

    assert response.status_code == 200, response.text
    assert await stored_sources(attacked) == ["127.0.0.1"]


async def test_a_trusted_proxy_is_believed_about_whom_it_forwards_for(
    connector_factory: ConnectorFactory, migrated_database_url: str
) -> None:
    settings = {"callback_allow": ["10.0.0.0/8"], "trusted_proxies": ["127.0.0.1/32"]}
    with connector_factory(database_url=migrated_database_url, server=settings) as connector:
        response = await post(connector, "/callback", sample("protocol_11_1_vm_deploy.xml"), headers=SPOOFED)

        assert response.status_code == 200, response.text
        assert await stored_sources(connector) == ["10.1.2.3"]


# --- input that must not stall the server or make it fail ----------------------------------------------


async def healthz_while(connector: Connector, work: Any) -> tuple[Any, list[int]]:
    """Run `work` (a coroutine) while another client asks /healthz every 20 ms; its result and the
    health checks' statuses. How fast they were is the benchmark's business, not the test's."""
    statuses: list[int] = []
    done = asyncio.Event()

    async def probe() -> None:
        async with httpx2.AsyncClient(verify=CLIENT_TLS, timeout=30) as client:
            while not done.is_set():
                statuses.append((await client.get(f"{connector.url}/healthz")).status_code)
                await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    try:
        result = await work
        await asyncio.sleep(0.2)
    finally:
        done.set()
        await prober
    return result, statuses


async def test_a_lone_surrogate_as_a_task_id_is_refused_with_400_while_health_checks_answer(
    attacked: Connector,
) -> None:
    body = sample("protocol_11_2_vm_deploy.json").replace(DEPLOY_ID.encode(), b"\\ud800", 1)

    response, health = await healthz_while(attacked, post(attacked, "/callback", body, JSON_TYPE))

    assert "unpaired surrogate" in assert_refusal(response, 400)
    assert health and set(health) == {200}
    assert await stored_tasks(attacked) == []


async def test_a_task_id_holding_a_comma_is_refused_with_400(attacked: Connector) -> None:
    body = sample("protocol_11_2_vm_deploy.json").replace(DEPLOY_ID.encode(), b"a,b", 1)

    response = await post(attacked, "/callback", body, JSON_TYPE)

    assert "not an Abiquo task id" in assert_refusal(response, 400)
    assert await stored_tasks(attacked) == []


def many_tasks(count: int) -> bytes:
    """A 1 MB callback of `count` small tasks, as the attacker sent it."""
    tasks = [
        {
            "taskId": f"t{n}",
            "type": "DEPLOY",
            "links": [{"rel": "continue", "href": "c"}, {"rel": "cancel", "href": "x"}],
        }
        for n in range(count)
    ]
    return json.dumps({"collection": tasks}, separators=(",", ":")).encode()


async def test_a_ten_thousand_task_callback_is_refused_with_413_while_health_checks_answer(
    attacked: Connector,
) -> None:
    body = many_tasks(10_000)
    assert len(body) < attacked.settings.server.max_body  # under the size limit: the count decides

    response, health = await healthz_while(attacked, post(attacked, "/callback", body, JSON_TYPE))

    message = assert_refusal(response, 413)
    assert "10,000 tasks" in message and "server.max_tasks" in message
    assert health and set(health) == {200}
    assert await stored_tasks(attacked) == []


async def test_a_callback_at_the_task_limit_is_stored_while_health_checks_answer(
    attacked: Connector,
) -> None:
    body = many_tasks(attacked.settings.server.max_tasks)

    response, health = await healthz_while(attacked, post(attacked, "/callback", body, JSON_TYPE))

    assert response.status_code == 200, response.text
    assert len(response.json()["tasks"]) == attacked.settings.server.max_tasks
    assert health and set(health) == {200}


# --- the database unavailable ----------------------------------------------------------------------------


async def test_a_callback_is_refused_with_503_while_another_process_locks_the_sqlite_file(
    app_factory: AppFactory,
) -> None:
    async with app_factory(database={"busy_timeout": 0.3}) as connector:  # waits that long, then 503
        path = make_url(connector.settings.database.url).database
        assert path is not None
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            response = await post(connector, "/callback", sample("protocol_11_1_vm_deploy.xml"))
        finally:
            holder.close()

        message = assert_refusal(response, 503)
        assert "database is not available" in message
        assert str(path) not in message  # where the database lives is for the log, not for callers
        assert await stored_tasks(connector) == []


@pytest.mark.postgres
@pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True)
async def test_a_callback_is_refused_with_503_when_the_postgresql_database_is_gone(
    connector_factory: ConnectorFactory, migrated_database_url: str, postgres_server: str
) -> None:
    with connector_factory(database_url=migrated_database_url) as connector:
        await asyncio.to_thread(drop_database, postgres_server, migrated_database_url)

        response = await post(connector, "/callback", sample("protocol_11_1_vm_deploy.xml"))

        message = assert_refusal(response, 503)
        assert "database is not available" in message
        assert make_url(migrated_database_url).database not in message
