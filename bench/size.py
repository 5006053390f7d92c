"""Speed of the people's lists at size: the JSON API's lists and the dashboard's pending list with
100,000 tasks in the store, on SQLite and (with a server) PostgreSQL.

    uv run python bench/size.py                                SQLite only
    uv run python bench/size.py --postgres-url URL             SQLite, then PostgreSQL (a database of its
                                                               own, created and dropped; default:
                                                               $AWF_BENCH_POSTGRES_URL, else
                                                               $AWF_TEST_POSTGRES_URL)
    uv run python bench/size.py --tasks 20000 --samples 10     smaller and shorter

What is filled. A migrated database of `--tasks` tasks in requests of 1 to 10 tasks (a mix of single
VMs and vApps, about 2.4 tasks a request), received over 90 days, in twelve enterprises (Acme, the
simulator's enterprise 2, holds a twelfth of them), each request triaged (its snapshot, hence its
`enterprise_id`) as triage leaves it: 5% of tasks pending, 2% decided but their delivery failed, the
rest decided and delivered. Written with one multi-row INSERT per 5,000 rows, not through the
connector (a fill, not what is measured).

What is measured: server time. The connector's own ASGI app (`create_app` with `runtime.web_lifespan`,
the worker off, the simulator as Abiquo for the dashboard's sign-in) is called in this process through
httpx2's ASGI transport, so each figure is the app's time for one request, from routing to the last
byte of the body: authentication, the store's queries, rendering; no network and no HTTP parsing. Each
route is called `--samples` times after two warm-up calls, one at a time; reported: the median and the
worst, in milliseconds, and the median ÷ the median of `GET /healthz` measured the same way in the same
run (the fixed cost of a request through the app's middleware). "deep" is a page whose cursor points
90% of the way down the list (keyset paging: it should cost what the first page does). The API is
called with a read-scope API token (a cloud administrator's view, every enterprise) and, for the
approver's scope, with Alice's Basic credentials (Acme only; her sign-in checked once against the
simulator's `/login`, then cached, as `access.login_ttl` allows). The dashboard's list is read signed in
as the cloud administrator. Target: ≤ 100 ms for each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
from pydantic import TypeAdapter
from sqlalchemy import func, insert, select, text

from abiquo_workflow.access import token_digest
from abiquo_workflow.config import build_settings
from abiquo_workflow.domain import Enterprise, RequestDetails, User
from abiquo_workflow.runtime import web_lifespan
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store import migrate
from abiquo_workflow.store.listing import encode_cursor
from abiquo_workflow.store.schema import create_sync_engine
from abiquo_workflow.store.tables import requests, tasks
from abiquo_workflow.web.app import create_app
from processes import Machine, fresh_database

TOKEN = "awf_bench-size-read-token"  # noqa: S105 (a token of the bench's own config)
ALICE = ("asmith", "asmith")
ADMIN = ("admin", "xabiquo")
SECRET = "bench-size-secret-key-0123456789-abcdefghij"  # noqa: S105
TARGET_MS = 100.0
#: Tasks per request, cycled: mostly single VMs, some vApps.
SIZES = (1, 1, 1, 2, 1, 5, 1, 1, 10, 1)
ENTERPRISES = 12
ROWS_PER_INSERT = 5_000
_DETAILS = TypeAdapter(RequestDetails)
#: Whether this version has the dashboard (its pending list is measured too).
DASHBOARD = (Path(__file__).resolve().parents[1] / "src/abiquo_workflow/web/dashboard.py").exists()


@dataclass(frozen=True)
class Measured:
    name: str
    median_ms: float
    worst_ms: float
    status: int


def snapshot(enterprise: int) -> dict[str, Any]:
    """A triage snapshot (RequestDetails as JSON) of a request of `enterprise` by its usual requester."""
    name = "Acme & Söhne <Ltd>" if enterprise == 2 else f"Enterprise {enterprise}"
    requester = User(
        id="20" if enterprise == 2 else str(1000 + enterprise),
        nick="jdoe" if enterprise == 2 else f"user{enterprise}",
        name="John",
        surname="Doe",
        email="john.doe@acme.example",
        role="USER",
        enterprise_id=str(enterprise),
        enterprise_name=name,
    )
    details = RequestDetails(
        requester=requester,
        enterprise=Enterprise(id=str(enterprise), name=name, href=f"admin/enterprises/{enterprise}"),
        vdc=None,
        datacenter=None,
        vapp=None,
    )
    dumped: dict[str, Any] = _DETAILS.dump_python(details, mode="json")
    return dumped


def rows(count: int, now: datetime) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each request's row and its tasks' rows, oldest first, `count` tasks in all."""
    snapshots = {e: snapshot(e) for e in range(2, 2 + ENTERPRISES)}
    start = now - timedelta(days=90)
    step = timedelta(days=90) / count
    made = 0
    number = 0
    while made < count:
        size = min(SIZES[number % len(SIZES)], count - made)
        enterprise = 2 + number % ENTERPRISES
        at = start + step * made
        request_id = f"{number:08d}-0000-4000-8000-{number:012d}"
        details = snapshots[enterprise]
        request = {
            "id": request_id,
            "received_at": at,
            "format": "json",
            "single_root": False,
            "content_type": "application/json",
            "source": "10.0.0.5",
            "body": "{}",
            "requester_id": details["requester"]["id"],
            "requester_href": f"admin/enterprises/{enterprise}/users/{details['requester']['id']}",
            "details": details,
            "approvers": ["alice.smith@acme.example"],
            "triaged_at": at,
            "triage_error": None,
            "enterprise_id": str(enterprise),
        }
        held = []
        for position in range(size):
            n = made + position
            state = "pending" if n % 20 == 0 else "failed" if n % 50 == 1 else "delivered"
            task_id = f"{n:08d}-task-{number:08d}"
            href = f"cloud/virtualdatacenters/1/virtualappliances/{number}/virtualmachines/{n}"
            held.append(
                {
                    "task_id": task_id,
                    "request_id": request_id,
                    "position": position,
                    "task_type": ("DEPLOY", "UNDEPLOY", "RECONFIGURE")[n % 3],
                    "user_id": details["requester"]["id"],
                    "owner_id": "2",
                    "state": "QUEUEING",
                    "target_href": href,
                    "user_href": request["requester_href"],
                    "self_href": f"{href}/tasks/{task_id}",
                    "continue_href": f"{href}/tasks/{task_id}/action/continue",
                    "cancel_href": f"{href}/tasks/{task_id}/action/cancel",
                    "vm_name": f"vm-{n:06d}",
                    "created_at": at,
                    "decision": "pending" if state == "pending" else "accepted",
                    "decided_by": None if state == "pending" else "approver",
                    "actor": None if state == "pending" else "Alice Smith <alice.smith@acme.example>",
                    "decided_at": None if state == "pending" else at + timedelta(minutes=5),
                    "reason": None,
                    "channel": None if state == "pending" else "email",
                    "delivery": None if state == "pending" else state,
                    "delivery_detail": None,
                    "delivery_attempts": 0 if state == "pending" else 1,
                    "delivered_at": at + timedelta(minutes=5) if state == "delivered" else None,
                    "abiquo_state": None,
                    "verified_at": at,
                }
            )
        yield request, held
        made += size
        number += 1


def fill(url: str, count: int) -> tuple[int, float]:
    """Migrate and fill the database at `url`; the number of requests and the seconds it took."""
    began = time.perf_counter()
    migrate(url)
    engine = create_sync_engine(url)
    pending_requests: list[dict[str, Any]] = []
    pending_tasks: list[dict[str, Any]] = []
    made = 0
    with engine.begin() as conn:
        for request, held in rows(count, datetime.now(UTC)):
            pending_requests.append(request)
            pending_tasks.extend(held)
            made += 1
            if len(pending_tasks) >= ROWS_PER_INSERT:
                conn.execute(insert(requests), pending_requests)
                conn.execute(insert(tasks), pending_tasks)
                pending_requests, pending_tasks = [], []
        if pending_requests:
            conn.execute(insert(requests), pending_requests)
            conn.execute(insert(tasks), pending_tasks)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return made, time.perf_counter() - began


def deep_cursors(url: str) -> dict[str, str]:
    """Cursors 90% of the way down the requests list and the tasks list (newest first)."""
    engine = create_sync_engine(url)
    with engine.connect() as conn:
        total_requests = conn.execute(select(func.count()).select_from(requests)).scalar_one()
        total_tasks = conn.execute(select(func.count()).select_from(tasks)).scalar_one()
        request = conn.execute(
            select(requests.c.received_at, requests.c.id)
            .order_by(requests.c.received_at.desc(), requests.c.id.desc())
            .offset(int(total_requests * 0.9))
            .limit(1)
        ).one()
        task = conn.execute(
            select(tasks.c.created_at, tasks.c.task_id)
            .order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc())
            .offset(int(total_tasks * 0.9))
            .limit(1)
        ).one()
    engine.dispose()
    at_request = (
        request.received_at if request.received_at.tzinfo else request.received_at.replace(tzinfo=UTC)
    )
    at_task = task.created_at if task.created_at.tzinfo else task.created_at.replace(tzinfo=UTC)
    return {"r": encode_cursor("r", at_request, request.id), "t": encode_cursor("t", at_task, task.task_id)}


async def timed(client: httpx2.AsyncClient, name: str, path: str, samples: int, **kwargs: Any) -> Measured:
    for _ in range(2):
        await client.get(path, **kwargs)
    times: list[float] = []
    status = 0
    for _ in range(samples):
        began = time.perf_counter()
        response = await client.get(path, **kwargs)
        times.append((time.perf_counter() - began) * 1000)
        status = response.status_code
    return Measured(name, statistics.median(times), max(times), status)


async def sign_in(client: httpx2.AsyncClient, person: tuple[str, str]) -> None:
    page = (await client.get("/")).text
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    if match is None:
        raise SystemExit("the dashboard's sign-in page has no CSRF token")
    answer = await client.post(
        "/sign-in", data={"csrf": match.group(1), "username": person[0], "password": person[1]}
    )
    if answer.status_code not in (200, 303):
        raise SystemExit(f"signing in to the dashboard failed: {answer.status_code}")


async def measure(url: str, simulator: SimulatorServer, samples: int) -> list[Measured]:
    cursors = deep_cursors(url)
    settings = build_settings(
        {
            "server": {"secret_key": SECRET},
            "database": {"url": url},
            "abiquo": {"api_url": simulator.api_url},
            "api": {"tokens": [{"name": "bench", "scope": "read", "sha256": token_digest(TOKEN)}]},
            "log": {"level": "warning"},
        },
        environ={},
    )
    app = create_app(settings, lifespan=web_lifespan(settings, start_worker=False))
    token = {"Authorization": f"Bearer {TOKEN}"}
    results: list[Measured] = []
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            results.append(await timed(client, "GET /healthz (baseline)", "/healthz", samples))
            plan = [
                ("API tasks, pending, first page", "/api/v1/tasks?state=pending&limit=50", token),
                (
                    "API tasks, pending, deep page",
                    f"/api/v1/tasks?state=pending&limit=50&cursor={cursors['t']}",
                    token,
                ),
                ("API tasks, all, first page", "/api/v1/tasks?limit=50", token),
                ("API tasks, all, deep page", f"/api/v1/tasks?limit=50&cursor={cursors['t']}", token),
                ("API requests, pending, first page", "/api/v1/requests?state=pending&limit=50", token),
                (
                    "API requests, pending, deep page",
                    f"/api/v1/requests?state=pending&limit=50&cursor={cursors['r']}",
                    token,
                ),
                ("API requests, failed, first page", "/api/v1/requests?state=failed&limit=50", token),
                ("API requests, all, deep page", f"/api/v1/requests?limit=50&cursor={cursors['r']}", token),
            ]
            for name, path, headers in plan:
                results.append(await timed(client, name, path, samples, headers=headers))
            results.append(
                await timed(
                    client,
                    "API requests, pending, approver (Acme)",
                    "/api/v1/requests?state=pending",
                    samples,
                    auth=ALICE,
                )
            )
            results.append(
                await timed(
                    client,
                    "API requests, pending, approver, deep",
                    f"/api/v1/requests?state=pending&cursor={cursors['r']}",
                    samples,
                    auth=ALICE,
                )
            )
        if DASHBOARD:
            async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
                await sign_in(client, ADMIN)
                results.append(
                    await timed(client, "dashboard /, pending, first page", "/?state=pending", samples)
                )
                results.append(
                    await timed(
                        client,
                        "dashboard /, pending, deep page",
                        f"/?state=pending&cursor={cursors['r']}",
                        samples,
                    )
                )
    return results


def report(database: str, made: int, tasks_count: int, seconds: float, results: list[Measured]) -> None:
    baseline = results[0].median_ms
    print(f"\n{database}: {tasks_count:,} tasks in {made:,} requests (filled in {seconds:.0f} s)")
    width = max(len(r.name) for r in results)
    print(f"  {'':{width}}  {'median':>9}  {'worst':>9}  {'÷ healthz':>9}  status  ≤ {TARGET_MS:.0f} ms")
    for r in results:
        verdict = "" if r is results[0] else ("met" if r.median_ms <= TARGET_MS else "MISSED")
        print(
            f"  {r.name:{width}}  {r.median_ms:7.1f}ms  {r.worst_ms:7.1f}ms  {r.median_ms / baseline:9.1f}  "
            f"{r.status:6d}  {verdict}"
        )


async def run_one(database: str, url: str, count: int, samples: int, simulator: SimulatorServer) -> None:
    made, seconds = await asyncio.to_thread(fill, url, count)
    results = await measure(url, simulator, samples)
    report(database, made, count, seconds, results)


async def main_async(args: argparse.Namespace) -> None:
    machine = Machine.this_one()
    print(
        f"bench/size.py on {machine.cpu}, {machine.cores} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}; {args.samples} samples per route"
    )
    async with SimulatorServer() as simulator:
        with tempfile.TemporaryDirectory(prefix="awf-size-") as folder:
            url = f"sqlite:///{Path(folder) / 'size.db'}"
            await run_one("SQLite", url, args.tasks, args.samples, simulator)
        if args.postgres_url:
            with fresh_database(args.postgres_url) as url:
                await run_one("PostgreSQL", url, args.tasks, args.samples, simulator)
        else:
            print("\nPostgreSQL: skipped (give --postgres-url, or set AWF_BENCH_POSTGRES_URL)")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("AWF_BENCH_POSTGRES_URL") or os.environ.get("AWF_TEST_POSTGRES_URL"),
    )
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
