"""Speed and memory of the approval loop, measured end to end against a real `abiquo-workflow serve`.

    uv run python bench/loop.py              the full run (two to three minutes)
    uv run python bench/loop.py --quick      a smoke run: every part, few samples (under a minute)
    uv run python bench/loop.py --only b     some parts only (a, b, c; d comes with any); --keep keeps logs

What runs. `bench/world.py` in a process of its own: the Abiquo simulator (uvicorn, uvloop) and an SMTP
inbox, plus a few `/_bench` routes that time arrivals. Then `abiquo-workflow --config X.toml serve`,
started as a user starts it (uvicorn, uvloop, httptools, SQLite in a temporary folder, the worker in
the same process, INFO logs to a file, every other setting at its default: worker.concurrency 4,
abiquo.max_connections 20). Policy: the default, so every callback is a gated DEPLOY of jdoe's VMs in
"Acme & Söhne": the worker reads the requester, the VM(s) with their disks and volumes, the VDC, vApp,
enterprise, the enterprise's 40 users (two pages) and the datacenter from the simulator, then renders
and sends one approval email to each of the three approvers (Alice, Bob, Zoë). Load comes from this
process through httpx2. The machine is shared and small, so every figure is a ratio against a baseline
measured in the same run, or a percentile over many samples; nothing is asserted, everything is printed.

(a) Callback acknowledgements per second ÷ /healthz requests per second, same server, same client
    (16 keep-alive connections of one httpx2 client, each sending its next request as soon as its last
    was answered). A round, against a fresh `serve` (a worker's backlog from an earlier round would
    slow the next): warm-up (20 callbacks, triaged), /healthz for a few seconds, then POST /callback
    for as long, each callback a distinct task id (the body the simulator sends for one DEPLOY, with a
    fresh UUID), so each is really stored. Only 200 answers count; refusals and answers slower than
    Abiquo's 10 s read timeout are listed. While callbacks arrive, the worker in the same process
    triages them (Abiquo reads, three emails each): that is how `serve` runs, so it is part of what the
    rate measures; the report says how far the worker got meanwhile. Reported: the median of the
    per-round ratios, and the serve process's CPU time per answer in each phase (/proc/<pid>/stat),
    which shows whether the server or the client set a rate.
(b) Click-to-continue latency: for each of many held tasks (one DEPLOY each, triaged beforehand), the
    form POST of /accept that the approver's confirmation page makes (task + token, the token made with
    `LinkSigner` and the serve process's secret key, as in the email), one click at a time. The time
    runs from just before the POST is sent (this process) to the moment the continue request for that
    task reaches the simulator's ASGI app (the world process, timestamped at the door, before any
    simulator work). Both ends read `time.perf_counter()`, CLOCK_MONOTONIC on Linux, one clock for the
    whole machine; the run checks that first. Before the next click the bench waits for the requester's
    outcome email and 30 ms more, so each click finds the worker idle, as a person's next click would.
    Reported: p50 and p99 (nearest rank).
(c) Callback-to-approver-email time for vApp 2 "Big batch" (100 VMs, so 100 tasks in one callback) with
    20 ms added to every simulated Abiquo API call: from just before this process POSTs the callback
    (the body the simulator rendered for that deploy) to the arrival of the third approval email in the
    inbox. The baseline is the same measurement against a second `serve` that differs only in
    `abiquo.max_connections = 1`: the same code, every API request strictly one after another, which
    is the one-VM-at-a-time way. Reported: the median of several runs of each, and baseline ÷ real.
(d) The serve processes' resident memory (VmRSS from /proc/<pid>/status) at the end of their parts, and
    their peak (VmHWM). The figure checked is the largest VmRSS, in MB (10^6 bytes).

Exit status: 0 when the benchmark ran (targets met or not: it is a measurement), 1 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2

from abiquo_workflow.config import AbiquoSettings
from abiquo_workflow.domain import Action
from abiquo_workflow.links import LinkSigner
from processes import BenchError, Child, Machine, Serve, WorldAddress, start_serve, start_world

#: Abiquo gives up on the callback after `workflow.read.timeout`, 10 s by default (docs/protocol.md §2.3).
ABIQUO_READ_TIMEOUT = 10.0
#: jdoe's "web-01" (deploys of it ask Alice, Bob and Zoë), and "Big batch", 100 VMs of jdoe's.
SINGLE_VM = 1
BIG_BATCH_VAPP = 2
APPROVERS_PER_REQUEST = 3
#: Whom the signed links speak for, as `approvals.approver_address` writes it in the email.
APPROVER = "Alice Smith <alice.smith@acme.example>"
#: Seconds the simulator adds to every API call in (c).
API_LATENCY = 0.02
#: What `serve` uses unless configured otherwise (the real connector in (c) runs with the defaults).
DEFAULT_MAX_CONNECTIONS = AbiquoSettings().max_connections
#: Pause after each click's outcome email, so the worker's last writes are done before the next click.
SETTLE = 0.03
#: Callbacks sent (and triaged) before each measured round of (a).
WARM_UP_CALLBACKS = 20


@dataclass(frozen=True)
class Plan:
    """How many samples each part takes."""

    rounds: int
    phase_seconds: float
    connections: int
    clicks: int
    fast_runs: int
    sequential_runs: int


FULL = Plan(rounds=3, phase_seconds=3.0, connections=16, clicks=200, fast_runs=5, sequential_runs=3)
QUICK = Plan(rounds=1, phase_seconds=1.0, connections=16, clicks=20, fast_runs=1, sequential_runs=1)


# --- talking to the world process -------------------------------------------------------------------


@dataclass(frozen=True)
class Captured:
    """A callback as the simulator sent it, and the tasks it holds."""

    body: str
    content_type: str
    task_ids: tuple[str, ...]


class World:
    """The simulator's control surface and the `/_bench` routes of `bench/world.py`."""

    def __init__(self, address: WorldAddress, client: httpx2.AsyncClient) -> None:
        self.url = address.url
        self.http = client

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, f"{self.url}{path}", **kwargs)
        if response.status_code >= 400:
            raise BenchError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    async def request(
        self, *, vm: int | None = None, vapp: int | None = None, callback_url: str
    ) -> list[str]:
        """Ask the simulator to hold a deploy, which it POSTs to `callback_url`; the new task ids."""
        target = {"vm": vm} if vm is not None else {"vapp": vapp}
        result = await self._json(
            "POST", "/_sim/requests", json={"action": "deploy", **target, "callback_url": callback_url}
        )
        callback = result["callback"]
        if callback["status"] != 200:
            raise BenchError(
                f"the callback to {callback_url} failed: {callback['status'] or callback['error']}"
            )
        return [task["task_id"] for task in result["tasks"]]

    async def capture(self, *, vm: int | None = None, vapp: int | None = None) -> Captured:
        """Hold a deploy whose callback comes back here, to be sent to the connector by the bench."""
        task_ids = await self.request(vm=vm, vapp=vapp, callback_url=f"{self.url}/_bench/capture")
        captured = await self._json("GET", "/_bench/captured")
        return Captured(captured["body"], captured["content_type"], tuple(task_ids))

    async def inbox_count(self) -> int:
        return int((await self._json("GET", "/_bench/inbox", params={"count": 0}))["count"])

    async def wait_for_mail(self, count: int, within: float) -> float:
        """When (perf_counter, world side) the inbox held `count` messages; BenchError after `within` s."""
        response = await self.http.get(
            f"{self.url}/_bench/inbox", params={"count": count, "timeout": within}, timeout=within + 5
        )
        if response.status_code != 200:
            raise BenchError(f"expected {count} email(s) within {within:g} s, got {response.json()['count']}")
        return float(response.json()["at"])

    async def clear_inbox(self) -> None:
        await self._json("POST", "/_bench/inbox/clear")

    async def continue_at(self, task_id: str, within: float = 10.0) -> float:
        response = await self.http.get(
            f"{self.url}/_bench/continue", params={"task": task_id, "timeout": within}, timeout=within + 5
        )
        if response.status_code != 200:
            raise BenchError(f"no continue for task {task_id} reached the simulator within {within:g} s")
        return float(response.json()["at"])

    async def check_clock(self) -> None:
        """Make sure the world's perf_counter is this process's (one machine-wide monotonic clock)."""
        before = time.perf_counter()
        theirs = float((await self._json("GET", "/_bench/clock"))["perf_counter"])
        after = time.perf_counter()
        if not before <= theirs <= after:
            raise BenchError(
                "the world process's perf_counter is not this process's clock "
                f"({theirs:.6f} outside {before:.6f}..{after:.6f}); latencies cannot be compared"
            )

    async def set_latency(self, seconds: float) -> None:
        await self._json("PUT", "/_sim/settings", json={"latency": seconds})

    async def reset(self) -> None:
        await self._json("POST", "/_sim/reset")

    async def api_call_count(self) -> int:
        return len(await self._json("GET", "/_sim/api-calls"))

    async def continues(self) -> list[dict[str, Any]]:
        return [call for call in await self._json("GET", "/_sim/calls") if call["action"] == "continue"]


# --- (a) callback acknowledgements vs /healthz --------------------------------------------------------


@dataclass
class Phase:
    """One timed phase of (a): answers counted, and the serve process's CPU time over the phase."""

    ok: int = 0
    refused: int = 0
    failed: int = 0
    seconds: float = 0.0
    serve_cpu: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_share(self) -> float:
        """Cores the serve process used on average (1.0 = one core busy all the time)."""
        return self.serve_cpu / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.serve_cpu / self.ok if self.ok else float("nan")


Send = Callable[[httpx2.AsyncClient], Awaitable[httpx2.Response]]


async def timed_phase(
    client: httpx2.AsyncClient, send: Send, serve: Child, plan: Plan, seconds: float
) -> Phase:
    """`plan.connections` senders, each sending its next request as soon as its last was answered."""
    phase = Phase()
    deadline = time.perf_counter() + seconds

    async def sender() -> None:
        while time.perf_counter() < deadline:
            try:
                response = await send(client)
            except httpx2.HTTPError as exc:
                phase.failed += 1
                name = type(exc).__name__
                phase.errors[name] = phase.errors.get(name, 0) + 1
                continue
            if response.status_code == 200:
                phase.ok += 1
            else:
                phase.refused += 1
                key = f"HTTP {response.status_code}"
                phase.errors[key] = phase.errors.get(key, 0) + 1

    cpu_before, started = serve.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(plan.connections)))
    phase.seconds = time.perf_counter() - started
    phase.serve_cpu = serve.cpu_seconds() - cpu_before
    return phase


@dataclass
class RateRound:
    healthz: Phase
    callbacks: Phase
    #: Callbacks whose three approval emails had all arrived when the callback phase ended.
    triaged: int

    @property
    def ratio(self) -> float:
        return self.callbacks.rate / self.healthz.rate


@dataclass
class RateResult:
    rounds: list[RateRound]

    @property
    def ratio(self) -> float:
        return statistics.median(r.ratio for r in self.rounds)


async def rate_round(serve: Serve, world: World, plan: Plan, one: Captured) -> RateRound:
    """/healthz for `plan.phase_seconds`, then as long of callbacks, each for a task id of its own."""
    template = one.body.replace(one.task_ids[0], "{task_id}")
    headers = {"content-type": one.content_type}
    limits = httpx2.Limits(max_connections=plan.connections, max_keepalive_connections=plan.connections)

    async def healthz(client: httpx2.AsyncClient) -> httpx2.Response:
        return await client.get(f"{serve.url}/healthz")

    async def callback(client: httpx2.AsyncClient) -> httpx2.Response:
        body = template.replace("{task_id}", str(uuid.uuid4()))
        return await client.post(f"{serve.url}/callback", content=body, headers=headers)

    async with httpx2.AsyncClient(trust_env=False, limits=limits, timeout=ABIQUO_READ_TIMEOUT) as client:
        # Warm up: open the connections, and run every code path once (imports, statement caches).
        await timed_phase(client, healthz, serve.child, plan, 0.5)
        for _ in range(WARM_UP_CALLBACKS):
            await callback(client)
        await world.wait_for_mail(WARM_UP_CALLBACKS * APPROVERS_PER_REQUEST, within=60)
        await world.clear_inbox()
        hz = await timed_phase(client, healthz, serve.child, plan, plan.phase_seconds)
        cb = await timed_phase(client, callback, serve.child, plan, plan.phase_seconds)
        triaged = await world.inbox_count() // APPROVERS_PER_REQUEST
    if not hz.ok or not cb.ok:
        raise BenchError(f"nothing was acknowledged: /healthz {hz.errors}, /callback {cb.errors}")
    return RateRound(hz, cb, triaged)


async def callback_rate(
    folder: Path,
    address: WorldAddress,
    world: World,
    plan: Plan,
    secret_key: str,
    memory: dict[str, dict[str, int]],
) -> RateResult:
    """Rounds of `rate_round`, each against a fresh `serve` (new database): the backlog the worker is
    left with after a callback phase would take long to drain and would slow the next /healthz phase."""
    one = await world.capture(vm=SINGLE_VM)
    rounds: list[RateRound] = []
    for number in range(1, plan.rounds + 1):
        serve = start_serve(folder, f"serve-a{number}", address, secret_key)
        try:
            result = await rate_round(serve, world, plan, one)
            memory["serve for (a), at the end of its callbacks"] = serve.child.memory_kib()
        finally:
            serve.child.stop()
        await world.clear_inbox()
        rounds.append(result)
        progress(
            f"  round {number}: /healthz {result.healthz.rate:,.0f}/s, "
            f"/callback {result.callbacks.rate:,.0f}/s (ratio {result.ratio:.2f})"
        )
    return RateResult(rounds)


# --- (b) click-to-continue latency ------------------------------------------------------------------


@dataclass
class ClickResult:
    continue_ms: list[float]
    page_ms: list[float]
    #: Seconds from the first held task's request to the last approval email: the worker's pace.
    triage_seconds: float = 0.0


def accept_form(signer: LinkSigner, task_id: str) -> tuple[str, dict[str, str]]:
    """The path and fields the confirmation page's form POSTs for the link in the approver's email."""
    link = urlsplit(signer.task_url(task_id, Action.ACCEPT, APPROVER))
    fields = dict(parse_qsl(link.query))
    return link.path, {"task": fields["task"], "token": fields["token"], "reason": ""}


async def click_latency(serve: Serve, world: World, plan: Plan) -> ClickResult:
    await world.check_clock()
    callback_url = f"{serve.url}/callback"
    task_ids: list[str] = []
    started = time.perf_counter()
    # Four requests at a time: as fast as the simulator makes them, without piling up callbacks.
    for start in range(0, plan.clicks, 4):
        batch = range(start, min(start + 4, plan.clicks))
        made = await asyncio.gather(*(world.request(vm=SINGLE_VM, callback_url=callback_url) for _ in batch))
        task_ids.extend(t for ids in made for t in ids)
    await world.wait_for_mail(len(task_ids) * APPROVERS_PER_REQUEST, within=120)
    result = ClickResult([], [], time.perf_counter() - started)
    await world.clear_inbox()
    progress(f"  {len(task_ids)} held tasks stored and triaged; clicking Accept on each, one at a time")

    signer = LinkSigner(serve.secret_key, serve.url, ttl=3600)
    async with httpx2.AsyncClient(trust_env=False, timeout=ABIQUO_READ_TIMEOUT) as client:
        await client.get(f"{serve.url}/healthz")  # the connection is open before the first click
        for number, task_id in enumerate(task_ids, start=1):
            path, form = accept_form(signer, task_id)
            started = time.perf_counter()
            page = await client.post(f"{serve.url}{path}", data=form)
            answered = time.perf_counter()
            if page.status_code != 200:
                raise BenchError(f"POST {path} for task {task_id} answered {page.status_code}")
            arrived = await world.continue_at(task_id)
            result.continue_ms.append(1000 * (arrived - started))
            result.page_ms.append(1000 * (answered - started))
            # The requester's outcome email, then the writes that follow it (the email marked sent, the
            # job completed): a person's next click comes seconds later, to an idle worker.
            await world.wait_for_mail(number, within=10)
            await asyncio.sleep(SETTLE)
    delivered = [c for c in await world.continues() if c["task_id"] in set(task_ids)]
    if len(delivered) != len(task_ids) or any(c["status"] != 204 for c in delivered):
        raise BenchError("not every click ended in exactly one continue that Abiquo answered 204")
    return result


# --- (c) 100-VM callback to approver emails -------------------------------------------------------------


@dataclass
class BatchResult:
    fast_seconds: list[float]
    sequential_seconds: list[float]
    fast_api_calls: int
    sequential_api_calls: int

    @property
    def speedup(self) -> float:
        return statistics.median(self.sequential_seconds) / statistics.median(self.fast_seconds)


async def batch_to_emails(serve: Serve, world: World, runs: int) -> tuple[list[float], int]:
    """Seconds from sending vApp 2's callback to the third approval email, `runs` times; API calls per run."""
    seconds: list[float] = []
    calls = 0
    async with httpx2.AsyncClient(trust_env=False, timeout=ABIQUO_READ_TIMEOUT) as client:
        for _ in range(runs):
            captured = await world.capture(vapp=BIG_BATCH_VAPP)
            await world.clear_inbox()
            calls_before = await world.api_call_count()
            await client.get(f"{serve.url}/healthz")  # an open connection, as Abiquo's would be
            started = time.perf_counter()
            response = await client.post(
                f"{serve.url}/callback",
                content=captured.body,
                headers={"content-type": captured.content_type},
            )
            if response.status_code != 200 or len(response.json()["tasks"]) != len(captured.task_ids):
                raise BenchError(
                    f"the 100-task callback was not stored: {response.status_code} {response.text[:200]}"
                )
            arrived = await world.wait_for_mail(APPROVERS_PER_REQUEST, within=120)
            seconds.append(arrived - started)
            calls = await world.api_call_count() - calls_before
    return seconds, calls


async def batch_speedup(
    folder: Path, address: WorldAddress, world: World, plan: Plan, serve: Serve, children: list[Child]
) -> BatchResult:
    """`batch_to_emails` against `serve`, then against a second serve with `abiquo.max_connections = 1`."""
    await world.reset()
    await world.set_latency(API_LATENCY)
    fast, fast_calls = await batch_to_emails(serve, world, plan.fast_runs)
    progress(f"  max_connections {DEFAULT_MAX_CONNECTIONS}: {', '.join(f'{s:.2f}' for s in fast)} s")
    sequential = start_serve(folder, "serve-sequential", address, serve.secret_key, max_connections=1)
    children.append(sequential.child)
    slow, slow_calls = await batch_to_emails(sequential, world, plan.sequential_runs)
    progress(f"  max_connections 1: {', '.join(f'{s:.2f}' for s in slow)} s")
    await world.set_latency(0)
    return BatchResult(fast, slow, fast_calls, slow_calls)


# --- the report ---------------------------------------------------------------------------------------


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Row:
    metric: str
    value: str
    target: str
    met: bool


def table(rows: list[Row]) -> str:
    header = ("metric", "value", "target", "")
    cells = [header] + [(r.metric, r.value, r.target, "met" if r.met else "MISSED") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_rates(result: RateResult) -> Iterator[str]:
    yield "(a) callbacks vs /healthz, 16 connections, per round:"
    for number, r in enumerate(result.rounds, start=1):
        hz, cb = r.healthz, r.callbacks
        yield (
            f"    round {number}: /healthz {hz.rate:7,.0f}/s (serve {hz.cpu_share:4.0%} CPU, "
            f"{hz.cpu_ms_per_request:.2f} ms CPU/request) · /callback {cb.rate:6,.0f}/s (serve "
            f"{cb.cpu_share:4.0%} CPU, {cb.cpu_ms_per_request:.2f} ms CPU/ack, worker included) · "
            f"ratio {r.ratio:.2f} · meanwhile the worker emailed the approvers of "
            f"{r.triaged / cb.seconds:.0f} callbacks/s"
        )
        not_ok = {**hz.errors, **{f"callback {k}": v for k, v in cb.errors.items()}}
        if not_ok:
            yield "      not acknowledged: " + ", ".join(f"{k}: {v}" for k, v in sorted(not_ok.items()))
    hz_cpu = statistics.median(r.healthz.cpu_ms_per_request for r in result.rounds)
    cb_cpu = statistics.median(r.callbacks.cpu_ms_per_request for r in result.rounds)
    hz_share = statistics.median(r.healthz.cpu_share for r in result.rounds)
    yield (
        f"    serve CPU per answer: /healthz {hz_cpu:.2f} ms, /callback {cb_cpu:.2f} ms (storing it plus the "
        f"worker's triage and emails done meanwhile): a CPU-bound server would answer callbacks at "
        f"{hz_cpu / cb_cpu:.2f} times its /healthz rate."
    )
    if hz_share < 0.9:
        yield (
            f"    note: during /healthz the serve process used {hz_share:.0%} of a core, so the client "
            "(one httpx2 event loop) set that rate, not the server; the rate ratio flatters callbacks."
        )


def describe_clicks(result: ClickResult) -> Iterator[str]:
    c, p = result.continue_ms, result.page_ms
    yield (
        f"(b) {len(c)} clicks, POST /accept → continue at the simulator: p50 {percentile(c, 0.5):.1f} ms, "
        f"p90 {percentile(c, 0.9):.1f} ms, p99 {percentile(c, 0.99):.1f} ms, max {max(c):.1f} ms; "
        f"the page itself answered in p50 {percentile(p, 0.5):.1f} ms, p99 {percentile(p, 0.99):.1f} ms"
    )
    yield (
        f"    before that, {len(c)} one-VM callbacks were triaged and emailed (3 approvers each) in "
        f"{result.triage_seconds:.1f} s: the worker's pace, {len(c) / result.triage_seconds:.0f} callbacks/s"
    )


def describe_batch(result: BatchResult) -> Iterator[str]:
    yield (
        f"(c) vApp 2 (100 VMs), {API_LATENCY * 1000:.0f} ms added to each API call, "
        "callback sent → 3rd approval email in the inbox:"
    )
    for name, runs, calls in (
        (
            f"serve (max_connections {DEFAULT_MAX_CONNECTIONS}, the default)",
            result.fast_seconds,
            result.fast_api_calls,
        ),
        (
            "baseline (max_connections 1, one request at a time)",
            result.sequential_seconds,
            result.sequential_api_calls,
        ),
    ):
        each = ", ".join(f"{s:.2f}" for s in runs)
        yield f"    {name}: {each} s; median {statistics.median(runs):.2f} s; {calls} API calls per run"


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Results:
    rates: RateResult | None = None
    clicks: ClickResult | None = None
    batch: BatchResult | None = None
    memory: dict[str, dict[str, int]] = field(default_factory=dict)


async def run(plan: Plan, folder: Path, results: Results, parts: str) -> None:
    world_child, address = start_world(folder)
    children: list[Child] = [world_child]
    try:
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as control:
            world = World(address, control)
            secret_key = secrets.token_urlsafe(32)

            if "a" in parts:
                with timed("(a) callback acknowledgements vs /healthz"):
                    results.rates = await callback_rate(
                        folder, address, world, plan, secret_key, results.memory
                    )
                    await world.reset()
            if "b" not in parts and "c" not in parts:
                return
            main_serve = start_serve(folder, "serve-bc", address, secret_key)
            children.append(main_serve.child)
            if "b" in parts:
                with timed("(b) click-to-continue latency"):
                    results.clicks = await click_latency(main_serve, world, plan)
            if "c" in parts:
                with timed("(c) 100-VM callback to approval emails"):
                    results.batch = await batch_speedup(folder, address, world, plan, main_serve, children)
            label = " and ".join(f"({p})" for p in "bc" if p in parts)
            results.memory[f"serve for {label}, at the end"] = main_serve.child.memory_kib()
    finally:
        for child in reversed(children):
            child.stop()


@contextlib.contextmanager
def timed(part: str) -> Iterator[None]:
    progress(f"{part} …")
    started = time.perf_counter()
    yield
    progress(f"  ({time.perf_counter() - started:.0f} s)")


def megabytes(kib: int) -> str:
    return f"{kib * 1024 / 1e6:.0f} MB ({kib / 1024:.0f} MiB)"


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def report(
    plan: Plan, results: Results, started: datetime.datetime, elapsed: float, load_at_start: str
) -> str:
    lines: list[str] = []
    rows: list[Row] = []
    if results.rates is not None:
        lines.extend(describe_rates(results.rates))
        ratio = results.rates.ratio
        rows.append(Row("(a) callback acks/s ÷ /healthz/s (median)", f"{ratio:.2f}", "≥ 0.5", ratio >= 0.5))
    if results.clicks is not None:
        lines.extend(describe_clicks(results.clicks))
        p50, p99 = percentile(results.clicks.continue_ms, 0.5), percentile(results.clicks.continue_ms, 0.99)
        rows.append(Row("(b) click → continue p50", f"{p50:.1f} ms", "≤ 15 ms", p50 <= 15))
        rows.append(Row("(b) click → continue p99", f"{p99:.1f} ms", "≤ 60 ms", p99 <= 60))
    if results.batch is not None:
        lines.extend(describe_batch(results.batch))
        speedup = results.batch.speedup
        rows.append(
            Row("(c) 100-VM callback → emails, speed-up", f"{speedup:.1f} x", "≥ 10 x", speedup >= 10)
        )
    if results.memory:
        lines.append("(d) serve resident memory (VmRSS, and the peak VmHWM):")
        lines.extend(
            f"    {where}: {megabytes(m['VmRSS'])}, peak {megabytes(m['VmHWM'])}"
            for where, m in results.memory.items()
        )
        rss = max(m["VmRSS"] for m in results.memory.values())
        rows.append(Row("(d) serve RSS (largest)", megabytes(rss), "≤ 120 MB", rss * 1024 <= 120e6))
    machine = Machine.this_one()
    lines += [
        "",
        table(rows),
        "",
        f"machine: {machine.cpu}, {machine.cores} cores, {machine.python}; load average (1 min) "
        f"{load_at_start} at the start, {load_average()} at the end (others share this machine)",
        f"run: {started:%Y-%m-%d %H:%M} UTC, {'quick' if plan is QUICK else 'full'}, {elapsed:.0f} s",
    ]
    return "\n".join(lines)


def _event_loop_run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # as `serve` does (uvicorn[standard]); a cheaper client leaves more to the server
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the approval loop's speed and memory.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run with few samples")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, databases)")
    parser.add_argument("--only", default="abc", help="run only these parts, for example `--only b` or `ac`")
    options = parser.parse_args(argv)
    plan = QUICK if options.quick else FULL
    started = datetime.datetime.now(datetime.UTC)
    clock = time.perf_counter()
    load_at_start = load_average()
    folder = Path(tempfile.mkdtemp(prefix="awf-bench-"))
    results = Results()
    try:
        _event_loop_run(run(plan, folder, results, options.only))
    except (BenchError, httpx2.HTTPError, OSError) as exc:
        if results.rates or results.clicks or results.batch:
            print(report(plan, results, started, time.perf_counter() - clock, load_at_start))
        print(f"\nthe benchmark could not finish: {exc}\nlogs and databases: {folder}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"\nlogs and databases: {folder}", file=sys.stderr)
        return 1
    print(report(plan, results, started, time.perf_counter() - clock, load_at_start))
    if options.keep:
        print(f"logs and databases: {folder}", file=sys.stderr)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
