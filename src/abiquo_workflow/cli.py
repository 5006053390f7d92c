"""The `abiquo-workflow` command. Each subcommand reads the settings, calls one function, and turns the
errors we expect into one line on stderr and a non-zero exit (a traceback only with `--verbose`).

Exit codes: 0 done · 1 a dependency or operation failed · 2 the configuration or the arguments are wrong.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from abiquo_workflow import __version__, logs
from abiquo_workflow.config import Settings, duration_seconds, load_settings
from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.exceptions import AbiquoWorkflowError, ConfigError

T = TypeVar("T")

app = typer.Typer(
    name="abiquo-workflow",
    help="Human approval in front of Abiquo's held deploys, undeploys and reconfigures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks_app = typer.Typer(help="Look at tasks and retry failed deliveries.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


class Context:
    """What the global options decide, passed to every subcommand."""

    def __init__(self, config: Path | None, legacy_config: Path | None, verbose: bool) -> None:
        self.config = config
        self.legacy_config = legacy_config
        self.verbose = verbose
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            try:
                loaded = load_settings(self.config, self.legacy_config)
            except ConfigError as exc:
                fail(str(exc), code=2)
            for warning in loaded.warnings:
                typer.echo(f"warning: {warning}", err=True)
            self._settings = loaded.settings
            configure_logging(self.verbose, self._settings)
        return self._settings


def fail(message: str, *, code: int = 1) -> NoReturn:
    typer.echo(f"abiquo-workflow: {message}", err=True)
    raise typer.Exit(code)


def configure_logging(verbose: bool, settings: Settings | None = None) -> None:
    """Logs on stderr as `settings.log` says (JSON lines off a terminal, readable lines on one; the
    defaults until the settings are read); DEBUG with --verbose. Secrets are never logged (logs.py)."""
    logs.configure(settings, verbose=verbose)


def run(ctx: Context, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine; expected errors become one line and exit code 1."""
    try:
        return asyncio.run(coroutine)
    except AbiquoWorkflowError as exc:
        if ctx.verbose:
            raise
        fail(str(exc), code=2 if isinstance(exc, ConfigError) else 1)


def _context(typer_ctx: typer.Context) -> Context:
    context: Context = typer_ctx.obj
    return context


@app.callback()
def main_options(
    typer_ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML file (default ./abiquo-workflow.toml if present)"),
    ] = None,
    legacy_config: Annotated[
        Path | None, typer.Option("--legacy-config", help="the 2013 tool's workflow.cfg, read first")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logs and full tracebacks")] = False,
) -> None:
    configure_logging(verbose)
    typer_ctx.obj = Context(config, legacy_config, verbose)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    typer_ctx: typer.Context,
    worker: Annotated[bool, typer.Option(help="run the job worker in this process")] = True,
) -> None:
    """Serve the web endpoints (callback, decision pages, health) and, by default, the worker."""
    from abiquo_workflow.runtime import link_signer, prepare_store, web_lifespan
    from abiquo_workflow.servers import serve_in_foreground
    from abiquo_workflow.web.app import create_app

    ctx = _context(typer_ctx)
    settings = ctx.settings()
    try:
        link_signer(settings)
    except ConfigError as exc:
        fail(str(exc), code=2)
    # The server's startup would open the store too, but report a failure as a traceback.
    run(ctx, prepare_store(settings))
    server = settings.server
    serve_in_foreground(
        create_app(settings, lifespan=web_lifespan(settings, start_worker=worker)),
        server.host,
        server.port,
        timeout_graceful_shutdown=10,
    )


@app.command(name="worker")
def worker_command(typer_ctx: typer.Context) -> None:
    """Run only the job worker (for more workers beside `serve --no-worker`, on PostgreSQL)."""
    from abiquo_workflow.runtime import serve_jobs

    ctx = _context(typer_ctx)
    run(ctx, serve_jobs(ctx.settings()))


@app.command()
def migrate(typer_ctx: typer.Context) -> None:
    """Create or upgrade the database schema (once per release on PostgreSQL)."""
    from abiquo_workflow.store import migrate as migrate_schema

    ctx = _context(typer_ctx)
    url = ctx.settings().database.url

    async def upgrade() -> None:
        await asyncio.to_thread(migrate_schema, url)

    run(ctx, upgrade())
    typer.echo("database schema is up to date")


@app.command()
def check(typer_ctx: typer.Context) -> None:
    """Check the configuration and each dependency: database, Abiquo API, SMTP relay."""
    from abiquo_workflow.checks import run_checks

    ctx = _context(typer_ctx)
    settings = ctx.settings()
    results = run(ctx, run_checks(settings))
    width = max(len(r.name) for r in results)
    for result in results:
        typer.echo(f"{result.name:<{width}}  {'OK  ' if result.ok else 'FAIL'}  {result.detail}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command(name="send-test-email")
def send_test_email(
    typer_ctx: typer.Context, to: Annotated[str, typer.Argument(help="recipient address")]
) -> None:
    """Send a test message through the configured SMTP relay."""
    from abiquo_workflow.mail.send import send_test_email as send

    ctx = _context(typer_ctx)
    settings = ctx.settings()
    run(ctx, send(settings.mail, to))
    typer.echo(f"sent a test message to {to} through {settings.mail.smtp_host}:{settings.mail.smtp_port}")


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on")] = 8081,
    callback_url: Annotated[
        str | None, typer.Option(help="where to POST held tasks, e.g. http://127.0.0.1:8080/callback")
    ] = None,
    style: Annotated[str, typer.Option(help="callback dialect: json (3.x) or xml (2.6)")] = "json",
    mode: Annotated[str, typer.Option(help="API flavour: 3.x or 2.6")] = "3.x",
) -> None:
    """Run the Abiquo simulator: a stand-in Abiquo API with a seeded world and a control page."""
    from abiquo_workflow.simulation import serve_simulator

    if style not in ("json", "xml"):
        fail("--style must be json or xml", code=2)
    if mode not in ("3.x", "2.6"):
        fail("--mode must be 3.x or 2.6", code=2)
    serve_simulator(host, port, callback_url=callback_url, style=style, mode=mode)


@app.command()
def demo(
    data_dir: Annotated[
        Path, typer.Option(help="where the demo keeps its SQLite database, signing key and settings file")
    ] = Path("demo-data"),
    port: Annotated[
        int, typer.Option(min=1, max=65532, help="the connector's port; the next three follow it")
    ] = 8080,
) -> None:
    """The whole loop on this machine: connector (SQLite), simulated Abiquo and a mail inbox."""
    from abiquo_workflow.demo import run_demo

    run_demo(data_dir, port)


#: The argument of `tasks show` and `tasks retry`.
TaskIdArgument = Annotated[str, typer.Argument(help="Abiquo task id, or its first 6 or more characters")]


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `4h`, `3d`, `2w` or a sum of them (`1d12h`): how far back `--older-than` and
    `--newer-than` reach. Raises BadParameter: a usage error, exit 2."""
    try:
        return timedelta(seconds=duration_seconds(text))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _answer(
    typer_ctx: typer.Context, command: Callable[[Settings], Coroutine[Any, Any, str | list[str]]]
) -> None:
    """Run a `tasks` subcommand's coroutine with the settings and print what it answers, line by line."""
    ctx = _context(typer_ctx)
    answer = run(ctx, command(ctx.settings()))
    for line in [answer] if isinstance(answer, str) else answer:
        typer.echo(line)


@tasks_app.command("list")
def tasks_list(
    typer_ctx: typer.Context,
    decision: Annotated[DecisionState | None, typer.Option(help="only tasks with this decision")] = None,
    delivery: Annotated[DeliveryState | None, typer.Option(help="only tasks in this delivery state")] = None,
    enterprise: Annotated[
        str | None, typer.Option(metavar="NAME|ID", help="only tasks of this enterprise (name or id)")
    ] = None,
    requester: Annotated[
        str | None, typer.Option(metavar="NICK|ID", help="only tasks this user asked for (nick or id)")
    ] = None,
    older_than: Annotated[
        timedelta | None,
        typer.Option(
            parser=parse_duration, metavar="DURATION", help="only tasks received longer ago (90s, 4h, 3d)"
        ),
    ] = None,
    newer_than: Annotated[
        timedelta | None,
        typer.Option(parser=parse_duration, metavar="DURATION", help="only tasks received within this"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 50,
    after: Annotated[
        str | None,
        typer.Option(metavar="TASK", help="the next page: the tasks after this one (the last one shown)"),
    ] = None,
) -> None:
    """List tasks, newest first; says on stderr how many more match and how to see them."""
    from abiquo_workflow.task_commands import list_tasks

    ctx = _context(typer_ctx)
    settings = ctx.settings()
    listing = run(
        ctx,
        list_tasks(
            settings,
            decision=decision,
            delivery=delivery,
            enterprise=enterprise,
            requester=requester,
            older_than=older_than,
            newer_than=newer_than,
            limit=limit,
            after=after,
        ),
    )
    for line in listing.lines:
        typer.echo(line)
    if listing.more:
        typer.echo(listing.more, err=True)


@tasks_app.command("show")
def tasks_show(typer_ctx: typer.Context, task_id: TaskIdArgument) -> None:
    """Show one task, its decision, its delivery and its audit trail."""
    from abiquo_workflow.task_commands import show_task

    _answer(typer_ctx, lambda settings: show_task(settings, task_id))


@tasks_app.command("retry")
def tasks_retry(typer_ctx: typer.Context, task_id: TaskIdArgument) -> None:
    """Queue a failed delivery to Abiquo again."""
    from abiquo_workflow.task_commands import retry_task

    _answer(typer_ctx, lambda settings: retry_task(settings, task_id))


policy_app = typer.Typer(help="See how the policy rules treat a request.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("explain")
def policy_explain(
    typer_ctx: typer.Context,
    task_id: Annotated[
        str | None, typer.Argument(help="a stored task id, or its first 6 or more characters")
    ] = None,
    payload: Annotated[
        Path | None,
        typer.Option("--payload", metavar="FILE", help="a callback body as Abiquo posts it (XML or JSON)"),
    ] = None,
) -> None:
    """Which policy rule applies to a request, why not the earlier ones, and who would be asked or what
    decided. Reads Abiquo; decides, stores and sends nothing."""
    from abiquo_workflow.policy_explain import explain_payload, explain_task

    if (task_id is None) == (payload is None):
        fail("policy explain takes a task id or --payload FILE (one of them)", code=2)
    if payload is not None:
        _answer(typer_ctx, lambda settings: explain_payload(settings, payload))
    elif task_id is not None:
        _answer(typer_ctx, lambda settings: explain_task(settings, task_id))


@app.command(name="api-token")
def api_token(
    name: Annotated[str, typer.Argument(help="the token's name: the audit log's actor is token:NAME")],
    scope: Annotated[
        str, typer.Option("--scope", metavar="read|decide", help="read, or read, decide and retry")
    ] = "read",
) -> None:
    """Print a new random API token and the `[[api.tokens]]` lines that let it in (only its SHA-256 is
    kept in the configuration; the token is shown once, here)."""
    from abiquo_workflow.access import new_token, token_digest

    if scope not in ("read", "decide"):
        fail(f"--scope must be read or decide, not {scope!r}", code=2)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        fail(f"the name {name!r} may hold only letters, digits, '.', '_' and '-' (64 at most)", code=2)
    token = new_token()
    typer.echo(f"token: {token}")
    typer.echo("")
    typer.echo("# add to the configuration file:")
    typer.echo("[[api.tokens]]")
    typer.echo(f'name = "{name}"')
    typer.echo(f'scope = "{scope}"')
    typer.echo(f'sha256 = "{token_digest(token)}"')


def main() -> None:
    app()
