"""`/healthz` (the process answers), `/readyz` (what it depends on answers), `/metrics` (Prometheus).

`/readyz` checks three things and says, per check, a status and a sentence:

- **database**: it answers, and its schema is this version's (`schema.HEAD_REVISION`). Unreachable, or
  older than this version (`not_migrated`): 503. Newer (`newer_schema`, a newer release migrated it
  during a rolling upgrade): reported, not a failure, since migrations only add and this release keeps
  working on the schema (README, "Upgrading a deployment").
- **worker**: in a process that runs one (`serve`, the default), that its loop went round within the
  last few poll intervals (`Worker.alive`); stopped or stuck: 503. In a process that runs none (`serve
  --no-worker`), that some worker process beat in the database within `worker.HEARTBEAT_STALE_AFTER`
  seconds; none did: 503.
- **abiquo**: one unretried `GET /version` with the connector's credentials, at most every
  `ABIQUO_CHECK_TTL` seconds (concurrent checks share one), waited for at most `ABIQUO_WAIT` seconds.
  Reported, never a 503 on its own: decisions wait in the database until Abiquo is back.

The body is public (the index page links it): its sentences never name hosts, URLs, database names or
errors' own words. Those go to the log, and the sentences say so.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from abiquo_workflow import metrics
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.exceptions import AbiquoAuthError, AbiquoError, AbiquoUnavailable, StoreError
from abiquo_workflow.store import SchemaStatus, Store
from abiquo_workflow.store.reads import UNFINISHED_JOBS
from abiquo_workflow.store.schema import HEAD_REVISION
from abiquo_workflow.web.state import Services, services
from abiquo_workflow.worker import HEARTBEAT_STALE_AFTER

log = structlog.stdlib.get_logger(__name__)

router = APIRouter()

#: Seconds an answer about Abiquo is reused: /readyz under load asks Abiquo at most this often.
ABIQUO_CHECK_TTL = 10.0
#: Seconds one /readyz waits for a check of Abiquo that is under way; it then goes on in the background.
ABIQUO_WAIT = 1.0
#: Seconds the check of Abiquo itself may take (or `abiquo.timeout`, if shorter).
ABIQUO_PROBE_TIMEOUT = 5.0
#: Seconds the database may take to answer the readiness query.
DATABASE_TIMEOUT = 3.0

_IN_THE_LOG = "the cause is in the connector's log"


@dataclass(frozen=True, slots=True)
class Check:
    """One dependency's answer: a short status, a sentence for people, and whether it makes /readyz 503."""

    status: str
    detail: str
    fails: bool = False


class AbiquoCheck:
    """The last answer about Abiquo, reused for `ABIQUO_CHECK_TTL` seconds; one check at a time."""

    def __init__(self) -> None:
        self._last: Check | None = None
        self._checked_at = -math.inf
        self._running: asyncio.Task[Check] | None = None

    async def check(self, client: AbiquoClient, *, within: float) -> Check:
        loop = asyncio.get_running_loop()
        if self._last is not None and loop.time() - self._checked_at < ABIQUO_CHECK_TTL:
            return self._last
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._ask(client, within), name="readyz-abiquo")
        try:
            return await asyncio.wait_for(asyncio.shield(self._running), ABIQUO_WAIT)
        except TimeoutError:
            return self._last or Check(
                "unknown", f"Abiquo has not answered within {ABIQUO_WAIT:g} s yet; the check goes on."
            )

    async def _ask(self, client: AbiquoClient, within: float) -> Check:
        try:
            await client.probe(within=within)
        except AbiquoAuthError as exc:
            log.warning("web.readyz.abiquo_refused", error=str(exc))
            result = Check(
                "refused", f"Abiquo answers but refuses the connector's credentials; {_IN_THE_LOG}."
            )
        except AbiquoUnavailable as exc:
            log.warning("web.readyz.abiquo_unreachable", error=str(exc))
            result = Check(
                "unreachable",
                f"Abiquo is not answering; {_IN_THE_LOG}. Decisions wait in the database until it is back.",
            )
        except AbiquoError as exc:
            log.warning("web.readyz.abiquo_failing", error=str(exc))
            result = Check("failing", f"Abiquo answers, but not as expected; {_IN_THE_LOG}.")
        except Exception as exc:  # the client closing under us (shutdown), a bug: still an answer
            log.warning("web.readyz.abiquo_unknown", error=f"{type(exc).__name__}: {exc}")
            result = Check("unknown", f"Abiquo could not be checked; {_IN_THE_LOG}.")
        else:
            result = Check("ok", "Abiquo answers and takes the connector's credentials.")
        self._last, self._checked_at = result, asyncio.get_running_loop().time()
        return result


@router.get("/healthz", name="healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", name="readyz")
async def readyz(request: Request) -> JSONResponse:
    service = services(request)
    abiquo_check: AbiquoCheck = request.app.state.abiquo_check
    within = min(service.settings.abiquo.timeout, ABIQUO_PROBE_TIMEOUT)
    database, abiquo = await asyncio.gather(
        _database(service.store), abiquo_check.check(service.approvals.abiquo, within=within)
    )
    worker = await _worker(service, database_answers=database.status in ("ok", "newer_schema"))
    checks = {"database": database, "worker": worker, "abiquo": abiquo}
    failing = [check for check in checks.values() if check.fails]
    body: dict[str, Any] = {"status": "unavailable" if failing else "ok"}
    body.update({name: check.status for name, check in checks.items()})
    body["details"] = {name: check.detail for name, check in checks.items()}
    if failing:
        body["error"] = failing[0].detail
    return JSONResponse(body, status_code=503 if failing else 200)


async def _database(store: Store) -> Check:
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT):
            status = await store.schema_status()
    except (StoreError, TimeoutError) as exc:
        # Where the database lives is for the log: this route is public (the index page links to it).
        log.error("web.not_ready", check="database", error=str(exc) or "no answer in time")
        return Check("unreachable", f"The database is not answering; {_IN_THE_LOG}.", fails=True)
    if status is SchemaStatus.CURRENT:
        return Check("ok", f"The database answers, and its schema is this version's ({HEAD_REVISION}).")
    if status is SchemaStatus.NEWER:
        return Check(
            "newer_schema",
            "The database answers; a newer release has migrated its schema, which this process keeps "
            "working on. Replace it with the new release.",
        )
    log.error("web.not_ready", check="database", error=f"the schema is older than {HEAD_REVISION}")
    return Check(
        "not_migrated",
        f"The database answers, but its schema is older than this version's ({HEAD_REVISION}): run "
        "`abiquo-workflow migrate`.",
        fails=True,
    )


async def _worker(service: Services, *, database_answers: bool) -> Check:
    worker = service.worker
    if worker.started:
        since = worker.since_beat() or 0.0
        if worker.stopped:
            return Check("stopped", "The worker of this process has stopped: no jobs run here.", fails=True)
        if worker.alive():
            return Check("ok", f"The worker of this process went round its loop {since:.1f} s ago.")
        log.error("web.not_ready", check="worker", seconds_since_beat=round(since, 1))
        return Check(
            "not_beating",
            f"The worker of this process has not gone round its loop for {since:.0f} s (more than "
            f"{worker.stale_after:g} s): it is stuck; {_IN_THE_LOG}.",
            fails=True,
        )
    # serve --no-worker: the workers are other processes, and beat in the database.
    if not database_answers:
        return Check("unknown", "This process runs no worker, and the database cannot say whether others do.")
    store = service.store
    now = store.queue.now()
    try:
        beats = await store.worker_beats(now - timedelta(seconds=HEARTBEAT_STALE_AFTER))
    except StoreError as exc:
        log.error("web.not_ready", check="worker", error=str(exc))
        return Check("unknown", f"Whether a worker runs could not be read; {_IN_THE_LOG}.", fails=True)
    if beats.alive:
        workers = "1 worker" if beats.alive == 1 else f"{beats.alive} workers"
        return Check(
            "ok",
            f"This process runs no worker; {workers} beat in the database within the last "
            f"{HEARTBEAT_STALE_AFTER:g} s.",
        )
    if beats.latest is None:
        last = "no worker has beaten in the database yet"
    else:
        last = f"no worker has beaten in the database for {(now - beats.latest).total_seconds():.0f} s"
    return Check(
        "not_beating",
        f"This process runs no worker (serve --no-worker), and {last}: no jobs are being run. "
        "Start `abiquo-workflow worker`.",
        fails=True,
    )


@router.get("/metrics")
async def metrics_page(request: Request) -> Response:
    await _refresh_store_gauges(services(request))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _refresh_store_gauges(service: Services) -> None:
    """Set the gauges of what the store holds: pending tasks and the oldest one's age, unfinished jobs.

    Two cheap statements (indexed), at each scrape. When the store cannot answer, the gauges say NaN
    (pending) and nothing (jobs) rather than a stale value.
    """
    store = service.store
    try:
        pending = await store.pending_tasks()
        unfinished = await store.unfinished_jobs()
    except StoreError as exc:
        log.warning("web.metrics_store_unavailable", error=str(exc))
        metrics.PENDING_TASKS.set(math.nan)
        metrics.OLDEST_PENDING_AGE.set(math.nan)
        metrics.JOBS.clear()
        return
    metrics.PENDING_TASKS.set(pending.count)
    oldest = 0.0 if pending.oldest is None else (store.queue.now() - pending.oldest).total_seconds()
    metrics.OLDEST_PENDING_AGE.set(max(oldest, 0.0))
    # Every kind this process runs, in every state, 0 included: a series that vanishes is not a zero.
    kinds = sorted(set(service.worker.handlers) | {kind for kind, _ in unfinished})
    metrics.JOBS.clear()
    for kind in kinds:
        for state in UNFINISHED_JOBS:
            metrics.JOBS.labels(kind, state.value).set(unfinished.get((kind, state), 0))
