"""`abiquo-workflow demo`: the whole approval loop on one machine, with no configuration.

Four servers, all on 127.0.0.1, from the connector's port P (8080 by default):

    P      the connector (SQLite in the data folder), with its worker and the dashboard
    P+1    the Abiquo simulator: its page requests deploys and shows the continue/cancel calls it gets
    P+2    the mail inbox page: every email the connector sent, rendered, links clickable
    P+3    the inbox's SMTP port, where the connector sends its mail

The banner names logins for the dashboard that the simulator's `/login` takes (its seeded people:
an approver, the administrator and a requester). The signing key is kept in the data folder, so links
in emails still work after a restart. Ctrl-C stops everything. Environment variables and config files
are ignored on purpose: the demo must behave the same on every machine.

The demo also writes its settings to `<data folder>/abiquo-workflow.toml` and prints the command line
that reads them (`abiquo-workflow --config … tasks list`), so `check` and the `tasks` commands can be
tried on the demo's database, simulator and inbox while it runs. That file holds the signing key, like
the folder's `secret_key`, so both are readable by their owner only.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from abiquo_simulator import Simulator
from abiquo_workflow.config import Settings, build_settings
from abiquo_workflow.mail.inbox import Inbox, inbox_app
from abiquo_workflow.runtime import web_lifespan
from abiquo_workflow.servers import BackgroundServer, serve_in_foreground
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.web.app import create_app

HOST = "127.0.0.1"
#: The demo's settings as a TOML file in the data folder, for the command line.
CONFIG_FILE = "abiquo-workflow.toml"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by the owner only, from the first byte on (the
    file is created with that mode, never opened to others first, and an older file is narrowed)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)


def _secret_key(data_dir: Path) -> str:
    path = data_dir / "secret_key"
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32))
    return path.read_text(encoding="utf-8").strip()


def _demo_config(data_dir: Path, port: int) -> dict[str, dict[str, Any]]:
    """The connector's settings in the demo, as the sections of a config file: everything local,
    SQLite in `data_dir`. One source for the running demo and the file written for the command line,
    so the two cannot disagree."""
    return {
        "server": {"bind": f"{HOST}:{port}", "secret_key": _secret_key(data_dir)},
        "database": {"url": f"sqlite:///{(data_dir / 'abiquo-workflow.db').resolve()}"},
        "abiquo": {"api_url": f"http://{HOST}:{port + 1}/api", "retries": 2},
        "mail": {"smtp_host": HOST, "smtp_port": port + 3, "sender": "abiquo-workflow@demo.example"},
        "worker": {"retry_max_delay": 10},
        # A lost callback tried on the simulator's page is found within half a minute, not five.
        "reconcile": {"interval": "30s"},
    }


def demo_settings(data_dir: Path, port: int) -> Settings:
    """The connector's settings in the demo: everything local, SQLite in `data_dir`."""
    return build_settings(_demo_config(data_dir, port), environ={})


def _toml_value(value: object) -> str:
    """A TOML string, integer, float or boolean. Strings are written as basic strings with every
    control character escaped (TOML allows none raw), so a path or key reads back as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return (
            '"'
            + "".join(
                f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char for char in escaped
            )
            + '"'
        )
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    """`sections` as a TOML document of tables of plain values (all the demo's settings need)."""
    lines = ["# Written by `abiquo-workflow demo` at each start: its settings, for the command line."]
    for section, keys in sections.items():
        lines += ["", f"[{section}]", *(f"{key} = {_toml_value(value)}" for key, value in keys.items())]
    return "\n".join(lines) + "\n"


def write_config(data_dir: Path, port: int) -> Path:
    """Write the demo's settings to `data_dir/abiquo-workflow.toml` (owner-only: it holds the signing
    key) and return the file's absolute path."""
    path = (data_dir / CONFIG_FILE).resolve()
    _write_private(path, _toml(_demo_config(data_dir, port)))
    return path


def cli_command(config: Path) -> str:
    """The command line that works on the demo's settings, as a shell would take it.

    The `abiquo-workflow` script beside the running interpreter is the one this demo runs from,
    wherever uv put it (`.venv/bin` in a clone, a tool environment when installed): unlike a bare
    `abiquo-workflow` or `uv run`, it needs nothing on PATH.
    """
    script = Path(sys.executable).parent / "abiquo-workflow"
    program = shlex.quote(str(script)) if script.exists() else "abiquo-workflow"
    return f"{program} --config {shlex.quote(str(config))}"


#: The simulator's seeded people the banner offers for the dashboard: (nick, who they are).
DASHBOARD_PEOPLE = (
    ("asmith", "Alice Smith, an approver of Acme"),
    ("admin", "the cloud administrator: sees and decides every request"),
    ("jdoe", "John Doe, the requester: sees his own requests, read-only"),
)


def dashboard_logins(simulator: Simulator) -> list[tuple[str, str, str]]:
    """(user name, password, who) for each of `DASHBOARD_PEOPLE`, as the simulator's world has them, so
    the banner cannot print a login the simulator's `/login` refuses."""
    logins = []
    for nick, who in DASHBOARD_PEOPLE:
        user = simulator.world.user_by_nick(nick)
        if user is not None:
            logins.append((user.nick, user.password, who))
    return logins


def _banner(port: int, command: str, logins: list[tuple[str, str, str]]) -> str:
    simulator, inbox, connector = (f"http://{HOST}:{port + n}/" for n in (1, 2, 0))
    (nick, password, who), *others = logins
    also = "\n".join(f"     {name + ' / ' + secret:<20} {role}" for name, secret, role in others)
    return f"""
abiquo-workflow demo is running.

  1. Ask for an approval   {simulator}
     (the simulated Abiquo: as Target pick "vApp 1: Web tier & cache", then press
      "Hold it and POST the callback")
  2. Decide it             {connector}
     (the dashboard: sign in as {nick} / {password}, {who};
      open the request and press "Accept all 3 pending")
     or from the email     {inbox}
     (the approvers Alice, Bob and Zoë each get one; open it and click Accept or Decline)
  3. See Abiquo get it     {simulator}
     (the "Continue / cancel calls received" list; the requester's outcome email lands in the inbox,
      and a short "Settled" one for each approver who did not decide)

  The dashboard also takes
{also}

  The command line on the demo's data (in another terminal; also check, tasks show ID, tasks retry ID):
     {command} tasks list

  Connector and dashboard: {connector}   Press Ctrl-C to stop.
"""


def run_demo(data_dir: Path, port: int) -> None:
    """Start the four servers, print where to go, and serve until Ctrl-C."""
    busy = [p for p in range(port, port + 4) if not _port_is_free(p)]
    if busy:
        raise typer.BadParameter(
            f"port(s) {', '.join(map(str, busy))} are in use; pass --port to use other ones",
            param_hint="--port",
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(data_dir, port)
    command = cli_command(write_config(data_dir, port))
    simulator = Simulator(callback_url=f"http://{HOST}:{port}/callback", style="json")
    inbox = Inbox(HOST, port + 3)
    with (
        inbox,
        BackgroundServer(inbox_app(inbox), HOST, port + 2),
        SimulatorServer(simulator, HOST, port + 1),
    ):
        typer.echo(_banner(port, command, dashboard_logins(simulator)))
        serve_in_foreground(
            create_app(settings, lifespan=web_lifespan(settings)), HOST, port, timeout_graceful_shutdown=5
        )
    typer.echo("demo stopped")
