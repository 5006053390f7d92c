"""Fixtures for the real servers the tests run against: the Abiquo simulator, an SMTP inbox
(aiosmtpd), SQLite and PostgreSQL databases, and Debian's Chromium."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import psycopg
import pytest
import pytest_asyncio
import stamina
from psycopg import sql
from sqlalchemy.engine import make_url

from abiquo_workflow.abiquo.simulator import Simulator, SimulatorServer
from abiquo_workflow.config import Settings, build_settings
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.servers import BackgroundServer
from abiquo_workflow.store import Store
from abiquo_workflow.web.app import create_app

if TYPE_CHECKING:
    from playwright.async_api import Browser


# --- mail: a real SMTP inbox, and Debian's Chromium ---------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
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


@pytest.fixture
def smtp_inbox() -> Iterator[Inbox]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 and a free port; read `smtp_inbox.port`,
    `smtp_inbox.messages`, `await smtp_inbox.wait_for(n)`. `stop()`/`start()` take it down and up on the
    same port; `refuse = True` answers 451."""
    with Inbox() as inbox:
        yield inbox


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


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """An open, migrated Store on `database_url` (so on SQLite and on PostgreSQL)."""
    async with await Store.open(database_url) as opened:
        yield opened


# --- abiquo: the simulator, with a fresh seeded world per test -----------------------------------------


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """The Abiquo simulator on 127.0.0.1 and a free port, its world freshly seeded. Read `simulator.url`
    (control surface under /_sim, page at /), `simulator.api_url` (the API; admin / xabiquo) and
    `simulator.simulator` (the in-process state: settings, tasks(), `await request(...)`)."""
    with SimulatorServer(Simulator()) as server:
        yield server


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
        async with httpx2.AsyncClient() as client:
            response = await client.post(f"{self.simulator.url}/_sim/requests", json=body, timeout=30)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        assert result["callback"]["status"] == 200, result["callback"]
        return result

    def decision_calls(self) -> list[dict[str, Any]]:
        """The continue/cancel calls the simulated Abiquo received, oldest first."""
        return [call.to_json() for call in self.simulator.simulator.decision_calls()]


ConnectorFactory = Callable[..., contextlib.AbstractContextManager[Connector]]


@pytest.fixture
def connector_factory(
    tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox
) -> Iterator[ConnectorFactory]:
    """Start connectors: `with connector_factory(database_url=..., policy={...}) as c:`. Keyword
    arguments other than `database_url` are settings sections merged over the test defaults (SQLite in
    tmp_path, the simulator as Abiquo, the inbox as SMTP relay, fast retries)."""
    stamina.set_testing(True, attempts=3, cap=True)  # real retries, no sleeping between them

    @contextlib.contextmanager
    def start(database_url: str | None = None, **sections: Mapping[str, Any]) -> Iterator[Connector]:
        port = free_port()
        base: dict[str, Any] = {
            "server": {"bind": f"127.0.0.1:{port}", "secret_key": TEST_SECRET_KEY},
            "database": {"url": database_url or f"sqlite:///{tmp_path / 'connector.db'}"},
            "abiquo": {"api_url": simulator.api_url, "retries": 2, "timeout": 5},
            "mail": {"smtp_host": "127.0.0.1", "smtp_port": smtp_inbox.port, "timeout": 2},
            "worker": {"retry_base_delay": 0.05, "retry_max_delay": 0.3, "max_attempts": 4, "lease": 5},
        }
        settings = build_settings(_merge(base, sections), environ={})
        simulator.simulator.update_settings({"callback_url": f"http://127.0.0.1:{port}/callback"})
        if settings.database.url.startswith("postgresql"):
            from abiquo_workflow.store import migrate

            migrate(settings.database.url)
        with BackgroundServer(create_app(settings), port=port) as server:
            yield Connector(server.url, settings, simulator, smtp_inbox)

    yield start
    stamina.set_testing(False)


@pytest.fixture
def connector(connector_factory: ConnectorFactory) -> Iterator[Connector]:
    """A connector with the test defaults (SQLite)."""
    with connector_factory() as running:
        yield running
