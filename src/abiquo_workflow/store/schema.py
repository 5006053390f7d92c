"""Schema migrations: Alembic, run from code, with the scripts shipped inside the package.

`migrate(url)` is what `abiquo-workflow migrate` runs (and `Store.open` by default). It takes a
PostgreSQL advisory lock first, so replicas starting together upgrade the schema once.
To write the next migration, change `tables.py`, then against a database at the current head:

    uv run python -c "from abiquo_workflow.store.schema import write_revision; \
        write_revision('sqlite:///./dev.db', 'what changes')"

and review the file it writes (it is code we ship).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection

from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.store.engine import create_sync_engine, schema_too_new, translated_errors

MIGRATIONS = Path(__file__).parent / "migrations"


@contextlib.contextmanager
def alembic_config(url: str) -> Iterator[Config]:
    """An Alembic configuration for our scripts, holding an open connection to the database at `url`.

    No alembic.ini: `migrations/env.py` takes the connection from `config.attributes`.
    """
    engine = create_sync_engine(url)
    try:
        with translated_errors(url, connecting=True):
            connection = engine.connect()
        with connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            yield config
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    """Upgrade the database at `url` to the schema of this version (`alembic upgrade head`).

    Synchronous (sqlite3 / psycopg); from async code run it with `asyncio.to_thread`.
    Raises StoreError when the database is unreachable or its schema is newer than this code.
    """
    with alembic_config(url) as config, translated_errors(url):
        try:
            command.upgrade(config, "head")
        except CommandError as error:  # "Can't locate revision …": the database was upgraded by newer code
            raise StoreError(schema_too_new(url)) from error


def write_revision(url: str, message: str) -> None:
    """Write the next migration script from the difference between `tables.py` and the database."""
    with alembic_config(url) as config:
        command.revision(config, message=message, autogenerate=True)


def head_revision() -> str | None:
    """The revision this version of the code expects the database to be at."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def known_revisions() -> set[str]:
    """Every revision our scripts know, the head included."""
    return {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None when it was never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()
