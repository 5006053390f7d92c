"""Fixtures for the real servers the tests run against: the Abiquo simulator, an SMTP inbox
(aiosmtpd), SQLite and PostgreSQL databases, and Debian's Chromium."""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import psycopg
import pytest
import pytest_asyncio
import stamina
from fastapi import FastAPI
from psycopg import sql
from sqlalchemy.engine import make_url

from abiquo_simulator import Simulator
from abiquo_workflow.config import Settings, build_settings
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.runtime import Runtime, open_runtime, web_lifespan
from abiquo_workflow.servers import BackgroundServer
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store import Clock, Store, migrate, utc_now
from abiquo_workflow.store.schema import HEAD_REVISION
from abiquo_workflow.web.app import create_app

if TYPE_CHECKING:
    from playwright.async_api import Browser


#: `make test-fast` sets AWF_TEST_FAST=1: the property tests then try a tenth as many examples, and
#: the tests that repeat a race to catch it repeat it once.
FAST = os.environ.get("AWF_TEST_FAST") == "1"

#: The garbage collector's thresholds for the test processes (Python's default: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 20)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fewer, cheaper garbage collections while the tests run.

    A test process holds what every test file imports (SQLAlchemy, FastAPI, Hypothesis, Playwright):
    at Python's default thresholds it collected every 700 new objects and walked all of that on each
    full collection, about a tenth of its time. Frozen after collection, those objects are no longer
    walked; with a first threshold of 50,000 the short-lived objects of a request are mostly freed
    before a collection sees them. The servers the tests start in subprocesses keep Python's defaults,
    as `serve` does.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: What every HTTP client a test makes verifies TLS with. Left to itself, httpx2 builds a new default
#: context for each client, reading the system's certificate store: about 25 ms of CPU a client, for
#: the several clients of each test and for each poll of a server that is starting.
CLIENT_TLS = ssl.create_default_context()


# --- mail: a real SMTP inbox, and Debian's Chromium ---------------------------------------------------

#: Debian's package of Chromium's headless shell (the old headless mode, which Playwright also uses by
#: default): the same Blink drawing the same pages, without the browser around it. It took a quarter
#: less CPU than the full `chromium` for the browser tests. The browser itself serves where the shell
#: is not installed.
CHROMIUM = shutil.which("chromium-headless-shell") or "/usr/bin/chromium"
# Each flag is needed here: root (no sandbox), no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def _session_inbox() -> Iterator[Inbox]:
    with Inbox() as inbox:
        yield inbox


@pytest.fixture
def smtp_inbox(_session_inbox: Inbox) -> Inbox:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 and a free port; read `smtp_inbox.port`,
    `smtp_inbox.messages`, `await smtp_inbox.wait_for(n)`. `stop()`/`start()` take it down and up on the
    same port; `refuse = True` answers 451. One server for the session, emptied and back up, accepting
    everything, before each test."""
    inbox = _session_inbox
    if not inbox.running:
        inbox.start()
    inbox.refuse = False
    inbox.reject_recipients.clear()
    inbox.clear()
    return inbox


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium_browser() -> AsyncIterator[Browser]:
    """Debian's Chromium through Playwright, launched once per session (never `playwright install`).

    Playwright objects belong to the loop that made them, so tests using this fixture must run in the
    session loop: mark them `@pytest.mark.asyncio(loop_scope="session")` (and `@pytest.mark.browser`).
    """
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


# --- store: an empty database per test, on SQLite and on PostgreSQL -----------------------------------

POSTGRES_URL_VARIABLE = "AWF_TEST_POSTGRES_URL"


def postgres_server_url() -> str:
    """The PostgreSQL server of $AWF_TEST_POSTGRES_URL, as a libpq URL; skips the test when it is unset."""
    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set")
    return make_url(server).set(drivername="postgresql").render_as_string(hide_password=False)


def drop_database(server: str, url: str) -> None:
    """Drop the database of `url` on `server`, even with connections open to it."""
    name = make_url(url).database
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def postgres_server() -> str:
    """The PostgreSQL server's URL (skips without AWF_TEST_POSTGRES_URL)."""
    return postgres_server_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of its own: a new SQLite file in tmp_path, or a new PostgreSQL
    database created on the server at $AWF_TEST_POSTGRES_URL and dropped afterwards (skipped when the
    variable is unset). Tests using it run once per database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'abiquo-workflow.db'}"
        return
    server = postgres_server_url()
    name = f"awf_test_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        drop_database(server, url)


#: Emptied between tests: every table but Alembic's, and every sequence back to 1.
_EMPTY_EVERY_TABLE = """
DO $$
DECLARE name text;
BEGIN
  FOR name IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'
  LOOP EXECUTE format('DELETE FROM %I', name); END LOOP;
  FOR name IN SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'
  LOOP EXECUTE format('ALTER SEQUENCE %I RESTART', name); END LOOP;
END $$
"""


@dataclass
class Templates:
    """Databases migrated once per session, copied for each test that wants a migrated one: a file
    copy on SQLite, `CREATE DATABASE … TEMPLATE` on PostgreSQL (made the first time it is asked for).

    A PostgreSQL copy a test is done with is emptied and kept for the next test of this process
    (`give_back`): dropping a database costs PostgreSQL a checkpoint, about a second here, and
    deleting a few rows costs milliseconds. A copy whose schema the test changed, or dropped, is not
    reused."""

    folder: Path
    _postgres: str | None = None
    _spare: list[str] = field(default_factory=list)

    @property
    def sqlite(self) -> Path:
        path = self.folder / "template.db"
        if not path.exists():
            migrate(f"sqlite:///{path}")
        return path

    def sqlite_copy(self, path: Path) -> str:
        shutil.copyfile(self.sqlite, path)
        return f"sqlite:///{path}"

    def postgres_copy(self, server: str) -> str:
        if self._postgres is None:
            name = f"awf_template_{secrets.token_hex(6)}"
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            self._postgres = make_url(server).set(database=name).render_as_string(hide_password=False)
            migrate(self._postgres)
        name = f"awf_test_{secrets.token_hex(6)}"
        template = make_url(self._postgres).database
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return make_url(server).set(database=name).render_as_string(hide_password=False)

    def postgres_lease(self, server: str) -> str:
        """A migrated, empty PostgreSQL database of its own: a spare one when there is one."""
        return self._spare.pop() if self._spare else self.postgres_copy(server)

    def give_back(self, server: str, url: str) -> None:
        """Empty `url` and keep it for the next lease, or drop it when it cannot be reused as it is."""
        try:
            with psycopg.connect(url, autocommit=True) as database:
                database.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                [version] = database.execute("SELECT version_num FROM alembic_version").fetchone() or [None]
                if version != HEAD_REVISION:
                    raise psycopg.DataError(f"the test left the schema at {version}")
                database.execute(_EMPTY_EVERY_TABLE)
        except psycopg.OperationalError:
            return  # the test dropped it
        except psycopg.Error:
            drop_database(server, url)
            return
        self._spare.append(url)

    def drop(self) -> None:
        for url in [*self._spare, *([self._postgres] if self._postgres else [])]:
            drop_database(postgres_server_url(), url)


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Templates]:
    made = Templates(tmp_path_factory.mktemp("templates"))
    yield made
    made.drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def migrated_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, templates: Templates
) -> Iterator[str]:
    """Like `database_url`, but already at the newest schema (copied from a migrated template)."""
    if request.param == "sqlite":
        yield templates.sqlite_copy(tmp_path / "abiquo-workflow.db")
        return
    server = postgres_server_url()
    url = templates.postgres_lease(server)
    try:
        yield url
    finally:
        templates.give_back(server, url)


@pytest_asyncio.fixture
async def store(migrated_database_url: str) -> AsyncIterator[Store]:
    """An open, migrated Store on each database (SQLite and PostgreSQL)."""
    async with await Store.open(migrated_database_url) as opened:
        yield opened


#: When a `clocked` store's clock starts.
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass
class SetClock:
    """A clock the test sets: what the store stamps on the rows it writes."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class ClockedStore:
    store: Store
    clock: SetClock


@pytest_asyncio.fixture
async def clocked(migrated_database_url: str) -> AsyncIterator[ClockedStore]:
    """An open, migrated Store on each database whose clock the test sets."""
    clock = SetClock()
    async with await Store.open(migrated_database_url, clock=clock) as opened:
        yield ClockedStore(opened, clock)


# --- abiquo: the simulator, with a fresh seeded world per test -----------------------------------------


@pytest.fixture(scope="session")
def _session_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(Simulator()) as server:
        yield server


@pytest.fixture
def simulator(_session_simulator: SimulatorServer) -> SimulatorServer:
    """The Abiquo simulator on 127.0.0.1 and a free port, its world freshly seeded. Read `simulator.url`
    (control surface under /_sim, page at /), `simulator.api_url` (the API; admin / xabiquo) and
    `simulator.simulator` (the in-process state: settings, tasks(), `await request(...)`). One server
    for the session, reset before each test: seeded world, no tasks, calls or faults, default settings."""
    state = _session_simulator.simulator
    state.wait_until_quiet()  # a call an earlier test gave up on must not land in this test's log
    state.reset()
    state.update_settings(SIMULATOR_DEFAULTS)
    return _session_simulator


#: The settings a new `Simulator()` starts with.
SIMULATOR_DEFAULTS: dict[str, object] = {"callback_url": None, "style": "json", "mode": "3.x", "latency": 0.0}


class MovableClock:
    """The wall clock, plus however far a test has moved it on (`advance`): deadlines and reminders fall
    due without sleeping, while everything else (leases, polls) keeps running in real time."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


# --- the connector itself, served for real, wired to the simulator and the inbox -------------------------

TEST_SECRET_KEY = "test-secret-key-not-for-production"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, Mapping) and key in merged else value
    return merged


@dataclass
class Connector:
    """A running connector (`serve`, worker included) and the servers around it."""

    url: str
    settings: Settings
    simulator: SimulatorServer
    inbox: Inbox

    async def request(self, **body: Any) -> dict[str, Any]:
        """Ask the simulator to hold tasks and POST the callback to this connector (`/_sim/requests`)."""
        async with httpx2.AsyncClient(verify=CLIENT_TLS) as client:
            response = await client.post(f"{self.simulator.url}/_sim/requests", json=body, timeout=30)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        assert result["callback"]["status"] == 200, result["callback"]
        return result

    def decision_calls(self) -> list[dict[str, Any]]:
        """The continue/cancel calls the simulated Abiquo received, oldest first."""
        return [call.to_json() for call in self.simulator.simulator.decision_calls()]

    def client(self) -> httpx2.AsyncClient:
        """An HTTP client for this connector: `async with connector.client() as client:`."""
        return httpx2.AsyncClient(verify=CLIENT_TLS, base_url=self.url, timeout=30)


ConnectorFactory = Callable[..., contextlib.AbstractContextManager[Connector]]


def connector_settings(
    *, port: int, database_url: str, simulator: SimulatorServer, inbox: Inbox, sections: Mapping[str, Any]
) -> Settings:
    """The connector's settings in tests: the simulator as Abiquo, the inbox as SMTP relay, fast
    retries; `sections` merged over them."""
    base: dict[str, Any] = {
        "server": {"bind": f"127.0.0.1:{port}", "secret_key": TEST_SECRET_KEY},
        "database": {"url": database_url},
        "abiquo": {"api_url": simulator.api_url, "retries": 2, "timeout": 5},
        "mail": {"smtp_host": "127.0.0.1", "smtp_port": inbox.port, "timeout": 2},
        "worker": {"retry_base_delay": 0.05, "retry_max_delay": 0.3, "max_attempts": 4, "lease": 5},
        # Off unless a test turns it on: a run at start would read the simulator behind the test's back.
        "reconcile": {"interval": 0},
    }
    return build_settings(_merge(base, sections), environ={})


@pytest.fixture
def connector_factory(
    tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox, templates: Templates
) -> Iterator[ConnectorFactory]:
    """Start connectors: `with connector_factory(database_url=..., policy={...}) as c:`. Keyword
    arguments other than `database_url` (a migrated database: `migrated_database_url`) are settings
    sections merged over the test defaults (SQLite in tmp_path, the simulator as Abiquo, the inbox as
    SMTP relay, fast retries)."""
    stamina.set_testing(True, attempts=3, cap=True)  # real retries, no sleeping between them

    @contextlib.contextmanager
    def start(
        database_url: str | None = None, clock: Clock = utc_now, **sections: Mapping[str, Any]
    ) -> Iterator[Connector]:
        port = free_port()
        settings = connector_settings(
            port=port,
            database_url=database_url or templates.sqlite_copy(tmp_path / "connector.db"),
            simulator=simulator,
            inbox=smtp_inbox,
            sections=sections,
        )
        simulator.simulator.update_settings({"callback_url": f"http://127.0.0.1:{port}/callback"})
        app = create_app(settings, lifespan=web_lifespan(settings, clock=clock))
        with BackgroundServer(app, port=port) as server:
            yield Connector(server.url, settings, simulator, smtp_inbox)

    yield start
    stamina.set_testing(False)


@pytest.fixture
def connector(connector_factory: ConnectorFactory) -> Iterator[Connector]:
    """A connector with the test defaults (SQLite)."""
    with connector_factory() as running:
        yield running


# --- the connector's web app in-process: no server, no port --------------------------------------------


@dataclass
class App:
    """The connector's web app and worker run in the test's own event loop, reached through httpx2's
    ASGI transport: the same composition as `serve` (runtime.web_lifespan) on a real migrated SQLite
    store, with the session's simulator as Abiquo and its inbox as SMTP relay, but no uvicorn and no
    port. Its attributes match `Connector`, so a test reads the same against either."""

    app: FastAPI
    settings: Settings
    simulator: SimulatorServer
    inbox: Inbox

    @property
    def url(self) -> str:
        """Where the app's links point (`server.public_url`); requests go through `client()`."""
        return self.settings.server.base_url

    def client(self) -> httpx2.AsyncClient:
        """An HTTP client for the app: `async with app.client() as client:`."""
        return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app), base_url=self.url, timeout=30)

    async def request(self, action: str = "deploy", **target: Any) -> dict[str, Any]:
        """The simulator holds tasks and POSTs its callback to this app, through the ASGI transport."""
        result = await self.simulator.simulator.request(
            action,
            **target,
            callback_url=f"{self.url}/callback",
            transport=httpx2.ASGITransport(app=self.app),
        )
        assert result.callback.status == 200, result.callback
        return result.to_json()

    def decision_calls(self) -> list[dict[str, Any]]:
        """The continue/cancel calls the simulated Abiquo received, oldest first."""
        return [call.to_json() for call in self.simulator.simulator.decision_calls()]


AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[App]]
#: Either way of running the connector: a test written against it runs against both.
Running = Connector | App


@pytest.fixture
def app_factory(
    tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox, templates: Templates
) -> Iterator[AppFactory]:
    """Start in-process apps: `async with app_factory(links={"one_click": True}) as app:`. Keyword
    arguments are settings sections merged over the test defaults, as for `connector_factory`."""
    stamina.set_testing(True, attempts=3, cap=True)

    @contextlib.asynccontextmanager
    async def start(
        database_url: str | None = None, clock: Clock = utc_now, **sections: Mapping[str, Any]
    ) -> AsyncIterator[App]:
        settings = connector_settings(
            port=free_port(),
            database_url=database_url or templates.sqlite_copy(tmp_path / f"app-{secrets.token_hex(3)}.db"),
            simulator=simulator,
            inbox=smtp_inbox,
            sections=sections,
        )
        app = create_app(settings, lifespan=web_lifespan(settings, clock=clock))
        async with app.router.lifespan_context(app):
            yield App(app, settings, simulator, smtp_inbox)

    yield start
    stamina.set_testing(False)


@pytest_asyncio.fixture
async def app(app_factory: AppFactory) -> AsyncIterator[App]:
    """The app with the test defaults (SQLite), its worker running."""
    async with app_factory() as running:
        yield running


# --- the composition of `serve` without its web app ---------------------------------------------------

RuntimeFactory = Callable[..., contextlib.AbstractAsyncContextManager[Runtime]]


@pytest.fixture
def runtime_factory(
    migrated_database_url: str, simulator: SimulatorServer, smtp_inbox: Inbox
) -> Iterator[RuntimeFactory]:
    """Open what `serve` opens (runtime.open_runtime: store, Abiquo client, mailer, use cases, and the
    worker in the test's event loop unless `start_worker=False`) on a migrated store, SQLite and
    PostgreSQL, with the session's simulator as Abiquo and its inbox as relay: `async with
    runtime_factory(reconcile={"interval": "5m"}) as runtime:`. Keyword arguments other than
    `start_worker` are settings sections merged over the test defaults (reconciliation off)."""
    stamina.set_testing(True, attempts=3, cap=True)

    @contextlib.asynccontextmanager
    async def start(*, start_worker: bool = True, **sections: Mapping[str, Any]) -> AsyncIterator[Runtime]:
        settings = connector_settings(
            port=free_port(),
            database_url=migrated_database_url,
            simulator=simulator,
            inbox=smtp_inbox,
            sections=sections,
        )
        async with open_runtime(settings, start_worker=start_worker) as opened:
            yield opened

    yield start
    stamina.set_testing(False)


@pytest_asyncio.fixture
async def runtime(runtime_factory: RuntimeFactory) -> AsyncIterator[Runtime]:
    """The runtime with the test defaults, its worker running; reconciliation is off, so nothing runs
    it but the test (`runtime.reconciler.reconcile()`)."""
    async with runtime_factory() as opened:
        yield opened
