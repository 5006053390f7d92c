"""Schema migrations: Alembic, run from code, with the scripts shipped inside the package.

`migrate(url)` is what `abiquo-workflow migrate` runs (and `Store.open` by default, when the database
is not at `HEAD_REVISION`). It takes a PostgreSQL advisory lock first, so replicas starting together
upgrade the schema once.

Alembic is imported only inside the functions that need it: a process whose database is already at
`HEAD_REVISION` (every start but the first after an upgrade) never loads it (about 14 MiB). The price
is `HEAD_REVISION`, which must name the newest script; `tests/test_migrations.py` checks it against
Alembic's own answer. To write the next migration, change `tables.py`, then against a database at the
current head:

    uv run python -c "from abiquo_workflow.store.schema import write_revision; \
        write_revision('sqlite:///./dev.db', 'what changes')"

review the file it writes (it is code we ship), and set `HEAD_REVISION` to its revision id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, String, column, create_engine, table
from sqlalchemy.pool import NullPool

from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.store.errors import schema_too_new, translated_errors
from abiquo_workflow.store.sqlite import configure_sqlite
from abiquo_workflow.store.urls import parse_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"

#: The revision of the newest script in `migrations/versions`: what this code expects the database at.
HEAD_REVISION = "0006"

#: Alembic's record of the revision a database is at (one row; Alembic creates and owns the table).
alembic_version = table("alembic_version", column("version_num", String))


def create_sync_engine(url: str) -> Engine:
    """The engine migrations run on: sqlite3 or psycopg (sync), without pooling.

    Foreign keys stay off on SQLite here: Alembic's batch mode rebuilds tables by copy, drop and rename,
    which enforced foreign keys would refuse (SQLite ignores the pragma inside a transaction anyway).
    """
    parsed = parse_url(url)
    if parsed.drivername == "sqlite":
        engine = create_engine(parsed.set(drivername="sqlite+pysqlite"), poolclass=NullPool)
        configure_sqlite(engine, foreign_keys=False)
        return engine
    return create_engine(parsed.set(drivername="postgresql+psycopg"), poolclass=NullPool)


@contextlib.contextmanager
def alembic_config(url: str) -> Iterator[Config]:
    """An Alembic configuration for our scripts, holding an open connection to the database at `url`.

    No alembic.ini: `migrations/env.py` takes the connection from `config.attributes`.
    """
    from alembic.config import Config

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
    from alembic import command
    from alembic.util import CommandError

    with alembic_config(url) as config, translated_errors(url):
        try:
            command.upgrade(config, "head")
        except CommandError as error:  # "Can't locate revision …": the database was upgraded by newer code
            raise StoreError(schema_too_new(url)) from error


def write_revision(url: str, message: str) -> None:
    """Write the next migration script from the difference between `tables.py` and the database."""
    from alembic import command

    with alembic_config(url) as config:
        command.revision(config, message=message, autogenerate=True)


def head_revision() -> str | None:
    """The revision of the newest script, as Alembic reads it from `migrations/versions`."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def known_revisions() -> set[str]:
    """Every revision our scripts know, the head included."""
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None when it was never migrated), as Alembic reads it."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
