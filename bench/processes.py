"""The processes the benchmark starts and watches: the world (simulator + inbox), `abiquo-workflow serve`
(and `migrate`), the load generator `wrk`; and the PostgreSQL databases the bench makes for itself.

Each is started the way a person would start it (the installed `abiquo-workflow` command with a TOML
config file; `python bench/world.py`; Debian's `wrk`), its output goes to a log file in the run's
temporary folder, and it is stopped with SIGTERM (SIGKILL after a grace period) by the pid we started,
never by name. A PostgreSQL database is created for one run and dropped after it (`fresh_database`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2
from sqlalchemy.engine import make_url

BENCH_DIR = Path(__file__).resolve().parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_READY_TIMEOUT = 60.0


class BenchError(Exception):
    """The benchmark itself could not run (a process did not start, an answer was wrong)."""


class Unavailable(Exception):
    """A part cannot run on this machine (a program or a server it needs is missing); the message says
    why and what to do. The other parts still run."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_environment() -> dict[str, str]:
    """This environment without `AWF_*` settings, so that the config file alone decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWF_")}


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Child:
    """A started process with its log file; `stop()` ends exactly that process."""

    def __init__(
        self, name: str, args: list[str], log: Path, cwd: Path, *, read_stdout: bool = False
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            args,
            cwd=cwd,
            env=_clean_environment(),
            stdout=subprocess.PIPE if read_stdout else self._log_file,
            stderr=self._log_file,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.process.returncode}; the end of its log "
                f"({self.log}):\n{_tail(self.log)}"
            )

    def stop(self, grace: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log_file.close()

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (resident now) and VmHWM (the peak resident size), KiB, from /proc/<pid>/status."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of every thread of the process so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)


@dataclass(frozen=True)
class WorldAddress:
    url: str
    smtp_port: int

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def start_world(folder: Path) -> tuple[Child, WorldAddress]:
    """Start `bench/world.py` and wait for the line saying where it listens."""
    child = Child(
        "the world (simulator + inbox)",
        [sys.executable, str(BENCH_DIR / "world.py")],
        folder / "world.log",
        folder,
        read_stdout=True,
    )
    assert child.process.stdout is not None
    line = child.process.stdout.readline()
    if not line:
        child.check_alive()
        raise BenchError(f"the world process said nothing; see {child.log}")
    ready = json.loads(line)
    return child, WorldAddress(ready["url"], int(ready["smtp_port"]))


def serve_command() -> str:
    """The installed `abiquo-workflow` script beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("abiquo-workflow")
    if beside.exists():
        return str(beside)
    found = shutil.which("abiquo-workflow")
    if found is None:
        raise BenchError("the abiquo-workflow command is not installed; run `uv sync` first")
    return found


#: TOML settings by section and key, for example `{"abiquo": {"max_connections": 1}}`.
Overrides = Mapping[str, Mapping[str, str | int | float | bool]]


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's


def render_toml(sections: Overrides) -> str:
    """One `[section]` table per entry, `key = value` lines (strings, numbers and booleans only)."""
    lines: list[str] = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
    return "\n".join(lines) + "\n"


def serve_settings(
    *,
    port: int,
    secret_key: str,
    database_url: str,
    world: WorldAddress,
    overrides: Overrides | None = None,
) -> dict[str, dict[str, str | int | float | bool]]:
    """What every bench `serve` is configured with, with `overrides` laid over it key by key."""
    sections: dict[str, dict[str, str | int | float | bool]] = {
        "server": {"bind": f"127.0.0.1:{port}", "secret_key": secret_key},
        "database": {"url": database_url},
        "abiquo": {"api_url": world.api_url},
        "mail": {
            "smtp_host": "127.0.0.1",
            "smtp_port": world.smtp_port,
            "sender": "abiquo-workflow@bench.example",
        },
    }
    for section, keys in (overrides or {}).items():
        sections.setdefault(section, {}).update(keys)
    return sections


@dataclass
class Serve:
    """A running `abiquo-workflow serve`."""

    child: Child
    url: str
    secret_key: str
    config: Path


def migrate(config: Path, log: Path) -> None:
    """`abiquo-workflow --config X migrate`, as an operator runs it once per release on PostgreSQL (where
    `serve` does not migrate at start: runtime.migrates_at_start); BenchError when it fails."""
    with log.open("wb") as output:
        done = subprocess.run(
            [serve_command(), "--config", str(config), "migrate"],
            cwd=config.parent,
            env=_clean_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise BenchError(f"`abiquo-workflow migrate` exited with status {done.returncode}:\n{_tail(log)}")


def start_serve(
    folder: Path,
    name: str,
    world: WorldAddress,
    secret_key: str,
    *,
    settings: Overrides | None = None,
    database_url: str | None = None,
    run_migrate: bool = False,
    no_worker: bool = False,
) -> Serve:
    """`abiquo-workflow --config <folder>/<name>.toml serve`, and wait until it is ready.

    `settings`: TOML keys laid over the bench's configuration (`serve_settings`), for example
    `{"worker": {"concurrency": 1}}`. `database_url`: by default a new SQLite file in the folder, which
    `serve` migrates at start. `run_migrate`: run `migrate` with the same file first (PostgreSQL).
    `no_worker`: `serve --no-worker`, the web endpoints alone (nothing triages what they store); ready
    once `/healthz` answers, since its `/readyz` wants a worker's heartbeat in the database.
    """
    port = free_port()
    config = folder / f"{name}.toml"
    sections = serve_settings(
        port=port,
        secret_key=secret_key,
        database_url=database_url or f"sqlite:///{folder / f'{name}.db'}",
        world=world,
        overrides=settings,
    )
    config.write_text(render_toml(sections), encoding="utf-8")
    config.chmod(0o600)  # it holds the secret key, and a database password if the URL has one
    if run_migrate:
        migrate(config, folder / f"{name}-migrate.log")
    child = Child(
        f"abiquo-workflow serve ({name})",
        [serve_command(), "--config", str(config), "serve", *(["--no-worker"] if no_worker else [])],
        folder / f"{name}.log",
        folder,
    )
    url = f"http://127.0.0.1:{port}"
    ready = f"{url}/healthz" if no_worker else f"{url}/readyz"
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        child.check_alive()
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(ready, timeout=2, trust_env=False).status_code == 200:
                return Serve(child, url, secret_key, config)
        if time.monotonic() > deadline:
            child.stop()
            raise BenchError(f"{child.name} was not ready within {_READY_TIMEOUT:g} s; see {child.log}")
        time.sleep(0.1)


# --- wrk -------------------------------------------------------------------------------------------------


def wrk_program() -> str:
    """Debian's `wrk`; installed with apt-get when missing and we are root, else `Unavailable`."""
    found = shutil.which("wrk")
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise Unavailable(
            "wrk is not installed and this is not root: run `sudo apt-get install -y wrk` (or `make "
            "test-tools`), then the bench again"
        )
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # `apt-get update` only when the package lists do not know wrk yet (a fresh container has none).
    for commands in (
        [["apt-get", "install", "-y", "wrk"]],
        [["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]],
    ):
        for command in commands:
            print(f"wrk is missing; running: {' '.join(command)}", file=sys.stderr, flush=True)
            subprocess.run(command, env=environment, stdout=sys.stderr, check=False)
        found = shutil.which("wrk")
        if found is not None:
            return found
    raise Unavailable("wrk is not installed, and `apt-get install -y wrk` did not install it")


#: The line `done()` of the bench's wrk scripts prints, before its JSON.
WRK_REPORT_MARK = "WRK-JSON "


@dataclass(frozen=True)
class WrkSummary:
    """What one wrk run reports (`done()` in the bench's Lua): counts, and latencies in ms."""

    requests: int
    seconds: float
    #: Answers with a status of 400 or more (wrk's "status" errors).
    refused: int
    #: connect, read, write, timeout: requests that got no answer.
    socket_errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: Requests the callbacks script sent with a made-up task id, the held ones having run out.
    made_up: int


async def run_wrk(
    program: str,
    url: str,
    *,
    script: Path,
    args: list[str],
    connections: int,
    threads: int,
    seconds: int,
    answer_timeout: float,
    log: Path,
) -> WrkSummary:
    """`wrk -t T -c C -d Ss --timeout X -s script url -- args`; the report of the script's `done()`.

    A request unanswered after `answer_timeout` seconds counts as a timeout error."""
    command = [
        program,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={answer_timeout:g}s",
        "-s",
        str(script),
        url,
        "--",
        *args,
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_clean_environment()
    )
    output, _ = await process.communicate()
    text = output.decode("utf-8", errors="replace")
    with log.open("a", encoding="utf-8") as file:
        file.write(f"$ {' '.join(command)}\n{text}\n")
    reports = [line for line in text.splitlines() if line.startswith(WRK_REPORT_MARK)]
    if process.returncode != 0 or not reports:
        raise BenchError(f"wrk exited with status {process.returncode} without a report:\n{text[-2000:]}")
    data = json.loads(reports[-1].removeprefix(WRK_REPORT_MARK))
    return WrkSummary(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        refused=int(data["status"]),
        socket_errors={k: int(data[k]) for k in ("connect", "read", "write", "timeout") if data[k]},
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        made_up=int(data.get("made_up", 0)),
    )


# --- PostgreSQL ------------------------------------------------------------------------------------------


def postgres_server(url: str) -> str:
    """`url` as libpq reads it (no SQLAlchemy driver name); Unavailable when the server does not answer."""
    import psycopg  # a dependency of the project; imported only when PostgreSQL is measured

    server = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
            admin.execute("SELECT 1")
    except psycopg.Error as error:
        shown = make_url(server).render_as_string(hide_password=True)
        raise Unavailable(f"PostgreSQL at {shown} does not answer: {error}".strip()) from error
    return server


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new database on `server` (CREATE DATABASE), its URL; dropped WITH (FORCE) afterwards."""
    import psycopg
    from psycopg import sql

    name = f"awf_bench_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    python: str

    @classmethod
    def this_one(cls) -> Machine:
        cpu = "unknown CPU"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.partition(":")[2].strip()
                    break
        return cls(
            cpu,
            len(os.sched_getaffinity(0)),
            f"{platform.python_implementation()} {platform.python_version()}",
        )
