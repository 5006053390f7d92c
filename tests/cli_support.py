"""What the command-line tests share: a TOML settings file, the command run in-process (typer's
CliRunner) or as a real subprocess, and waiting for a server to answer.

Subprocesses run `.venv/bin/abiquo-workflow` in the test's own folder, with no `AWF_<SECTION>__<KEY>`
variable from the caller's environment, SIGINT at its default action (as from a terminal) and their
output in files, read while they run and after they end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import structlog
from typer.testing import CliRunner, Result

from abiquo_workflow.cli import app
from tests.conftest import CLIENT_TLS

EXECUTABLE = Path(sys.executable).parent / "abiquo-workflow"

#: Long enough for a slow machine; every wait ends as soon as its condition holds.
WAIT = 30.0


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write settings sections as TOML (strings, numbers and booleans are enough here)."""
    lines: list[str] = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in keys.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def own_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without settings variables, plus `extra`."""
    environ = {k: v for k, v in os.environ.items() if not (k.startswith("AWF_") and "__" in k)}
    environ.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1"})
    environ.update(extra or {})
    return environ


def invoke(*args: str, env: Mapping[str, str] | None = None) -> Result:
    """Run `abiquo-workflow ARGS…` in-process; stdout and stderr apart.

    The command sets up logging for itself (to the runner's captured stderr); it is put back afterwards
    so that later tests do not log into a stream that has gone.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ambient = {k: None for k in os.environ if k.startswith("AWF_") and "__" in k}
    try:
        return CliRunner().invoke(
            app, list(args), env={**ambient, "COLUMNS": "200", **(env or {})}, catch_exceptions=False
        )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_answers(url: str, process: CliProcess | None = None, timeout: float = WAIT) -> httpx2.Response:
    """GET `url` until it answers (any status); fail early if `process` ended meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx2.get(url, timeout=2, verify=CLIENT_TLS)
        except httpx2.TransportError:
            if process is not None and process.process.poll() is not None:
                raise AssertionError(
                    f"the command ended before {url} answered:\n{process.output()}"
                ) from None
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout:g} s") from None
            time.sleep(0.05)


@dataclass
class Ended:
    returncode: int
    stdout: str
    stderr: str


class CliProcess:
    """`abiquo-workflow ARGS…` running as a subprocess in `folder`."""

    def __init__(self, folder: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._stdout_path = folder / "stdout.txt"
        self._stderr_path = folder / "stderr.txt"
        with self._stdout_path.open("wb") as stdout, self._stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [str(EXECUTABLE), *args],
                cwd=folder,
                env=own_environment(env),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                # As from a terminal: whoever started the tests may have left SIGINT ignored.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )

    @property
    def stdout(self) -> str:
        return self._stdout_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def wait_for_output(self, text: str, timeout: float = WAIT) -> None:
        """Wait until stdout contains `text`; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while text not in self.stdout:
            if self.process.poll() is not None:
                raise AssertionError(f"the command ended before printing {text!r}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed within {timeout:g} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = WAIT) -> Ended:
        """Send `sig` and wait for the process to end; fail (and kill it) if it does not in time."""
        self.process.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = WAIT) -> Ended:
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the command did not end within {timeout:g} s:\n{self.output()}") from None
        return Ended(returncode, self.stdout, self.stderr)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
