"""`abiquo-workflow demo`: the whole approval loop on one machine, with no configuration.

Four servers, all on 127.0.0.1, from the connector's port P (8080 by default):

    P      the connector (SQLite in the data folder), with its worker
    P+1    the Abiquo simulator: its page requests deploys and shows the continue/cancel calls it gets
    P+2    the mail inbox page: every email the connector sent, rendered, links clickable
    P+3    the inbox's SMTP port, where the connector sends its mail

The signing key is kept in the data folder, so links in emails still work after a restart. Ctrl-C
stops everything. Environment variables and config files are ignored on purpose: the demo must behave
the same on every machine.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import typer

from abiquo_simulator import Simulator
from abiquo_workflow.config import Settings, build_settings
from abiquo_workflow.mail.inbox import Inbox, inbox_app
from abiquo_workflow.runtime import web_lifespan
from abiquo_workflow.servers import BackgroundServer, serve_in_foreground
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.web.app import create_app

HOST = "127.0.0.1"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _secret_key(data_dir: Path) -> str:
    path = data_dir / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def demo_settings(data_dir: Path, port: int) -> Settings:
    """The connector's settings in the demo: everything local, SQLite in `data_dir`."""
    return build_settings(
        {
            "server": {"bind": f"{HOST}:{port}", "secret_key": _secret_key(data_dir)},
            "database": {"url": f"sqlite:///{(data_dir / 'abiquo-workflow.db').resolve()}"},
            "abiquo": {"api_url": f"http://{HOST}:{port + 1}/api", "retries": 2},
            "mail": {"smtp_host": HOST, "smtp_port": port + 3, "sender": "abiquo-workflow@demo.example"},
            "worker": {"retry_max_delay": 10},
        },
        environ={},
    )


def _banner(port: int) -> str:
    simulator, inbox, connector = (f"http://{HOST}:{port + n}/" for n in (1, 2, 0))
    return f"""
abiquo-workflow demo is running.

  1. Ask for an approval   {simulator}
     (the simulated Abiquo: as Target pick "vApp 1: Web tier & cache", then press
      "Hold it and POST the callback")
  2. Read the email        {inbox}
     (the approvers Alice, Bob and Zoë each get one; open it and click Accept or Decline)
  3. See Abiquo get it     {simulator}
     (the "Continue / cancel calls received" list; the requester's outcome email lands in the inbox)

  Connector: {connector}   Press Ctrl-C to stop.
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
    simulator = Simulator(callback_url=f"http://{HOST}:{port}/callback", style="json")
    inbox = Inbox(HOST, port + 3)
    with (
        inbox,
        BackgroundServer(inbox_app(inbox), HOST, port + 2),
        SimulatorServer(simulator, HOST, port + 1),
    ):
        typer.echo(_banner(port))
        serve_in_foreground(
            create_app(settings, lifespan=web_lifespan(settings)), HOST, port, timeout_graceful_shutdown=5
        )
    typer.echo("demo stopped")
