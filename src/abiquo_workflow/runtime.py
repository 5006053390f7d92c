"""The composition root: opens and closes what a running connector uses (`serve`, `worker`, the demo).

Nothing here is opened at import time. `open_runtime` opens the store (migrating SQLite first), the
Abiquo client and the mailer, builds the use cases and, unless told otherwise, starts the worker in the
same event loop; on exit the worker drains and everything closes in reverse order. The web app never
builds any of this: `serve` hands `create_app` a lifespan that opens a `Runtime` (web/state.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import structlog

from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.access import Authenticator
from abiquo_workflow.approvals import Approvals
from abiquo_workflow.config import Settings
from abiquo_workflow.directory import ApproverDirectory
from abiquo_workflow.exceptions import ConfigError, StoreError
from abiquo_workflow.jobs import (
    TIMERS,
    Deliver,
    NotifyRequester,
    NotifySettled,
    Reconcile,
    SendApproval,
    SendReminder,
    Triage,
)
from abiquo_workflow.links import LinkSigner
from abiquo_workflow.mail.send import Mailer
from abiquo_workflow.reconcile import Reconciler
from abiquo_workflow.store import Clock, Store, utc_now
from abiquo_workflow.worker import Pool, Worker

log = structlog.stdlib.get_logger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Everything a running connector process holds open; also what the web app's routes use."""

    settings: Settings
    store: Store
    approvals: Approvals
    signer: LinkSigner
    worker: Worker
    reconciler: Reconciler
    #: Signs people in against Abiquo and knows the API tokens (the dashboard and the API).
    authenticator: Authenticator


#: How to make a good `server.secret_key`, said wherever one is refused.
_GENERATE_KEY = "generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
SECRET_KEY_MIN_LENGTH = 32
#: Fewer different characters than this is a key typed by hand ("aaaa…", "changeme changeme…").
SECRET_KEY_MIN_VARIETY = 10


def secret_key_problem(key: str) -> str | None:
    """Why `key` cannot sign links (missing, short, or of low variety), or None when it can.

    Anyone who guesses the key can forge an approver's link, so a weak key is refused at start rather
    than warned about.
    """
    if not key:
        return f"server.secret_key: required to sign the links in approval emails; {_GENERATE_KEY}"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return (
            f"server.secret_key: {len(key)} characters is too short to sign links safely (at least "
            f"{SECRET_KEY_MIN_LENGTH}); {_GENERATE_KEY}"
        )
    if len(set(key)) < SECRET_KEY_MIN_VARIETY:
        return (
            f"server.secret_key: it uses only {len(set(key))} different characters, which is too easy to "
            f"guess (at least {SECRET_KEY_MIN_VARIETY}); {_GENERATE_KEY}"
        )
    return None


def link_signer(settings: Settings) -> LinkSigner:
    """The signer for emailed links; refuses a missing, short or low-variety `server.secret_key`."""
    key = settings.server.secret_key.get_secret_value() if settings.server.secret_key else ""
    problem = secret_key_problem(key)
    if problem is not None:
        raise ConfigError([problem])
    return LinkSigner(key, settings.server.base_url, settings.links.ttl)


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite database URL (relative to the working folder), None for other databases."""
    if not url.startswith("sqlite") or ":///" not in url:
        return None
    return Path(url.split(":///", 1)[1])


def migrates_at_start(settings: Settings) -> bool:
    """SQLite belongs to one instance, which migrates it at start; PostgreSQL is migrated by `migrate`."""
    return settings.database.url.startswith("sqlite")


#: Deadlines, reminders and escalations one worker runs at once (each is a few statements).
TIMER_SLOTS = 4


def job_pools(settings: Settings) -> tuple[Pool, ...]:
    """How many jobs of each kind a worker runs at once: as many as the connections they use.

    Deliveries and triage talk to Abiquo, so each may run `abiquo.max_connections` jobs (the client
    still sends no more requests than that at once, in all). Deliveries have slots of their own, so a
    decision never waits for a triage to end; the claim order (jobs.py) only puts them first in line.
    Emails use SMTP sessions, `mail.max_connections` of them. Reconciliation runs one at a time.
    """
    return (
        Pool("deliveries", (Deliver.kind,), settings.abiquo.max_connections),
        Pool("triage", (Triage.kind,), settings.abiquo.max_connections),
        Pool(
            "emails",
            (SendApproval.kind, SendReminder.kind, NotifyRequester.kind, NotifySettled.kind),
            settings.mail.max_connections,
        ),
        Pool("reconcile", (Reconcile.kind,), 1),
        # Deadlines, reminders and escalations only write to the database (the emails and deliveries
        # they queue run in the pools above).
        Pool("timers", tuple(timer.kind for timer in TIMERS), TIMER_SLOTS),
    )


async def open_store(settings: Settings, clock: Clock = utc_now) -> Store:
    """The store `settings` describe, opened as a running connector opens it (migrating SQLite)."""
    return await Store.open(
        settings.database.url,
        migrate=migrates_at_start(settings),
        busy_timeout=settings.database.busy_timeout,
        clock=clock,
    )


async def prepare_store(settings: Settings) -> None:
    """Open the database as `open_runtime` will (migrating SQLite) and close it again.

    `serve` calls it before starting the web server, so that an unreachable or unmigrated database is
    one sentence on stderr rather than a traceback from the server's startup. Raises `StoreError`.
    """
    store = await open_store(settings)
    await store.close()


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, start_worker: bool = True, clock: Clock = utc_now
) -> AsyncIterator[Runtime]:
    """Everything a connector process needs, open; the worker running too unless `start_worker` is
    False (`serve --no-worker`, where separate `worker` processes run the jobs). `clock` is where the
    store and the approvals take "now" from (the wall clock; tests move theirs to pass deadlines)."""
    signer = link_signer(settings)
    store = await open_store(settings, clock)
    try:
        async with AbiquoClient(settings.abiquo) as abiquo, Mailer(settings.mail) as mailer:
            approvals = Approvals(
                settings=settings,
                store=store,
                abiquo=abiquo,
                mailer=mailer,
                signer=signer,
                directory=ApproverDirectory(abiquo, settings.policy),
                clock=clock,
            )
            reconciler = Reconciler(settings=settings, store=store, abiquo=abiquo, approvals=approvals)
            worker = Worker(
                store.queue,
                {**approvals.job_handlers(), **reconciler.job_handlers()},
                settings=settings.worker,
                pools=job_pools(settings),
                on_failed=approvals.job_failed,
                on_retry=approvals.job_retried,
            )
            running = worker.start() if start_worker else None
            if start_worker:
                await _schedule_reconciliation(reconciler)
            try:
                yield Runtime(
                    settings, store, approvals, signer, worker, reconciler, Authenticator(abiquo, settings)
                )
            finally:
                if running is not None:
                    worker.stop()
                    await running
    finally:
        await store.close()


async def _schedule_reconciliation(reconciler: Reconciler) -> None:
    """Queue a reconciliation run now unless one waits already (reconcile.py); a database that refuses
    the write is logged, and the next process start (or a running chain) queues it."""
    try:
        await reconciler.schedule()
    except StoreError as exc:
        log.warning("reconcile.not_scheduled", error=str(exc))


def web_lifespan(
    settings: Settings, *, start_worker: bool = True, clock: Clock = utc_now
) -> Callable[[], AbstractAsyncContextManager[Runtime]]:
    """What `create_app` is handed by `serve` and the demo: opens a Runtime when the server starts."""
    return functools.partial(open_runtime, settings, start_worker=start_worker, clock=clock)


async def serve_jobs(settings: Settings) -> None:
    """The `worker` command: run jobs until SIGINT or SIGTERM, then let the running ones finish."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_runtime(settings, start_worker=True):
        log.info("worker.ready", database=settings.database.url.split("@")[-1])
        await stop.wait()
