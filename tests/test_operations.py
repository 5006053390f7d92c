"""What operators see: `/readyz` per dependency, the metrics `/metrics` adds, JSON log lines with their
ids, and no secret in any line (web/health.py, metrics.py, logs.py, the worker's heartbeat).

The connector runs in-process (conftest `app`), against the simulator, the session's SMTP inbox and a
real SQLite store; the tests that need a database to vanish use PostgreSQL.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from abiquo_workflow import logs
from abiquo_workflow.config import LogSettings, Settings, build_settings
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.runtime import web_lifespan
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store import Store
from abiquo_workflow.web.app import create_app
from abiquo_workflow.web.state import Services
from abiquo_workflow.worker import HEARTBEAT_STALE_AFTER, Worker
from tests.conftest import (
    CLIENT_TLS,
    TEST_SECRET_KEY,
    App,
    AppFactory,
    Templates,
    connector_settings,
    drop_database,
    free_port,
)
from tests.loop_support import confirm, task_link, to, wait_for_calls, wait_until, wait_until_idle

ALICE = "alice.smith@acme.example"


def services_of(app: App) -> Services:
    services: Services = app.app.state.services
    return services


async def get(app: App, path: str, **kw: Any) -> httpx2.Response:
    async with app.client() as client:
        return await client.get(path, **kw)


async def held_task(app: App) -> str:
    """A deploy of VM 1 held by the simulator, triaged, and emailed to its three approvers."""
    result = await app.request(action="deploy", vm=1)
    await app.inbox.wait_for(3)
    return str(result["tasks"][0]["task_id"])


async def decide_by_email(app: App, task_id: str) -> None:
    """Alice opens her email's Accept link and confirms; the continue reaches the simulator."""
    link = task_link(to(app.inbox.messages, ALICE)[0], "/accept", task_id)
    async with app.client() as client:
        assert (await confirm(client, link)).status_code == 200
    await wait_for_calls(app, 1)  # type: ignore[arg-type]
    await wait_until_idle(services_of(app).store)  # Abiquo's answer recorded, the requester told


# --- /readyz ---------------------------------------------------------------------------------------------


async def test_readyz_is_200_with_each_check_ok_when_the_database_the_worker_and_abiquo_answer(
    app: App,
) -> None:
    response = await get(app, "/readyz")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"], body["worker"], body["abiquo"]) == ("ok", "ok", "ok", "ok")
    assert set(body["details"]) == {"database", "worker", "abiquo"}
    assert all(sentence[:1].isupper() and sentence.endswith(".") for sentence in body["details"].values())
    assert "error" not in body


@pytest.mark.postgres
@pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True)
async def test_readyz_is_503_naming_the_database_but_not_where_it_is_when_it_is_unreachable(
    app_factory: AppFactory, migrated_database_url: str, postgres_server: str
) -> None:
    async with app_factory(database_url=migrated_database_url) as app:
        drop_database(postgres_server, migrated_database_url)
        response = await get(app, "/readyz")

    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database"]) == ("unavailable", "unreachable")
    assert body["error"] == body["details"]["database"]
    assert body["error"].startswith("The database is not answering")
    url = make_url(migrated_database_url)
    assert str(url.database) not in response.text and str(url.host) not in response.text


async def test_readyz_is_503_when_the_worker_of_the_process_has_stopped(app: App) -> None:
    worker = services_of(app).worker
    worker.stop()
    await wait_until(lambda: worker.stopped, "the worker to stop")

    response = await get(app, "/readyz")

    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["worker"], body["database"]) == ("unavailable", "stopped", "ok")
    assert "stopped" in body["error"]


async def test_readyz_is_200_reporting_abiquo_unreachable_when_abiquo_is_down(
    app_factory: AppFactory,
) -> None:
    nowhere = free_port()  # nothing listens there: Abiquo is down
    async with app_factory(abiquo={"api_url": f"http://127.0.0.1:{nowhere}/api"}) as app:
        response = await get(app, "/readyz")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["abiquo"], body["database"], body["worker"]) == (
        "ok",
        "unreachable",
        "ok",
        "ok",
    )
    assert "Abiquo is not answering" in body["details"]["abiquo"]
    assert str(nowhere) not in response.text and "127.0.0.1" not in response.text


async def test_readyz_asks_abiquo_once_for_many_checks_in_a_row(app: App) -> None:
    calls_before = len(versions_asked(app.simulator))

    for _ in range(5):
        assert (await get(app, "/readyz")).json()["abiquo"] == "ok"

    assert len(versions_asked(app.simulator)) - calls_before == 1


def versions_asked(simulator: SimulatorServer) -> list[object]:
    return [call for call in simulator.simulator.api_calls() if call.path.endswith("/version")]


def set_schema_revision(app: App, revision: str) -> None:
    """Write Alembic's record of the schema's revision behind the running app's back."""
    path = make_url(app.settings.database.url).database
    with contextlib.closing(sqlite3.connect(str(path))) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))


async def test_readyz_is_503_saying_to_migrate_when_the_schema_is_older_than_this_version(app: App) -> None:
    set_schema_revision(app, "0003")

    response = await get(app, "/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "not_migrated"
    assert "run `abiquo-workflow migrate`" in body["error"]


async def test_readyz_stays_200_reporting_a_schema_a_newer_release_migrated(app: App) -> None:
    set_schema_revision(app, "9999")

    response = await get(app, "/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["database"] == "newer_schema"
    assert "newer release" in body["details"]["database"]


# --- /readyz of `serve --no-worker`: the workers are other processes, beating in the database -----------


@pytest.fixture
async def web_only(
    tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox, templates: Templates
) -> AsyncIterator[App]:
    """The app as `serve --no-worker` runs it: no worker in this process."""
    settings = connector_settings(
        port=free_port(),
        database_url=templates.sqlite_copy(tmp_path / "web-only.db"),
        simulator=simulator,
        inbox=smtp_inbox,
        sections={},
    )
    app = create_app(settings, lifespan=web_lifespan(settings, start_worker=False))
    async with app.router.lifespan_context(app):
        yield App(app, settings, simulator, smtp_inbox)


@contextlib.asynccontextmanager
async def other_store(app: App, clock: Callable[[], datetime] | None = None) -> AsyncIterator[Store]:
    """The app's database opened by "another process" (another Store), with its own clock if given."""
    options: dict[str, Any] = {"clock": clock} if clock is not None else {}
    async with await Store.open(app.settings.database.url, migrate=False, **options) as store:
        yield store


async def test_readyz_without_a_worker_here_is_200_while_a_worker_process_beats(web_only: App) -> None:
    async with other_store(web_only) as store:
        worker = Worker(store.queue, {}, settings=web_only.settings.worker)
        running = worker.start()
        try:
            await wait_until(lambda: worker.since_beat() is not None, "the worker's first beat")
            response = await get(web_only, "/readyz")
        finally:
            worker.stop()
            await running

    assert response.status_code == 200
    body = response.json()
    assert body["worker"] == "ok"
    assert "1 worker beat" in body["details"]["worker"]


async def test_readyz_without_a_worker_here_is_503_when_no_worker_beat_lately(web_only: App) -> None:
    long_ago = datetime.now(UTC) - timedelta(seconds=10 * HEARTBEAT_STALE_AFTER)
    async with other_store(web_only, clock=lambda: long_ago) as store:
        await store.queue.heartbeat("elsewhere:1:1", started_at=long_ago)  # then it died, unannounced

    response = await get(web_only, "/readyz")

    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["worker"]) == ("unavailable", "not_beating")
    assert "no worker has beaten in the database for" in body["error"]


async def test_readyz_without_a_worker_here_is_503_once_the_last_worker_has_stopped(web_only: App) -> None:
    async with other_store(web_only) as store:
        worker = Worker(store.queue, {}, settings=web_only.settings.worker)
        running = worker.start()
        await wait_until(lambda: worker.since_beat() is not None, "the worker's first beat")
        worker.stop()
        await running  # it signs off

    response = await get(web_only, "/readyz")

    assert response.status_code == 503
    assert response.json()["worker"] == "not_beating"


# --- /metrics --------------------------------------------------------------------------------------------


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text, or None when there is no such sample."""
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def total(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels (0 when none): a histogram's count over its
    other labels, say."""
    return sum(
        float(found.value)
        for family in text_string_to_metric_families(metrics)
        for found in family.samples
        if found.name == name and all(found.labels.get(k) == v for k, v in labels.items())
    )


async def scrape(app: App) -> str:
    response = await get(app, "/metrics")
    assert response.status_code == 200
    return response.text


async def test_metrics_after_a_decided_request_show_it_pending_then_decided_and_its_latencies(
    app: App,
) -> None:
    before = await scrape(app)
    task_id = await held_task(app)
    pending = await scrape(app)

    await decide_by_email(app, task_id)
    decided = await scrape(app)

    assert sample(before, "awf_pending_tasks") == 0
    assert sample(pending, "awf_pending_tasks") == 1
    oldest = sample(pending, "awf_oldest_pending_task_age_seconds")
    assert oldest is not None and 0 <= oldest < 60
    assert sample(decided, "awf_pending_tasks") == 0
    assert sample(decided, "awf_oldest_pending_task_age_seconds") == 0

    def grew(name: str, **labels: str) -> float:
        return total(decided, name, **labels) - total(before, name, **labels)

    assert grew("awf_time_to_decision_seconds_count", decided_by="approver") == 1
    assert grew("awf_abiquo_request_duration_seconds_count", method="GET", status_class="2xx") >= 1
    assert grew("awf_abiquo_request_duration_seconds_count", method="POST", status_class="2xx") == 1
    assert grew("awf_smtp_send_duration_seconds_count", outcome="sent") >= 3
    assert grew("awf_time_to_decision_seconds_sum", decided_by="approver") > 0


async def test_metrics_count_unfinished_jobs_for_every_kind_and_state(app: App) -> None:
    await held_task(app)

    metrics = await scrape(app)

    kinds = set(services_of(app).worker.handlers)
    for kind in kinds:
        for state in ("queued", "running", "dead"):
            value = sample(metrics, "awf_jobs", kind=kind, state=state)
            assert value is not None and value >= 0 and value == int(value), (kind, state, value)
    assert sample(metrics, "awf_jobs", kind="triage", state="dead") == 0
    assert sample(metrics, "awf_jobs", kind="deliver", state="done") is None  # done jobs only pile up


async def test_a_delivery_retried_after_abiquo_failed_is_counted_by_kind(app: App) -> None:
    task_id = await held_task(app)
    before = await scrape(app)
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as control:
        fault = {"count": 3, "status": 503, "match": "/action/continue"}  # every attempt of one run
        assert (await control.post(f"{app.simulator.url}/_sim/faults", json=fault)).status_code == 201

    await decide_by_email(app, task_id)
    after = await scrape(app)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("awf_job_retries_total", kind="deliver") == 1
    assert grew("awf_abiquo_request_duration_seconds_count", method="POST", status_class="5xx") == 3


# --- logs --------------------------------------------------------------------------------------------------


@pytest.fixture
def captured_logs() -> Iterator[Callable[[Settings], io.StringIO]]:
    """`captured_logs(settings)`: log as `settings` say, at DEBUG, into a buffer that is returned; the
    logging of the tests is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def capture(settings: Settings) -> io.StringIO:
        buffer = io.StringIO()
        logs.configure(settings, verbose=True, stream=buffer)
        return buffer

    yield capture
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def with_json_log(settings: Settings) -> Settings:
    return settings.model_copy(update={"log": LogSettings(format="json")})


async def test_json_log_lines_parse_and_carry_the_request_and_task_ids_where_they_have_them(
    app: App, captured_logs: Callable[[Settings], io.StringIO]
) -> None:
    buffer = captured_logs(with_json_log(app.settings))
    task_id = await held_task(app)
    link = task_link(to(app.inbox.messages, ALICE)[0], "/accept", task_id)
    async with app.client() as client:
        assert (await client.post(link.url)).status_code == 200  # the link's own URL, its task in the query
    await wait_for_calls(app, 1)  # type: ignore[arg-type]
    await wait_until_idle(services_of(app).store)  # the delivery's own lines come after Abiquo's answer
    request_id = str((await services_of(app).store.get_task(task_id)).request_id)  # type: ignore[union-attr]

    lines = json_lines(buffer)

    assert all({"timestamp", "level", "event"} <= set(line) for line in lines)
    triage = [line for line in lines if line.get("kind") == "triage"]
    assert triage and all(line["request_id"] == request_id for line in triage)
    assert any(line["event"] == "abiquo.request" for line in triage)  # logged in the client, bound above
    delivery = [line for line in lines if line.get("kind") == "deliver"]
    assert delivery and all(line["task_id"] == task_id for line in delivery)
    decision_page = [line for line in lines if "http_request_id" in line and line.get("task_id") == task_id]
    assert decision_page  # the approver check's reads from Abiquo while Alice's POST is handled


async def test_a_sane_x_request_id_is_kept_on_the_answer_and_another_is_replaced(app: App) -> None:
    kept = await get(app, "/healthz", headers={"x-request-id": "lb-7f3a.42"})
    replaced = await get(app, "/healthz", headers={"x-request-id": "bad id, with spaces"})
    made = await get(app, "/healthz")

    assert kept.headers["x-request-id"] == "lb-7f3a.42"
    assert replaced.headers["x-request-id"] != "bad id, with spaces"
    assert len(replaced.headers["x-request-id"]) == 32
    assert len(made.headers["x-request-id"]) == 32
    assert made.headers["x-request-id"] != replaced.headers["x-request-id"]


async def test_a_line_logged_while_a_request_is_handled_carries_its_http_request_id(
    app: App, captured_logs: Callable[[Settings], io.StringIO]
) -> None:
    buffer = captured_logs(with_json_log(app.settings))

    response = await get(app, "/no/such/page", headers={"x-request-id": "trace-123"})
    structlog.stdlib.get_logger("test").info("after.the.request")

    assert response.status_code == 404
    lines = json_lines(buffer)
    [after] = [line for line in lines if line["event"] == "after.the.request"]
    assert "http_request_id" not in after  # the binding ended with the request


def redacted(event: Mapping[str, Any], secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    return dict(logs.Redactor(secrets)(None, "info", dict(event)))


@pytest.mark.parametrize(
    "field", ["token", "callback_token", "password", "smtp_password", "secret_key", "Authorization"]
)
def test_a_field_named_for_a_secret_is_redacted_whatever_it_holds(field: str) -> None:
    assert redacted({"event": "x", field: "s3cr3t-value"})[field] == "***"


def test_secret_fields_are_redacted_inside_dicts_and_lists_too() -> None:
    event = redacted({"event": "x", "headers": {"Authorization": "Basic YWJj"}, "items": [{"token": "t"}]})

    assert event["headers"] == {"Authorization": "***"}
    assert event["items"] == [{"token": "***"}]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "GET https://wf.example/accept?task=t-1&token=eyJhbGciOi.abc-_123",
            "GET https://wf.example/accept?task=t-1&token=***",
        ),
        ("/multiple?token=abc&action=accept", "/multiple?token=***&action=accept"),
        ("POST /callback/Zq9-secret-path-token HTTP/1.1", "POST /callback/*** HTTP/1.1"),
        ("https://admin:xabiquo@abiquo.example/api", "https://***@abiquo.example/api"),
        ("Authorization: Bearer abcdef123456", "Authorization: Bearer ***"),
        ("nothing to hide at /accept?task=t-1", "nothing to hide at /accept?task=t-1"),
    ],
)
def test_tokens_and_credentials_in_logged_text_are_redacted(text: str, shown: str) -> None:
    assert redacted({"event": "x", "url": text})["url"] == shown
    assert redacted({"event": text})["event"] == shown


def test_configured_secrets_are_redacted_wherever_they_appear() -> None:
    event = redacted(
        {"event": "login failed for pw=hunter22-long", "detail": ["said hunter22-long"]},
        secrets=("hunter22-long",),
    )

    assert event == {"event": "login failed for pw=***", "detail": ["said ***"]}


def test_a_traceback_is_logged_as_plain_text_with_its_secrets_redacted(
    captured_logs: Callable[[Settings], io.StringIO],
) -> None:
    buffer = captured_logs(with_json_log(Settings()))
    link = "https://wf.example/accept?task=t&token=leaky-token-value"
    try:
        raise RuntimeError(f"could not open {link}")
    except RuntimeError:
        structlog.stdlib.get_logger("test").exception("it.failed")

    [line] = [line for line in json_lines(buffer) if line["event"] == "it.failed"]
    assert "RuntimeError: could not open" in line["exception"]
    assert "leaky-token-value" not in buffer.getvalue()


def test_library_lines_are_json_lines_too(captured_logs: Callable[[Settings], io.StringIO]) -> None:
    buffer = captured_logs(with_json_log(Settings()))

    logging.getLogger("uvicorn.error").warning("Started server at %s", "http://u:pw-secret@host/callback/tok")

    # Only this line: the session's simulator and inbox, serving in threads of this process, log too.
    [line] = [line for line in json_lines(buffer) if str(line["event"]).startswith("Started server")]
    assert line["logger"] == "uvicorn.error" and line["level"] == "warning"
    assert line["event"] == "Started server at http://***@host/callback/***"


SMTP_PASSWORD = "smtp-relay-password-31"
CALLBACK_TOKEN = "callback-token-7f8e9d"


async def test_a_whole_decision_logs_no_link_token_and_no_password(
    app_factory: AppFactory,
    simulator: SimulatorServer,
    captured_logs: Callable[[Settings], io.StringIO],
) -> None:
    with Inbox(auth=("relay-user", SMTP_PASSWORD)) as relay:
        sections: dict[str, Any] = {
            "server": {"callback_token": CALLBACK_TOKEN},
            "mail": {"smtp_port": relay.port, "smtp_user": "relay-user", "smtp_password": SMTP_PASSWORD},
            "log": {"format": "json"},
        }
        async with app_factory(**sections) as app:
            buffer = captured_logs(app.settings)
            held = await simulator.simulator.request(
                "deploy",
                vm=1,
                callback_url=f"{app.url}/callback/{CALLBACK_TOKEN}",
                transport=httpx2.ASGITransport(app=app.app),
            )
            assert held.callback.status == 200, held.callback
            task_id = held.to_json()["tasks"][0]["task_id"]
            approvals = await relay.wait_for(3)
            link = task_link(to(approvals, ALICE)[0], "/accept", task_id)
            async with app.client() as client:
                assert (await confirm(client, link)).status_code == 200
                # A forged link and a wrong callback token are refused, and logged as refused.
                await client.get(link.url.replace(link.params["token"], link.params["token"][:-4] + "AAAA"))
                await client.post(f"/callback/{CALLBACK_TOKEN}x", content=b"<tasks/>")
            await wait_for_calls(app, 1)  # type: ignore[arg-type]
            await relay.wait_for(4)  # the requester's email

    log = buffer.getvalue()
    assert len(log.splitlines()) > 20 and "abiquo.request" in log  # DEBUG: every Abiquo call logged
    basic = base64.b64encode(b"admin:xabiquo").decode()
    for secret in (link.params["token"], CALLBACK_TOKEN, SMTP_PASSWORD, "xabiquo", basic, TEST_SECRET_KEY):
        assert secret not in log, secret


def test_log_format_defaults_to_json_off_a_terminal_and_to_console_on_one() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolved_format(LogSettings(), io.StringIO()) == "json"
    assert logs.resolved_format(LogSettings(), Terminal()) == "console"
    assert logs.resolved_format(LogSettings(format="console"), io.StringIO()) == "console"
    assert logs.resolved_format(LogSettings(format="json"), Terminal()) == "json"


def test_the_log_section_takes_a_format_and_a_level_and_refuses_others() -> None:
    settings = build_settings({"log": {"format": "JSON", "level": "warning"}}, environ={})
    assert (settings.log.format, settings.log.level) == ("json", "warning")
    with pytest.raises(Exception, match=r"log\.format"):
        build_settings({"log": {"format": "xml"}}, environ={})


def test_console_lines_are_for_people_and_redacted_too(
    captured_logs: Callable[[Settings], io.StringIO],
) -> None:
    buffer = captured_logs(Settings(log=LogSettings(format="console")))

    structlog.stdlib.get_logger("test").info("link.opened", url="/accept?task=t&token=abc123")

    text = buffer.getvalue()
    assert "link.opened" in text and "token=***" in text and "abc123" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_the_secrets_of_the_settings_are_what_no_line_may_show() -> None:
    settings = build_settings(
        {
            "server": {"secret_key": TEST_SECRET_KEY, "callback_token": CALLBACK_TOKEN},
            "abiquo": {"password": "abiquo-pw"},
            "mail": {"smtp_password": SMTP_PASSWORD},
            "database": {"url": "postgresql://awf:db-pass-99@db.internal/awf"},
        },
        environ={},
    )

    assert set(logs.secrets_of(settings)) == {
        TEST_SECRET_KEY,
        CALLBACK_TOKEN,
        "abiquo-pw",
        SMTP_PASSWORD,
        "db-pass-99",
    }
