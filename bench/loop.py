"""Speed and memory of the approval loop, measured end to end against real `abiquo-workflow serve` processes.

    uv run python bench/loop.py                       every part (about six minutes)
    uv run python bench/loop.py --quick               a smoke run: every part, few samples (about 80 s)
    uv run python bench/loop.py --only ef             some parts only (a, b, c, e, f, g; d comes with any)
    uv run python bench/loop.py --postgres-url URL    the PostgreSQL server for (g) (default:
                                                      $AWF_BENCH_POSTGRES_URL, else $AWF_TEST_POSTGRES_URL)
    --keep keeps the temporary folder: configs, logs, SQLite files, wrk's scripts and output.

What runs. `bench/world.py` in a process of its own: the Abiquo simulator (uvicorn, uvloop) and an SMTP
inbox, plus a few `/_bench` routes that time arrivals and hold tasks in the simulator. Then
`abiquo-workflow --config X.toml serve`, started as a user starts it (uvicorn, uvloop, httptools, the
worker in the same process, INFO logs to a file, SQLite in a temporary folder unless said otherwise, every
setting the bench does not name at its default: abiquo.max_connections 20, abiquo.cache_ttl 30 s,
mail.max_connections 4, worker.concurrency 64). Policy: the default, so every callback is a gated DEPLOY
of jdoe's VMs in "Acme & Söhne": the worker reads the task back from Abiquo, then the requester, the
VM(s) with their disks and volumes, the VDC, vApp, enterprise, the enterprise's 40 users (two pages) and
the datacenter (11 GETs for one VM; those the cache keeps are not read again within 30 s), then renders
and sends one approval email to each of the three approvers (Alice, Bob, Zoë). Every callback the bench
sends is for a task the simulator really holds (made with `/_bench/hold`, or by the simulator POSTing it
itself), so the worker triages it in full. Load comes from this process through httpx2, except in (a),
where it comes from `wrk`. The machine is shared and small, so every figure is a ratio against a baseline
measured in the same run, or a percentile over many samples; nothing is asserted, everything is printed.

(a) Callback acknowledgements per second ÷ /healthz requests per second, same server, measured with
    Debian's `wrk` (installed with apt-get when it is missing and the bench runs as root; otherwise the
    part is skipped with the command to run): 2 threads, 16 connections, each sending its next request
    as soon as its last was answered, so the server, not the client, sets the rate. A round, against a
    fresh `serve` (a worker's backlog from an earlier round would slow the next): 20 callbacks sent and
    triaged (warm-up), 1 s of /healthz (warm-up), then /healthz for a few seconds, then POST /callback
    for as long. wrk's Lua script sends the body the simulator rendered for one held DEPLOY with the task
    id replaced, per request, by the next of thousands of task ids the simulator holds (each wrk thread
    takes every other one; if they ran out it would send made-up ids `bench-<thread>-<n>`, and the report
    would say how many). Only answers below 400 count; refusals and requests unanswered within Abiquo's
    10 s read timeout are listed. While callbacks arrive, the worker in the same process triages them
    (Abiquo reads, three emails each): that is how `serve` runs, so it is part of what the rate
    measures; the report says how far the worker got meanwhile. Each round is followed by the same
    round against a fresh `serve --no-worker` (the web endpoints alone: the callbacks are stored and
    nothing triages them), which separates what a callback costs the web side from what the worker
    takes meanwhile. Reported: the median of the per-round ratios (the figure checked is the serve's
    own), and the serve process's CPU time per answer in each phase (/proc/<pid>/stat), which shows
    whether the server was saturated (about one core busy) and what each answer costs it.
(b) Click-to-continue latency, idle: for each of many held tasks (one DEPLOY each, triaged beforehand),
    the form POST of /accept that the approver's confirmation page makes (task + token, the token made
    with `LinkSigner` and the serve process's secret key, as in the email), one click at a time. The time
    runs from just before the POST is sent (this process) to the moment the continue request for that
    task reaches the simulator's ASGI app (the world process, timestamped at the door, before any
    simulator work). Both ends read `time.perf_counter()`, CLOCK_MONOTONIC on Linux, one clock for the
    whole machine; the run checks that first. Before the next click the bench waits for the emails the
    click causes (the requester's outcome email, and the "settled" emails to the other approvers: how
    many one click causes is counted once, half a second after the first click's outcome email) and
    30 ms more, so each click finds the worker idle, as a person's next click would. Reported: p50 and
    p99 (nearest rank).
(c) Callback-to-approver-email time for vApp 2 "Big batch" (100 VMs, so 100 tasks in one callback) with
    20 ms added to every simulated Abiquo API call: from just before this process POSTs the callback
    (the body the simulator rendered for that deploy) to the arrival of the third approval email in the
    inbox (the inbox's own timestamp of the message). The baseline is the same measurement against a
    second `serve` that differs only in `abiquo.max_connections = 1`: the same code, every API request
    strictly one after another, which is the one-VM-at-a-time way. Reported: the median of several runs
    of each, and baseline ÷ real.
(d) The serve processes' resident memory (VmRSS from /proc/<pid>/status) at the end of their parts, and
    their peak (VmHWM), for every `serve` run with the default settings ((a), (b)+(c), (e), (f), (g)).
    The figure checked is the largest VmRSS, in MB (10^6 bytes).
(e) A burst: 300 one-VM DEPLOY callbacks (300 tasks the simulator holds, its rendered bodies) sent at
    once by 16 concurrent senders (16 connections; each sender POSTs its next callback as soon as its
    last was answered), with 20 ms added to every simulated Abiquo API call. Timed from just before the
    first POST to the arrival of the last (the 900th) approval email of the burst in the inbox (the
    inbox's timestamp; only messages whose subject starts as an approval email's, "Approve ", count:
    not the outcome and "settled" emails the clicks of (f) cause). Each serve is fresh (its own SQLite
    file) and first triages one callback of its own, without the added latency (imports, templates,
    connections opened); then the inbox is emptied and the burst sent. A second after the last email the
    bench counts the approval emails again: more than 900 would mean a request was triaged twice. The
    baseline is the
    same burst against a `serve` configured one at a time, the way the 2013 tool did it:
    abiquo.max_connections = 1, mail.max_connections = 1, worker.concurrency = 1, abiquo.cache_ttl = 0
    (one job at a time, one API request at a time, every shared resource read again for each request,
    one SMTP session). Reported: the median of several runs against the default serve, the baseline's
    run, baseline ÷ real; with the API calls per callback and the CPU the serve and the world processes
    used meanwhile (a world near one core would mean the stand-in Abiquo, not the connector, set the pace).
(f) Clicks during that burst: on a fresh default serve, 150 held tasks are triaged beforehand (one DEPLOY
    each, posted by the simulator as in (b), without the added latency); then the burst of (e) is sent
    with its latency, and from 0.1 s after its first POST, every 0.1 s until the burst's last approval
    email has arrived, an approver confirms one of those tasks: the /accept form POST of (b), each click
    on its own (they do not wait for each other). Each click is timed as in (b): from just before its
    POST to its continue reaching the simulator's door. Reported: p50 and p99 over every click of every
    run (two runs), and how long the bursts took with the clicks going on; a run whose 150 tasks were all
    clicked before its burst ended is reported as such.
(g) The burst of (e) on PostgreSQL: a fresh database per run (CREATE DATABASE, dropped WITH (FORCE)
    after), migrated by `abiquo-workflow migrate` as an operator does (`serve` migrates only SQLite at
    start), then either one `serve` or two `serve` replicas on that database with the default settings
    (each with its worker; callback i goes to replica i mod 2). Each serve first triages one callback of
    its own. Timed as (e). Runs alternate one, two, one, two. Reported: the median of each, and
    one ÷ two. Skipped, with the reason, when no PostgreSQL URL is given or its server does not answer.

Exit status: 0 when the benchmark ran (targets met or not: it is a measurement; parts skipped for want of
wrk or PostgreSQL say so), 1 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2

from abiquo_workflow.config import AbiquoSettings, MailSettings, WorkerSettings
from abiquo_workflow.domain import Action
from abiquo_workflow.links import LinkSigner
from processes import (
    WRK_REPORT_MARK,
    BenchError,
    Child,
    Machine,
    Overrides,
    Serve,
    Unavailable,
    WorldAddress,
    WrkSummary,
    fresh_database,
    postgres_server,
    run_wrk,
    start_serve,
    start_world,
    wrk_program,
)

#: Abiquo gives up on the callback after `workflow.read.timeout`, 10 s by default (docs/protocol.md §2.3).
ABIQUO_READ_TIMEOUT = 10.0
#: jdoe's "web-01" (deploys of it ask Alice, Bob and Zoë), and "Big batch", 100 VMs of jdoe's.
SINGLE_VM = 1
BIG_BATCH_VAPP = 2
APPROVERS_PER_REQUEST = 3
#: How approval emails' subjects begin (`mail.approver_subject`, "Approve {action} of …" by default).
APPROVAL_SUBJECT = MailSettings().approver_subject.partition("{")[0]
#: Whom the signed links speak for, as `approvals.approver_address` writes it in the email.
APPROVER = "Alice Smith <alice.smith@acme.example>"
#: Seconds the simulator adds to every API call in (c), (e), (f) and (g).
API_LATENCY = 0.02
#: What `serve` uses unless configured otherwise (the real connector runs with the defaults).
DEFAULT_MAX_CONNECTIONS = AbiquoSettings().max_connections
DEFAULTS = (
    f"abiquo.max_connections {DEFAULT_MAX_CONNECTIONS}, abiquo.cache_ttl {AbiquoSettings().cache_ttl:g} s, "
    f"mail.max_connections {MailSettings().max_connections}, "
    f"worker.concurrency {WorkerSettings().concurrency}"
)
#: (c)'s baseline: the same server, one API request at a time.
SEQUENTIAL_API: Overrides = {"abiquo": {"max_connections": 1}}
#: (e)'s baseline: one at a time, the way the 2013 tool did it.
ONE_AT_A_TIME: Overrides = {
    "abiquo": {"max_connections": 1, "cache_ttl": 0},
    "mail": {"max_connections": 1},
    "worker": {"concurrency": 1},
}
ONE_AT_A_TIME_TEXT = (
    "abiquo.max_connections 1, mail.max_connections 1, worker.concurrency 1, abiquo.cache_ttl 0"
)
#: Pause after each click's outcome email in (b), so the worker's last writes are done before the next click.
SETTLE = 0.03
#: (b): seconds after the first click's outcome email until the bench counts the emails one click causes.
FIRST_CLICK_QUIET = 0.5
#: Callbacks sent (and triaged) before each measured round of (a).
WARM_UP_CALLBACKS = 20
#: wrk's threads in (a); its connections are `Plan.connections`.
WRK_THREADS = 2
#: Task ids the simulator holds for each second of (a)'s callback phase (far more than get acknowledged).
HELD_PER_SECOND = 2000
#: Where (a)'s callback body has the task id, for wrk's script to put one in.
TASK_ID_MARK = "BENCH_TASK_ID"
#: Concurrent senders of a burst (e), (f), (g).
BURST_SENDERS = 16
#: (f): seconds between two clicks during a burst.
CLICK_INTERVAL = 0.1
#: Seconds after a burst's last approval email the bench counts them again (a second triage would show).
RECOUNT_AFTER = 1.0


@dataclass(frozen=True)
class Plan:
    """How many samples each part takes."""

    rounds: int
    phase_seconds: int
    connections: int
    clicks: int
    fast_runs: int
    sequential_runs: int
    #: Callbacks in a burst, (e) (f) (g).
    burst: int
    burst_runs: int
    baseline_runs: int
    #: Tasks triaged before each burst of (f), for clicking during it; at most this many clicks a run.
    click_tasks: int
    click_runs: int
    #: Runs of each of one and two replicas in (g).
    replica_runs: int


FULL = Plan(
    rounds=3,
    phase_seconds=3,
    connections=16,
    clicks=200,
    fast_runs=5,
    sequential_runs=3,
    burst=300,
    burst_runs=3,
    baseline_runs=1,
    click_tasks=150,
    click_runs=2,
    replica_runs=2,
)
QUICK = Plan(
    rounds=1,
    phase_seconds=1,
    connections=16,
    clicks=20,
    fast_runs=1,
    sequential_runs=1,
    burst=60,
    burst_runs=1,
    baseline_runs=1,
    click_tasks=30,
    click_runs=1,
    replica_runs=1,
)


# --- talking to the world process -------------------------------------------------------------------


@dataclass(frozen=True)
class Captured:
    """A callback as the simulator rendered it, and the tasks it holds."""

    body: str
    content_type: str
    task_ids: tuple[str, ...]


class World:
    """The simulator's control surface and the `/_bench` routes of `bench/world.py`."""

    def __init__(self, address: WorldAddress, client: httpx2.AsyncClient, child: Child) -> None:
        self.url = address.url
        self.http = client
        self.child = child
        self._requester: str | None = None

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

    async def hold(self, count: int, *, bodies: bool = True) -> list[Captured]:
        """`count` one-VM deploys the simulator holds, with their callbacks (for the bench to send)."""
        result = await self._json(
            "POST",
            "/_bench/hold",
            json={"vm": SINGLE_VM, "count": count, "bodies": bodies},
            timeout=60 + count / 100,
        )
        return [
            Captured(c.get("body", ""), c.get("content_type", ""), tuple(c["task_ids"]))
            for c in result["callbacks"]
        ]

    async def requester(self) -> str:
        """The address of the requester (the owner of the one-VM deploys), who gets the outcome emails."""
        if self._requester is None:
            summary = await self._json("GET", "/_sim/world")
            owner = next(vm["owner_id"] for vm in summary["vms"] if vm["id"] == SINGLE_VM)
            self._requester = next(u["email"] for u in summary["users"] if u["id"] == owner)
        return self._requester

    async def inbox_count(self, *, subject: str = "", to: str = "") -> int:
        """Messages in the inbox (those whose subject starts with `subject`, sent to `to`)."""
        params = {"count": 0, "subject": subject, "to": to}
        return int((await self._json("GET", "/_bench/inbox", params=params))["count"])

    async def wait_for_mail(self, count: int, within: float, *, subject: str = "", to: str = "") -> float:
        """When (perf_counter) the `count`th message (whose subject starts with `subject`, sent to `to`)
        arrived; BenchError after `within` seconds."""
        params: dict[str, str | float] = {"count": count, "timeout": within, "subject": subject, "to": to}
        response = await self.http.get(f"{self.url}/_bench/inbox", params=params, timeout=within + 5)
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


def remember_memory(memory: dict[str, dict[str, int]], where: str, kib: dict[str, int]) -> None:
    """Keep a serve's VmRSS/VmHWM (`Child.memory_kib`) under `where`, unless a larger one is there."""
    if where not in memory or kib["VmRSS"] > memory[where]["VmRSS"]:
        memory[where] = kib


# --- (a) callback acknowledgements vs /healthz, with wrk ------------------------------------------------

#: `done()` of both wrk scripts: one line, WRK_REPORT_MARK then JSON (processes.run_wrk reads it).
WRK_REPORT_LUA = r"""
function done(summary, latency, requests)
   local made_up = 0
   for _, thread in ipairs(threads or {}) do
      made_up = made_up + (thread:get("made_up") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      '%s{"requests": %.0f, "duration_us": %.0f, "connect": %.0f, "read": %.0f, "write": %.0f, ' ..
      '"status": %.0f, "timeout": %.0f, "p50_us": %.0f, "p99_us": %.0f, "max_us": %.0f, ' ..
      '"made_up": %.0f}\n',
      "WRK_REPORT_MARK", summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(99), latency.max, made_up))
end
""".replace("WRK_REPORT_MARK", WRK_REPORT_MARK)

#: POST /callback, each request for another task the simulator holds. Arguments after `--`: the file
#: of held task ids (one a line), the body file (TASK_ID_MARK where the id goes), its Content-Type, the
#: number of wrk threads. Thread n sends ids n+1, n+1+threads, …; after the last, made-up ids.
WRK_CALLBACKS_LUA = r"""
threads = {}
local created = 0

function setup(thread)
   thread:set("number", created)
   created = created + 1
   table.insert(threads, thread)
end

function init(args)
   ids = {}
   for line in io.lines(args[1]) do
      ids[#ids + 1] = line
   end
   local file = assert(io.open(args[2], "rb"))
   template = file:read("*a")
   file:close()
   headers = {["Content-Type"] = args[3]}
   stride = tonumber(args[4])
   index = number + 1
   made_up = 0
end

function request()
   local id = ids[index]
   if id then
      index = index + stride
   else
      made_up = made_up + 1
      id = string.format("bench-%d-%d", number, made_up)
   end
   return wrk.format("POST", nil, headers, (template:gsub("TASK_ID_MARK", id)))
end
""".replace("TASK_ID_MARK", TASK_ID_MARK)


@dataclass(frozen=True)
class WrkPhase:
    """One timed wrk phase of (a), and the serve process's CPU time over it."""

    wrk: WrkSummary
    serve_cpu: float

    @property
    def ok(self) -> int:
        return self.wrk.requests - self.wrk.refused

    @property
    def rate(self) -> float:
        return self.ok / self.wrk.seconds if self.wrk.seconds else 0.0

    @property
    def cpu_share(self) -> float:
        """Cores the serve process used on average (1.0 = one core busy all the time)."""
        return self.serve_cpu / self.wrk.seconds if self.wrk.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.serve_cpu / self.ok if self.ok else float("nan")

    def problems(self) -> dict[str, int]:
        found = dict(self.wrk.socket_errors)
        if self.wrk.refused:
            found["status ≥ 400"] = self.wrk.refused
        if self.wrk.made_up:
            found["made-up task ids (the held ones ran out)"] = self.wrk.made_up
        return found


@dataclass
class RateRound:
    healthz: WrkPhase
    callbacks: WrkPhase
    #: Callbacks whose three approval emails had all arrived when the callback phase ended.
    triaged: int

    @property
    def ratio(self) -> float:
        return self.callbacks.rate / self.healthz.rate


@dataclass
class RateResult:
    rounds: list[RateRound] = field(default_factory=list)
    #: The same rounds against `serve --no-worker`: what the web endpoints alone cost.
    web_only: list[RateRound] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(r.ratio for r in self.rounds)

    @property
    def web_only_ratio(self) -> float:
        return statistics.median(r.ratio for r in self.web_only)


@dataclass(frozen=True)
class Wrk:
    """How (a) runs wrk: the program, its scripts, where its output goes, and the plan's load."""

    program: str
    folder: Path
    plan: Plan

    @property
    def log(self) -> Path:
        return self.folder / "wrk.log"

    def script(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.write_text(text, encoding="utf-8")
        return path

    async def phase(self, serve: Serve, path: str, script: Path, args: list[str], seconds: int) -> WrkPhase:
        cpu_before = serve.child.cpu_seconds()
        summary = await run_wrk(
            self.program,
            f"{serve.url}{path}",
            script=script,
            args=args,
            connections=self.plan.connections,
            threads=WRK_THREADS,
            seconds=seconds,
            answer_timeout=ABIQUO_READ_TIMEOUT,
            log=self.log,
        )
        return WrkPhase(summary, serve.child.cpu_seconds() - cpu_before)


async def rate_round(serve: Serve, world: World, wrk: Wrk, number: int, *, worker: bool = True) -> RateRound:
    """Warm-up, then /healthz for `plan.phase_seconds`, then as long of callbacks, each for a held task.
    `worker`: whether `serve` runs its worker (then the warm-up callbacks are triaged before the phases)."""
    plan = wrk.plan
    warm_up = await world.hold(WARM_UP_CALLBACKS)
    held = await world.hold(plan.phase_seconds * HELD_PER_SECOND, bodies=False)
    ids = wrk.folder / f"a{number}-task-ids.txt"
    ids.write_text("".join(f"{c.task_ids[0]}\n" for c in held), encoding="utf-8")
    first = warm_up[0]
    body = wrk.folder / "a-callback-body"
    body.write_text(first.body.replace(first.task_ids[0], TASK_ID_MARK), encoding="utf-8")
    healthz_script = wrk.script("healthz.lua", WRK_REPORT_LUA)
    callbacks_script = wrk.script("callbacks.lua", WRK_CALLBACKS_LUA + WRK_REPORT_LUA)

    # Warm up: every code path of a callback and its triage run once (imports, statement caches).
    async with httpx2.AsyncClient(trust_env=False, timeout=ABIQUO_READ_TIMEOUT) as client:
        for callback in warm_up:
            response = await client.post(
                f"{serve.url}/callback",
                content=callback.body,
                headers={"content-type": callback.content_type},
            )
            if response.status_code != 200:
                raise BenchError(f"a warm-up callback answered {response.status_code}: {response.text[:200]}")
    if worker:
        await world.wait_for_mail(WARM_UP_CALLBACKS * APPROVERS_PER_REQUEST, within=60)
    await world.clear_inbox()
    await wrk.phase(serve, "/healthz", healthz_script, [], 1)  # connections open, the server warm
    hz = await wrk.phase(serve, "/healthz", healthz_script, [], plan.phase_seconds)
    args = [str(ids), str(body), first.content_type, str(WRK_THREADS)]
    cb = await wrk.phase(serve, "/callback", callbacks_script, args, plan.phase_seconds)
    triaged = await world.inbox_count() // APPROVERS_PER_REQUEST
    if not hz.ok or not cb.ok:
        raise BenchError(f"nothing was acknowledged: /healthz {hz.problems()}, /callback {cb.problems()}")
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
    left with after a callback phase would take long to drain and would slow the next /healthz phase.
    Each round is followed by one against a fresh `serve --no-worker`, which shows what of the rate is
    the web endpoints' own cost and what the worker (in the same process) takes meanwhile."""
    wrk = Wrk(wrk_program(), folder, plan)
    result = RateResult()
    for number in range(1, plan.rounds + 1):
        for worker in (True, False):
            name = f"serve-a{number}" if worker else f"serve-a{number}-no-worker"
            serve = start_serve(folder, name, address, secret_key, no_worker=not worker)
            try:
                one = await rate_round(serve, world, wrk, number, worker=worker)
                if worker:
                    where = "serve for (a), at the end of its callbacks"
                    remember_memory(memory, where, serve.child.memory_kib())
            finally:
                serve.child.stop()
            await world.clear_inbox()
            await world.reset()
            (result.rounds if worker else result.web_only).append(one)
            label = "" if worker else ", serve --no-worker"
            progress(
                f"  round {number}{label}: /healthz {one.healthz.rate:,.0f}/s, "
                f"/callback {one.callbacks.rate:,.0f}/s (ratio {one.ratio:.3f})"
            )
    return result


# --- (b) click-to-continue latency ------------------------------------------------------------------


@dataclass
class ClickResult:
    continue_ms: list[float] = field(default_factory=list)
    page_ms: list[float] = field(default_factory=list)
    #: Seconds from the first held task's request to the last approval email: the worker's pace.
    triage_seconds: float = 0.0


def accept_form(signer: LinkSigner, task_id: str) -> tuple[str, dict[str, str]]:
    """The path and fields the confirmation page's form POSTs for the link in the approver's email."""
    link = urlsplit(signer.task_url(task_id, Action.ACCEPT, APPROVER))
    fields = dict(parse_qsl(link.query))
    return link.path, {"task": fields["task"], "token": fields["token"], "reason": ""}


async def triaged_tasks(serve: Serve, world: World, count: int) -> tuple[list[str], float]:
    """`count` one-VM deploys the simulator holds and POSTs to `serve` itself, triaged: their task ids,
    and the seconds from the first request to the last approval email. The inbox is emptied before
    (what earlier parts left there would be counted) and after."""
    await world.clear_inbox()
    callback_url = f"{serve.url}/callback"
    task_ids: list[str] = []
    started = time.perf_counter()
    # Four requests at a time: as fast as the simulator makes them, without piling up callbacks.
    for start in range(0, count, 4):
        batch = range(start, min(start + 4, count))
        made = await asyncio.gather(*(world.request(vm=SINGLE_VM, callback_url=callback_url) for _ in batch))
        task_ids.extend(t for ids in made for t in ids)
    await world.wait_for_mail(len(task_ids) * APPROVERS_PER_REQUEST, within=60 + count)
    seconds = time.perf_counter() - started
    await world.clear_inbox()
    return task_ids, seconds


async def click(
    browser: httpx2.AsyncClient, serve: Serve, world: World, signer: LinkSigner, task_id: str
) -> tuple[float, float]:
    """Confirm Accept for `task_id` as the confirmation page's form does: ms to Abiquo's continue (at
    the simulator's door), and ms to the page's answer."""
    path, form = accept_form(signer, task_id)
    started = time.perf_counter()
    page = await browser.post(f"{serve.url}{path}", data=form)
    answered = time.perf_counter()
    if page.status_code != 200:
        raise BenchError(f"POST {path} for task {task_id} answered {page.status_code}")
    arrived = await world.continue_at(task_id, within=60)
    return 1000 * (arrived - started), 1000 * (answered - started)


async def check_continued(world: World, task_ids: Sequence[str]) -> None:
    wanted = set(task_ids)
    delivered = [c for c in await world.continues() if c["task_id"] in wanted]
    if len(delivered) != len(wanted) or any(c["status"] != 204 for c in delivered):
        raise BenchError("not every click ended in exactly one continue that Abiquo answered 204")


async def click_latency(serve: Serve, world: World, plan: Plan) -> ClickResult:
    await world.check_clock()
    task_ids, triage_seconds = await triaged_tasks(serve, world, plan.clicks)
    result = ClickResult(triage_seconds=triage_seconds)
    progress(f"  {len(task_ids)} held tasks stored and triaged; clicking Accept on each, one at a time")

    signer = LinkSigner(serve.secret_key, serve.url, ttl=3600)
    async with httpx2.AsyncClient(trust_env=False, timeout=ABIQUO_READ_TIMEOUT) as browser:
        await browser.get(f"{serve.url}/healthz")  # the connection is open before the first click
        requester = await world.requester()
        per_click = 0  # emails one decision causes, counted after the first click
        for number, task_id in enumerate(task_ids, start=1):
            continue_ms, page_ms = await click(browser, serve, world, signer, task_id)
            result.continue_ms.append(continue_ms)
            result.page_ms.append(page_ms)
            # The requester's outcome email, and the "settled" emails to the other approvers where the
            # connector sends them, then the writes that follow them (the emails marked sent, the jobs
            # completed): a person's next click comes seconds later, to an idle worker.
            if not per_click:
                await world.wait_for_mail(1, within=10, to=requester)
                await asyncio.sleep(FIRST_CLICK_QUIET)
                per_click = await world.inbox_count()
            await world.wait_for_mail(number * per_click, within=10)
            await asyncio.sleep(SETTLE)
    await check_continued(world, task_ids)
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
    sequential = start_serve(folder, "serve-sequential", address, serve.secret_key, settings=SEQUENTIAL_API)
    children.append(sequential.child)
    slow, slow_calls = await batch_to_emails(sequential, world, plan.sequential_runs)
    progress(f"  max_connections 1: {', '.join(f'{s:.2f}' for s in slow)} s")
    sequential.child.stop()
    await world.set_latency(0)
    return BatchResult(fast, slow, fast_calls, slow_calls)


# --- (e) a burst of callbacks to the last approval email ------------------------------------------------


@dataclass(frozen=True)
class BurstRun:
    """One burst: what it took, and what the processes did meanwhile."""

    callbacks: int
    #: From just before the first POST to the arrival of the last approval email.
    seconds: float
    #: From just before the first POST to the last acknowledgement.
    acked_seconds: float
    slowest_ack: float
    #: Simulated Abiquo API calls from the first POST until a second after the last email.
    api_calls: int
    #: CPU seconds of the serve process(es), and of the world process, from the first POST to the last email.
    serve_cpu: float
    world_cpu: float
    #: Approval emails beyond 3 per callback, a second after the last: requests triaged twice.
    extra_emails: int

    @property
    def serve_share(self) -> float:
        return self.serve_cpu / self.seconds

    @property
    def world_share(self) -> float:
        return self.world_cpu / self.seconds


#: Run beside a burst (f): handed an event set when its last approval email arrived, and its start time.
BesideBurst = Callable[[asyncio.Event, float], Coroutine[Any, Any, None]]


async def burst(
    world: World,
    serves: Sequence[Serve],
    callbacks: Sequence[Captured],
    *,
    within: float,
    beside: BesideBurst | None = None,
) -> BurstRun:
    """POST every callback, BURST_SENDERS at a time (callback i to serves[i mod len]); wait for the
    approval emails of them all (3 each; other emails, such as the requester's, are not counted)."""
    expected = len(callbacks) * APPROVERS_PER_REQUEST
    await world.clear_inbox()
    calls_before = await world.api_call_count()
    acks: list[float] = []
    queue = iter(enumerate(callbacks))
    limits = httpx2.Limits(max_connections=BURST_SENDERS, max_keepalive_connections=BURST_SENDERS)
    async with httpx2.AsyncClient(trust_env=False, limits=limits, timeout=ABIQUO_READ_TIMEOUT) as client:

        async def sender() -> None:
            for number, callback in queue:  # one iterator for every sender: each takes the next callback
                serve = serves[number % len(serves)]
                sent = time.perf_counter()
                response = await client.post(
                    f"{serve.url}/callback",
                    content=callback.body,
                    headers={"content-type": callback.content_type},
                )
                if response.status_code != 200:
                    raise BenchError(
                        f"a callback of the burst answered {response.status_code}: {response.text[:200]}"
                    )
                acks.append(time.perf_counter() - sent)

        finished = asyncio.Event()
        serve_cpu = sum(s.child.cpu_seconds() for s in serves)
        world_cpu = world.child.cpu_seconds()
        started = time.perf_counter()
        alongside = asyncio.create_task(beside(finished, started)) if beside is not None else None
        try:
            await asyncio.gather(*(sender() for _ in range(BURST_SENDERS)))
            acked = time.perf_counter()
            arrived = await world.wait_for_mail(expected, within=within, subject=APPROVAL_SUBJECT)
            serve_cpu = sum(s.child.cpu_seconds() for s in serves) - serve_cpu
            world_cpu = world.child.cpu_seconds() - world_cpu
        except BaseException:
            if alongside is not None:
                alongside.cancel()
            raise
        finally:
            finished.set()
        if alongside is not None:
            await alongside
    await asyncio.sleep(RECOUNT_AFTER)
    extra = await world.inbox_count(subject=APPROVAL_SUBJECT) - expected
    calls = await world.api_call_count() - calls_before
    return BurstRun(
        callbacks=len(callbacks),
        seconds=arrived - started,
        acked_seconds=acked - started,
        slowest_ack=max(acks),
        api_calls=calls,
        serve_cpu=serve_cpu,
        world_cpu=world_cpu,
        extra_emails=extra,
    )


def burst_within(callbacks: int) -> float:
    """How long a burst may take before the bench gives up: the one-at-a-time baseline takes about
    0.3 s a callback on a small machine."""
    return 120 + 1.5 * callbacks


async def warmed_up(serves: Sequence[Serve], world: World) -> None:
    """Each serve triages one callback of its own (imports, templates, connections), without latency."""
    await world.set_latency(0)
    for serve in serves:
        await triaged_tasks(serve, world, 1)


@dataclass
class BurstResult:
    real: list[BurstRun]
    baseline: list[BurstRun]

    @property
    def speedup(self) -> float:
        return statistics.median(r.seconds for r in self.baseline) / statistics.median(
            r.seconds for r in self.real
        )


async def one_burst(
    folder: Path,
    name: str,
    address: WorldAddress,
    world: World,
    plan: Plan,
    secret_key: str,
    settings: Overrides | None = None,
) -> tuple[BurstRun, dict[str, int]]:
    """A fresh serve (with `settings`), warmed up, then a burst of `plan.burst` callbacks; its memory."""
    callbacks = await world.hold(plan.burst)
    serve = start_serve(folder, name, address, secret_key, settings=settings)
    try:
        await warmed_up([serve], world)
        await world.set_latency(API_LATENCY)
        run = await burst(world, [serve], callbacks, within=burst_within(plan.burst))
        return run, serve.child.memory_kib()
    finally:
        serve.child.stop()
        await world.set_latency(0)
        await world.reset()


async def burst_speedup(
    folder: Path,
    address: WorldAddress,
    world: World,
    plan: Plan,
    secret_key: str,
    memory: dict[str, dict[str, int]],
) -> BurstResult:
    result = BurstResult([], [])
    for number in range(1, plan.burst_runs + 1):
        run, kib = await one_burst(folder, f"serve-e{number}", address, world, plan, secret_key)
        remember_memory(memory, "serve for (e), after its burst", kib)
        result.real.append(run)
        progress(f"  default settings: {run.seconds:.2f} s")
    for number in range(1, plan.baseline_runs + 1):
        run, _ = await one_burst(
            folder, f"serve-e-baseline{number}", address, world, plan, secret_key, ONE_AT_A_TIME
        )
        result.baseline.append(run)
        progress(f"  one at a time: {run.seconds:.2f} s")
    return result


# --- (f) clicks during a burst ------------------------------------------------------------------------


@dataclass
class BurstClicks:
    clicks: ClickResult = field(default_factory=ClickResult)
    #: Seconds after its burst's first POST that each click was sent.
    sent_at: list[float] = field(default_factory=list)
    runs: list[BurstRun] = field(default_factory=list)
    #: Runs whose triaged tasks were all clicked before the burst ended (clicks stopped early).
    ran_out: int = 0


@dataclass
class Clicker:
    """Beside a burst (`BesideBurst`): one click every CLICK_INTERVAL, each on its own, until it ends."""

    browser: httpx2.AsyncClient
    serve: Serve
    world: World
    task_ids: list[str]
    result: BurstClicks
    clicked: list[str] = field(default_factory=list)

    async def __call__(self, finished: asyncio.Event, started: float) -> None:
        signer = LinkSigner(self.serve.secret_key, self.serve.url, ttl=3600)
        running: list[asyncio.Task[tuple[float, float]]] = []
        for task_id in self.task_ids:
            await asyncio.sleep(CLICK_INTERVAL)
            if finished.is_set():
                break
            self.result.sent_at.append(time.perf_counter() - started)
            running.append(asyncio.create_task(click(self.browser, self.serve, self.world, signer, task_id)))
            self.clicked.append(task_id)
        else:  # every triaged task clicked
            if not finished.is_set():
                self.result.ran_out += 1
        for continue_ms, page_ms in await asyncio.gather(*running):
            self.result.clicks.continue_ms.append(continue_ms)
            self.result.clicks.page_ms.append(page_ms)


async def clicks_during_burst(
    folder: Path,
    address: WorldAddress,
    world: World,
    plan: Plan,
    secret_key: str,
    memory: dict[str, dict[str, int]],
) -> BurstClicks:
    await world.check_clock()
    result = BurstClicks()
    for number in range(1, plan.click_runs + 1):
        callbacks = await world.hold(plan.burst)
        serve = start_serve(folder, f"serve-f{number}", address, secret_key)
        try:
            await world.set_latency(0)
            task_ids, _ = await triaged_tasks(serve, world, plan.click_tasks)
            async with httpx2.AsyncClient(trust_env=False, timeout=ABIQUO_READ_TIMEOUT) as browser:
                await browser.get(f"{serve.url}/healthz")
                clicker = Clicker(browser, serve, world, task_ids, result)
                await world.set_latency(API_LATENCY)
                run = await burst(world, [serve], callbacks, within=burst_within(plan.burst), beside=clicker)
            await check_continued(world, clicker.clicked)
            remember_memory(memory, "serve for (f), after its burst and clicks", serve.child.memory_kib())
        finally:
            serve.child.stop()
            await world.set_latency(0)
            await world.reset()
        result.runs.append(run)
        progress(f"  run {number}: {len(clicker.clicked)} clicks during a burst of {run.seconds:.2f} s")
    return result


# --- (g) the burst on PostgreSQL, one replica and two -------------------------------------------------


@dataclass
class ReplicaResult:
    one: list[BurstRun] = field(default_factory=list)
    two: list[BurstRun] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(r.seconds for r in self.one) / statistics.median(r.seconds for r in self.two)


async def replica_bursts(
    folder: Path,
    address: WorldAddress,
    world: World,
    plan: Plan,
    secret_key: str,
    server: str,
    memory: dict[str, dict[str, int]],
) -> ReplicaResult:
    result = ReplicaResult()
    for number in range(1, plan.replica_runs + 1):
        for replicas in (1, 2):
            callbacks = await world.hold(plan.burst)
            serves: list[Serve] = []
            with fresh_database(server) as url:
                try:
                    for replica in range(1, replicas + 1):
                        name = f"serve-g{number}-{replicas}x-{replica}"
                        serves.append(
                            start_serve(
                                folder, name, address, secret_key, database_url=url, run_migrate=replica == 1
                            )
                        )
                    await warmed_up(serves, world)
                    await world.set_latency(API_LATENCY)
                    run = await burst(world, serves, callbacks, within=burst_within(plan.burst))
                    for serve in serves:
                        where = "serve for (g) on PostgreSQL, after its burst"
                        remember_memory(memory, where, serve.child.memory_kib())
                finally:
                    for serve in serves:
                        serve.child.stop()
                    await world.set_latency(0)
                    await world.reset()
            (result.one if replicas == 1 else result.two).append(run)
            progress(f"  {replicas} replica{'s' if replicas > 1 else ''}: {run.seconds:.2f} s")
    return result


# --- the report ---------------------------------------------------------------------------------------


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Row:
    metric: str
    value: str
    target: str
    #: None: a figure without a target.
    met: bool | None


def table(rows: list[Row]) -> str:
    header = ("metric", "value", "target", "")
    verdict = {True: "met", False: "MISSED", None: ""}
    cells = [header] + [(r.metric, r.value, r.target, verdict[r.met]) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_rates(result: RateResult) -> Iterator[str]:
    yield f"(a) callbacks vs /healthz, wrk with {WRK_THREADS} threads and 16 connections, per round:"
    for number, r in enumerate(result.rounds, start=1):
        hz, cb = r.healthz, r.callbacks
        yield (
            f"    round {number}: /healthz {hz.rate:7,.0f}/s (serve {hz.cpu_share:4.0%} CPU, "
            f"{hz.cpu_ms_per_request:.3f} ms CPU/request, p99 {hz.wrk.p99_ms:.1f} ms) · /callback "
            f"{cb.rate:5,.0f}/s (serve {cb.cpu_share:4.0%} CPU, {cb.cpu_ms_per_request:.2f} ms CPU/ack, "
            f"worker included; p50 {cb.wrk.p50_ms:.0f} ms, p99 {cb.wrk.p99_ms:.0f} ms, max "
            f"{cb.wrk.max_ms:.0f} ms) · ratio {r.ratio:.3f} · meanwhile the worker emailed the approvers "
            f"of {r.triaged / cb.wrk.seconds:.0f} callbacks/s"
        )
        not_ok = {
            **{f"/healthz {k}": v for k, v in hz.problems().items()},
            **{f"/callback {k}": v for k, v in cb.problems().items()},
        }
        if not_ok:
            yield "      not acknowledged: " + ", ".join(f"{k}: {v}" for k, v in sorted(not_ok.items()))
    for number, r in enumerate(result.web_only, start=1):
        hz, cb = r.healthz, r.callbacks
        yield (
            f"    round {number}, serve --no-worker (the web endpoints alone, nothing triaged): /healthz "
            f"{hz.rate:7,.0f}/s (serve {hz.cpu_share:4.0%} CPU, {hz.cpu_ms_per_request:.3f} ms CPU/request)"
            f" · /callback {cb.rate:5,.0f}/s (serve {cb.cpu_share:4.0%} CPU, {cb.cpu_ms_per_request:.2f} ms "
            f"CPU/ack; p99 {cb.wrk.p99_ms:.0f} ms) · ratio {r.ratio:.3f}"
        )
    hz_cpu = statistics.median(r.healthz.cpu_ms_per_request for r in result.rounds)
    cb_cpu = statistics.median(r.callbacks.cpu_ms_per_request for r in result.rounds)
    hz_share = statistics.median(r.healthz.cpu_share for r in result.rounds)
    yield (
        f"    serve CPU per answer: /healthz {hz_cpu:.3f} ms, /callback {cb_cpu:.2f} ms (storing it plus the "
        f"worker's triage and emails done meanwhile): a CPU-bound server answers callbacks at about "
        f"{hz_cpu / cb_cpu:.3f} times its /healthz rate."
    )
    if hz_share < 0.9:
        yield (
            f"    note: during /healthz the serve process used {hz_share:.0%} of a core: it was not "
            "saturated (the machine's other load, or wrk, set that rate)."
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


def describe_burst_runs(name: str, runs: Sequence[BurstRun]) -> str:
    each = ", ".join(f"{r.seconds:.2f}" for r in runs)
    worst = max(runs, key=lambda r: r.seconds)
    extra = sum(r.extra_emails for r in runs)
    return (
        f"    {name}: {each} s; median {statistics.median(r.seconds for r in runs):.2f} s. Slowest run: "
        f"all acknowledged {worst.acked_seconds:.2f} s after the first POST (slowest answer "
        f"{worst.slowest_ack * 1000:.0f} ms), {worst.api_calls / worst.callbacks:.1f} API calls per "
        f"callback, serve {worst.serve_share:.0%} of a core, world (simulator + inbox) "
        f"{worst.world_share:.0%}" + (f"; {extra} approval emails too many" if extra else "")
    )


def describe_bursts(result: BurstResult, plan: Plan) -> Iterator[str]:
    yield (
        f"(e) burst of {plan.burst} one-VM callbacks from {BURST_SENDERS} senders, {API_LATENCY * 1000:.0f} "
        f"ms added to each API call, first POST → last ({plan.burst * APPROVERS_PER_REQUEST}th) approval "
        "email in the inbox:"
    )
    yield describe_burst_runs(f"serve ({DEFAULTS}: the defaults)", result.real)
    yield describe_burst_runs(f"baseline, one at a time ({ONE_AT_A_TIME_TEXT})", result.baseline)


def describe_burst_clicks(result: BurstClicks) -> Iterator[str]:
    c, p = result.clicks.continue_ms, result.clicks.page_ms
    yield (
        f"(f) {len(c)} clicks during bursts ({len(result.runs)} runs, one click every "
        f"{CLICK_INTERVAL * 1000:.0f} ms from {result.sent_at and min(result.sent_at):.1f} s to "
        f"{result.sent_at and max(result.sent_at):.1f} s after the first POST), POST /accept → continue at "
        f"the simulator: p50 {percentile(c, 0.5):.0f} ms, p90 {percentile(c, 0.9):.0f} ms, "
        f"p99 {percentile(c, 0.99):.0f} ms, max {max(c):.0f} ms; the page answered in p50 "
        f"{percentile(p, 0.5):.0f} ms, p99 {percentile(p, 0.99):.0f} ms"
    )
    yield describe_burst_runs("the bursts, with the clicks", result.runs)
    if result.ran_out:
        yield f"    note: in {result.ran_out} run(s) every triaged task was clicked before the burst ended"


def describe_replicas(result: ReplicaResult, plan: Plan) -> Iterator[str]:
    yield f"(g) the burst of (e) ({plan.burst} callbacks) on PostgreSQL, fresh database each run:"
    yield describe_burst_runs("one serve", result.one)
    yield describe_burst_runs("two serve replicas, callbacks alternating (CPU: both together)", result.two)


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Results:
    rates: RateResult | None = None
    clicks: ClickResult | None = None
    batch: BatchResult | None = None
    bursts: BurstResult | None = None
    burst_clicks: BurstClicks | None = None
    replicas: ReplicaResult | None = None
    #: Parts that could not run here, and why.
    skipped: dict[str, str] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)

    def any(self) -> bool:
        found = (self.rates, self.clicks, self.batch, self.bursts, self.burst_clicks, self.replicas)
        return any(r is not None for r in found)


async def run(plan: Plan, folder: Path, results: Results, parts: str, postgres_url: str | None) -> None:
    world_child, address = start_world(folder)
    children: list[Child] = [world_child]
    try:
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as control:
            world = World(address, control, world_child)
            secret_key = secrets.token_urlsafe(32)
            memory = results.memory

            if "a" in parts:
                with timed("(a) callback acknowledgements vs /healthz, with wrk"):
                    try:
                        results.rates = await callback_rate(folder, address, world, plan, secret_key, memory)
                    except Unavailable as why:
                        results.skipped["a"] = str(why)
                    await world.reset()
            if "b" in parts or "c" in parts:
                main_serve = start_serve(folder, "serve-bc", address, secret_key)
                children.append(main_serve.child)
                if "b" in parts:
                    with timed("(b) click-to-continue latency"):
                        results.clicks = await click_latency(main_serve, world, plan)
                if "c" in parts:
                    with timed("(c) 100-VM callback to approval emails"):
                        results.batch = await batch_speedup(
                            folder, address, world, plan, main_serve, children
                        )
                label = " and ".join(f"({p})" for p in "bc" if p in parts)
                remember_memory(memory, f"serve for {label}, at the end", main_serve.child.memory_kib())
                main_serve.child.stop()
                await world.reset()
            if "e" in parts:
                with timed(f"(e) burst of {plan.burst} callbacks, against one at a time"):
                    results.bursts = await burst_speedup(folder, address, world, plan, secret_key, memory)
            if "f" in parts:
                with timed("(f) clicks during a burst"):
                    results.burst_clicks = await clicks_during_burst(
                        folder, address, world, plan, secret_key, memory
                    )
            if "g" in parts:
                with timed("(g) the burst on PostgreSQL, one replica and two"):
                    try:
                        if not postgres_url:
                            raise Unavailable(
                                "no PostgreSQL server given: pass --postgres-url, or set "
                                "AWF_BENCH_POSTGRES_URL or AWF_TEST_POSTGRES_URL"
                            )
                        server = postgres_server(postgres_url)
                        results.replicas = await replica_bursts(
                            folder, address, world, plan, secret_key, server, memory
                        )
                    except Unavailable as why:
                        results.skipped["g"] = str(why)
                        progress(f"  skipped: {why}")
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
        rows.append(
            Row("(a) callback acks/s ÷ /healthz/s, wrk (median)", f"{ratio:.3f}", "≥ 0.5", ratio >= 0.5)
        )
        if results.rates.web_only:
            web_only = results.rates.web_only_ratio
            rows.append(Row("(a) the same, serve --no-worker", f"{web_only:.3f}", "(for comparison)", None))
    if results.clicks is not None:
        lines.extend(describe_clicks(results.clicks))
        p50, p99 = percentile(results.clicks.continue_ms, 0.5), percentile(results.clicks.continue_ms, 0.99)
        rows.append(Row("(b) click → continue p50, idle", f"{p50:.1f} ms", "≤ 15 ms", p50 <= 15))
        rows.append(Row("(b) click → continue p99, idle", f"{p99:.1f} ms", "≤ 60 ms", p99 <= 60))
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
    if results.bursts is not None:
        lines.extend(describe_bursts(results.bursts, plan))
        real = statistics.median(r.seconds for r in results.bursts.real)
        speedup = results.bursts.speedup
        rows.append(
            Row(
                f"(e) burst of {plan.burst} → last approval email",
                f"{real:.2f} s, {speedup:.1f} x faster than one at a time",
                "≥ 10 x (about 5 s)",
                speedup >= 10,
            )
        )
    if results.burst_clicks is not None:
        lines.extend(describe_burst_clicks(results.burst_clicks))
        c = results.burst_clicks.clicks.continue_ms
        p50, p99 = percentile(c, 0.5), percentile(c, 0.99)
        rows.append(
            Row(
                "(f) click → continue during the burst",
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms",
                "p99 ≤ 500 ms",
                p99 <= 500,
            )
        )
    if results.replicas is not None:
        lines.extend(describe_replicas(results.replicas, plan))
        one = statistics.median(r.seconds for r in results.replicas.one)
        two = statistics.median(r.seconds for r in results.replicas.two)
        rows.append(
            Row(
                "(g) burst on PostgreSQL, one replica ÷ two",
                f"{results.replicas.ratio:.2f} ({one:.2f} s ÷ {two:.2f} s)",
                "(a ratio, no target)",
                None,
            )
        )
    for part, why in results.skipped.items():
        lines.append(f"({part}) skipped: {why}")
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


PARTS = "abcdefg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the approval loop's speed and memory.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run with few samples")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, databases)")
    parser.add_argument(
        "--only",
        default=PARTS,
        help="run only these parts, for example `--only b` or `ef` (d comes with any)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("AWF_BENCH_POSTGRES_URL") or os.environ.get("AWF_TEST_POSTGRES_URL"),
        help="PostgreSQL server for (g), e.g. postgresql://postgres@127.0.0.1:5432/test (a database is "
        "created and dropped for each run); default $AWF_BENCH_POSTGRES_URL, else $AWF_TEST_POSTGRES_URL",
    )
    options = parser.parse_args(argv)
    unknown = set(options.only) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {''.join(sorted(unknown))}: choose from {PARTS}")
    plan = QUICK if options.quick else FULL
    started = datetime.datetime.now(datetime.UTC)
    clock = time.perf_counter()
    load_at_start = load_average()
    folder = Path(tempfile.mkdtemp(prefix="awf-bench-"))
    results = Results()
    try:
        _event_loop_run(run(plan, folder, results, options.only, options.postgres_url))
    except (BenchError, httpx2.HTTPError, OSError) as exc:
        if results.any():
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
