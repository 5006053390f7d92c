"""The processes the benchmark starts and watches: the world (simulator + inbox) and `abiquo-workflow serve`.

Each is started the way a person would start it (the installed `abiquo-workflow` command with a TOML
config file; `python bench/world.py`), its output goes to a log file in the run's temporary folder, and
it is stopped with SIGTERM (SIGKILL after a grace period) by the pid we started, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

BENCH_DIR = Path(__file__).resolve().parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_READY_TIMEOUT = 60.0


class BenchError(Exception):
    """The benchmark itself could not run (a process did not start, an answer was wrong)."""


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


def _config_toml(
    *, port: int, secret_key: str, database: Path, world: WorldAddress, max_connections: int | None
) -> str:
    abiquo_extra = f"max_connections = {max_connections}\n" if max_connections is not None else ""
    return (
        "[server]\n"
        f'bind = "127.0.0.1:{port}"\n'
        f'secret_key = "{secret_key}"\n'
        "[database]\n"
        f'url = "sqlite:///{database}"\n'
        "[abiquo]\n"
        f'api_url = "{world.api_url}"\n'
        f"{abiquo_extra}"
        "[mail]\n"
        'smtp_host = "127.0.0.1"\n'
        f"smtp_port = {world.smtp_port}\n"
        'sender = "abiquo-workflow@bench.example"\n'
    )


@dataclass
class Serve:
    """A running `abiquo-workflow serve`."""

    child: Child
    url: str
    secret_key: str
    config: Path


def start_serve(
    folder: Path, name: str, world: WorldAddress, secret_key: str, *, max_connections: int | None = None
) -> Serve:
    """`abiquo-workflow --config <folder>/<name>.toml serve`, SQLite in the folder; wait until ready."""
    port = free_port()
    config = folder / f"{name}.toml"
    config.write_text(
        _config_toml(
            port=port,
            secret_key=secret_key,
            database=folder / f"{name}.db",
            world=world,
            max_connections=max_connections,
        ),
        encoding="utf-8",
    )
    child = Child(
        f"abiquo-workflow serve ({name})",
        [serve_command(), "--config", str(config), "serve"],
        folder / f"{name}.log",
        folder,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        child.check_alive()
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200:
                return Serve(child, url, secret_key, config)
        if time.monotonic() > deadline:
            child.stop()
            raise BenchError(f"{child.name} was not ready within {_READY_TIMEOUT:g} s; see {child.log}")
        time.sleep(0.1)


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
